"""JAX: many training steps in one compiled call, the images on the device.

Keras' JAX `fit` calls one compiled step per batch from Python and copies each batch to the
device. For models as small as the seed's that host work is the step: on one H200, 4.4 ms a
step for the seed's pipeline and 13.8 ms for a fused step of five members
(`benchmarks/results/full-jax-gpu-fused-2026-11-30.json`), the GPU mostly idle. Here the
images go to the device once, and one call of a compiled `jax.lax.scan` runs up to `CHUNK`
steps of Keras' own `train_step` (each step gathers its rows from the images on the device);
validation runs the same way with `test_step`. The batches are `FoldBatches`' (the same rows
in the same order as Keras' loop is given), the step is the model's compiled step (its loss,
optimizer, metrics), so a record equals Keras' loop's up to float rounding
(`tests/test_compiled_loop.py` bounds it).

Every shape of call a `fit` will make (the partial first step and the full chunks, training and
validation) is compiled before its first epoch, at once: traced here, then XLA's compilations in
threads, which overlap (XLA compiles outside the GIL). On one H200 the chunk functions compiled
one after another took about 2.7 s each, 24 s of a 77 s search (a probe by hand); what compiling
them together saves there is not measured yet. The calls find them in JAX's cache.

Callbacks see what `fit` shows them, with batch hooks once per call (as under Keras'
`steps_per_execution`): `on_train_batch_begin` before each call (`interrupt.check` stops a
search there), the weights in the model at every epoch's end (checkpoints, early stopping).

Used (`usable`) under JAX on a GPU (any accelerator) for a fold, the fused folds and the retrain,
unless the HyperModel has its own `fit` (it keeps Keras' loop, which it may configure) or the
model runs eagerly. Not on a CPU: there XLA ran the same steps about 10 times slower inside the
compiled chunk than as Keras' one-step calls (the seed's (32,64) model: 4.5-5.1 s against
0.46-0.49 s an epoch of five batches, with or without the padding `cond`, unrolled or not; a
probe by hand, no record), and a CPU's step is arithmetic, not host time, anyway.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import keras
import keras_tuner
import numpy as np

from tuner_app.batches import FoldBatches, one_copy, structure

CHUNK = 64  # most steps in one call: calls are few, and a stop request waits at most one call
_ATTRIBUTE = "_tuner_app_compiled_chunks"
_ON_DEVICE: dict[int, object] = {}


def usable(hypermodel: keras_tuner.HyperModel, model: keras.Model, *batches: FoldBatches | None) -> bool:
    """Whether `fit` can train `model` on `batches` (training and validation) here."""
    return (keras.backend.backend() == "jax" and _on_accelerator() and type(hypermodel).fit is keras_tuner.HyperModel.fit
            and not model.run_eagerly and all(b is None or _even(b) for b in batches))


def _on_accelerator() -> bool:
    import jax

    return jax.default_backend() != "cpu"


def _even(batches: FoldBatches) -> bool:
    """Every fold has a step's batch in every step (the shorter folds' empty ones cannot be stacked)."""
    return all(-(-len(rows) // batches.batch_size) == batches.steps for rows in batches.indices.values())


def fit(model: keras.Model, train: FoldBatches, validation: FoldBatches | None = None, epochs: int = 1,
        initial_epoch: int = 0, callbacks: list = ()) -> keras.callbacks.History:
    """`model.fit(train, validation_data=validation, epochs=..., shuffle=False)`, compiled a chunk of steps at a
    time; returns the History."""
    import jax.numpy as jnp

    x, y = _on_device(train.x), _on_device(train.y)
    history = keras.callbacks.History()
    callbacks = keras.callbacks.CallbackList([*callbacks, history], model=model, epochs=epochs, steps=train.steps,
                                             verbose=0)
    model._symbolic_build(data_batch=train[0])  # what fit builds first (optimizer, metrics, loss)
    compiled = _compiled(model, train)
    train_chunk, test_chunk = compiled.train, compiled.test
    _compile_ahead(compiled, [(train_chunk, train, _train_state), (test_chunk, validation, _test_state)], model)
    model.stop_training = False
    logs: dict = {}
    callbacks.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        model.reset_metrics()
        callbacks.on_epoch_begin(epoch)
        state = _values(*_train_state(model))  # after on_epoch_begin: a callback may have set the learning rate
        for first, rows, valid in _chunks(train, epoch):
            callbacks.on_train_batch_begin(first)
            state = train_chunk(state, x, y, rows, jnp.asarray(valid))
            callbacks.on_train_batch_end(first + int(valid.sum()) - 1)
            if model.stop_training:
                break
        _assign(state, *_train_state(model))
        logs = _results(model)
        if validation is not None:
            logs.update({f"val_{name}": value for name, value in _evaluate(model, validation, test_chunk, callbacks).items()})
        callbacks.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    model.optimizer.finalize_variable_values(model.trainable_weights)
    callbacks.on_train_end(logs)
    return history


def _evaluate(model: keras.Model, batches: FoldBatches, test_chunk, callbacks) -> dict:
    import jax.numpy as jnp

    x, y = _on_device(batches.x), _on_device(batches.y)
    model.reset_metrics()
    state = _values(*_test_state(model))
    for first, rows, valid in _chunks(batches, 0):
        callbacks.on_test_batch_begin(first)
        state = test_chunk(state, x, y, rows, jnp.asarray(valid))
    _assign(state[2:], model.metrics_variables)
    return _results(model)


def _chunks(batches: FoldBatches, epoch: int):
    """(first step, {fold: rows [n, batch]}, which of the n steps are real) per call: the epoch's partial
    first step alone (its own shapes), then the full steps in chunks of equal length (the last padded
    with steps that do nothing), so that one compilation serves every chunk."""
    size, orders = batches.batch_size, {k: batches.order(k, epoch) for k in batches.indices}
    firsts = {k: len(rows) % size or size for k, rows in orders.items()}
    step = 0
    if any(n != size for n in firsts.values()):
        yield 0, {k: rows[None, :firsts[k]] for k, rows in orders.items()}, np.ones(1, bool)
        orders = {k: rows[firsts[k]:] for k, rows in orders.items()}
        step = 1
    full = {k: rows.reshape(-1, size) for k, rows in orders.items()}
    steps = batches.steps - step
    calls = max(1, math.ceil(steps / CHUNK))
    length = math.ceil(steps / calls)
    for i in range(calls):
        part = {k: rows[i * length:(i + 1) * length] for k, rows in full.items()}
        real = len(next(iter(part.values())))
        valid = np.arange(length) < real
        part = {k: np.concatenate([rows, np.zeros((length - real, size), rows.dtype)]) for k, rows in part.items()}
        yield step + i * length, part, valid


def _train_state(model: keras.Model) -> tuple:
    return model.trainable_variables, model.non_trainable_variables, model.optimizer.variables, model.metrics_variables


def _test_state(model: keras.Model) -> tuple:
    return model.trainable_variables, model.non_trainable_variables, model.metrics_variables


@dataclass
class _Compiled:
    """A model's jitted train and test chunks, and the call shapes compiled so far."""

    train: object
    test: object
    shapes: set = field(default_factory=set)


