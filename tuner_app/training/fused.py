"""Fused folds: the K folds of a trial trained together, one compiled step for all of them.

The trial's fold models ("members") are built exactly as the sequential path builds them
(fold k after `keras.utils.set_random_seed(seed + k)`), then wired side by side into one
`tuner_app.training.fused_model.FusedFolds`, which trains every member exactly as its sequential fold
(the contract is written there once). One `fit` of that model trains every member at once:
each step takes one batch of each member's own training fold, in its sequential fold's
per-epoch order (`tuner_app.training.data_order`).

Per member, as in the sequential path: its own validation fold, its own early stopping on
the objective (a member that stops keeps computing but its later epochs do not count: its
record is what it would be had it stopped alone), and its record written to the trial's
`FoldStore` as soon as it finishes. At every epoch end the whole state (weights, random
seeds, optimizers, per-member history, epoch) goes to `trial_<id>/fused_state.npz`
atomically, so a killed trial resumes from its last finished epoch with the result of an
uninterrupted run.

Works with the models `models.checks.fused_blocker` lets through, through `hypermodel.fit`
(a preset's own `fit` passes its data arguments through to `model.fit`).
"""

from __future__ import annotations

import json
import time
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import keras
import keras_tuner
import numpy as np

from tuner_app import models
from tuner_app.config import CVConfig
from tuner_app.errors import DataWarning
from tuner_app.runtime import files, interrupts
from tuner_app.runtime.progress import Progress
from tuner_app.training import jax_loop
from tuner_app.training.data_order import FoldBatches, FollowEpoch, validation_batch_size
from tuner_app.training.folds import fold_record
from tuner_app.training.fused_model import MemberOptimizers, fuse, member_logs, member_name
from tuner_app.training.model_cache import architecture_key

STATE_FILE = "fused_state.npz"


class FusedModels:
    """Hands out a trial's fused model, its members exactly as fresh seeded builds.

    Like `tuner_app.training.model_cache.ModelCache` for one model: tracing and compiling a fused model
    costs seconds per member, so under TensorFlow and JAX the last fused model is kept, and
    the next trial whose members have the same architecture and compile settings (learning
    rate aside) and the same folds gets it with the fresh members' variables (weights,
    statistics, random seeds) and a fresh optimizer's state copied in.

    Args:
        hypermodel: Builds the members.
        precision: Their dtype policy.
        reuse: Keep and reuse the last fused model; None: under TensorFlow and JAX.
    """

    def __init__(self, hypermodel: keras_tuner.HyperModel, precision: str = "float32", reuse: bool | None = None):
        self.hypermodel, self.precision = hypermodel, precision
        self.reuse = keras.backend.backend() in ("tensorflow", "jax") if reuse is None else reuse
        self._model: keras.Model | None = None
        self._key: tuple | None = None

    def _members(self, hp, folds: list[int], seed: int) -> dict[int, keras.Model]:
        members = {}
        for k in folds:
            keras.utils.set_random_seed(seed + k)
            members[k] = models.build(self.hypermodel, hp, self.precision)
        return members

    def fresh(self, hp: keras_tuner.HyperParameters, folds: list[int], seed: int, input_shape: tuple) -> keras.Model:
        """The fused model of `folds`, member k as a build after `set_random_seed(seed + k)` makes it."""
        if self.reuse and self._model is not None:
            members = self._members(hp, folds, seed)
            if (architecture_key(members[folds[0]]), tuple(folds)) == self._key:
                return self._load(members)
        self._model = self._key = None
        keras.backend.clear_session()  # the sequence (clear, seed, build) of a fresh start
        members = self._members(hp, folds, seed)
        model = fuse(members, input_shape)
        key = architecture_key(members[folds[0]])
        if self.reuse and key is not None:
            self._model, self._key = model, (key, tuple(folds))
        return model

    def _load(self, members: dict[int, keras.Model]) -> keras.Model:
        model = self._model
        for member in members.values():
            member.optimizer.build(member.trainable_variables)
        optimizers = MemberOptimizers(members)
        pairs = [pair for k, member in members.items()
                 for pair in zip(model.get_layer(member_name(k)).variables, member.variables)]
        for target, value in [*pairs, *zip(model.optimizer.variables, optimizers.variables)]:
            # (a copy: JAX must not see one buffer twice); the learning rate is one of the optimizer's variables
            target.assign(keras.ops.convert_to_numpy(value))
        return model


