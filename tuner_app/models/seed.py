"""The `seed` preset: the notebook's LeNet-style CNN and its 6-point grid.

Its hyperparameters are `filters` (the two convolutions' filter counts, "16,32"),
`learning_rate` and `dense_units`, declared in the notebook's loop order, so the grid is
enumerated as the notebook loops (filters outermost). `--grid filters=16x32,32x64` replaces the
pairs (written AxB, or as a JSON list of "A,B"); the old `--filters`, `--learning-rate` and
`--dense-units` still do (`grid_overrides`).
"""

from __future__ import annotations

import math

import keras
import keras_tuner
from keras import layers

from tuner_app.errors import SettingError, UsageError
from tuner_app.models import Preset

FILTERS = ("16,32", "32,64", "64,128")
LEARNING_RATES = (0.001, 0.0005)
DENSE_UNITS = (120,)


def parse_filters(text: str) -> tuple[int, int]:
    """'16,32' -> (16, 32); anything else raises SettingError naming `filters`."""
    parts = [p.strip() for p in str(text).replace("x", ",").split(",")]
    try:
        pair = tuple(int(p) for p in parts)
    except ValueError:
        pair = ()
    if len(pair) != 2 or min(pair) < 1:
        raise SettingError("filters", text, "give two positive integers, the filters of conv 1 and conv 2, e.g. 32x64")
    return pair  # type: ignore[return-value]


def seed_grid(overrides: dict[str, list]) -> dict[str, list]:
    """`--grid` values for this model, checked as the old options were: filter pairs as the grid stores
    them ("16x32" -> "16,32"), positive learning rates and dense units. A value of the wrong type is
    left for the grid's own check, which names its type."""
    checked = dict(overrides)
    for name, kind, key in (("filters", str, "filters"), ("learning_rate", float, "learning_rates"),
                            ("dense_units", int, "dense_units")):
        values = []
        for value in overrides.get(name, []):
            try:
                values += grid_overrides(**{key: [kind(value)]})[name]
            except (TypeError, ValueError):
                values.append(value)
            except SettingError as e:
                raise UsageError(f"--grid {name}={value}: {e.rule}") from None
        if name in overrides:
            checked[name] = values
    return checked


def grid_overrides(filters=None, learning_rates=None, dense_units=None) -> dict[str, list]:
    """The seed model's grid options as `--grid` overrides, validated; None leaves a value as declared."""
    overrides = {}
    if filters:
        overrides["filters"] = [",".join(map(str, parse_filters(f) if isinstance(f, str) else f)) for f in filters]
    if learning_rates:
        for lr in learning_rates:
            if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
                raise SettingError("learning_rate", lr, "must be a positive number, e.g. 0.001")
        overrides["learning_rate"] = [float(v) for v in learning_rates]
    if dense_units:
        for units in dense_units:
            if isinstance(units, bool) or not isinstance(units, int) or units < 1:
                raise SettingError("dense_units", units, "must be a positive integer, e.g. 120")
        overrides["dense_units"] = list(dense_units)
    return overrides


def build_cnn(
    input_shape: tuple[int, ...],
    num_classes: int,
    filters: tuple[int, int] = (32, 64),
    dense_units: int = 120,
    learning_rate: float = 0.001,
) -> keras.Model:
    """Build and compile the seed notebook's CNN.

    Conv 5x5 relu -> MaxPool 2 -> Conv 5x5 relu -> MaxPool 2 -> Flatten -> Dense relu
    -> Dense softmax, Adam, categorical cross-entropy, accuracy. The layers compute in
    Keras' global dtype policy (see `tuner_app.models.dtype_policy`), except the softmax
    output, which stays float32 so that the loss is computed in float32.

    Args:
        input_shape: (H, W, C) of one image.
        num_classes: Number of output classes.
        filters: Filter counts of the two convolutions.
        dense_units: Width of the hidden dense layer.
        learning_rate: Adam's learning rate.
    """
    model = keras.Sequential(
        [
            keras.Input(shape=tuple(input_shape)),
            layers.Conv2D(filters[0], (5, 5), activation="relu"),
            layers.MaxPooling2D((2, 2)),
            layers.Conv2D(filters[1], (5, 5), activation="relu"),
            layers.MaxPooling2D((2, 2)),
            layers.Flatten(),
            layers.Dense(dense_units, activation="relu"),
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


class SeedCNN(Preset):
    """`build_cnn` from the hyperparameters `filters`, `learning_rate`, `dense_units` (see `Preset`)."""

    preset = "seed"

    def build(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        filters = hp.Choice("filters", list(FILTERS), ordered=False)
        learning_rate = hp.Choice("learning_rate", list(LEARNING_RATES), ordered=False)
        dense_units = hp.Choice("dense_units", list(DENSE_UNITS), ordered=False)
        return build_cnn(self.input_shape, self.num_classes, parse_filters(filters), dense_units, learning_rate)
