"""Bring your own model, end to end with the real command: a dense net from tests/user_models, not the seed's CNN."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MODELS, run_cli

MODEL = f"{MODELS / 'dense_net.py'}:build"
SEARCH = ["search", "--model", MODEL, "--data", "mnist-sample", "--train-limit", "300", "--folds", "2", "--epochs",
          "1", "--quiet"]
POINTS = [{"units": 32, "second_layer": False}, {"units": 32, "second_layer": True, "second_units": 16},
          {"units": 32, "second_layer": True, "second_units": 32}, {"units": 64, "second_layer": False},
          {"units": 64, "second_layer": True, "second_units": 16}, {"units": 64, "second_layer": True, "second_units": 32}]


def _key(values: dict) -> str:
    return json.dumps(values, sort_keys=True)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """The search as a user types it in their model's folder: FILE.py relative to it."""
    directory = tmp_path_factory.mktemp("user_model")
    search = [a if a != MODEL else "dense_net.py:build" for a in SEARCH]
    run_cli(*search, "--directory", directory, "--project", "dense", cwd=MODELS, check=True)
    return directory


def test_every_declared_point_is_one_completed_trial_keyed_by_the_models_names(searched):
    trials = json.loads(run_cli("results", "--directory", searched, "--project", "dense", "-f", "json",
                                check=True).stdout)
    assert sorted(_key(t["hyperparameters"]) for t in trials) == sorted(map(_key, POINTS))
    assert all(t["status"] == "COMPLETED" and len(t["folds"]) == 2 for t in trials)
    assert all({"val_accuracy", "val_loss", "accuracy", "loss"} <= set(t["folds"][0]) for t in trials)
    csv = run_cli("results", "--directory", searched, "--project", "dense", "-f", "csv", check=True).stdout
    assert csv.splitlines()[0] == ("rank,trial_id,status,units,second_layer,second_units,score,std,folds_done,"
                                   "fold_val_accuracy")
    table = run_cli("results", "--directory", searched, "--project", "dense", check=True).stdout
    assert "second_units" in table and "best: units=" in table
    search = json.loads((searched / "dense" / "search.json").read_text())
    assert search["model"]["spec"] == "dense_net.py:build" and search["model"]["file"] == str(MODELS / "dense_net.py")
    assert len(search["model"]["sha256"]) == 64
    assert search["grid"]["size"] == 6


@pytest.mark.backend_independent
def test_the_dry_runs_trial_column_is_the_trial_id_results_shows_for_that_point(searched):
    """`--dry-run` numbers each point as the search will: KerasTuner's trial id, from 0, not a row count."""
    search = [a if a != MODEL else "dense_net.py:build" for a in SEARCH]
    dry = run_cli(*search, "--directory", searched, "--project", "dry", "--dry-run", cwd=MODELS, check=True).stdout
    rows = [[c.strip() for c in line.strip("│ \n").split("│")] for line in dry.splitlines() if line.startswith("│")]
    shown = {row[0]: row[1:4] for row in rows}  # trial -> units, second_layer, second_units as printed
    trials = json.loads(run_cli("results", "--directory", searched, "--project", "dense", "-f", "json").stdout)
    ran = {t["trial_id"]: [str(t["hyperparameters"].get(n, "-")) for n in ("units", "second_layer", "second_units")]
           for t in trials}
    assert len(shown) == len(POINTS) and shown == ran


def test_retrain_best_rebuilds_the_users_model_and_saves_one_that_reloads(searched):
    """From another working directory than the search's: the model comes from the file the search read."""
    proc = run_cli("retrain-best", "--directory", searched, "--project", "dense", "--epochs", "2", cwd=searched,
                   check=True)
    printed = float(proc.stdout.strip().splitlines()[-1].removeprefix("test accuracy: "))
    report = json.loads((searched / "dense" / "retrain.json").read_text())
    best = json.loads(run_cli("results", "--directory", searched, "--project", "dense", "-f", "json").stdout)[0]
    assert report["hyperparameters"] == best["hyperparameters"] and report["model"] == "dense_net.py:build"
    assert report["test_accuracy"] == pytest.approx(printed, abs=5e-5) and printed > 0.5
    assert report["same_data_as_search"] is True and report["train_size"] == 1000

    from tuner_app.data import load_dataset
    from tuner_app.retrain import evaluate_saved

    _, reloaded = evaluate_saved(searched / "dense" / "best_model.keras", load_dataset(dataset="mnist-sample"))
    assert reloaded == pytest.approx(report["test_accuracy"], abs=1e-6)


