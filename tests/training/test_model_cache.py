"""The model cache: a reused compiled model trains exactly as a freshly built one."""

import keras
import numpy as np
import pytest

from tuner_app import models
from tuner_app.config import CVConfig
from tuner_app.training.folds import train_fold
from tuner_app.training.model_cache import ModelCache, architecture_key


def _regularised(hp):
    """Sequential (so reusable) with dropout and batch normalisation: random state and statistics to copy."""
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(4, 5), keras.layers.BatchNormalization(),
                              keras.layers.ReLU(), keras.layers.Dropout(0.3), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax", dtype="float32")])
    model.compile(optimizer=keras.optimizers.Adam(hp.Choice("learning_rate", [0.01, 0.001])),
                  loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def test_architecture_key_ignores_names_and_learning_rate_only():
    hm = models.BuildFunction(_regularised)
    a = models.build(hm, models.hyperparameters({"learning_rate": 0.01}))
    b = models.build(hm, models.hyperparameters({"learning_rate": 0.001}))
    assert a.layers[0].name != b.layers[0].name and architecture_key(a) == architecture_key(b)
    other = models.build(models.load_model("seed").hypermodel,
                         models.hyperparameters({"filters": "8,16", "learning_rate": 0.01, "dense_units": 16}))
    assert architecture_key(other) != architecture_key(a)


def test_models_whose_learning_rate_schedules_differ_are_different_architectures():
    """A schedule is the optimizer's code, not one of its variables: reusing a model would keep the first's."""
    def compiled(rate):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        model.compile(keras.optimizers.Adam(keras.optimizers.schedules.ExponentialDecay(rate, 10, 0.9)), "mse")
        return model

    assert architecture_key(compiled(0.01)) != architecture_key(compiled(0.001))
    assert architecture_key(compiled(0.01)) == architecture_key(compiled(0.01))


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("build", ["seed", "regularised"])
def test_the_default_cache_gives_the_fold_scores_of_fresh_models(small_dataset, precision, build):
    """Under TensorFlow and JAX the default cache reuses compiled models, and they score as fresh ones; under
    PyTorch it does not reuse (a reused PyTorch model trains differently), so the same holds."""
    hypermodel = models.BuildFunction(_regularised) if build == "regularised" else models.load_model("seed").hypermodel
    points = [{"learning_rate": lr} if build == "regularised" else {"filters": "8,16", "learning_rate": lr,
                                                                     "dense_units": 32} for lr in (0.01, 0.001)]
    from tuner_app.data import one_hot, scale_images

    x, y = scale_images(small_dataset.x_train[:200]), one_hot(small_dataset.y_train[:200], 10)
    cv = CVConfig(folds=2, epochs=2, batch_size=64, precision=precision)
    scores = {}
    for reuse, prepared in ((False, False), (None, False), (None, True)):
        cache = ModelCache(hypermodel, precision, reuse=reuse)
        scores[reuse, prepared] = []
        for p in points:
            hp = models.hyperparameters(p)
            if prepared:  # every fold's fresh build first, as a trial of tuner-app's own fit does
                cache.prepare(hp, [cv.seed + k for k in (1, 2)])
            scores[reuse, prepared] += [train_fold(hypermodel, cache, cv, hp, k, x, y,
                                                   (np.arange(150), np.arange(150, len(x))))["val_loss"] for k in (1, 2)]
            assert not cache._ready  # every prepared model handed out
        assert (cache._model is not None) == (reuse is None and keras.backend.backend() in ("tensorflow", "jax"))
    np.testing.assert_allclose(scores[None, False], scores[False, False], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores[None, True], scores[False, False], rtol=1e-5, atol=1e-6)


def test_subclassed_and_functional_models_are_built_fresh_every_time():
    class Sub(keras.Model):
        def call(self, x):
            return x

    assert architecture_key(Sub()) is None


def test_a_model_too_big_to_prepare_is_seeded_fold_by_fold(monkeypatch):
    """Above `PREPARE_MAX_BYTES` of prepared copies, `prepare` keeps only the first fold's model and
    later folds are built after their own seeding as before: the same weights either way."""
    from tuner_app.training import model_cache

    monkeypatch.setattr(model_cache, "PREPARE_MAX_BYTES", 0)
    hypermodel = models.load_model("seed").hypermodel
    hp = models.hyperparameters({"filters": "8,16", "learning_rate": 0.01, "dense_units": 32})
    cache = ModelCache(hypermodel, reuse=True)
    cache.prepare(hp, [1, 2])
    assert list(cache._ready) == [1]
    assert cache.fresh(hp, 1) is cache._model
    second = [keras.ops.convert_to_numpy(v) for v in cache.fresh(hp, 2).variables]
    keras.utils.set_random_seed(2)
    expected = models.build(hypermodel, hp)
    for got, want in zip(second, expected.variables, strict=True):
        np.testing.assert_array_equal(got, keras.ops.convert_to_numpy(want))
