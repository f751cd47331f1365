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
(`tests/training/test_jax_loop.py` bounds it).

Every shape of call a `fit` will make (the partial first step and the full chunks, training and
validation) is compiled before its first epoch, at once: traced here, then XLA's compilations in
threads, which overlap (XLA compiles outside the GIL). On one H200 the chunk functions compiled
one after another took about 2.7 s each, 24 s of a 77 s search (a probe by hand); what compiling
them together saves there is not measured yet. The calls find them in JAX's cache.

The architectures still to come compile meanwhile: `compile_later` lowers and compiles a
model's chunks in a background thread into JAX's persistent compilation cache
(`cache_compilations`, in the project's `xla_cache/`), so the first trial of a later
architecture finds its executables there (the cache's key is the computation without its
debug names, so a model of the same architecture and call shapes hits). XLA compiles outside
the GIL, on host cores that a GPU's training leaves idle; a resumed search, `--workers` and a
repeated run reuse the cache too.

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

import contextlib
import math
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import keras
import keras_tuner
import numpy as np

from tuner_app.training.data_order import FoldBatches, one_copy, structure

CHUNK = 64  # most steps in one call: calls are few, and a stop request waits at most one call
_ATTRIBUTE = "_tuner_app_compiled_chunks"
_ON_DEVICE: dict[int, object] = {}
_LATER: list = []  # the background compiler (`_Later`), started by the first `compile_later`
_LATER_DIR: list[str] = []  # the cache directories `cache_compilations` set
_LABELLED: dict = {}  # label: the latest `compile_later` future given it (see `wait_for`)


def applies(hypermodel: keras_tuner.HyperModel) -> bool:
    """Whether the hypermodel's models train here with this loop (JAX on an accelerator, Keras' own `fit`)."""
    return (keras.backend.backend() == "jax" and _on_accelerator()
            and type(hypermodel).fit is keras_tuner.HyperModel.fit)


def usable(hypermodel: keras_tuner.HyperModel, model: keras.Model, *batches: FoldBatches | None) -> bool:
    """Whether `fit` can train `model` on `batches` (training and validation) here."""
    return applies(hypermodel) and not model.run_eagerly


def _on_accelerator() -> bool:
    import jax

    return jax.default_backend() != "cpu"


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
    with _GATE.open():  # background compilations may trace while this trains
        for epoch in range(initial_epoch, epochs):
            model.reset_metrics()
            callbacks.on_epoch_begin(epoch)
            state = _values(*_train_state(model))  # after on_epoch_begin: a callback may have set the learning rate
            for first, rows, valid, active in _chunks(train, epoch):
                callbacks.on_train_batch_begin(first)
                state = train_chunk(state, x, y, rows, jnp.asarray(valid), active)
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
    for first, rows, valid, active in _chunks(batches, 0):
        callbacks.on_test_batch_begin(first)
        state = test_chunk(state, x, y, rows, jnp.asarray(valid), active)
    _assign(state[2:], model.metrics_variables)
    return _results(model)


def _chunks(batches: FoldBatches, epoch: int):
    """(first step, {fold: rows [n, batch]}, which of the n steps are real, the steps' `active` masks [n, K]
    or None) per call: the epoch's partial first step alone (its own shapes), then the full steps in
    chunks of equal length (the last padded with steps whose results are dropped), so that one
    compilation serves every chunk. The rows are `FoldBatches`' own (a fold with a batch fewer is
    given its filler and a 0 in `active` at its last step).

    A padding step runs, and a select keeps the state it was given: a `jax.lax.cond` that skipped it
    would make XLA's GPU runtime copy its predicate to the host and wait for the device at every step
    (`ConditionalThunk::ExecuteOnStream`: `Memcpy`, then `BlockHostUntilDone`), so the host could not
    queue a step's kernels while the device runs the one before. A scan's loop, its trip count known,
    runs without such a wait (`WhileThunk`); a chunk holds no conditional
    (`tests/training/test_jax_loop.py`)."""
    rows = batches.epoch_rows(epoch)
    masks = np.stack([batches.active(step) for step in range(batches.steps)]) if batches.uneven else None
    folds, step = list(batches.indices), 0
    if any(len(r) != batches.batch_size for r in rows[0]):
        yield 0, {k: r[None] for k, r in zip(folds, rows[0])}, np.ones(1, bool), None if masks is None else masks[:1]
        step = 1
    steps = batches.steps - step
    if steps == 0:
        return
    calls = math.ceil(steps / CHUNK)
    length = math.ceil(steps / calls)
    for i in range(calls):
        part = rows[step + i * length:step + (i + 1) * length]
        real = len(part)
        valid = np.arange(length) < real
        part = part + [part[-1]] * (length - real)
        stacked = {k: np.stack([r[j] for r in part]) for j, k in enumerate(folds)}
        active = None
        if masks is not None:
            active = masks[step + i * length:step + i * length + real]
            active = np.concatenate([active, np.zeros((length - real, len(folds)), active.dtype)])
        yield step + i * length, stacked, valid, active


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
            def chunk(state, x, y, rows, valid, active):
                def body(state, scanned):
                    r, real, a = scanned
                    data = structure(r, lambda i: x[i], lambda i: y[i], name)
                    data = data if a is None else (*data, a)
                    # a padding step's state is dropped by a select, not skipped by a `cond` (see `_chunks`)
                    new = step(state, data)[1]
                    return jax.tree.map(lambda n, s: jax.numpy.where(real, n, s), new, state), None

                return jax.lax.scan(body, state, (rows, valid, active))[0]

            return jax.jit(chunk)

        compiled = _Compiled(steps(model.train_step), steps(model.test_step))
        object.__setattr__(model, _ATTRIBUTE, compiled)  # past Keras' attribute tracking: functions, not state
    return compiled


def compile_later(model: keras.Model, train: FoldBatches, validation: FoldBatches | None = None,
                  label=None) -> Future:
    """Compile, in the background, every chunk `fit(model, train, validation)` would call, into the
    persistent cache (see `cache_compilations`): a later model of the same architecture trained on
    batches of these shapes then loads them instead of compiling. `model` is used for nothing else
    (build a throwaway one). The tracing (Python, Keras' state) waits until a `fit` of this
    process is training (`_Gate`), XLA's compilations run at once in threads; the future's result
    is None. `label`: a name `wait_for` finds it by. See `wait` and `stop_compiling_later`."""
    if not _LATER:
        _LATER.append(_Later())
    model._symbolic_build(data_batch=train[0])  # here: builds create variables, which is no background work
    compiled = _compiled(model, train)
    plan = [(compiled.train, train, _train_state), (compiled.test, validation, _test_state)]
    future = _LATER[0].submit(_compile_later, compiled, plan, model)
    if label is not None:
        _LABELLED[label] = future
    return future


def wait(future: Future) -> None:
    """Wait for a `compile_later` compilation (letting its tracing run meanwhile); its errors are left
    to the compilation its model's trial will make."""
    with _GATE.open(), contextlib.suppress(Exception):  # cancelled or failed: the trial compiles for itself
        future.result()


def wait_for(label) -> None:
    """`wait` for the latest `compile_later` given `label`, if any, first cancelling the other labelled
    ones not started (the retrain needs its own architecture's, not those queued before it)."""
    future = _LABELLED.pop(label, None)
    for other in _LABELLED.values():
        other.cancel()
    _LABELLED.clear()
    if future is not None:
        wait(future)


def stop_compiling_later() -> None:
    """Cancel the background compilations not started yet; one under way stops before its next tracing."""
    _LABELLED.clear()
    if _LATER:
        _LATER.pop().stop()


class _Gate:
    """When background tracing may run: only while a training thread is inside `fit`'s epochs (or in
    `wait`), never while it builds models: `keras.backend.clear_session()` there replaces Keras'
    global (per-thread) state under a background trace."""

    def __init__(self):
        self._open, self._busy = threading.Event(), threading.Lock()

    @contextlib.contextmanager
    def open(self):
        self._open.set()
        try:
            yield
        finally:
            self._open.clear()
            with self._busy:  # a background trace under way ends first
                pass

    @contextlib.contextmanager
    def tracing(self, stopped: threading.Event):
        """Hold a background trace until the gate is open; yields False when stopped meanwhile."""
        while True:
            if stopped.is_set():
                yield False
                return
            if self._open.wait(0.2):
                with self._busy:
                    if self._open.is_set():
                        yield True
                        return


_GATE = _Gate()


class _Later:
    """One daemon thread running background compilations in order (a daemon: a search that ends or is
    killed never waits for it)."""

    def __init__(self):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.stopped = threading.Event()
        threading.Thread(target=self._work, name="tuner-app-later", daemon=True).start()

    def submit(self, function, *args) -> Future:
        future: Future = Future()
        self._jobs.put((future, function, args))
        return future

    def stop(self) -> None:
        self.stopped.set()
        self._jobs.put(None)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, function, args = job
            if self.stopped.is_set():
                future.cancel()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(function(*args, stopped=self.stopped))
                except BaseException as e:  # noqa: BLE001 - the waiting trial decides
                    future.set_exception(e)
        while not self._jobs.empty():
            job = self._jobs.get()
            if job is not None:
                job[0].cancel()


def _compile_later(compiled: _Compiled, plan: list, model: keras.Model, stopped: threading.Event) -> None:
    """`_compile_ahead` in the background: each trace through the gate, then XLA's compilations."""
    lowered = []
    for function, args in _new_calls(compiled, plan, model, shapes_only=True):
        with _GATE.tracing(stopped) as allowed:
            if not allowed:
                return
            lowered.append(function.lower(*args))
    _compile_all(lowered, "tuner-app-later-compile")


def _compile_ahead(compiled: _Compiled, plan: list, model: keras.Model) -> None:
    """Compile every call shape of `plan` ((chunk function, batches or None, its state's variable groups))
    not compiled yet: traced one after another here, compiled by XLA all at once in threads; the
    calls then find them in JAX's cache."""
    _compile_all([function.lower(*args) for function, args in _new_calls(compiled, plan, model)])


def _new_calls(compiled: _Compiled, plan: list, model: keras.Model, shapes_only: bool = False):
    """(chunk function, its arguments) for each call shape of `plan` not compiled yet (marked compiled
    now); `shapes_only`: the images as their shapes, not a device copy (for a throwaway model)."""
    import jax
    import jax.numpy as jnp

    for function, batches, groups in plan:
        if batches is None:
            continue
        if shapes_only:
            x, y = (jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (batches.x, batches.y))
        else:
            x, y = _on_device(batches.x), _on_device(batches.y)
        state = _values(*groups(model))
        for _first, rows, valid, active in _chunks(batches, 0):
            key = (function is compiled.train, x.shape, y.shape, tuple((k, r.shape) for k, r in rows.items()),
                   None if active is None else active.shape)
            if key not in compiled.shapes:
                compiled.shapes.add(key)
                yield function, (state, x, y, rows, jnp.asarray(valid), active)


def _compile_all(lowered: list, name: str = "tuner-app-compile") -> None:
    """XLA's compilations of `lowered`, at once in threads named `name`_i (they run outside the GIL)."""
    if lowered:
        with ThreadPoolExecutor(len(lowered), thread_name_prefix=name) as pool:
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


__all__ = ["CHUNK", "applies", "compile_later", "fit", "stop_compiling_later", "usable", "wait",
           "wait_for"]