def _compiled(model: keras.Model, batches: FoldBatches) -> _Compiled:
    """The model's compiled (train, test) chunks: kept on the model (and freed with it), so a model that trains
    again (the next fold or trial of a cached model) does not compile again."""
    compiled = getattr(model, _ATTRIBUTE, None)
    if compiled is None:
        import jax

        name = batches.name  # the model's inputs and outputs: one, or one per fold
        def steps(step):
            def chunk(state, x, y, rows, valid):
                def body(state, scanned):
                    r, real = scanned
                    data = structure(r, lambda i: x[i], lambda i: y[i], name)
                    return jax.lax.cond(real, lambda s: step(s, data)[1], lambda s: s, state), None

                return jax.lax.scan(body, state, (rows, valid))[0]

            return jax.jit(chunk)

        compiled = _Compiled(steps(model.train_step), steps(model.test_step))
        object.__setattr__(model, _ATTRIBUTE, compiled)  # past Keras' attribute tracking: functions, not state
    return compiled


def _compile_ahead(compiled: _Compiled, plan: list, model: keras.Model) -> None:
    """Compile every call shape of `plan` ((chunk function, batches or None, its state's variable groups))
    not compiled yet: traced one after another here, compiled by XLA all at once in threads; the
    calls then find them in JAX's cache."""
    import jax.numpy as jnp

    lowered = []
    for function, batches, groups in plan:
        if batches is None:
            continue
        x, y = _on_device(batches.x), _on_device(batches.y)
        state = _values(*groups(model))
        for _first, rows, valid in _chunks(batches, 0):
            key = (function is compiled.train, x.shape, y.shape, tuple((k, r.shape) for k, r in rows.items()))
            if key not in compiled.shapes:
                compiled.shapes.add(key)
                lowered.append(function.lower(state, x, y, rows, jnp.asarray(valid)))
    if lowered:
        with ThreadPoolExecutor(len(lowered), thread_name_prefix="tuner-app-compile") as pool:
            list(pool.map(lambda computation: computation.compile(), lowered))


def _on_device(a: np.ndarray):
    """One device copy of the array `a` for as long as `a` lives (every fold and trial gathers from it)."""
    import jax.numpy as jnp

    return one_copy(a, _ON_DEVICE, jnp.asarray)


def _values(*groups) -> tuple:
    return tuple([v.value for v in variables] for variables in groups)


def _assign(state, *groups) -> None:
    for values, variables in zip(state, groups):
        for variable, value in zip(variables, values):
            variable.assign(value)


def _results(model: keras.Model) -> dict:
    return {name: float(np.asarray(value)) for name, value in model.get_metrics_result().items()}


__all__ = ["CHUNK", "fit", "usable"]
