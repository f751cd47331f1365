"""retrain-best: the best trial's model trained on the whole training set, tested, saved; its files and records."""
import json

import numpy as np
import pytest
from conftest import GRID_SEARCH, MNIST_SAMPLE, run_cli, start_cli, wait_for

from tuner_app.data import load_dataset

PNG = b"\x89PNG\r\n\x1a\n"


def test_retrain_best_writes_a_model_that_reproduces_its_test_accuracy(searched):
    proc = run_cli("retrain-best", "--directory", searched, "--project", "small", "--epochs", "2", check=True)
    printed = float(proc.stdout.strip().splitlines()[-1].removeprefix("test accuracy: "))
    pdir = searched / "small"
    report = json.loads((pdir / "retrain.json").read_text())
    best = json.loads(run_cli("results", "--directory", searched, "--project", "small", "-f", "json").stdout)[0]
    assert report["hyperparameters"] == best["hyperparameters"] and report["cv_score"] == best["score"]
    assert report["test_accuracy"] == pytest.approx(printed, abs=5e-5)
    assert report["epochs"] == 2 and len(report["history"]["accuracy"]) == 2 and "val_accuracy" in report["history"]
    assert report["train_size"] == 1000 and report["test_size"] == 300  # the whole (fixture) training set
    assert report["backend"] and report["device"] == "cpu" and report["seconds"] > 0
    assert report["precision"] == "float32"  # the final model at full precision, whatever the search used
    assert report["test_accuracy"] > 0.3  # well above chance (0.1) after 2 epochs on 900 images

    from tuner_app.retrain import evaluate_saved

    loss, reloaded = evaluate_saved(pdir / "best_model.keras", load_dataset(MNIST_SAMPLE))
    assert reloaded == pytest.approx(report["test_accuracy"], abs=1e-6)
    # the test metrics come from the one pass of predictions: Keras' evaluate of the saved model agrees
    assert report["test_loss"] == pytest.approx(loss, rel=1e-5)
    assert report["test_metrics"]["accuracy"] == pytest.approx(report["test_accuracy"], abs=1e-6)


def test_retrain_best_without_a_search_says_so(tmp_path):
    proc = run_cli("retrain-best", "--directory", tmp_path, "--project", "nothing")
    assert proc.returncode == 2 and "no search project" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.backend_independent
def test_retraining_on_other_data_says_so_and_records_it(searched, tmp_path, small_dataset):
    """Other images of the searched shape: retrain-best goes on, with one warning line naming both sources."""
    other = tmp_path / "other.npz"
    ds = small_dataset
    np.savez(other, x_train=ds.x_train[::-1], y_train=ds.y_train[::-1], x_test=ds.x_test, y_test=ds.y_test)
    proc = run_cli("retrain-best", "--directory", searched, "--project", "small", "--data", other, "--epochs", "1",
                   "--quiet")
    assert proc.returncode == 0, proc.stderr
    warning = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert len(warning) == 1 and str(other) in warning[0] and "mnist-sample" in warning[0]
    report = json.loads((searched / "small" / "retrain.json").read_text())
    assert report["same_data_as_search"] is False and report["data"] == str(other.resolve())
    assert report["searched_data"] == "mnist-sample"
    # the searched data itself, reached by its path instead of its name, is the same data: no warning
    proc = run_cli("retrain-best", "--directory", searched, "--project", "small", "--data", MNIST_SAMPLE, "--epochs",
                   "1", "--quiet")
    assert "warning" not in proc.stderr and json.loads((searched / "small" / "retrain.json").read_text())[
        "same_data_as_search"] is True


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


@pytest.mark.backend_independent
def test_retrain_best_before_any_trial_completed(tmp_path):
    pdir = tmp_path / "p"
    proc = start_cli("search", *GRID_SEARCH, "--directory", tmp_path, "--project", "p")
    wait_for(lambda: (pdir / "search.json").exists(), proc=proc)
    proc.kill()
    proc.wait()
    if any(t["status"] == "COMPLETED" for t in json.loads(run_cli("results", "--directory", tmp_path, "--project", "p",
                                                                    "-f", "json").stdout)):
        pytest.skip("a trial completed before the kill")
    out = run_cli("retrain-best", "--directory", tmp_path, "--project", "p")
    assert out.returncode == 2 and "no completed trial" in out.stderr


def test_standardised_images_are_refused_under_auto_and_searched_and_retrained_as_they_are_with_scale_none(
        tmp_path, small_dataset):
    from tuner_app.api import search
    from tuner_app.config import CVConfig
    from tuner_app.data import Dataset
    from tuner_app.errors import UsageError
    from tuner_app.retrain import evaluate_saved, retrain_best

    x_train = small_dataset.x_train.astype(np.float32)
    mean, std = x_train.mean(), x_train.std()
    ds = Dataset((x_train - mean) / std, small_dataset.y_train, (small_dataset.x_test.astype(np.float32) - mean) / std,
                 small_dataset.y_test, "standardised")
    grid, cv = {"filters": ["8,16"], "learning_rate": [0.01], "dense_units": [16]}, CVConfig(folds=2, epochs=1)
    with pytest.raises(UsageError):  # auto: not pixels, and not rescaled silently
        search(ds, "seed", grid, cv, tmp_path, "p", train_limit=200)
    assert not (tmp_path / "p").exists()
    pdir = search(ds, "seed", grid, cv, tmp_path, "p", train_limit=200, scale="none")
    assert json.loads((pdir / "search.json").read_text())["data"]["scale"] == "none"
    result = retrain_best(ds, tmp_path, "p", {"epochs": 2})  # reads the images as the search did (auto would refuse)
    _, accuracy = evaluate_saved(pdir / "best_model.keras", ds, scale="none")
    assert accuracy == pytest.approx(result["test_accuracy"], abs=1e-6) and accuracy > 0.3
