"""A grid oracle that resumes: the next point is derived from the trials on disk.

KerasTuner's GridSearchOracle keeps its position in memory only (a linked list that
oracle.json does not store), so after a restart it stops at once or fails. This
oracle enumerates `Grid.points` in order and hands out the first point that no trial
has taken yet, which needs no state beyond the trials themselves.
"""

from __future__ import annotations

import os

import keras_tuner
from keras_tuner.src.engine import trial as trial_module

from tuner_app.runtime import files
from tuner_app.tuning import state
from tuner_app.tuning.grid import Grid

RUNNING = trial_module.TrialStatus.RUNNING
COMPLETED = trial_module.TrialStatus.COMPLETED
FAILED = trial_module.TrialStatus.FAILED
INVALID = trial_module.TrialStatus.INVALID


class ResumableGridOracle(keras_tuner.Oracle):
    """Every grid point exactly once, across restarts and workers; atomic state files.

    Args:
        grid: The grid (its hyperparameters become the oracle's space).
        **kwargs: Passed to `keras_tuner.Oracle` (objective, seed, max_retries_per_trial, ...).
    """

    def __init__(self, grid: Grid, **kwargs):
        super().__init__(hyperparameters=grid.hyperparameters.copy(), max_trials=len(grid), **kwargs)
        self.grid = grid

    def populate_space(self, trial_id):
        taken = {self._compute_values_hash(t.hyperparameters.values) for t in self.trials.values()}
        for values in self.grid.points:
            if self._compute_values_hash(values) not in taken:
                return {"status": RUNNING, "values": values}
        if self.ongoing_trials:
            return {"status": trial_module.TrialStatus.IDLE, "values": None}
        return {"status": trial_module.TrialStatus.STOPPED, "values": None}

    def reload(self):
        super().reload()
        # A kill can land between a trial file and oracle.json: re-queue every trial the
        # files say is unfinished (a failed one gets another chance on a rerun), and drop
        # finished ones from the queue.
        unfinished = (RUNNING, FAILED, INVALID)
        queue = [t for t in dict.fromkeys(self._retry_queue) if self.trials[t].status in unfinished]
        for trial_id, trial in sorted(self.trials.items()):
            if trial.status in unfinished and trial_id not in queue:
                queue.append(trial_id)
        self._retry_queue = queue[::-1]  # create_trial pops from the end: lowest id first

    def save(self):
        files.atomic_write_json(self._get_oracle_fname(), self.get_state())

    def _save_trial(self, trial):
        files.atomic_write_json(os.path.join(self._get_trial_dir(trial.trial_id), state.TRIAL_FILE), trial.get_state())
