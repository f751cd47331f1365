"""More than one process: KerasTuner's chief and workers, and Ray."""
