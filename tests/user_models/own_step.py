"""A user's model with its own `train_step` (a subclassed keras.Model): trains sequentially; its folds
cannot train fused, whose step is Keras' own."""

import keras
from keras import layers


class OwnStep(keras.Model):
    """A model whose training step is its own (here Keras' own, called through it)."""

    def __init__(self, units: int, num_classes: int, **kwargs):
        super().__init__(**kwargs)
        self.flatten = layers.Flatten()
        self.hidden = layers.Dense(units, activation="relu")
        self.out = layers.Dense(num_classes, activation="softmax")

    def call(self, x):
        return self.out(self.hidden(self.flatten(x)))

    def train_step(self, *args, **kwargs):
        return super().train_step(*args, **kwargs)


def build(hp, input_shape=(28, 28, 1), num_classes=10):
    model = OwnStep(hp.Choice("units", [32, 64]), num_classes)
    model.build((None, *input_shape))
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    return model
