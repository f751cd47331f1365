import json

import numpy as np
import pytest
from conftest import run_cli

from tuner_app import plots, report

pytestmark = pytest.mark.backend_independent  # CI runs it in the TensorFlow pass only (README: Tests)

PNG = b"\x89PNG\r\n\x1a\n"


def test_results_plot_has_one_point_per_fold_and_writes_a_png(searched, tmp_path):
    results = report.load_results(searched / "small")
    fig = plots.results_figure(results)
    from matplotlib.collections import PathCollection

    scattered = sum(len(c.get_offsets()) for c in fig.axes[0].collections if isinstance(c, PathCollection))
    assert scattered == sum(len(r["folds"]) for r in results) == 4
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels[-1].startswith(f"filters={results[0]['hyperparameters']['filters']}")  # best on top

    out = tmp_path / "out.png"
    proc = run_cli("results", "--directory", searched, "--project", "small", "--plot", out)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes().startswith(PNG) and out.stat().st_size > 10_000


def test_plot_option_needs_a_png_name(searched, tmp_path):
    proc = run_cli("results", "--directory", searched, "--project", "small", "--plot", tmp_path / "x.jpg")
    assert proc.returncode == 2 and "--plot" in proc.stderr


def test_retrain_best_writes_learning_curves_and_confusion_matrix(searched):
    run_cli("retrain-best", "--directory", searched, "--project", "small", "--epochs", "1", "--train-limit", "300",
            check=True)
    pdir = searched / "small"
    for name in ("learning_curves.png", "confusion_matrix.png"):
        assert (pdir / name).read_bytes().startswith(PNG)
    retrain = json.loads((pdir / "retrain.json").read_text())
    matrix = np.array(retrain["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == retrain["test_size"]
    assert abs(np.trace(matrix) / matrix.sum() - retrain["test_accuracy"]) < 1e-6


def test_retrain_test_metrics_equal_keras_evaluate(searched, small_dataset):
    """retrain-best computes test loss/accuracy from one predict pass; they must equal evaluate()."""
    import keras

    from tuner_app.data import one_hot, scale_images

    run_cli("retrain-best", "--directory", searched, "--project", "small", "--epochs", "1", "--train-limit", "300",
            check=True)
    retrain = json.loads((searched / "small" / "retrain.json").read_text())
    model = keras.saving.load_model(str(searched / "small" / "best_model.keras"))
    loss, acc = model.evaluate(scale_images(small_dataset.x_test), one_hot(small_dataset.y_test, 10), verbose=0)
    assert abs(retrain["test_accuracy"] - acc) < 1e-6
    assert abs(retrain["test_loss"] - loss) < 1e-4