class Members:
    """What each member has done so far: history, early stopping, finished or not (saved with the state)."""

    def __init__(self, folds: list[int], cv: CVConfig):
        self.cv = cv
        self.history: dict[int, dict[str, list[float]]] = {k: {} for k in folds}
        self.best: dict[int, float | None] = dict.fromkeys(folds)
        self.wait: dict[int, int] = dict.fromkeys(folds, 0)
        self.done: dict[int, bool] = dict.fromkeys(folds, False)

    @property
    def active(self) -> list[int]:
        return [k for k, d in self.done.items() if not d]

    def update(self, k: int, logs: dict, epoch: int) -> bool:
        """Add member k's logs of `epoch` (0-based); True when it has now finished."""
        cv = self.cv
        if cv.objective not in logs:
            found = ", ".join(logs)
            raise RuntimeError(f"the fold's history has no {cv.objective!r} (it has: {found}); the model must "
                               "compute the objective")
        for name, value in logs.items():
            self.history[k].setdefault(name, []).append(value)
        value, best = logs[cv.objective], self.best[k]
        # EarlyStopping's rule: a strict improvement resets the wait.
        if best is None or (value > best if cv.direction == "max" else value < best):
            self.best[k], self.wait[k] = value, 0
        else:
            self.wait[k] += 1
        self.done[k] = self.wait[k] >= cv.patience or epoch + 1 >= cv.epochs
        return self.done[k]

    def to_dict(self) -> dict:
        return {"history": self.history, "best": self.best, "wait": self.wait, "done": self.done}

    @classmethod
    def from_dict(cls, d: dict, cv: CVConfig) -> Members:
        members = cls([int(k) for k in d["done"]], cv)
        for field in ("history", "best", "wait", "done"):
            setattr(members, field, {int(k): v for k, v in d[field].items()})
        return members


def save_state(path: Path, model: keras.Model, members: Members, epoch: int, elapsed: float) -> None:
    """Weights (with random seeds), optimizer, member histories and the epoch reached, in one atomic file."""
    arrays = {f"v{i}": keras.ops.convert_to_numpy(v.value) for i, v in enumerate(model.variables)}
    arrays.update({f"o{i}": keras.ops.convert_to_numpy(v.value) for i, v in enumerate(model.optimizer.variables)})
    meta = {"epoch": epoch, "elapsed": elapsed, "members": members.to_dict()}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **arrays)

    files.atomic_save(path, write)


def load_state(path: Path, model: keras.Model, cv: CVConfig) -> tuple[Members, int, float]:
    """Put a saved state into `model` (built the same way); (members, next epoch, seconds so far)."""
    with open(path, "rb") as f, np.load(f) as saved:
        meta = json.loads(str(saved["meta"]))
        model.optimizer.build(model.trainable_variables)
        found = [sum(name.startswith(prefix) for name in saved.files) for prefix in ("v", "o")]
        if found != [len(model.variables), len(model.optimizer.variables)]:
            raise ValueError(f"{found} variables saved, not {len(model.variables)} and {len(model.optimizer.variables)}")
        for prefix, variables in (("v", model.variables), ("o", model.optimizer.variables)):
            for i, variable in enumerate(variables):
                variable.assign(saved[f"{prefix}{i}"])
    return Members.from_dict(meta["members"], cv), meta["epoch"], meta["elapsed"]


