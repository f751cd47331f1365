"""The compiled loop (JAX): a fold, fused or not, trains as Keras' own loop trains it on the same batches,
callbacks see fit's protocol a chunk at a time, and it is used only where it applies."""

import gc
import json
import weakref

import keras
import numpy as np
import pytest

from tuner_app import models
from tuner_app.data import one_hot, scale_images
from tuner_app.models.seed import SeedCNN
from tuner_app.training import fused, jax_loop
from tuner_app.training.data_order import FoldBatches, FollowEpoch
from tuner_app.training.folds import splits
from tuner_app.training.model_cache import ModelCache

JAX = keras.backend.backend() == "jax"
needs_jax = pytest.mark.skipif(not JAX, reason="the compiled loop is JAX's; CI runs this file under JAX too")
POINT = models.hyperparameters({"filters": "16,32", "learning_rate": 0.001, "dense_units": 120})
SIZE = 32


@pytest.fixture(scope="module")
def data(small_dataset):
    x, y = scale_images(small_dataset.x_train), one_hot(small_dataset.y_train, 10)
    # 332 training rows: a partial first batch (12) and 10 full ones; 100 validation rows (4 + 3 x 32)
    split = [(tr[:332], va[:100]) for tr, va in splits(small_dataset.y_train, 3, 42)]
    return x, y, split


def uneven(split):
    """Folds one batch apart: fold 2's 321 training rows are 11 batches (the others' 320, 10), fold 1's 97
    validation rows 4 batches (the others' 96, 3)."""
    return [(tr[:320 + (k == 2)], va[:96 + (k == 1)]) for k, (tr, va) in enumerate(split, 1)]


def model_and_batches(data, folds, even=True):
    """A fresh single model (one fold) or fused model (several), and its training and validation batches."""
    x, y, split = data
    split = split if even else uneven(split)
    if len(folds) == 1:
        model, name = ModelCache(SeedCNN(), reuse=False).fresh(POINT, 42 + folds[0]), None
    else:
        model = fused.FusedModels(SeedCNN(), reuse=False).fresh(POINT, list(folds), 42, x.shape[1:])
        name = fused.member_name
    train = FoldBatches(x, y, {k: split[k - 1][0] for k in folds}, SIZE, seed=42, name=name)
    val = FoldBatches(x, y, {k: split[k - 1][1] for k in folds}, SIZE, shuffle=False, name=name)
    return model, train, val


@needs_jax
@pytest.mark.parametrize("folds", [(1,), (1, 2, 3)], ids=["one fold", "fused"])
def test_the_compiled_loop_trains_as_keras_loop(data, folds, monkeypatch):
    """Same model, same batches, 3 epochs: the histories and the weights equal Keras' `fit`'s up to float
    rounding. Chunks of 4 steps: the partial first step, then 10 full steps in 3 calls of 4 (2 steps of padding)."""
    monkeypatch.setattr(jax_loop, "CHUNK", 4)
    model, train, val = model_and_batches(data, folds)
    ours = jax_loop.fit(model, train, val, epochs=3, callbacks=[FollowEpoch(train)]).history
    ours_weights = [keras.ops.convert_to_numpy(w) for w in model.weights]
    model, train, val = model_and_batches(data, folds)
    theirs = model.fit(train, validation_data=val, epochs=3, shuffle=False, verbose=0,
                       callbacks=[FollowEpoch(train)]).history
    assert set(ours) == set(theirs) and all(len(values) == 3 for values in ours.values())
    for name in theirs:
        assert ours[name] == pytest.approx(theirs[name], abs=2e-4), name
    assert theirs["val_loss" if len(folds) == 1 else "val_fold_1_accuracy"][-1] != pytest.approx(
        theirs["val_loss" if len(folds) == 1 else "val_fold_1_accuracy"][0], abs=1e-4)  # it learnt something
    for a, b in zip(ours_weights, (keras.ops.convert_to_numpy(w) for w in model.weights)):
        np.testing.assert_allclose(a, b, atol=2e-4)


