"""The seed's LeNet-style CNN, as a function and as a KerasTuner HyperModel."""

from __future__ import annotations

import keras
import keras_tuner
from keras import layers

from tuner_app.errors import UsageError
from tuner_app.space import SearchSpace, filters_label, parse_filters

POLICIES = ("float32", "mixed_bfloat16")  # the dtype policies `build_cnn` trains with


def check_precision(precision: str) -> None:
    """Raise a UsageError unless `precision` is one of `POLICIES`."""
    if precision not in POLICIES:
        raise UsageError(f"precision {precision!r}: use {' or '.join(map(repr, POLICIES))}")


def build_cnn(
    input_shape: tuple[int, ...],
    num_classes: int,
    filters: tuple[int, int] = (32, 64),
    dense_units: int = 120,
    learning_rate: float = 0.001,
    precision: str = "float32",
) -> keras.Model:
    """Build and compile the seed notebook's CNN.

    Conv 5x5 relu -> MaxPool 2 -> Conv 5x5 relu -> MaxPool 2 -> Flatten -> Dense relu
    -> Dense softmax, Adam, categorical cross-entropy, accuracy.

    Args:
        input_shape: (H, W, C) of one image.
        num_classes: Number of output classes.
        filters: Filter counts of the two convolutions.
        dense_units: Width of the hidden dense layer.
        learning_rate: Adam's learning rate.
        precision: A Keras dtype policy: "float32", or "mixed_bfloat16" (bfloat16 arithmetic,
            float32 weights; the softmax output stays float32 so the loss is computed in float32).
    """
    policy = keras.DTypePolicy(precision)
    model = keras.Sequential(
        [
            keras.Input(shape=tuple(input_shape)),
            layers.Conv2D(filters[0], (5, 5), activation="relu", dtype=policy),
            layers.MaxPooling2D((2, 2), dtype=policy),
            layers.Conv2D(filters[1], (5, 5), activation="relu", dtype=policy),
            layers.MaxPooling2D((2, 2), dtype=policy),
            layers.Flatten(dtype=policy),
            layers.Dense(dense_units, activation="relu", dtype=policy),
            layers.Dense(num_classes, activation="softmax", dtype="float32"),
        ],
        name="lenet_cnn",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


class CNNHyperModel(keras_tuner.HyperModel):
    """Builds `build_cnn` from the hyperparameters `filters`, `learning_rate`, `dense_units`.

    Args:
        input_shape: (H, W, C) of one image.
        num_classes: Number of output classes.
        space: The grid whose values the hyperparameters take.
        precision: Dtype policy of the built models (see `build_cnn`).
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, space: SearchSpace | None = None,
                 precision: str = "float32"):
        super().__init__(name="lenet_cnn")
        self.precision = precision
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.space = space or SearchSpace()

    def build(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        s = self.space
        filters = hp.Choice("filters", [filters_label(f) for f in s.filters], ordered=False)
        learning_rate = hp.Choice("learning_rate", list(s.learning_rates), ordered=False)
        dense_units = hp.Choice("dense_units", list(s.dense_units), ordered=False)
        return build_cnn(self.input_shape, self.num_classes, parse_filters(filters), dense_units, learning_rate,
                         self.precision)
