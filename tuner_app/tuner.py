"""Stratified K-fold scoring of every grid point, as a KerasTuner Tuner, and `run_search`.

`CVTuner.run_trial` trains one fresh model per fold and records each finished fold in
`trial_<id>/folds.json` at once (atomically), so a restarted search skips the folds it
already has. The trial's score is the mean validation accuracy over its folds.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import keras_tuner
import numpy as np
from sklearn.model_selection import StratifiedKFold

from tuner_app import data as data_mod
from tuner_app import device, distributed, interrupt, state
from tuner_app.errors import TunerAppError, UsageError
from tuner_app.hypermodel import CNNHyperModel, check_precision
from tuner_app.oracle import ResumableGridOracle
from tuner_app.progress import Progress, epoch_callback
from tuner_app.space import SearchSpace

OBJECTIVE = "val_accuracy"


@dataclass(frozen=True)
class CVConfig:
    """How each grid point is scored.

    Args:
        folds: Number of stratified folds.
        seed: Drives the fold split (StratifiedKFold random_state) and weight initialisation.
        epochs: Maximum epochs per fold.
        batch_size: Training batch size.
        patience: EarlyStopping patience on val_accuracy (best weights restored).
        precision: Keras dtype policy, "float32" or "mixed_bfloat16" (see `device.precision`).
    """

    folds: int = 5
    seed: int = 42
    epochs: int = 5
    batch_size: int = 128
    patience: int = 3
    precision: str = "float32"

    def __post_init__(self):
        if not isinstance(self.folds, int) or self.folds < 2:
            raise UsageError(f"--folds {self.folds}: must be an integer >= 2 (cross-validation needs two folds)")
        for name in ("epochs", "batch_size", "patience"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UsageError(f"--{name.replace('_', '-')} {value}: must be an integer >= 1")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**31:
            raise UsageError(f"--seed {self.seed}: must be an integer in [0, 2**31)")
        check_precision(self.precision)


class CVTuner(keras_tuner.Tuner):
    """KerasTuner Tuner whose trial is a stratified K-fold cross-validation.

    Args:
        cv: Folds, seed, epochs, batch size, patience.
        progress: Listener for trial/fold/epoch events.
        tensorboard: Write TensorBoard logs (and HParams) to `<project>/tensorboard/trial_<id>/fold_<k>`.
        reuse_models: Re-initialise one compiled model per architecture instead of
            compiling a new one per fold (same results, less overhead). None: on
            TensorFlow only.
        **kwargs: Passed to `keras_tuner.Tuner` (oracle, hypermodel, directory, project_name).
    """

    def __init__(self, cv: CVConfig, progress: Progress | None = None, reuse_models: bool | None = None,
                 tensorboard: bool = False, **kwargs):
        self.cv = cv
        self.tensorboard = tensorboard
        self.progress = progress or Progress()
        # Only TensorFlow both gains (tracing) and is checked to give identical folds; a reused
        # PyTorch model drifts from a fresh one in the last digits and has no tracing to save.
        self.reuse_models = keras.backend.backend() == "tensorflow" if reuse_models is None else reuse_models
        self._model = self._model_key = self._optimizer_init = None
        self._initial_weights = {}  # fold seed -> a fresh model's weights, for the current architecture
        self._asked = False  # asked the oracle for a trial and got none yet (IDLE)
        self.space = kwargs["oracle"].space  # a worker's oracle becomes a gRPC client without it
        super().__init__(**kwargs)

    def splits(self, y: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """The (train, validation) index pairs; the same for every trial."""
        skf = StratifiedKFold(n_splits=self.cv.folds, shuffle=True, random_state=self.cv.seed)
        return list(skf.split(np.zeros(len(y)), y))

    def run_trial(self, trial, x, y, verbose=0):
        """Score `trial.hyperparameters` by K-fold CV of `x` (float images) and `y` (int labels)."""
        trial_dir = Path(self.get_trial_dir(trial.trial_id))
        records = {r["fold"]: r for r in state.read_folds(trial_dir)}
        y_onehot = data_mod.one_hot(y, int(y.max()) + 1)
        folds = self.cv.folds
        for k, (tr, va) in enumerate(self.splits(y), start=1):
            if k in records:
                self.progress.fold_reused(records[k], folds)
                continue
            interrupt.check()
            callbacks = self._tensorboard(trial, k) if self.tensorboard else []
            records[k] = self._fit_fold(trial.hyperparameters, k, x[tr], y_onehot[tr], x[va], y_onehot[va], callbacks)
            state.atomic_write_json(trial_dir / state.FOLDS_FILE, [records[i] for i in sorted(records)])
            self.progress.fold_end(records[k], folds)
        accs = [records[i]["val_accuracy"] for i in sorted(records)]
        losses = [records[i]["val_loss"] for i in sorted(records)]
        return {OBJECTIVE: float(np.mean(accs)), "val_loss": float(np.mean(losses))}

    def _tensorboard(self, trial, k: int) -> list:
        """A TensorBoard callback for this fold, with the trial's HParams written beside it."""
        import tensorflow as tf
        from tensorboard.plugins.hparams import api as hparams_api

        logdir = Path(self.project_dir) / "tensorboard" / f"trial_{trial.trial_id}" / f"fold_{k}"
        with tf.summary.create_file_writer(str(logdir)).as_default():
            hparams_api.hparams(dict(trial.hyperparameters.values), trial_id=f"{trial.trial_id}/fold_{k}")
        return [keras.callbacks.TensorBoard(log_dir=str(logdir), write_graph=False, profile_batch=0)]

    def _fit_fold(self, hp, k, x_tr, y_tr, x_va, y_va, callbacks=()) -> dict:
        self.progress.fold_start(k, self.cv.folds, self.cv.epochs)
        start = time.perf_counter()
        model = self._fresh_model(hp, self.cv.seed + k)
        stop = keras.callbacks.EarlyStopping(monitor=OBJECTIVE, patience=self.cv.patience, restore_best_weights=True)
        history = model.fit(
            x_tr, y_tr, validation_data=(x_va, y_va), epochs=self.cv.epochs, batch_size=self.cv.batch_size,
            verbose=0, callbacks=[stop, epoch_callback(self.progress), interrupt.keras_callback(), *callbacks],
        ).history
        # EarlyStopping restores the weights of the first best epoch, so that epoch's
        # validation metrics are exactly what evaluating the restored model would give.
        best = int(np.argmax(history[OBJECTIVE]))
        return {
            "fold": k,
            "val_accuracy": float(history[OBJECTIVE][best]),
            "val_loss": float(history["val_loss"][best]),
            "epochs": len(history[OBJECTIVE]),
            "best_epoch": best + 1,
            "train_size": len(x_tr),
            "val_size": len(x_va),
            "seconds": round(time.perf_counter() - start, 3),
            "rss_mb": _rss_mb(),
            "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
        }

    def _fresh_model(self, hp, seed: int) -> keras.Model:
        """A model exactly as `hypermodel.build(hp)` after `set_random_seed(seed)` makes it.

        With `reuse_models`, the compiled model of the last fold is reused when the
        architecture (filters, dense units) is the same: it gets the fresh model's initial
        weights, a zeroed optimizer and this trial's learning rate. The arithmetic is the
        same; what is saved is building, compiling and tracing the train and validation
        steps again (seconds per fold under TensorFlow). The initial weights of
        each fold seed are kept for the architecture's next learning rate.
        """
        key = (hp.values["filters"], hp.values["dense_units"])
        if not self.reuse_models or key != self._model_key:
            self._model = self._model_key = None
            self._initial_weights = {}
            keras.backend.clear_session()  # a new architecture: drop the old graph (and gc), memory stays flat
        keras.utils.set_random_seed(seed)
        if self._model is None:
            fresh = self.hypermodel.build(hp)
            fresh.optimizer.build(fresh.trainable_variables)
            self._optimizer_init = [v.numpy() for v in fresh.optimizer.variables]
            self._initial_weights[seed] = fresh.get_weights()
            self._model, self._model_key = fresh, key
            return fresh
        if seed not in self._initial_weights:
            self._initial_weights[seed] = self.hypermodel.build(hp).get_weights()
            keras.utils.set_random_seed(seed)  # training draws as after a fresh build
        model = self._model
        model.set_weights(self._initial_weights[seed])
        for variable, value in zip(model.optimizer.variables, self._optimizer_init):
            variable.assign(value)
        model.optimizer.learning_rate = hp.values["learning_rate"]
        return model

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
        done = self.completed()
        self.progress.trial_start(trial.trial_id, trial.hyperparameters.values, None if done is None else done + 1,
                                  len(self.space))

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
        raise NotImplementedError("tuner-app keeps no per-trial models; use retrain_best()")


