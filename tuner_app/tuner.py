"""CVTuner: a KerasTuner Tuner whose trial is a stratified K-fold cross-validation.

It holds the trial lifecycle only: KerasTuner asks the oracle for a grid point, `run_trial`
walks its folds (those already in the trial's `FoldStore` are kept, the others trained by
`folds.train_fold` on a model from the `ModelCache`), and the trial reports the mean of
each metric over its folds; its score is the mean of the objective. The tuner knows no
hyperparameter by name: the grid comes from the hypermodel (`tuner_app.grid`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import keras_tuner
import numpy as np

from tuner_app import compiled_loop, fused, interrupt, models, retrain, state
from tuner_app.batches import FoldBatches, validation_batch_size
from tuner_app.errors import UsageError, failing_as
from tuner_app.folds import FoldStore, splits, train_fold
from tuner_app.grid import Grid
from tuner_app.model_cache import ModelCache, architecture_key
from tuner_app.models.checks import labels, own_fit
from tuner_app.oracle import ResumableGridOracle
from tuner_app.progress import Progress
from tuner_app.settings import CVConfig, RetrainConfig

_SEARCH_KEYWORDS = {  # what KerasTuner users pass to search(), and where it lives here
    "epochs": "CVConfig(epochs=...)", "batch_size": "CVConfig(batch_size=...)",
    "validation_data": "nothing: each fold's validation set is the held-out fold",
    "validation_split": "CVConfig(folds=...)", "callbacks": "nothing (EarlyStopping on the objective is built in)",
}


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
        self._later: dict | None = None  # {point: its architecture's background compilation} (`_compile_later`)
        oracle = ResumableGridOracle(grid, objective=keras_tuner.Objective(cv.objective, cv.direction), seed=cv.seed)
        super().__init__(oracle=oracle, hypermodel=hypermodel, **kwargs)
        self.cache = ModelCache(self.hypermodel, cv.precision, reuse_models)
        self.fused_cache = fused.FusedModels(self.hypermodel, cv.precision, reuse_models)

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
        interrupt.check()
        if pending:
            self._compile_later(trial.hyperparameters, x, y_fit)  # (JAX on a GPU)
        if self.cv.fold_mode == "fused":
            if pending:
                with failing_as(f"folds {', '.join(map(str, pending))} (fused)"):
                    self._run_fused(trial, trial_dir, pending, x, y_fit, store)
            return store.means()
        if not own_fit(self.hypermodel):
            self.cache.prepare(trial.hyperparameters, [self.cv.seed + k for k in pending])
        for k in pending:
            interrupt.check()
            callbacks = self._tensorboard(trial, k) if self.tensorboard else []
            with failing_as(f"fold {k}"):
                record = train_fold(self.hypermodel, self.cache, self.cv, trial.hyperparameters, k, x, y_fit,
                                    self._splits[k - 1], self.progress, callbacks)
            store.add(record)
            self.progress.fold_end(record, self.cv.folds)
        return store.means()

    def _compile_later(self, hp: keras_tuner.HyperParameters, x, y_fit) -> None:
        """Under JAX on a GPU (the compiled loop): at the first trial this process trains, start compiling
        every other architecture of the grid in the background (`compiled_loop.compile_later`, into
        `<project>/xla_cache`), to run while the trials train; at a later trial, wait for its own
        architecture's compilation if it is still under way (compiling it again would take as long).
        On one H200 the chunks' compilations, made before each new architecture's first epoch, took
        about a third of the `full` search (24 of 77 s)."""
        if self.concurrent or not compiled_loop.applies(self.hypermodel):
            return
        if self._later is None:
            compiled_loop.cache_compilations(Path(self.project_dir) / state.XLA_CACHE_DIR)
            self._later = self._start_later(hp, x, y_fit)
        waiting = self._later.get(_point(hp.values))
        if waiting is not None:
            compiled_loop.wait(waiting)

    def _start_later(self, first: keras_tuner.HyperParameters, x, y_fit) -> dict:
        """{point: its architecture's compilation} for the grid's architectures but `first`'s, each on a
        throwaway model built here (before `first`'s model: every fold's build is seeded anew)."""
        futures: dict[str, object] = {}
        later, architectures = {}, {}
        points = [dict(first.values), *(p for p in self.grid.points if dict(p) != dict(first.values))]
        for i, point in enumerate(points):
            hp = self.grid.hyperparameters.copy()
            hp.values = dict(point)
            model = models.build(self.hypermodel, hp, self.cv.precision)
            key = architecture_key(model)
            if key is None:
                continue
            if key not in futures:
                futures[key] = None if i == 0 else self._compile_point(hp, model, x, y_fit)
                architectures[key] = hp
            if futures[key] is not None:
                later[_point(point)] = futures[key]
        if self.retrain is not None:
            for hp in architectures.values():
                retrain.compile_later(self.hypermodel, hp, x, y_fit, self.retrain)
        return later

    def _compile_point(self, hp: keras_tuner.HyperParameters, model, x, y_fit):
        """Start compiling what the folds of `hp` will call (`model`: a build of it); the last future."""
        folds = list(range(1, self.cv.folds + 1))
        sizes = self.cv.batch_size, validation_batch_size(self.cv.batch_size, x.shape[1:])
        if self.cv.fold_mode == "fused":
            model = fused.FusedModels(self.hypermodel, self.cv.precision, reuse=False).fresh(
                hp, folds, self.cv.seed, x.shape[1:])
            calls = [tuple(FoldBatches(x, y_fit, {k: self._splits[k - 1][part] for k in folds}, sizes[part],
                                       shuffle=part == 0, name=fused.member_name) for part in (0, 1))]
        else:
            calls = [(FoldBatches(x, y_fit, {k: tr}, sizes[0]), FoldBatches(x, y_fit, {k: va}, sizes[1], shuffle=False))
                     for k, (tr, va) in enumerate(self._splits, 1)]
        future = None
        for train, val in calls:
            if compiled_loop.usable(self.hypermodel, model, train, val):
                future = compiled_loop.compile_later(model, train, val)
        return future

    def _run_fused(self, trial, trial_dir: str, pending: list[int], x, y_fit, store: FoldStore) -> None:
        def finished(record: dict, history: dict) -> None:
            if record["fold"] not in store:  # (a resume may finish a member recorded just before a kill)
                store.add(record)
                self.progress.fold_end(record, self.cv.folds)
                if self.tensorboard:
                    self._tensorboard_history(trial, record["fold"], history)

        fused.train_folds(self.hypermodel, self.cv, trial.hyperparameters, pending, x, y_fit, self._splits, trial_dir,
                          finished, self.progress, self.fused_cache)

    def _try_run_and_update_trial(self, trial, *fit_args, **fit_kwargs):
        # KerasTuner prints a failed trial's traceback when its config.DEBUG is on (the default);
        # tuner-app keeps it in trial.json and says one line at the end (see search.run_plan).
        from keras_tuner.src import config

        debug, config.DEBUG = config.DEBUG, False
        try:
            super()._try_run_and_update_trial(trial, *fit_args, **fit_kwargs)
        finally:
            config.DEBUG = debug

    def _tensorboard(self, trial, k: int) -> list:
        """A TensorBoard callback for this fold, with the trial's HParams written beside it."""
        import keras

        return [keras.callbacks.TensorBoard(log_dir=str(self._tensorboard_dir(trial, k)), write_graph=False,
                                            profile_batch=0)]

    def _tensorboard_dir(self, trial, k: int) -> Path:
        """`<project>/tensorboard/trial_<id>/fold_<k>`, with the trial's HParams written there."""
        import tensorflow as tf
        from tensorboard.plugins.hparams import api as hparams_api

        logdir = Path(self.project_dir) / "tensorboard" / f"trial_{trial.trial_id}" / f"fold_{k}"
        with tf.summary.create_file_writer(str(logdir)).as_default():
            hparams_api.hparams(dict(trial.hyperparameters.values), trial_id=f"{trial.trial_id}/fold_{k}")
        return logdir

    def _tensorboard_history(self, trial, k: int, history: dict) -> None:
        """A fused member's epochs as the TensorBoard callback logs them (train/ and validation/, epoch_NAME)."""
        import tensorflow as tf

        logdir = self._tensorboard_dir(trial, k)
        for part, prefix in (("train", ""), ("validation", "val_")):
            with tf.summary.create_file_writer(str(logdir / part)).as_default():
                for name, values in history.items():
                    if name.startswith(prefix) and (prefix or not name.startswith("val_")):
                        for epoch, value in enumerate(values):
                            tf.summary.scalar(f"epoch_{name[len(prefix):]}", value, step=epoch)

    def pre_create_trial(self):
        # A worker told IDLE (the last points are running elsewhere) asks again at once in
        # KerasTuner's loop; wait a little instead of hammering the chief.
        if self._asked:
            time.sleep(1.0)
        self._asked = True
        interrupt.check()

    def on_trial_begin(self, trial):
        self._asked = False
        interrupt.check()
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
        state.atomic_write_json(self._get_tuner_fname(), self.get_state())

    def save_model(self, trial_id, model, step=0):
        """Fold models are not kept: `retrain-best` trains the final model afresh."""

    def load_model(self, trial):
        raise UsageError("tuner-app keeps no per-trial models (a trial trains one per fold); use "
                         "get_best_hyperparameters() and tuner_app.retrain.retrain_best()")

    def get_best_models(self, num_models=1):
        """Not kept: see `load_model`."""
        return self.load_model(None)


def _point(values: dict) -> str:
    """A grid point as a dictionary key."""
    return json.dumps(values, sort_keys=True, default=str)

