"""A grid oracle that resumes: the next point is derived from the trials on disk.

KerasTuner's GridSearchOracle keeps its position in memory only (a linked list that
oracle.json does not store), so after a restart it stops at once or fails. This
oracle enumerates `Grid.points` in order and hands out the first point that no trial
has taken yet, which needs no state beyond the trials themselves.
"""

from __future__ import annotations

import os
import time
import warnings

import keras_tuner
from keras_tuner.src.distribute import utils as dist_utils
from keras_tuner.src.engine import trial as trial_module

from tuner_app.errors import DataWarning
from tuner_app.runtime import files
from tuner_app.tuning import state
from tuner_app.tuning.grid import Grid

RUNNING = trial_module.TrialStatus.RUNNING
COMPLETED = trial_module.TrialStatus.COMPLETED
FAILED = trial_module.TrialStatus.FAILED
INVALID = trial_module.TrialStatus.INVALID


def worker_lease_s() -> float:
    """How long a KerasTuner chief waits for word from a worker that holds a trial (TUNER_APP_WORKER_LEASE_S)."""
    return float(os.environ.get("TUNER_APP_WORKER_LEASE_S", "600"))


def heartbeat_s() -> float:
    """How often a worker gives word while it trains: a quarter of the lease, 30 s at most."""
    return min(30.0, worker_lease_s() / 4)


class ResumableGridOracle(keras_tuner.Oracle):
    """Every grid point exactly once, across restarts and workers; atomic state files.

    Served by a KerasTuner chief, it also holds every worker's trial on a lease: a worker asks for
    its trial every `heartbeat_s()` while it trains (`CVTuner`, from a thread); one silent for longer
    than `worker_lease_s()` (its host gone for good) loses the trial to the next worker that asks,
    instead of the chief waiting for it with no end.

    Args:
        grid: The grid (its hyperparameters become the oracle's space).
        **kwargs: Passed to `keras_tuner.Oracle` (objective, seed, max_retries_per_trial, ...).
    """

    def __init__(self, grid: Grid, **kwargs):
        super().__init__(hyperparameters=grid.hyperparameters.copy(), max_trials=len(grid), **kwargs)
        self.grid = grid
        self.lease_s = worker_lease_s() if dist_utils.has_chief_oracle() and dist_utils.is_chief_oracle() else None
        self._heard: dict[str, float] = {}  # trial id -> when its worker was last heard of

    @keras_tuner.synchronized
    def create_trial(self, tuner_id):
        self._release_silent(tuner_id)
        trial = super().create_trial(tuner_id)
        if trial.status == RUNNING:
            self._heard[trial.trial_id] = time.monotonic()
        elif trial.status == trial_module.TrialStatus.STOPPED and self.lease_s is not None and self.ongoing_trials:
            # Every point is taken, some by other workers still: this one waits (IDLE) rather than leave,
            # to take over a trial whose worker's lease runs out. (KerasTuner stops it once max_trials exist.)
            self.tuner_ids.add(tuner_id)
            trial.status = trial_module.TrialStatus.IDLE
        return trial

    @keras_tuner.synchronized
    def get_trial(self, trial_id):
        self._heard[trial_id] = time.monotonic()  # (a worker's heartbeat)
        return super().get_trial(trial_id)

    @keras_tuner.synchronized
    def update_trial(self, trial_id, metrics, step=0):
        self._heard[trial_id] = time.monotonic()
        return super().update_trial(trial_id, metrics, step)

    def _release_silent(self, asking: str) -> None:
        """Put back in the queue the trials of workers not heard of for longer than the lease."""
        if self.lease_s is None:
            return
        now = time.monotonic()
        for tuner_id, trial in list(self.ongoing_trials.items()):
            silent = now - self._heard.setdefault(trial.trial_id, now)  # (a chief that restarted: from now)
            if tuner_id != asking and silent > self.lease_s:
                del self.ongoing_trials[tuner_id]
                self.tuner_ids.discard(tuner_id)
                self._retry_queue.append(trial.trial_id)
                self._heard.pop(trial.trial_id, None)
                warnings.warn(DataWarning(f"{tuner_id} has not been heard of for {silent:.0f} s: its trial "
                                          f"{trial.trial_id} goes to {asking}, its finished folds kept"), stacklevel=2)

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
