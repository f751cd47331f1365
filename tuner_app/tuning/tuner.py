"""CVTuner: a KerasTuner Tuner whose trial is a stratified K-fold cross-validation.

It holds the trial lifecycle only: KerasTuner asks the oracle for a grid point, `run_trial`
walks its folds (those already in the trial's `FoldStore` are kept, the others trained by
`folds.train_fold` on a model from the `ModelCache`), and the trial reports the mean of
each metric over its folds; its score is the mean of the objective. The tuner knows no
hyperparameter by name: the grid comes from the hypermodel (`tuner_app.tuning.grid`).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import keras_tuner
import numpy as np

from tuner_app.config import CVConfig, RetrainConfig
from tuner_app.errors import DiskFull, UsageError
from tuner_app.models.preflight import labels
from tuner_app.runtime import files, interrupts
from tuner_app.runtime.progress import Progress
from tuner_app.training import compile_ahead, jax_loop, tensorboard_logs
from tuner_app.training.trial import FoldTrainer, splits
from tuner_app.tuning import state
from tuner_app.tuning.grid import Grid
from tuner_app.tuning.oracle import ResumableGridOracle, heartbeat_s
from tuner_app.tuning.state import FoldStore

_SEARCH_KEYWORDS = {  # what KerasTuner users pass to search(), and where it lives here
    "epochs": "CVConfig(epochs=...)", "batch_size": "CVConfig(batch_size=...)",
    "validation_data": "nothing: each fold's validation set is the held-out fold",
    "validation_split": "CVConfig(folds=...)", "callbacks": "nothing (EarlyStopping on the objective is built in)",
}


class _Heartbeat(threading.Thread):
    """While a trial trains, ask the oracle for it every `every` seconds: a KerasTuner chief counts that as
    this worker's sign of life (`ResumableGridOracle`); a lone search's oracle just answers."""

    def __init__(self, beat, every: float):
        super().__init__(name="tuner-app-heartbeat", daemon=True)
        self._beat, self.every, self._done = beat, every, threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.every):
            try:
                self._beat()
            except Exception:  # noqa: BLE001, S112 - a chief not answering: the worker's own watch says so
                continue

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()


class _SearchDiskFull(DiskFull, keras_tuner.errors.FatalError):
    """A full disk during a trial: KerasTuner lets a FatalError end the search."""


class CVTuner(keras_tuner.Tuner):
    """KerasTuner Tuner whose trial is a stratified K-fold cross-validation over a grid.

    A regular `keras_tuner.Tuner` for: `search(x, y)` (x: scaled images, y: integer labels),
    `get_best_hyperparameters`, `oracle.get_best_trials`, `results_summary`, and a stock
    KerasTuner reload of the project directory. It keeps no per-trial model, so
    `get_best_models` raises: retrain the best hyperparameters with `tuner_app.retrain.retrain_best`.

    Args:
        hypermodel: Builds (and fits) the models.
        grid: The grid to score; its points become the oracle's.
        cv: Folds, seed, epochs, batch size, patience, precision, objective.
        num_classes: Classes in the data (for one-hot labels).
        label_form: "sparse" or "one_hot": what the model's loss takes.
        progress: Listener for trial/fold/epoch events.
        reuse_models: See `ModelCache`; None reuses compiled models under TensorFlow.
        tensorboard: Write TensorBoard logs (and HParams) to `<project>/tensorboard/trial_<id>/fold_<k>`.
        retrain: The retrain expected next (`retrain.retrain_best` with these settings, on the same
            images): under JAX on a GPU its call shapes compile in the background too (`_compile_later`).
        **kwargs: Passed to `keras_tuner.Tuner` (directory, project_name).
    """

    def __init__(self, hypermodel: keras_tuner.HyperModel, grid: Grid, cv: CVConfig, num_classes: int,
                 label_form: str = "one_hot", progress: Progress | None = None, reuse_models: bool | None = None,
                 tensorboard: bool = False, retrain: RetrainConfig | None = None, **kwargs):
        self.grid, self.cv, self.num_classes, self.label_form = grid, cv, num_classes, label_form
        self.progress = progress or Progress()
        self.tensorboard, self.retrain = tensorboard, retrain
        self._splits: list | None = None
        self._asked = False  # asked the oracle for a trial and got none yet (IDLE)
        self.concurrent = False  # several trials run at once (on Ray): trials are not numbered in order
        self._ahead: compile_ahead.CompileAhead | None = None  # (`_compile_later`)
        oracle = ResumableGridOracle(grid, objective=keras_tuner.Objective(cv.objective, cv.direction), seed=cv.seed)
        super().__init__(oracle=oracle, hypermodel=hypermodel, **kwargs)
        self.trainer = FoldTrainer(self.hypermodel, cv, reuse_models)

    def _populate_initial_space(self):
        """The oracle already has the grid's space: no discovery builds (KerasTuner's default builds again)."""

    def search(self, x, y, **kwargs):
        """Score every grid point by K-fold CV of `x` (float images) and `y` (integer labels).

        Args:
            x: Images, scaled (N, H, W, C).
            y: Integer class labels (N,).
            **kwargs: `verbose` only; training settings live in `CVConfig`.
        """
        extra = sorted(set(kwargs) - {"verbose"})
        if extra:
            where = _SEARCH_KEYWORDS.get(extra[0], "CVConfig or the hypermodel's own fit()")
            raise TypeError(f"CVTuner.search(x, y) takes no {extra[0]!r}: set it in {where}")
        super().search(x, np.asarray(y), verbose=kwargs.get("verbose", 0))

    def run_trial(self, trial, x, y, verbose=0):
        """Every fold of the trial not yet on disk, trained and recorded; the means over the folds."""
        trial_dir = self.get_trial_dir(trial.trial_id)
        store = FoldStore(trial_dir)
        if self._splits is None:
            self._splits = splits(y, self.cv.folds, self.cv.seed)
        y_fit = labels(y, self.label_form, self.num_classes)
        for k in sorted(store.records):
            self.progress.fold_reused(store.records[k], self.cv.folds)
        pending = [k for k in range(1, self.cv.folds + 1) if k not in store]
        interrupts.check()
        if pending:
            self._compile_later(trial.hyperparameters, x, y_fit)  # (JAX on a GPU)

        def finished(record: dict, history: dict | None) -> None:
            if record["fold"] in store:  # (a resume may finish a fused member recorded just before a kill)
                return
            store.add(record)
            self.progress.fold_end(record, self.cv.folds)
            if self.tensorboard and history is not None:  # (a fused member's; a sequential fold's: its callback)
                tensorboard_logs.write_history(self.project_dir, trial, record["fold"], history)

        callbacks = (lambda k: tensorboard_logs.callbacks(self.project_dir, trial, k)) if self.tensorboard else None
        try:
            with _Heartbeat(lambda: self.oracle.get_trial(trial.trial_id), heartbeat_s()):
                self.trainer.train(trial.hyperparameters, pending, x, y_fit, self._splits, trial_dir, finished,
                                   self.progress, callbacks)
        except DiskFull as e:  # the search's end, not a failed trial (KerasTuner goes on after those)
            raise _SearchDiskFull(str(e)) from None
        return store.means()

    def _compile_later(self, hp: keras_tuner.HyperParameters, x, y_fit) -> None:
        """Under JAX on a GPU: compile the grid's other architectures (and the retrain) while trials train
        (`tuner_app.training.compile_ahead`)."""
        if self.concurrent or not jax_loop.applies(self.hypermodel):
            return
        if self._ahead is None:
            self._ahead = compile_ahead.CompileAhead(self.hypermodel, self.grid, self.cv, self._splits, self.retrain,
                                                     Path(self.project_dir) / state.XLA_CACHE_DIR)
        self._ahead.before_trial(hp, x, y_fit)

    def _try_run_and_update_trial(self, trial, *fit_args, **fit_kwargs):
        # KerasTuner prints a failed trial's traceback when its config.DEBUG is on (the default);
        # tuner-app keeps it in trial.json and says one line at the end (see `tuner_app.api.run_plan`).
        from keras_tuner.src import config

        debug, config.DEBUG = config.DEBUG, False
        try:
            super()._try_run_and_update_trial(trial, *fit_args, **fit_kwargs)
        finally:
            config.DEBUG = debug

    def pre_create_trial(self):
        # A worker told IDLE (the last points are running elsewhere) asks again at once in
        # KerasTuner's loop; wait a little instead of hammering the chief.
        if self._asked:
            time.sleep(1.0)
        self._asked = True
        interrupts.check()

    def on_trial_begin(self, trial):
        self._asked = False
        interrupts.check()
        super().on_trial_begin(trial)
        done = None if self.concurrent else self.completed()
        self.progress.trial_start(trial.trial_id, trial.hyperparameters.values, None if done is None else done + 1,
                                  len(self.grid))

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        ended = self.oracle.get_trial(trial.trial_id)
        self.progress.trial_end(trial.trial_id, ended.score, ended.status)

    def completed(self) -> int | None:
        """Completed trials so far; None on a worker, which does not see the chief's trials."""
        if self._is_worker():
            return None
        return sum(t.status == "COMPLETED" for t in self.oracle.trials.values())

    def save(self):
        if not self._is_worker():
            self.oracle.save()
        files.atomic_write_json(self._get_tuner_fname(), self.get_state())

    def save_model(self, trial_id, model, step=0):
        """Fold models are not kept: `retrain-best` trains the final model afresh."""

    def load_model(self, trial):
        raise UsageError("tuner-app keeps no per-trial models (a trial trains one per fold); use "
                         "get_best_hyperparameters() and tuner_app.retrain.retrain_best()")

    def get_best_models(self, num_models=1):
        """Not kept: see `load_model`."""
        return self.load_model(None)