@needs_jax
def test_on_uneven_folds_each_compiled_member_trains_as_its_fold_alone_in_the_compiled_loop(data, monkeypatch):
    """The fused contract on the GPU's path: members one batch apart, each member's history is that of its
    fold trained alone by the compiled loop (a member without a batch in a step is kept as it was)."""
    monkeypatch.setattr(jax_loop, "CHUNK", 4)
    model, train, val = model_and_batches(data, (1, 2, 3), even=False)
    together = jax_loop.fit(model, train, val, epochs=2, callbacks=[FollowEpoch(train)]).history
    assert [int(keras.ops.convert_to_numpy(o.iterations)) for o in model.optimizer.optimizers] == [20, 22, 20]
    for k in (1, 2, 3):
        model, train, val = model_and_batches(data, (k,), even=False)
        alone = jax_loop.fit(model, train, val, epochs=2, callbacks=[FollowEpoch(train)]).history
        for name, values in alone.items():
            member = f"val_fold_{k}_{name[4:]}" if name.startswith("val_") else f"fold_{k}_{name}"
            assert together[member] == pytest.approx(values, rel=1e-5, abs=1e-6), (k, name)


@needs_jax
@pytest.mark.parametrize("folds", [(1,), (1, 2, 3)], ids=["one fold", "fused"])
def test_a_chunk_holds_no_conditional_the_device_would_wait_on(data, folds, monkeypatch):
    """No `cond` (StableHLO `case` or `if`) in any chunk, training or validation: XLA's GPU runtime waits for
    the device at every conditional. The padding steps of the test above are dropped by a select."""
    monkeypatch.setattr(jax_loop, "CHUNK", 4)
    model, train, val = model_and_batches(data, folds)
    model._symbolic_build(data_batch=train[0])
    compiled = jax_loop._compiled(model, train)
    plan = [(compiled.train, train, jax_loop._train_state), (compiled.test, val, jax_loop._test_state)]
    texts = [function.lower(*args).as_text() for function, args in jax_loop._new_calls(compiled, plan, model)]
    assert len(texts) == 4 and all("stablehlo.while" in text for text in texts)
    assert not [op for text in texts for op in ("stablehlo.case", "stablehlo.if") if op in text]


@needs_jax
def test_callbacks_see_a_chunk_at_a_time_and_can_stop_the_training(data, monkeypatch):
    monkeypatch.setattr(jax_loop, "CHUNK", 4)
    model, train, val = model_and_batches(data, (1,))
    seen = []

    class Watch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(("epoch", epoch))

        def on_train_batch_begin(self, batch, logs=None):
            seen.append(("batch", batch))

        def on_epoch_end(self, epoch, logs=None):
            seen.append(("end", sorted(logs)))
            self.model.stop_training = epoch == 1

    history = jax_loop.fit(model, train, val, epochs=5, callbacks=[FollowEpoch(train), Watch()])
    epoch = [("epoch", 0), ("batch", 0), ("batch", 1), ("batch", 5), ("batch", 9),
             ("end", ["accuracy", "loss", "val_accuracy", "val_loss"])]
    assert seen == epoch + [("epoch", 1), *epoch[1:]]  # stopped after the second epoch
    assert len(history.history["loss"]) == 2


