"""A user's model compiled with its loss in a list: trains sequentially, cannot train fused."""

import keras
from keras import layers


def build(hp, input_shape=(28, 28, 1), num_classes=10):
    units = hp.Choice("units", [32, 64])
    inputs = keras.Input(input_shape)
    x = layers.Dense(units, activation="relu")(layers.Flatten()(inputs))
    model = keras.Model(inputs, layers.Dense(num_classes, activation="softmax")(x))
    model.compile(optimizer="adam", loss=["categorical_crossentropy"], metrics=["accuracy"])
    return model
