"""The training data's order: every epoch a new seeded permutation of the fold, the same for both fold
modes and on every backend, and a seeded Keras fit really follows it from epoch to epoch."""

import gc
import weakref

import keras
import numpy as np
import pytest

from tuner_app.training.data_order import FoldBatches, fold_batches


def rows_of(data) -> list[np.ndarray]:
    """The batches of one pass over what `fit` is given (a PyDataset, or a tf.data pipeline)."""
    if isinstance(data, keras.utils.PyDataset):
        return [np.asarray(data[i][0]) for i in range(len(data))]
    return [np.asarray(x) for x, _ in data.as_numpy_iterator()]


def test_each_epoch_is_a_new_seeded_permutation_with_the_partial_batch_first():
    x = np.arange(10)
    batches = FoldBatches(x, x, {3: np.arange(10)}, batch_size=4, seed=42)
    epochs = []
    for epoch in range(3):
        batches.epoch = epoch
        epochs.append([np.asarray(batches[i][0]) for i in range(len(batches))])
    assert [len(b) for b in epochs[0]] == [2, 4, 4]
    for batch_list in epochs:
        assert sorted(np.concatenate(batch_list)) == list(range(10))
    orders = [tuple(np.concatenate(b)) for b in epochs]
    assert len(set(orders)) == 3  # a new order every epoch
    assert orders[1] == tuple(np.random.default_rng((42, 3, 1)).permutation(10))  # fold 3's, epoch 1


def test_fused_member_batches_are_the_sequential_folds():
    x, y = np.arange(20) * 10, np.arange(20)
    rows = {1: np.arange(0, 20, 2), 2: np.arange(1, 20, 2)}
    together = FoldBatches(x, y, rows, batch_size=4, seed=7, epoch=2, name=lambda k: f"fold_{k}")
    for k in (1, 2):
        alone = FoldBatches(x[rows[k]], y[rows[k]], {k: np.arange(10)}, batch_size=4, seed=7, epoch=2)
        for step in range(len(alone)):
            xs, ys = together[step]
            assert np.array_equal(xs[f"fold_{k}_input"], alone[step][0])
            assert np.array_equal(ys[f"fold_{k}"], alone[step][1])


def test_what_fit_gets_holds_the_same_batches_on_every_backend():
    x = np.arange(30, dtype="float32").reshape(10, 3)
    data, follow = fold_batches(x, np.arange(10), np.arange(10), batch_size=4, seed=1, k=2)
    for epoch in (0, 1):
        follow.on_epoch_begin(epoch)
        expected = FoldBatches(x, np.arange(10), {2: np.arange(10)}, 4, seed=1, epoch=epoch)
        got = rows_of(data)
        assert len(got) == len(expected) == 3
        for step, batch in enumerate(got):
            assert np.array_equal(batch, expected[step][0])


def test_a_seeded_fit_takes_a_new_order_in_every_epoch():
    """The defect this module fixes: after `set_random_seed`, Keras' TensorFlow array adapter repeats
    one permutation in every epoch. Here each epoch of a real fit consumes that epoch's order."""
    keras.utils.set_random_seed(43)
    x, y = np.random.default_rng(0).random((64, 2)).astype("float32"), np.arange(64) % 2
    data, follow = fold_batches(x, y, np.arange(64), batch_size=16, seed=42, k=1)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((follow.batches._order_epoch, tuple(follow.batches._orders[1])))

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    model.fit(data, epochs=3, shuffle=False, verbose=0, callbacks=[follow, Record()])
    assert [epoch for epoch, _ in seen] == [0, 1, 2]
    assert len({order for _, order in seen}) == 3


def test_a_folds_images_are_freed_after_its_fit():
    """TensorFlow keeps every `from_generator` generator for the rest of the process; a fold's
    batches (and their copy of its images) must not stay with it, or every fold leaks its images."""
    x, y = np.zeros((32, 2), dtype="float32"), np.arange(32) % 2
    data, follow = fold_batches(x, y, np.arange(32), batch_size=16, seed=42, k=1)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    model.fit(data, epochs=1, shuffle=False, verbose=0, callbacks=[follow])
    batches = weakref.ref(follow.batches)
    del data, follow
    gc.collect()
    assert batches() is None


def test_every_fold_gathers_from_one_copy_of_the_images_while_they_live():
    from tuner_app.training import data_order

    x = np.zeros((8, 2), dtype="float32")
    assert data_order.as_tensor(x) is data_order.as_tensor(x)
    key = id(x)
    del x
    gc.collect()
    assert key not in data_order._TENSORS


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="a tf.data pipeline only under TensorFlow")
def test_the_tensorflow_pipeline_runs_without_autotuning():
    """tf.data's autotuning thread made the deletion of every finished iterator (each epoch's and
    validation pass's) wait for it, up to 2 s per fold on a 2-core CPU; the pipeline has nothing to tune."""
    x = np.zeros((10, 3), "float32")
    data, _ = fold_batches(x, np.arange(10), np.arange(10), batch_size=4, seed=1, k=1)
    assert data.options().autotune.enabled is False
    assert len(rows_of(data)) == 3
