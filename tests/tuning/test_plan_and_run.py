"""Planning a search (everything checked, nothing written) and the project it creates or resumes."""

import importlib.util
import json
import shutil

import numpy as np
import pytest
from conftest import MODELS, SMALL_SEARCH, run_cli

from tuner_app.api import run_search
from tuner_app.config import CVConfig
from tuner_app.data import Dataset
from tuner_app.errors import DataError, ModelError, UsageError
from tuner_app.results import load_results
from tuner_app.tuning.plan import plan_search

GRID = {"filters": ["8,16"], "learning_rate": [0.01, 0.001], "dense_units": [16]}
CV = CVConfig(folds=2, epochs=1, batch_size=64)


def tree(directory):
    """Every file under `directory` (hidden ones, like the lock file, included) and its bytes."""
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, small_dataset):
    directory = tmp_path_factory.mktemp("search")
    run_search(small_dataset, "seed", GRID, CV, directory, "p", train_limit=100)
    return directory


def test_the_plan_finds_the_grid_labels_and_metrics_and_writes_nothing(tmp_path, small_dataset):
    plan = plan_search(small_dataset, f"{MODELS / 'dense_net.py'}:build", train_limit=200)
    assert len(plan.grid) == 6 and plan.check.label_form == "sparse"
    assert {"val_accuracy", "val_loss", "accuracy", "loss"} <= set(plan.check.metrics)
    assert plan.cv == CVConfig() and len(plan.dataset.y_train) == 200
    assert list(tmp_path.iterdir()) == []


def _tiny_images(side: int) -> Dataset:
    rng = np.random.default_rng(0)
    return Dataset(rng.integers(0, 255, (40, side, side), np.uint8), np.arange(40) % 4,
                   rng.integers(0, 255, (8, side, side), np.uint8), np.arange(8) % 4, "tiny")


def test_images_smaller_than_the_model_takes_are_a_data_error():
    with pytest.raises(DataError):  # its wording: tests/test_cli_errors.py
        plan_search(_tiny_images(12), "seed", cv=CV)
    assert len(plan_search(_tiny_images(16), "seed", cv=CV).grid) == 6  # 16x16 is enough


@pytest.mark.parametrize("name", ["raises", "not_compiled", "wrong_classes", "no_finite_grid", "not_a_model", "Shapeless"])
def test_models_that_cannot_be_searched_are_named_before_anything_is_written(name, small_dataset):
    """Each message's wording is asserted once, in tests/test_cli_errors.py."""
    data = _tiny_images(16) if name == "Shapeless" else small_dataset
    with pytest.raises(UsageError) as info:
        plan_search(data, f"{MODELS / 'broken.py'}:{name}", cv=CV)
    assert "\n" not in str(info.value)


def test_an_objective_the_model_does_not_compute(small_dataset):
    with pytest.raises(ModelError):  # its wording: tests/test_cli_errors.py
        plan_search(small_dataset, "seed", cv=CVConfig(objective="val_auc"))


def test_a_refused_resume_leaves_the_project_byte_identical_lock_file_included(finished, small_dataset):
    before = tree(finished)
    assert any(p.name == ".p.lock" for p in before)
    for cv, grid, fragment in ((CVConfig(folds=3, epochs=1, batch_size=64), GRID, "cv.folds: 2 -> 3"),
                               (CV, {**GRID, "dense_units": [32]}, "grid.hyperparameters.dense_units: [16] -> [32]"),
                               (CVConfig(folds=2, epochs=1, batch_size=64, precision="mixed_bfloat16"), GRID,
                                "cv.precision: float32 -> mixed_bfloat16")):
        with pytest.raises(UsageError, match="--overwrite") as info:
            run_search(small_dataset, "seed", grid, cv, finished, "p", train_limit=100)
        assert fragment in str(info.value)
    with pytest.raises(UsageError, match="model.spec: seed -> "):
        run_search(small_dataset, f"{MODELS / 'dense_net.py'}:build", None, CV, finished, "p", train_limit=100)
    assert tree(finished) == before


def test_an_edited_model_file_is_not_resumed(tmp_path, small_dataset):
    model = tmp_path / "net.py"
    shutil.copy(MODELS / "dense_net.py", model)
    grid = {"units": [32], "second_layer": [False]}
    run_search(small_dataset, f"{model}:build", grid, CV, tmp_path / "d", "p", train_limit=100)
    model.write_text(model.read_text().replace("Adam(0.003)", "Adam(0.01)"))
    with pytest.raises(UsageError, match=r"\(the model file net.py changed since the search\)"):
        run_search(small_dataset, f"{model}:build", grid, CV, tmp_path / "d", "p", train_limit=100)


def test_a_project_from_before_models_and_objectives_resumes(finished, tmp_path, small_dataset):
    copy = tmp_path / "old"
    shutil.copytree(finished, copy)
    search = json.loads((copy / "p" / "search.json").read_text())
    old = {"space": {"filters": [[8, 16]], "learning_rates": [0.01, 0.001], "dense_units": [16]},
           "cv": {k: v for k, v in search["cv"].items() if k not in ("objective", "direction")},
           "data": search["data"], "objective": "val_accuracy", "created": search["created"],
           "backend": search["backend"]}  # what tuner-app wrote before --model (no grid, model, device)
    (copy / "p" / "search.json").write_text(json.dumps(old))
    folds = {p: p.read_bytes() for p in (copy / "p").rglob("folds.json")}
    run_search(small_dataset, "seed", GRID, CV, copy, "p", train_limit=100)
    assert folds == {p: p.read_bytes() for p in (copy / "p").rglob("folds.json")}  # resumed, nothing retrained
    assert [r["status"] for r in load_results(copy / "p")] == ["COMPLETED", "COMPLETED"]


def test_a_resume_under_another_backend_is_refused(tmp_path):
    installed = [b for b in ("tensorflow", "torch", "jax") if importlib.util.find_spec(b)]
    if len(installed) < 2:
        pytest.skip("needs two Keras backends installed (CI installs tensorflow and torch)")
    first, other = installed[:2]
    args = [*SMALL_SEARCH, "--directory", tmp_path, "--project", "p"]
    run_cli("search", *args, "--backend", first, check=True)
    before = tree(tmp_path)
    proc = run_cli("search", *args, "--backend", other)
    assert proc.returncode == 2 and f"backend: {first} -> {other}" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and tree(tmp_path) == before