def saved_members(path: Path) -> list[int] | None:
    """The folds a saved fused state trains, or None when there is no readable one."""
    try:
        with open(path, "rb") as f, np.load(f) as saved:
            return [int(k) for k in json.loads(str(saved["meta"]))["members"]["done"]]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def train_folds(hypermodel: keras_tuner.HyperModel, cv: CVConfig, hp: keras_tuner.HyperParameters, folds: list[int],
                x: np.ndarray, y: np.ndarray, split: list[tuple[np.ndarray, np.ndarray]], trial_dir: str | Path,
                on_record: Callable[[dict, dict], None], progress: Progress | None = None,
                cache: FusedModels | None = None) -> None:
    """Train `folds` (1-based) of one trial fused; call `on_record(record, history)` as each one finishes.

    Resumes from `trial_dir/fused_state.npz` when it holds these folds' state.

    Args:
        hypermodel: Builds and fits the members.
        cv: Epochs, batch size, patience, objective, precision, seed.
        hp: The trial's hyperparameters.
        folds: The folds to train (those not yet recorded).
        x, y: All training images and labels (labels in the loss's form).
        split: The (train, validation) indices of every fold.
        trial_dir: Where the state file lives.
        on_record: Receives each finished member's record and its per-epoch logs.
        progress: Listener for fold/epoch events.
        cache: Hands out the fused model (and keeps it for the next trial of the same architecture).
    """
    progress = progress or Progress()
    path = Path(trial_dir) / STATE_FILE
    saved = saved_members(path)
    cache = cache or FusedModels(hypermodel, cv.precision)
    model = cache.fresh(hp, saved or list(folds), cv.seed, x.shape[1:])
    tracker, start_epoch, elapsed = Members(saved or list(folds), cv), 0, 0.0
    damage = None if saved or not path.exists() else "not a checkpoint"
    if saved:
        try:
            tracker, start_epoch, elapsed = load_state(path, model, cv)
            folds = saved
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:  # damaged, or written by another version
            damage = type(e).__name__
            model = cache.fresh(hp, list(folds), cv.seed, x.shape[1:])
            tracker = Members(list(folds), cv)
    if damage:
        warnings.warn(DataWarning(f"{path}: the fused trial's checkpoint is unreadable ({damage}); folds "
                                  f"{', '.join(map(str, folds))} restart from epoch 1"), stacklevel=2)
        path.unlink(missing_ok=True)
    started = time.perf_counter() - elapsed
    train = FoldBatches(x, y, {k: split[k - 1][0] for k in folds}, cv.batch_size, cv.seed, start_epoch,
                        name=member_name)
    val = FoldBatches(x, y, {k: split[k - 1][1] for k in folds}, validation_batch_size(cv.batch_size, x.shape[1:]),
                      shuffle=False, name=member_name)
    train_data, val_data = train.for_fit(), val.for_fit()  # (TensorFlow: one copy of x for every trial)
    progress.folds_start(tracker.active, cv.folds, cv.epochs, start_epoch)

    class _Members(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            for k in tracker.active:
                if tracker.update(k, member_logs(logs or {}, k), epoch):
                    on_record(fold_record(k, tracker.history[k], cv, len(split[k - 1][0]), len(split[k - 1][1]),
                                     time.perf_counter() - started), tracker.history[k])
            active = tracker.active
            progress.epoch_end(epoch, {cv.objective: float(np.mean([tracker.history[k][cv.objective][-1]
                                                                     for k in folds]))})
            if active:
                save_state(path, self.model, tracker, epoch + 1, time.perf_counter() - started)
            else:
                self.model.stop_training = True

    callbacks = [FollowEpoch(train), _Members(), interrupts.keras_callback()]
    if jax_loop.usable(hypermodel, model, train, val):
        jax_loop.fit(model, train, val, epochs=cv.epochs, initial_epoch=start_epoch, callbacks=callbacks)
    else:
        hypermodel.fit(hp, model, train_data, validation_data=val_data, epochs=cv.epochs, initial_epoch=start_epoch,
                       shuffle=False, verbose=0, callbacks=callbacks)
    path.unlink(missing_ok=True)


__all__ = ["STATE_FILE", "FusedModels", "Members", "fuse", "member_logs", "member_name", "train_folds"]