@needs_jax
@pytest.mark.parametrize("folds", [(1,), (1, 2, 3)], ids=["one fold", "fused"])
def test_every_call_shape_is_compiled_once_before_training_in_parallel(data, folds, monkeypatch):
    """The partial first step and the full chunks, training and validation: four XLA compilations, made
    together in threads before the first epoch; the next fit of the same model compiles nothing."""
    import threading

    import jax

    monkeypatch.setattr(jax_loop, "CHUNK", 4)
    model, train, val = model_and_batches(data, folds)
    compiles = []

    def listen(event, seconds, **kwargs):  # XLA compilations of the chunks (not Keras' own small eager ops)
        if event == "/jax/core/compile/backend_compile_duration" and kwargs.get("fun_name") == "jit(chunk)":
            compiles.append(threading.current_thread().name)

    class Epochs(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            compiles.append(f"epoch {epoch}")

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        jax_loop.fit(model, train, val, epochs=2, callbacks=[FollowEpoch(train), Epochs()])
        assert compiles[-2:] == ["epoch 0", "epoch 1"], compiles  # nothing compiled once training began
        ahead = compiles[:-2]
        assert len(ahead) == 4 and all(name.startswith("tuner-app-compile") for name in ahead), ahead
        compiles.clear()
        jax_loop.fit(model, train, val, epochs=1, callbacks=[FollowEpoch(train), Epochs()])
        assert compiles == ["epoch 0"]
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


@needs_jax
def test_a_model_trained_by_the_compiled_loop_is_freed_with_its_compiled_chunks(data):
    """The compiled chunks live on the model: a search that moves on to another architecture frees the last."""
    model, train, val = model_and_batches(data, (1,))
    jax_loop.fit(model, train, val, epochs=1)
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None


def test_the_compiled_loop_is_used_under_jax_on_a_gpu_for_hypermodels_that_leave_fit_to_keras(data, monkeypatch):
    model, train, val = model_and_batches(data, (1,))
    assert not jax_loop.usable(SeedCNN(), model, train, val)  # the tests' CPU: Keras' loop
    monkeypatch.setattr(jax_loop, "_on_accelerator", lambda: True)  # as on a GPU
    assert jax_loop.usable(SeedCNN(), model, train, val) == JAX

    class OwnFit(SeedCNN):
        def fit(self, hp, model, *args, **kwargs):
            return model.fit(*args, **kwargs)

    assert not jax_loop.usable(OwnFit(), model, train, val)  # its fit may configure Keras' loop
    x, y, _ = data
    uneven = FoldBatches(x, y, {1: np.arange(64), 2: np.arange(65)}, SIZE, name=fused.member_name)
    assert jax_loop.usable(SeedCNN(), model, train, uneven) == JAX  # fold 1's third step: a filler, inactive


@needs_jax
def test_later_architectures_and_the_retrain_compile_in_the_background_and_train_as_without(small_dataset, tmp_path,
                                                                                           monkeypatch):
    """On a GPU (forced here on the CPU) the first trial starts compiling, in the background into
    `<project>/xla_cache`, the grid's other architecture and every architecture's retrain. That
    architecture's trial, then the retrain, compile nothing themselves: their three chunk shapes each are
    cache hits (training: the partial first step and a chunk of full steps; validation: one partial step). Every fold's record and the retrain equal a search's and retrain's that compiled each in turn."""
    import threading

    import jax
    from jax.experimental.compilation_cache import compilation_cache

    from tuner_app.api import run_search
    from tuner_app.config import CVConfig
    from tuner_app.retrain import retrain_best
    from tuner_app.tuning import tuner

    monkeypatch.setattr(jax_loop, "_on_accelerator", lambda: True)
    grid = {"filters": ["16,32", "32,64"], "learning_rate": [0.001]}
    cv = CVConfig(folds=2, epochs=1, batch_size=32, fold_mode="fused", precision="float32")
    events = []

    def listen(event, **kwargs):  # the cache's answers to the trials' and the retrain's own compilations
        if event.startswith("/jax/compilation_cache/cache_") and threading.current_thread().name.startswith(
                "tuner-app-compile"):
            events.append(event.rsplit("_", 1)[-1])

    def job(project):
        pdir = run_search(small_dataset, "seed", grid, cv, tmp_path, project, train_limit=400)
        searched = [json.loads(path.read_text()) for path in sorted(pdir.glob("trial_*/folds.json"))]
        found = list(events)
        retrained = retrain_best(small_dataset, tmp_path, project, {"epochs": 1}, train_limit=400)
        return pdir, searched, found, events[len(found):], retrained

    jax.monitoring.register_event_listener(listen)
    try:
        with monkeypatch.context() as m:
            m.setattr(tuner.CVTuner, "_compile_later", lambda self, *args: None)
            _, alone, _, _, alone_retrained = job("alone")
        events.clear()
        pdir, later, searching, retraining, retrained = job("later")
    finally:
        jax.monitoring.unregister_event_listener(listen)
        jax_loop.stop_compiling_later()
        jax.config.update("jax_compilation_cache_dir", None)  # the other tests compile as before
        compilation_cache.reset_cache()
        jax_loop._LATER_DIR.clear()
    # the first architecture compiled as before (3 misses), the second was found (3 hits), and the retrain too
    assert searching == ["misses"] * 3 + ["hits"] * 3, searching
    assert retraining == ["hits"] * 3, retraining
    assert any((pdir / "xla_cache").iterdir())
    assert len(later) == len(alone) == 2
    for ours, theirs in zip(later, alone):
        for record, expected in zip(ours, theirs):
            for name in ("val_accuracy", "val_loss", "accuracy", "loss"):
                assert record[name] == pytest.approx(expected[name], abs=1e-6), name
    assert retrained["trial_id"] == alone_retrained["trial_id"]
    assert retrained["history"]["val_loss"] == pytest.approx(alone_retrained["history"]["val_loss"], abs=1e-6)
    assert retrained["test_accuracy"] == pytest.approx(alone_retrained["test_accuracy"], abs=1e-6)
