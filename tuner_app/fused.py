"""Fused folds: the K folds of a trial trained together, one compiled step for all of them.

The trial's fold models ("members") are built exactly as the sequential path builds them
(fold k after `keras.utils.set_random_seed(seed + k)`), then wired side by side into one
functional Keras model with an input and an output per member. One `fit` of that model
trains every member at once: each step takes one batch of each member's own training fold
(in its sequential fold's per-epoch order, `tuner_app.batches`) and one optimizer updates
every member's weights; the total loss is the sum of the members' losses, so each member's
gradients are its own (Adam and the other Keras optimizers update each variable by its own
gradient only). Under TensorFlow on a CPU the step computes the members one after another
(`MemberByMember`), so that it holds one member's activations at a time.

Per member, as in the sequential path: its own validation fold, its own early stopping on
the objective (a member that stops keeps computing but its later epochs do not count: its
record is what it would be had it stopped alone), and its record written to the trial's
`FoldStore` as soon as it finishes. At every epoch end the whole state (weights, random
seeds, optimizer, per-member history, epoch) goes to `trial_<id>/fused_state.npz`
atomically, so a killed trial resumes from its last finished epoch with the result of an
uninterrupted run.

Works with any single-input, single-output model compiled with one loss (see
`models.checks.fused_blocker`), through `hypermodel.fit` (a HyperModel's own `fit` must pass
its data arguments through to `model.fit`; `--fold-mode auto` does not assume it does). A
member sees the batches its sequential fold sees, so the two paths' records differ by
float rounding only (`tests/test_fused.py` bounds it), except that the logged `loss` of a
member (the mean of its compiled loss over its samples) leaves out weight penalties
(`model.losses`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import keras
import keras_tuner
import numpy as np

from tuner_app import compiled_loop, device, interrupt, models, state
from tuner_app.batches import FoldBatches, FollowEpoch, validation_batch_size
from tuner_app.folds import fold_record
from tuner_app.model_cache import architecture_key
from tuner_app.progress import Progress
from tuner_app.settings import CVConfig

STATE_FILE = "fused_state.npz"
_LOSS_METRIC = "fused_member_loss"  # the exact per-member loss, logged as `loss`


def member_name(k: int) -> str:
    return f"fold_{k}"


def fuse(members: dict[int, keras.Model], input_shape: tuple) -> keras.Model:
    """One compiled functional model with an input `fold_<k>_input` and an output `fold_<k>` per member,
    compiled as the members are (their loss, metrics and optimizer's class and configuration)."""
    inputs, outputs = {}, {}
    for k, member in members.items():
        member.name = name = member_name(k)
        inputs[f"{name}_input"] = keras.Input(shape=tuple(input_shape), name=f"{name}_input")
        outputs[name] = member(inputs[f"{name}_input"])
    first = next(iter(members.values()))
    config = compile_arguments(first)
    if keras.backend.backend() == "tensorflow" and not device._gpus("tensorflow"):
        fused = MemberByMember(inputs, outputs, name="fused_folds")
        fused.folds, fused.member_loss = tuple(members), _member_loss(config["loss"])
    else:
        fused = keras.Model(inputs, outputs, name="fused_folds")
    weighted = config.get("weighted_metrics")
    fused.compile(
        optimizer=_copy(first.optimizer),
        loss=dict.fromkeys(outputs, config["loss"]),
        metrics={name: [*map(_copy, config.get("metrics") or []), _exact_loss(config["loss"])] for name in outputs},
        weighted_metrics={name: list(map(_copy, weighted)) for name in outputs} if weighted else None,
        run_eagerly=first.run_eagerly,
        jit_compile=first.jit_compile,
    )
    return fused


class MemberByMember(keras.Model):
    """The fused model under TensorFlow on a CPU, its training step one member after another.

    Keras' own step runs every member's forward pass, then one backward pass through all of
    them, so a step holds K members' activations at once: peak RSS 1.26x the sequential
    path's on `medium` (Intel CPU). Here member k's forward and backward pass come first,
    and member k+1's starts only once k's gradients exist (a control dependency), so a step
    holds one member's activations; then one optimizer update applies every member's
    gradients, as Keras' step does. Measured on `medium` (README, Benchmarks): 1.14x the
    sequential path's memory, and the search 8% faster than Keras' fused step. Each
    member's gradient is that of its own loss (computed as Keras computes a per-output
    loss) plus its own weight penalties, which is what the gradient of Keras' summed loss is
    for that member's weights: the records equal the sequential path's. Logs, metrics and
    validation are Keras' own. On a GPU (not measured so) Keras' own step is kept.
    """

    folds: tuple[int, ...]  # the members' folds, in the order of the model's outputs
    member_loss: keras.losses.Loss

    def train_step(self, data):
        import tensorflow as tf

        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y_pred, gradients, after = {}, {}, []
        for k in self.folds:
            name = member_name(k)
            member = self.get_layer(name)
            with tf.control_dependencies(after):
                member_x = tf.identity(x[f"{name}_input"])
            with tf.GradientTape() as tape:
                y_pred[name] = member(member_x, training=True)
                loss = keras.ops.cast(self.member_loss(y[name], y_pred[name]), "float32")
                loss = sum(member.losses, loss)
                loss = self.optimizer.scale_loss(loss)
            variables = member.trainable_variables
            found = tape.gradient(loss, variables)
            gradients.update({id(v): g for v, g in zip(variables, found)})
            after = [g.op for g in found if g is not None]
        weights = self.trainable_weights
        self.optimizer.apply_gradients(zip([gradients[id(w)] for w in weights], weights))
        # Keras' loss logs, as its own step keeps them (the members' records use the exact metric)
        loss = self.compute_loss(x, y, y_pred, sample_weight, training=True)
        tracker = getattr(self, "_loss_tracker", None)
        if tracker is not None:
            tracker.update_state(loss, sample_weight=tf.shape(next(iter(x.values())))[0])
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def _member_loss(loss) -> keras.losses.Loss:
    """The compiled `loss` of one output as Keras makes it (mean over the batch)."""
    found = keras.losses.get(loss)
    if isinstance(found, keras.losses.Loss):
        return _copy(found)
    return _PerSampleLoss(found)


class _PerSampleLoss(keras.losses.Loss):
    """A loss function's values averaged over the batch, as Keras' own wrapper of a compiled loss
    function does (its reduction is this base class's)."""

    def __init__(self, fn: Callable):
        super().__init__(name=getattr(fn, "__name__", "loss"))
        self.fn = fn

    def call(self, y_true, y_pred):
        return self.fn(y_true, y_pred)


def compile_arguments(model: keras.Model) -> dict:
    """What `model.compile` was given (loss, metrics, ...), as given."""
    return dict(model._compile_config.config)


def _copy(obj):
    """A new instance of a Keras object from its configuration (a name or a function as it is)."""
    if isinstance(obj, (keras.metrics.Metric, keras.optimizers.Optimizer, keras.losses.Loss)):
        return type(obj).from_config(obj.get_config())
    return obj


def _exact_loss(loss) -> keras.metrics.Metric:
    """The member's loss averaged over its samples (Keras' own per-output loss weighs every batch alike)."""
    if isinstance(loss, str):
        loss = keras.losses.get(loss)  # the function: one value per sample
    elif isinstance(loss, keras.losses.Loss):
        loss = type(loss).from_config({**loss.get_config(), "reduction": "none"})
    return keras.metrics.MeanMetricWrapper(loss, name=_LOSS_METRIC)


def member_logs(logs: dict, k: int) -> dict:
    """Member k's epoch logs under the names a lone fit gives (`loss`, `accuracy`, `val_loss`, ...)."""
    prefix, found = f"{member_name(k)}_", {}
    for key, value in logs.items():
        val = key.startswith("val_")
        name = key[4:] if val else key
        if not name.startswith(prefix):
            continue
        name = name[len(prefix):]
        if name == "loss":
            continue  # Keras' per-output tracker; the exact one is _LOSS_METRIC
        name = "loss" if name == _LOSS_METRIC else name
        found[("val_" if val else "") + name] = float(value)
    return found


class FusedModels:
    """Hands out a trial's fused model, its members exactly as fresh seeded builds.

    Like `tuner_app.model_cache.ModelCache` for one model: tracing and compiling a fused model
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
        first = next(iter(members.values()))
        optimizer = _copy(first.optimizer)
        optimizer.build(model.trainable_variables)
        pairs = [pair for k, member in members.items()
                 for pair in zip(model.get_layer(member_name(k)).variables, member.variables)]
        for target, value in [*pairs, *zip(model.optimizer.variables, optimizer.variables)]:
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

    state.atomic_save(path, write)


def load_state(path: Path, model: keras.Model, cv: CVConfig) -> tuple[Members, int, float]:
    """Put a saved state into `model` (built the same way); (members, next epoch, seconds so far)."""
    with np.load(path) as saved:
        meta = json.loads(str(saved["meta"]))
        model.optimizer.build(model.trainable_variables)
        for prefix, variables in (("v", model.variables), ("o", model.optimizer.variables)):
            for i, variable in enumerate(variables):
                variable.assign(saved[f"{prefix}{i}"])
    return Members.from_dict(meta["members"], cv), meta["epoch"], meta["elapsed"]


def saved_members(path: Path) -> list[int] | None:
    """The folds a saved fused state trains, or None when there is no readable one."""
    try:
        with np.load(path) as saved:
            return [int(k) for k in json.loads(str(saved["meta"]))["members"]["done"]]
    except (OSError, ValueError, KeyError):
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
    folds = saved or list(folds)
    model = (cache or FusedModels(hypermodel, cv.precision)).fresh(hp, folds, cv.seed, x.shape[1:])
    tracker, start_epoch, elapsed = Members(folds, cv), 0, 0.0
    if saved:
        tracker, start_epoch, elapsed = load_state(path, model, cv)
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

    callbacks = [FollowEpoch(train), _Members(), interrupt.keras_callback()]
    if compiled_loop.usable(hypermodel, model, train, val):
        compiled_loop.fit(model, train, val, epochs=cv.epochs, initial_epoch=start_epoch, callbacks=callbacks)
    else:
        hypermodel.fit(hp, model, train_data, validation_data=val_data, epochs=cv.epochs, initial_epoch=start_epoch,
                       shuffle=False, verbose=0, callbacks=callbacks)
    path.unlink(missing_ok=True)


__all__ = ["FusedModels", "Members", "fuse", "member_logs", "train_folds"]
