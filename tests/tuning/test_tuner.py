"""CVTuner and run_search through the Python API: K-fold scores, resume, the seed's results, KerasTuner's API."""

import json
import shutil

import keras
import keras_tuner
import numpy as np
import pytest
from conftest import MODELS
from sklearn.model_selection import StratifiedKFold

from tuner_app.api import run_search
from tuner_app.config import CVConfig
from tuner_app.data import one_hot, scale_images, stratified_subset
from tuner_app.errors import UsageError
from tuner_app.models.seed import build_cnn
from tuner_app.results import load_results
from tuner_app.training.data_order import fold_batches
from tuner_app.tuning.plan import plan_search
from tuner_app.tuning.tuner import CVTuner

GRID = {"filters": ["8,16", "16,32"], "learning_rate": [0.001], "dense_units": [32]}
CV = CVConfig(folds=2, seed=42, epochs=1, batch_size=64, patience=3)


@pytest.fixture(scope="module")
def project(tmp_path_factory, small_dataset):
    directory = tmp_path_factory.mktemp("tuner")
    pdir = run_search(small_dataset, "seed", GRID, CV, directory, "p", train_limit=200)
    return directory, pdir


def test_every_point_completed_once_and_score_is_the_mean_of_its_folds(project):
    _, pdir = project
    results = load_results(pdir)
    assert sorted(r["hyperparameters"]["filters"] for r in results) == ["16,32", "8,16"]
    for r in results:
        assert r["status"] == "COMPLETED" and r["objective"] == "val_accuracy"
        assert [f["fold"] for f in r["folds"]] == [1, 2]
        assert r["score"] == pytest.approx(np.mean([f["val_accuracy"] for f in r["folds"]]), abs=1e-12)
        assert sum(f["val_size"] for f in r["folds"]) == 200
        for f in r["folds"]:
            assert 0.0 < f["val_accuracy"] <= 1.0 and f["epochs"] == 1 and f["seconds"] > 0
            assert {"loss", "accuracy", "val_loss"} <= set(f)  # every compiled metric, training and validation
    assert results[0]["score"] >= results[1]["score"]


def test_the_seed_model_scores_folds_as_the_seed_notebooks_loop_does(small_dataset, tmp_path):
    """The default model gives the fold scores of the seed notebook's plain K-fold loop:
    StratifiedKFold(shuffle, seed), a fresh model seeded per fold, EarlyStopping, with the fold's
    data in its seeded per-epoch order (`tuner_app.training.data_order`, pinned by tests/training/test_data_order.py)."""
    cv = CVConfig(folds=2, seed=42, epochs=2, batch_size=128, patience=3)
    pdir = run_search(small_dataset, "seed", {"filters": ["16,32"], "learning_rate": [0.001, 0.0005]}, cv, tmp_path,
                      "p", train_limit=300)
    data = stratified_subset(small_dataset, 300)
    x, y = scale_images(data.x_train), one_hot(data.y_train, 10)
    split = StratifiedKFold(n_splits=2, shuffle=True, random_state=42).split(x, data.y_train)
    expected = {0.001: [], 0.0005: []}
    for k, (tr, va) in enumerate(split, start=1):
        for lr, scores in expected.items():
            keras.backend.clear_session()
            keras.utils.set_random_seed(42 + k)
            model = build_cnn((28, 28, 1), 10, (16, 32), 120, lr)
            stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=3, restore_best_weights=True)
            data, follow = fold_batches(x, y, tr, 128, 42, k)
            history = model.fit(data, validation_data=(x[va], y[va]), epochs=2, validation_batch_size=128,
                                shuffle=False, verbose=0, callbacks=[follow, stop]).history
            best = int(np.argmax(history["val_accuracy"]))
            scores.append((history["val_accuracy"][best], history["val_loss"][best]))
    for r in load_results(pdir):
        got = [(f["val_accuracy"], f["val_loss"]) for f in r["folds"]]
        np.testing.assert_allclose(got, expected[r["hyperparameters"]["learning_rate"]], rtol=1e-5, atol=1e-6)