@pytest.mark.backend_independent
def test_grid_overrides_and_dry_run(tmp_path):
    proc = run_cli(*SEARCH, "--directory", tmp_path, "--dry-run", "--grid", "units=16", "--grid", "second_units=8")
    assert proc.returncode == 0, proc.stderr
    assert "2 grid points" in proc.stdout and "nothing was written" in proc.stdout  # 16 x (no second layer, 8)
    assert not tmp_path.exists() or not list(tmp_path.iterdir())
    run_cli(*SEARCH, "--directory", tmp_path, "--project", "g", "--grid", "units=16", "--grid", "second_layer=false",
            check=True)
    trials = json.loads(run_cli("results", "--directory", tmp_path, "--project", "g", "-f", "json").stdout)
    assert [t["hyperparameters"] for t in trials] == [{"units": 16, "second_layer": False}]


@pytest.mark.backend_independent
def test_objective_val_loss_ranks_lowest_first(tmp_path):
    run_cli(*SEARCH, "--directory", tmp_path, "--project", "loss", "--objective", "val_loss", "--grid",
            "second_layer=false", check=True)
    trials = json.loads(run_cli("results", "--directory", tmp_path, "--project", "loss", "-f", "json").stdout)
    assert [t["objective"] for t in trials] == ["val_loss", "val_loss"]
    assert trials[0]["score"] <= trials[1]["score"]


def test_a_model_that_fails_while_training_is_a_failed_trial_with_its_traceback(tmp_path):
    model = f"{MODELS / 'broken.py'}:FailsInTraining"
    proc = run_cli("search", "--model", model, "--data", "mnist-sample", "--train-limit", "200", "--folds", "2",
                   "--epochs", "1", "--directory", tmp_path, "--project", "f", "--quiet")
    assert proc.returncode == 1
    assert "1 trial(s) failed; trial 1: fold 1: RuntimeError: simulated out of memory in the test model" in proc.stderr
    assert "rerun the same command to retry it" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    trial = json.loads((tmp_path / "f" / "trial_1" / "trial.json").read_text())
    assert trial["status"] == "FAILED" and "Traceback" in trial["message"] and "broken.py" in trial["message"]
    trials = json.loads(run_cli("results", "--directory", tmp_path, "--project", "f", "-f", "json").stdout)
    assert [t["status"] for t in trials] == ["COMPLETED", "FAILED"]  # the other point was scored


@pytest.mark.backend_independent
def test_a_module_in_the_working_directory_is_found_as_python_m_finds_it():
    """`tuner-app` (the console script, whose sys.path lacks the working directory) imports
    package.module:NAME from there, as `python -m` would."""
    script = Path(sys.executable).with_name("tuner-app")
    proc = subprocess.run([script, "search", "--model", "dense_net:build", "--data", "mnist-sample", "--dry-run"],
                          check=False, cwd=MODELS, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "6 grid points" in proc.stdout


@pytest.mark.parametrize("fold_mode", ["fused", "sequential"])
def test_a_failed_trial_says_which_folds_failed_and_the_models_own_error(tmp_path, fold_mode):
    model = f"{MODELS / 'broken.py'}:fails_in_its_training_step"
    proc = run_cli("search", "--model", model, "--data", "mnist-sample", "--train-limit", "200", "--folds", "2",
                   "--epochs", "1", "--fold-mode", fold_mode, "--directory", tmp_path, "--project", "f", "--quiet")
    assert proc.returncode == 1
    folds = "folds 1, 2 (fused)" if fold_mode == "fused" else "fold 1"
    assert f"1 trial(s) failed; trial 0: {folds}: ValueError: this layer fails in a training step" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_frameworks_error_is_said_by_what_went_wrong_not_where():
    """TensorFlow's graph errors start with where (the node and its Python frames); the line says what."""
    import tensorflow as tf

    from tuner_app.errors import FoldFailed

    @tf.function
    def gather(i):
        return tf.gather(tf.constant([1.0, 2.0, 3.0]), i)

    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        gather(tf.constant([10]))
    assert str(raised.value).startswith("Graph execution error")
    assert str(FoldFailed("fold 2", raised.value)) == "fold 2: InvalidArgumentError: indices[0] = 10 is not in [0, 3)"
