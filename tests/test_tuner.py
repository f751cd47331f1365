import dataclasses
import json

import numpy as np
import pytest
from conftest import MNIST_SMALL

from tuner_app import report
from tuner_app.data import load_dataset
from tuner_app.errors import UsageError
from tuner_app.space import SearchSpace
from tuner_app.tuner import CVConfig, CVTuner, run_search

SPACE = SearchSpace(("8,16", "16,32"), (0.001,), (32,))
CV = CVConfig(folds=2, seed=42, epochs=1, batch_size=64, patience=3)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tuner")
    pdir = run_search(load_dataset(MNIST_SMALL), SPACE, CV, directory, "p", train_limit=200)
    return directory, pdir


def test_every_point_completed_once_and_score_is_the_mean_of_its_folds(project):
    _, pdir = project
    results = report.load_results(pdir)
    assert sorted(r["hyperparameters"]["filters"] for r in results) == ["16,32", "8,16"]
    for r in results:
        assert r["status"] == "COMPLETED"
        assert [f["fold"] for f in r["folds"]] == [1, 2]
        assert r["score"] == pytest.approx(np.mean([f["val_accuracy"] for f in r["folds"]]), abs=1e-12)
        assert sum(f["val_size"] for f in r["folds"]) == 200
        for f in r["folds"]:
            assert 0.0 < f["val_accuracy"] <= 1.0 and f["epochs"] == 1 and f["seconds"] > 0
    assert results[0]["score"] >= results[1]["score"]


def test_folds_are_stratified_and_fixed_by_the_seed(small_dataset):
    y = small_dataset.y_train
    tuner_splits = CVTuner.splits(type("T", (), {"cv": CVConfig(folds=5, seed=42)})(), y)
    overall = np.bincount(y) / len(y)
    for train, val in tuner_splits:
        assert len(np.intersect1d(train, val)) == 0
        np.testing.assert_allclose(np.bincount(y[val], minlength=10) / len(val), overall, atol=0.006)
    again = CVTuner.splits(type("T", (), {"cv": CVConfig(folds=5, seed=42)})(), y)
    assert all((a[1] == b[1]).all() for a, b in zip(tuner_splits, again))


def test_resume_trains_only_the_missing_folds(project, tmp_path):
    import shutil

    directory, _ = project
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    trial_dir = copy / "p" / "trial_1"
    before = json.loads((trial_dir / "folds.json").read_text())
    # Make trial 1 look like a process died after its first fold.
    trial = json.loads((trial_dir / "trial.json").read_text())
    trial.update(status="RUNNING", score=None, best_step=None)
    trial["metrics"]["metrics"] = {}
    (trial_dir / "trial.json").write_text(json.dumps(trial))
    (trial_dir / "folds.json").write_text(json.dumps(before[:1]))
    untouched = (copy / "p" / "trial_0" / "folds.json").read_text()

    run_search(load_dataset(MNIST_SMALL), SPACE, CV, copy, "p", train_limit=200)
    after = json.loads((trial_dir / "folds.json").read_text())
    assert after[0] == before[0]  # kept, not retrained
    assert after[1]["finished_at"] > before[1]["finished_at"]  # retrained
    assert (copy / "p" / "trial_0" / "folds.json").read_text() == untouched
    assert [r["status"] for r in report.load_results(copy / "p")] == ["COMPLETED", "COMPLETED"]


def test_changed_settings_are_refused_and_nothing_is_touched(project):
    directory, pdir = project
    snapshot = {p: p.read_bytes() for p in pdir.rglob("*") if p.is_file()}
    with pytest.raises(UsageError, match=r"cv.folds: 2 -> 3.*--overwrite"):
        run_search(load_dataset(MNIST_SMALL), SPACE, CVConfig(folds=3, epochs=1), directory, "p", train_limit=200)
    mixed = dataclasses.replace(CV, precision="mixed_bfloat16")
    with pytest.raises(UsageError, match=r"cv.precision: float32 -> mixed_bfloat16"):
        run_search(load_dataset(MNIST_SMALL), SPACE, mixed, directory, "p", train_limit=200)
    assert snapshot == {p: p.read_bytes() for p in pdir.rglob("*") if p.is_file()}


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_reusing_compiled_models_gives_the_same_fold_scores_as_fresh_ones(tmp_path, precision):
    """The default (model reuse on TensorFlow) scores every fold as a freshly compiled model does."""
    space = SearchSpace(("8,16",), (0.001, 0.01), (32,))  # one architecture, two learning rates
    cv = dataclasses.replace(CV, precision=precision)
    fresh = run_search(load_dataset(MNIST_SMALL), space, cv, tmp_path, "fresh", train_limit=200, reuse_models=False)
    again = run_search(load_dataset(MNIST_SMALL), space, cv, tmp_path, "default", train_limit=200)
    score = {r["hyperparameters"]["learning_rate"]: [(f["val_accuracy"], f["val_loss"]) for f in r["folds"]]
             for r in report.load_results(fresh)}
    for r in report.load_results(again):
        np.testing.assert_allclose([(f["val_accuracy"], f["val_loss"]) for f in r["folds"]],
                                   score[r["hyperparameters"]["learning_rate"]], rtol=1e-5, atol=1e-6)


def test_tensorboard_logs_per_trial_and_fold_with_hparams(tmp_path):
    space = SearchSpace(("8,16",), (0.01,), (16,))
    pdir = run_search(load_dataset(MNIST_SMALL), space, CV, tmp_path, "tb", train_limit=100, tensorboard=True)
    for k in (1, 2):
        fold = pdir / "tensorboard" / "trial_0" / f"fold_{k}"
        assert b"hparams" in b"".join(p.read_bytes() for p in fold.glob("events.out.tfevents.*"))
        assert b"epoch_accuracy" in b"".join(p.read_bytes() for p in (fold / "validation").glob("events.*"))
