"""Models: the seed preset, the extended preset, and loading a user's build(hp) or HyperModel."""

import keras
import keras_tuner
import numpy as np
import pytest
from conftest import MODELS

from tuner_app import models
from tuner_app.errors import ModelError, SettingError
from tuner_app.models.seed import build_cnn, grid_overrides, parse_filters


def test_seed_best_model_has_the_seed_parameter_count():
    model = build_cnn((28, 28, 1), 10, (64, 128), 120, 0.0005)
    assert model.count_params() == 453_682
    kinds = [layer.__class__.__name__ for layer in model.layers]
    assert kinds == ["Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Flatten", "Dense", "Dense"]
    assert model.layers[0].kernel_size == (5, 5) and model.layers[-1].activation.__name__ == "softmax"
    assert float(model.optimizer.learning_rate) == pytest.approx(0.0005)


def test_seed_preset_builds_from_hyperparameters_for_any_shape_and_classes():
    loaded = models.load_model("seed", (32, 32, 3), 5)
    model = models.build(loaded.hypermodel, models.hyperparameters(
        {"filters": "8,16", "learning_rate": 0.01, "dense_units": 32}))
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 5)
    assert model.layers[0].filters == 8 and model.layers[2].filters == 16 and model.layers[5].units == 32
    assert loaded.file is None and loaded.sha256 is None  # presets are tuner-app's code, not hashed


def test_mixed_precision_computes_in_bfloat16_and_keeps_float32_weights_and_output():
    with models.dtype_policy("mixed_bfloat16"):
        model = build_cnn((28, 28, 1), 10, (64, 128), 120, 0.0005)
    assert keras.config.dtype_policy().name == "float32"  # restored
    assert model.count_params() == 453_682
    assert [layer.compute_dtype for layer in model.layers[:-1]] == ["bfloat16"] * 6
    assert model.layers[-1].compute_dtype == "float32"  # softmax and the loss in float32
    assert {w.dtype for w in model.weights} == {"float32"}
    probabilities = model.predict(np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32), verbose=0)
    assert probabilities.dtype == np.float32 and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)


@pytest.mark.parametrize("text", ["16", "16,32,64", "a,b", "0,32", "-1,4", ""])
def test_bad_filter_pairs(text):
    with pytest.raises(SettingError) as info:  # its wording: tests/test_cli_errors.py
        parse_filters(text)
    assert info.value.name == "filters"


@pytest.mark.parametrize("kwargs, name", [
    ({"learning_rates": [0.0]}, "learning_rate"), ({"learning_rates": [float("nan")]}, "learning_rate"),
    ({"dense_units": [0]}, "dense_units"), ({"filters": ["16"]}, "filters"),
])
def test_seed_grid_options_are_validated_by_name(kwargs, name):
    with pytest.raises(SettingError) as info:
        grid_overrides(**kwargs)
    assert info.value.name == name


def test_a_users_build_function_from_a_file_gets_the_datas_shape_and_classes():
    loaded = models.load_model(f"{MODELS / 'dense_net.py'}:build", (8, 8, 1), 3)
    assert loaded.spec.endswith("dense_net.py:build") and len(loaded.sha256) == 64
    model = models.build(loaded.hypermodel, models.hyperparameters({"units": 32, "second_layer": True,
                                                                     "second_units": 16}))
    assert model.input_shape == (None, 8, 8, 1) and model.output_shape == (None, 3)
    assert [layer.units for layer in model.layers if isinstance(layer, keras.layers.Dense)] == [32, 16, 3]


def test_module_specs_and_python_objects(monkeypatch):
    monkeypatch.syspath_prepend(str(MODELS))
    by_module = models.load_model("dense_net:build", (28, 28, 1), 10)
    assert isinstance(by_module.hypermodel, models.BuildFunction)

    class Net(keras_tuner.HyperModel):
        def __init__(self, num_classes):
            super().__init__()
            self.num_classes = num_classes

        def build(self, hp):
            model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                                      keras.layers.Dense(self.num_classes, activation="softmax")])
            model.compile(optimizer="adam", loss="categorical_crossentropy")
            return model

    from_class = models.load_model(Net, (28, 28, 1), 7)
    assert from_class.hypermodel.num_classes == 7 and from_class.remake is None  # it does not take input_shape
    instance = Net(4)
    assert models.load_model(instance, (28, 28, 1), 10).hypermodel is instance  # an instance is used as it is
    assert models.load_model(lambda hp: None).spec.endswith("<lambda>")


@pytest.mark.parametrize("spec", [  # each message's wording: tests/test_cli_errors.py
    "nowhere.py:build", "{MODELS}/dense_net.py:nope", "{MODELS}/broken.py:NotAHyperModel", "no_such_module_here:build",
    "justaname",
])
def test_model_specs_that_cannot_be_loaded(spec):
    with pytest.raises(ModelError) as info:
        models.load_model(spec.format(MODELS=MODELS))
    assert "\n" not in str(info.value)


def test_extended_preset_is_the_seed_family_with_regularisation_and_augmentation():
    loaded = models.load_model("extended", (28, 28, 1), 10)
    assert loaded.defaults["epochs"] > 5 and loaded.defaults["retrain_epochs"] > 10
    hp = keras_tuner.HyperParameters()
    model = models.build(loaded.hypermodel, hp)
    kinds = {layer.__class__.__name__ for layer in model.layers}
    assert {"Conv2D", "BatchNormalization", "Dropout", "RandomTranslation", "RandomRotation"} <= kinds
    assert model.output_shape == (None, 10)
    x = np.random.default_rng(0).random((2, 28, 28, 1), dtype=np.float32)
    first, again = (keras.ops.convert_to_numpy(model(x, training=False)) for _ in range(2))
    np.testing.assert_allclose(first, again)  # augmentation (random) only in training


def test_extended_preset_validates_well_on_fold_sized_data(small_dataset):
    """Its batch-norm statistics (what validation uses) settle on a fold of a few hundred images: with
    Keras' default momentum they did not, and folds validated at chance."""
    from tuner_app.config import CVConfig
    from tuner_app.data import one_hot, scale_images
    from tuner_app.training.folds import train_fold
    from tuner_app.training.model_cache import ModelCache

    x, y = scale_images(small_dataset.x_train), one_hot(small_dataset.y_train, 10)
    hm = models.load_model("extended").hypermodel
    hp = models.hyperparameters({"filters": "32,64", "dropout": 0.25, "learning_rate": 0.001, "dense_units": 256})
    record = train_fold(hm, ModelCache(hm), CVConfig(folds=2, epochs=6, batch_size=64, patience=6), hp, 1,
                        x, y, (np.arange(800), np.arange(800, len(x))))
    assert record["val_accuracy"] > 0.6  # chance is 0.1


def test_a_models_suggested_settings_apply_where_none_are_given():
    from tuner_app.retrain import default_config
    from tuner_app.tuning.plan import default_cv

    extended = models.load_model("extended")
    assert default_config(extended, epochs=None, batch_size=None).epochs == 30  # the CLI passes None when not given
    assert default_config(extended, epochs=3).epochs == 3
    assert default_cv(extended, epochs=None, folds=2).epochs == 15 and default_cv(extended, epochs=4).epochs == 4
    assert default_config(models.load_model("seed"), epochs=None).epochs == 10
