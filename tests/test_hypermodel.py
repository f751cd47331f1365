import keras_tuner
import pytest

from tuner_app.hypermodel import CNNHyperModel, build_cnn
from tuner_app.space import SearchSpace


def test_seed_best_model_has_the_seed_parameter_count():
    model = build_cnn((28, 28, 1), 10, (64, 128), 120, 0.0005)
    assert model.count_params() == 453_682
    kinds = [layer.__class__.__name__ for layer in model.layers]
    assert kinds == ["Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Flatten", "Dense", "Dense"]
    assert model.layers[0].kernel_size == (5, 5) and model.layers[-1].activation.__name__ == "softmax"
    assert float(model.optimizer.learning_rate) == pytest.approx(0.0005)


def test_hypermodel_builds_from_hyperparameters_for_any_shape_and_classes():
    hp = keras_tuner.HyperParameters()
    hp.values = {"filters": "8,16", "learning_rate": 0.01, "dense_units": 32}
    model = CNNHyperModel((32, 32, 3), 5, SearchSpace(("8,16",), (0.01,), (32,))).build(hp)
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 5)
    assert model.layers[0].filters == 8 and model.layers[2].filters == 16 and model.layers[5].units == 32


def test_mixed_precision_computes_in_bfloat16_and_keeps_float32_weights_and_output():
    import numpy as np

    model = build_cnn((28, 28, 1), 10, (64, 128), 120, 0.0005, precision="mixed_bfloat16")
    assert model.count_params() == 453_682
    assert [layer.compute_dtype for layer in model.layers[:-1]] == ["bfloat16"] * 6
    assert model.layers[-1].compute_dtype == "float32"  # softmax and the loss in float32
    assert {w.dtype for w in model.weights} == {"float32"}
    probabilities = model.predict(np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32), verbose=0)
    assert probabilities.dtype == np.float32 and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
