"""Folds: the stratified split, a fold's record, and the store of records."""

import json

import keras
import numpy as np

from tuner_app import models
from tuner_app.config import CVConfig
from tuner_app.data import one_hot, scale_images
from tuner_app.training.data_order import fold_batches, validation_batch_size
from tuner_app.training.folds import splits, train_fold
from tuner_app.training.model_cache import ModelCache
from tuner_app.tuning.state import FoldStore


def test_folds_are_stratified_and_fixed_by_the_seed(small_dataset):
    y = small_dataset.y_train
    pairs = splits(y, 5, 42)
    overall = np.bincount(y) / len(y)
    for train, val in pairs:
        assert len(np.intersect1d(train, val)) == 0
        np.testing.assert_allclose(np.bincount(y[val], minlength=10) / len(val), overall, atol=0.006)
    assert all((a[1] == b[1]).all() for a, b in zip(pairs, splits(y, 5, 42)))
    assert not all((a[1] == b[1]).all() for a, b in zip(pairs, splits(y, 5, 7)))


def test_a_folds_record_is_its_best_epoch_by_the_objective(small_dataset):
    hm = models.load_model("seed").hypermodel
    hp = models.hyperparameters({"filters": "8,16", "learning_rate": 0.01, "dense_units": 16})
    x, y = scale_images(small_dataset.x_train[:300]), one_hot(small_dataset.y_train[:300], 10)
    for objective in ("val_accuracy", "val_loss"):
        cv = CVConfig(folds=2, epochs=3, patience=3, objective=objective)
        record = train_fold(hm, ModelCache(hm, reuse=False), cv, hp, 1, x, y, (np.arange(200), np.arange(200, 300)))
        assert record["epochs"] == 3 and 1 <= record["best_epoch"] <= 3 and record["train_size"] == 200
        assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(record)
        # the same model trained again without early stopping: the record is its chosen epoch
        model = ModelCache(hm, reuse=False).fresh(hp, cv.seed + 1)
        data, follow = fold_batches(x, y, np.arange(200), 128, cv.seed, 1)  # the fold's order (tests/training/test_data_order.py)
        history = model.fit(data, validation_data=(x[200:], y[200:]), epochs=3, validation_batch_size=128,
                            shuffle=False, verbose=0, callbacks=[follow]).history
        pick = np.argmax if objective == "val_accuracy" else np.argmin
        best = int(pick(history[objective]))
        assert record["best_epoch"] == best + 1
        np.testing.assert_allclose(record["val_loss"], history["val_loss"][best], rtol=1e-5)


def test_validation_batches_are_larger_than_training_ones_within_a_size_limit():
    assert validation_batch_size(32, (28, 28, 1)) == 256  # MNIST: 256 rows of 784 values
    assert validation_batch_size(512, (28, 28, 1)) == 512  # never fewer than a training batch
    assert validation_batch_size(2, (224, 224, 3)) == 6  # 2**20 input values at most
    assert validation_batch_size(32, (224, 224, 3)) == 32


def test_a_folds_validation_pass_takes_validation_sized_batches(small_dataset):
    hm = models.load_model("seed").hypermodel
    hp = models.hyperparameters({"filters": "8,16", "learning_rate": 0.01, "dense_units": 16})
    x, y = scale_images(small_dataset.x_train[:600]), one_hot(small_dataset.y_train[:600], 10)

    class Count(keras.callbacks.Callback):
        train = test = 0

        def on_train_batch_end(self, batch, logs=None):
            Count.train += 1

        def on_test_batch_end(self, batch, logs=None):
            Count.test += 1

    cv = CVConfig(folds=2, epochs=1, batch_size=16)
    train_fold(hm, ModelCache(hm, reuse=False), cv, hp, 1, x, y, (np.arange(300), np.arange(300, 600)),
               callbacks=[Count()])
    assert (Count.train, Count.test) == (19, 2)  # 300 rows: 19 batches of 16, 2 of 256


def test_the_store_keeps_finished_folds_and_writes_them_whole(tmp_path):
    store = FoldStore(tmp_path)
    store.add({"fold": 2, "val_accuracy": 0.5, "val_loss": 1.0, "epochs": 1})
    store.add({"fold": 1, "val_accuracy": 0.7, "val_loss": 0.8, "epochs": 1})
    assert [r["fold"] for r in json.loads((tmp_path / "folds.json").read_text())] == [1, 2]
    again = FoldStore(tmp_path)
    assert 1 in again and 2 in again and 3 not in again
    assert again.means() == {"val_accuracy": 0.6, "val_loss": 0.9}
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind
