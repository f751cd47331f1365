"""An example of bringing your own model to tuner-app (README, "Bring your own model").

    tuner-app search --model examples/my_model.py:build --data mnist-sample --dry-run
    tuner-app search --model examples/my_model.py:build --data mnist-sample --folds 3 --epochs 3

A dense network with four declared hyperparameters, one of them conditional on a boolean:
2 units x 3 dropouts x (no second layer, or a second layer of 32 or 64 units) = 18 grid points.
"""

import keras
from keras import layers


def build(hp, input_shape, num_classes):
    units = hp.Choice("units", [64, 128])
    dropout = hp.Float("dropout", 0.0, 0.4, step=0.2)       # a Float needs a step to be a grid
    second_layer = hp.Boolean("second_layer")
    with hp.conditional_scope("second_layer", [True]):      # active only when second_layer is True
        second_units = hp.Choice("second_units", [32, 64])
    inputs = keras.Input(input_shape)
    x = layers.Dropout(dropout)(layers.Dense(units, activation="relu")(layers.Flatten()(inputs)))
    if second_layer:
        x = layers.Dense(second_units, activation="relu")(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32")(x)  # float32 output: see precision
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model
