"""The `extended` preset: the seed's CNN family, regularised, aiming at >= 99.6% MNIST test accuracy.

The seed's shape (two convolution stages with a filter pair, max-pooling, a dense head,
softmax) with what MNIST models need to pass 99.5%: two 3x3 convolutions per stage, each
followed by batch normalisation (momentum 0.9); dropout after each stage and in the head; light data
augmentation in training only (shifts of up to 10% and rotations of up to 10 degrees);
a cosine learning-rate decay over the epochs; and more epochs (15 per fold, 30 for the
final model). Its grid is 4 points: filters (32,64) or (64,128), dropout 0.25 or 0.4.
"""

from __future__ import annotations

import math
from typing import ClassVar

import keras
import keras_tuner
from keras import layers

from tuner_app.models import Preset
from tuner_app.models.seed import parse_filters

FILTERS = ("32,64", "64,128")
DROPOUT = (0.25, 0.4)
LEARNING_RATES = (0.001,)
DENSE_UNITS = (256,)


def _norm(x):
    # Momentum 0.9 (PyTorch's default) rather than Keras' 0.99: the moving statistics that validation
    # uses settle within a few dozen steps, which a fold of a few thousand images needs (with 0.99, a
    # 4,000-image fold still validated at chance after 10 epochs).
    return layers.BatchNormalization(momentum=0.9)(x)


def _conv(x, filters: int):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
    return layers.ReLU()(_norm(x))


def build_extended(input_shape: tuple[int, ...], num_classes: int, filters: tuple[int, int] = (32, 64),
                   dropout: float = 0.25, dense_units: int = 256, learning_rate: float = 0.001) -> keras.Model:
    """Build and compile the extended CNN (see the module docstring).

    Args:
        input_shape: (H, W, C) of one image.
        num_classes: Number of output classes.
        filters: Filters of the convolutions of stage 1 and stage 2.
        dropout: Dropout rate after each stage and in the head.
        dense_units: Width of the hidden dense layer.
        learning_rate: Adam's initial learning rate (decayed by `ExtendedCNN.fit`).
    """
    inputs = keras.Input(shape=tuple(input_shape))
    # Augmentation runs in training only, in float32 whatever the precision.
    x = layers.RandomTranslation(0.1, 0.1, fill_mode="constant", dtype="float32")(inputs)
    x = layers.RandomRotation(10 / 360, fill_mode="constant", dtype="float32")(x)
    for width in filters:
        x = _conv(_conv(x, width), width)
        x = layers.MaxPooling2D(2)(x)
        x = layers.Dropout(dropout)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(dense_units, use_bias=False)(x)
    x = layers.ReLU()(_norm(x))
    x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32")(x)
    model = keras.Model(inputs, outputs, name="extended_cnn")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate), loss="categorical_crossentropy",
                  metrics=["accuracy"])
    return model


class ExtendedCNN(Preset):
    """`build_extended` from the hyperparameters `filters`, `dropout`, `learning_rate`, `dense_units`
    (see `Preset`)."""

    preset = "extended"
    defaults: ClassVar[dict] = {"epochs": 15, "patience": 5, "retrain_epochs": 30}

    def build(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        filters = hp.Choice("filters", list(FILTERS), ordered=False)
        dropout = hp.Choice("dropout", list(DROPOUT), ordered=False)
        learning_rate = hp.Choice("learning_rate", list(LEARNING_RATES), ordered=False)
        dense_units = hp.Choice("dense_units", list(DENSE_UNITS), ordered=False)
        return build_extended(self.input_shape, self.num_classes, parse_filters(filters), dropout, dense_units,
                              learning_rate)

    def fit(self, hp, model, *args, epochs: int = 1, callbacks=(), **kwargs):
        """`model.fit` with the learning rate decayed along a cosine from its initial value to 0."""
        initial = float(hp.values.get("learning_rate", LEARNING_RATES[0]))

        def cosine(epoch: int, lr: float) -> float:
            return initial * 0.5 * (1 + math.cos(math.pi * epoch / epochs))

        schedule = keras.callbacks.LearningRateScheduler(cosine)
        return model.fit(*args, epochs=epochs, callbacks=[*callbacks, schedule], **kwargs)
