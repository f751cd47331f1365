"""The search: its grid, the oracle, the tuner (one trial's lifecycle), the project's state, and the plan and run of a search."""
