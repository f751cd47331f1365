"""A user's model for the tests: a small dense network, not the seed's CNN.

Three declared hyperparameters, one boolean and one conditional on it, as a KerasTuner
user writes them: the grid is units {32, 64} x (second_layer False, or True with
second_units {16, 32}) = 6 points. Sparse labels (its loss is sparse).
"""

import keras
from keras import layers


def build(hp, input_shape=(28, 28, 1), num_classes=10):
    units = hp.Choice("units", [32, 64])
    second_layer = hp.Boolean("second_layer")
    with hp.conditional_scope("second_layer", [True]):
        second_units = hp.Choice("second_units", [16, 32])
    inputs = keras.Input(input_shape)
    x = layers.Flatten()(inputs)
    x = layers.Dense(units, activation="relu")(x)
    if second_layer:
        x = layers.Dense(second_units, activation="relu")(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32")(x)
    model = keras.Model(inputs, outputs, name="dense_net")
    model.compile(optimizer=keras.optimizers.Adam(0.003), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model