def _rss_mb() -> float | None:
    """This process's resident memory now (Linux), to show that it does not grow per trial."""
    try:
        with open("/proc/self/statm") as f:
            return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return None


def search_config(ds: data_mod.Dataset, space: SearchSpace, cv: CVConfig, train_limit: int | None) -> dict:
    """What a resumed search must share with the stored one (compared key by key)."""
    return {
        "space": space.to_config(),
        "cv": asdict(cv),
        "data": {"source": ds.source, "train_limit": train_limit, "fingerprint": ds.fingerprint(),
                 "train_size": len(ds.y_train), "input_shape": list(ds.input_shape),
                 "num_classes": ds.num_classes},
        "objective": OBJECTIVE,
    }


def config_differences(stored: dict, new: dict, prefix: str = "") -> list[str]:
    """Names of the settings that differ, e.g. ['cv.folds: 5 -> 3']."""
    diffs = []
    for key in sorted(set(stored) | set(new)):
        a, b = stored.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_differences(a, b, f"{prefix}{key}.")
        elif a != b and key != "source":  # the same data may be reached by another path
            diffs.append(f"{prefix}{key}: {a} -> {b}")
    return diffs


def _check_stored_config(pdir: Path, config: dict) -> None:
    stored = state.read_json(pdir / state.SEARCH_FILE, "search configuration")
    if isinstance(stored.get("cv"), dict):
        stored["cv"].setdefault("precision", "float32")  # searches from before --precision
    diffs = config_differences({k: stored.get(k) for k in config}, config)
    if diffs:
        raise UsageError(
            f"project {pdir} was searched with other settings ({'; '.join(diffs)}); "
            "rerun with the stored settings to resume, or pass --overwrite or a new --project"
        )