def test_resume_trains_only_the_missing_folds(project, tmp_path, small_dataset):
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

    run_search(small_dataset, "seed", GRID, CV, copy, "p", train_limit=200)
    after = json.loads((trial_dir / "folds.json").read_text())
    assert after[0] == before[0]  # kept, not retrained
    assert after[1]["finished_at"] > before[1]["finished_at"]  # retrained
    assert (copy / "p" / "trial_0" / "folds.json").read_text() == untouched
    assert [r["status"] for r in load_results(copy / "p")] == ["COMPLETED", "COMPLETED"]


def test_a_users_build_function_and_objective_through_the_api(tmp_path, small_dataset):
    def build(hp, num_classes):
        model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                                  keras.layers.Dense(hp.Choice("units", [16, 32]), activation="relu"),
                                  keras.layers.Dense(num_classes, activation="softmax")])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return model

    cv = CVConfig(folds=2, epochs=1, objective="val_loss")
    pdir = run_search(small_dataset, build, None, cv, tmp_path, "fn", train_limit=200)
    results = load_results(pdir)
    assert [r["objective"] for r in results] == ["val_loss", "val_loss"]
    assert results[0]["score"] <= results[1]["score"]  # val_loss: lower is better
    assert results[0]["score"] == pytest.approx(np.mean([f["val_loss"] for f in results[0]["folds"]]))
    search = json.loads((pdir / "search.json").read_text())
    assert search["model"]["spec"].endswith("build") and search["cv"]["direction"] == "min"


def test_kerastuner_users_get_the_tuner_api_or_a_clear_error_at_once(project, small_dataset):
    directory, pdir = project
    plan = plan_search(small_dataset, "seed", GRID, CV, train_limit=200)
    tuner = CVTuner(plan.model.hypermodel, plan.grid, CV, 10, directory=str(directory), project_name="p")
    best = tuner.get_best_hyperparameters(1)[0].values
    assert best == load_results(pdir)[0]["hyperparameters"]
    assert tuner.oracle.get_best_trials(1)[0].score == load_results(pdir)[0]["score"]
    with pytest.raises(TypeError, match="takes no 'epochs': set it in CVConfig"):
        tuner.search(scale_images(small_dataset.x_train), small_dataset.y_train, epochs=3)
    with pytest.raises(TypeError, match="takes no 'validation_data'"):
        tuner.search(scale_images(small_dataset.x_train), small_dataset.y_train, validation_data=None)
    with pytest.raises(UsageError, match="keeps no per-trial models.*get_best_hyperparameters"):
        tuner.get_best_models()
    # A stock KerasTuner tuner reloads the project: same trials, same best.
    stock = keras_tuner.RandomSearch(hypermodel=lambda hp: None, objective="val_accuracy", directory=str(directory),
                                     project_name="p")
    assert stock.oracle.get_best_trials(1)[0].hyperparameters.values == best


def test_tensorboard_logs_per_trial_and_fold_with_hparams(tmp_path, small_dataset):
    grid = {"filters": ["8,16"], "learning_rate": [0.01], "dense_units": [16]}
    pdir = run_search(small_dataset, "seed", grid, CV, tmp_path, "tb", train_limit=100, tensorboard=True)
    for k in (1, 2):
        fold = pdir / "tensorboard" / "trial_0" / f"fold_{k}"
        assert b"hparams" in b"".join(p.read_bytes() for p in fold.glob("events.out.tfevents.*"))
        assert b"epoch_accuracy" in b"".join(p.read_bytes() for p in (fold / "validation").glob("events.*"))


def test_a_user_model_file_from_the_api(tmp_path, small_dataset):
    pdir = run_search(small_dataset, f"{MODELS / 'dense_net.py'}:build", {"units": [32], "second_units": [16]},
                      CVConfig(folds=2, epochs=1), tmp_path, "file", train_limit=200)
    points = sorted(json.dumps(r["hyperparameters"], sort_keys=True) for r in load_results(pdir))
    expected = [{"units": 32, "second_layer": False}, {"units": 32, "second_layer": True, "second_units": 16}]
    assert points == sorted(json.dumps(p, sort_keys=True) for p in expected)
