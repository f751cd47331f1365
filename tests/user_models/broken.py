"""Models that are wrong in the ways a user's model can be, one per NAME (tests/test_cli_errors.py)."""

import keras
import keras_tuner
from keras import layers


def _net(input_shape, outputs=10, compile=True):
    model = keras.Sequential([keras.Input(input_shape), layers.Flatten(), layers.Dense(outputs, activation="softmax")])
    if compile:
        model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def raises(hp, input_shape):
    hp.Choice("units", [8, 16])
    raise ValueError("this model has a bug")


def not_compiled(hp, input_shape):
    hp.Choice("units", [8, 16])
    return _net(input_shape, compile=False)


def wrong_classes(hp, input_shape):
    hp.Choice("units", [8, 16])
    return _net(input_shape, outputs=5)


def no_finite_grid(hp, input_shape):
    hp.Float("dropout", 0.0, 0.5)
    return _net(input_shape)


def not_a_model(hp):
    return "a model"


class NotAHyperModel:
    pass


class Shapeless(keras_tuner.HyperModel):
    """Fixed to 28x28x1 images: it does not take input_shape."""

    def build(self, hp):
        hp.Choice("units", [8])
        return _net((28, 28, 1))


class FailsInTraining(keras_tuner.HyperModel):
    """Builds fine; training the second grid point raises, as an out-of-memory would."""

    def build(self, hp):
        units = hp.Choice("units", [8, 16])
        model = keras.Sequential([keras.Input((28, 28, 1)), layers.Flatten(), layers.Dense(units, activation="relu"),
                                  layers.Dense(10, activation="softmax")])
        model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
        return model

    def fit(self, hp, model, *args, **kwargs):
        if hp.values["units"] == 16:
            raise RuntimeError("simulated out of memory in the test model")
        return model.fit(*args, **kwargs)


class _FailsWhenTraining(layers.Layer):
    def call(self, x, training=None):
        if training:
            raise ValueError("this layer fails in a training step")
        return x


def fails_in_its_training_step(hp, input_shape):
    """Builds, predicts and evaluates fine (the pre-search check); its first training step raises."""
    hp.Choice("units", [8])
    model = keras.Sequential([keras.Input(input_shape), _FailsWhenTraining(), layers.Flatten(),
                              layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    return model