def _prepare_project(pdir: Path, config: dict, overwrite: bool) -> None:
    """Refuse a resume whose settings differ; start over on --overwrite; write search.json."""
    if pdir.exists() and not overwrite:
        if (pdir / state.SEARCH_FILE).exists():
            _check_stored_config(pdir, config)
            state.check_state(pdir)
            return
        if any(pdir.iterdir()):
            raise UsageError(f"{pdir} exists and is not a tuner-app project; pass --overwrite or a new --project")
    if overwrite and pdir.exists():
        shutil.rmtree(pdir)
    state.atomic_write_json(pdir / state.SEARCH_FILE, {**config, "created": datetime.datetime.now(
        datetime.timezone.utc).isoformat(timespec="seconds"), "backend": keras.backend.backend()})


def run_search(
    dataset: data_mod.Dataset,
    space: SearchSpace | None = None,
    cv: CVConfig | None = None,
    directory: str | Path = "tuning_dirs",
    project: str = "default",
    train_limit: int | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    reuse_models: bool | None = None,
    tensorboard: bool = False,
) -> Path:
    """Run (or resume) the grid search with K-fold CV; return the project directory.

    Args:
        dataset: The loaded dataset (see `tuner_app.data.load_dataset`).
        space: The grid (default: the seed notebook's 6 points).
        cv: Fold, seed, epoch and batch settings (default: the seed's).
        directory: Parent directory of all projects.
        project: This search's name; its state lives in `<directory>/<project>/`.
        train_limit: Keep a stratified subset of this many training images.
        overwrite: Delete an existing project of that name first.
        progress: Listener for progress events.
        reuse_models: See `CVTuner`; False compiles a new model for every fold.
        tensorboard: Write TensorBoard logs per trial and fold (needs the tensorflow package).
    """
    space, cv = space or SearchSpace(), cv or CVConfig()
    if tensorboard:
        try:
            with device.native_stderr_muted():
                import tensorboard as _tb  # noqa: F401
                import tensorflow as _tf  # noqa: F401  (tf.summary writes the logs, whatever the backend)
        except ImportError:
            raise UsageError("--tensorboard needs the tensorflow and tensorboard packages: pip install 'tuner-app[tensorboard]'") from None
    progress = progress or Progress()
    pdir = state.project_dir(directory, project)
    state.check_writable(Path(directory))
    if train_limit is not None:
        dataset = data_mod.stratified_subset(dataset, train_limit, min_per_class=cv.folds)
    data_mod.check_folds(dataset.y_train, cv.folds)
    config = search_config(dataset, space, cv, train_limit)
    x = data_mod.scale_images(dataset.x_train)

    role = distributed.role()
    # Only the oracle's owner (a lone search, or the chief) locks and prepares the project;
    # workers wait for the chief's search.json and must match it.
    with contextlib.nullcontext() if role == "worker" else state.ProjectLock(Path(directory), project):
        if role == "worker":
            distributed.wait_for_file(pdir / state.SEARCH_FILE)
            _check_stored_config(pdir, config)
        else:
            _prepare_project(pdir, config, overwrite)
        oracle = ResumableGridOracle(space, objective=keras_tuner.Objective(OBJECTIVE, "max"),
                                     max_trials=len(space), seed=cv.seed)
        with contextlib.redirect_stdout(io.StringIO()):  # KerasTuner prints "Reloading Tuner from ..."
            tuner = CVTuner(cv, progress, reuse_models, tensorboard, oracle=oracle,
                            hypermodel=CNNHyperModel(dataset.input_shape, dataset.num_classes, space, cv.precision),
                            directory=str(directory), project_name=project)
        progress.search_start(len(space), tuner.completed() or 0, str(pdir))
        try:
            tuner.search(x, dataset.y_train, verbose=0)
        except RuntimeError as e:  # KerasTuner's "consecutive failures exceeded the limit"
            raise TunerAppError(f"search stopped: {str(e).splitlines()[0]}; {_failure_hint(tuner)}") from None
        finally:
            progress.close()
    failed = [] if tuner._is_worker() else [t for t in tuner.oracle.trials.values() if t.status == "FAILED"]
    if failed:
        raise TunerAppError(f"{len(failed)} trial(s) failed; {_failure_hint(tuner)}")
    return pdir


def _failure_hint(tuner: CVTuner) -> str:
    failed = sorted((t for t in tuner.oracle.trials.values() if t.status == "FAILED"), key=lambda t: t.trial_id)
    if not failed:
        return "rerun to retry"
    t = failed[-1]
    last = [line for line in (t.message or "").strip().splitlines() if line.strip()][-1:] or ["unknown error"]
    where = Path(tuner.get_trial_dir(t.trial_id)) / state.TRIAL_FILE
    return f"trial {t.trial_id}: {last[0].strip()} (full traceback in {where}); rerun the same command to retry it"
