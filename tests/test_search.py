"""Planning a search (everything checked, nothing written) and the project it creates or resumes."""

import importlib.util
import json
import shutil

import numpy as np
import pytest
from conftest import MODELS, SMALL_SEARCH, run_cli

from tuner_app import report
from tuner_app.data import Dataset
from tuner_app.errors import DataError, ModelError, UsageError
from tuner_app.search import plan_search, run_search
from tuner_app.settings import CVConfig

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


def test_images_smaller_than_the_model_takes_name_both_sizes():
    with pytest.raises(DataError, match=r"images are 12x12 but model seed needs at least 16x16"):
        plan_search(_tiny_images(12), "seed", cv=CV)
    assert len(plan_search(_tiny_images(16), "seed", cv=CV).grid) == 6  # 16x16 is enough


@pytest.mark.parametrize("name, fragment", [
    ("raises", "building it with its defaults raised ValueError: this model has a bug (line"),
    ("not_compiled", "the model is not compiled; call model.compile("),
    ("wrong_classes", "output has shape (None, 5) but the data has 10 classes"),
    ("no_finite_grid", "'dropout' (Float 0.0..0.5, sampling linear) has no finite grid"),
    ("not_a_model", "returned str, not a Keras model"),
    ("Shapeless", "its input is (28, 28, 1) but the data's images are (16, 16, 1)"),
])
def test_models_that_cannot_be_searched_are_named_before_anything_is_written(name, fragment, small_dataset):
    data = _tiny_images(16) if name == "Shapeless" else small_dataset
    with pytest.raises(UsageError) as info:
        plan_search(data, f"{MODELS / 'broken.py'}:{name}", cv=CV)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_an_objective_the_model_does_not_compute(small_dataset):
    with pytest.raises(ModelError, match="--objective val_auc: model seed computes accuracy, loss, val_accuracy, val_loss"):
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
    with pytest.raises(UsageError, match=r"model.sha256: [0-9a-f]{64} -> [0-9a-f]{64}"):
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
    assert [r["status"] for r in report.load_results(copy / "p")] == ["COMPLETED", "COMPLETED"]


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


@pytest.mark.parametrize("cpu", ["amd-avx512-bf16", "intel-amx", "intel", None])
def test_auto_fold_mode_is_fused_on_a_gpu_and_on_a_cpu_for_folds_as_long_as_its_class_records_fused_faster(
        small_dataset, cpu, monkeypatch):
    import dataclasses

    import keras

    from tuner_app import device
    from tuner_app.search import CPU_FUSED_MIN_STEPS, decide_fold_mode, fold_steps, resolve_fold_mode

    monkeypatch.setattr(device, "cpu_class", lambda: cpu)
    short = plan_search(small_dataset, "seed", GRID, CVConfig(folds=5, epochs=1, batch_size=128), train_limit=600)
    assert fold_steps(short) == 4  # 480 training rows of a fold in batches of 128

    def plan(epochs, precision):
        return dataclasses.replace(short, cv=dataclasses.replace(short.cv, epochs=epochs, precision=precision))

    tensorflow = keras.backend.backend() == "tensorflow"
    least = CPU_FUSED_MIN_STEPS.get(cpu)
    epochs = -(-(least or 100) // 4)  # the fewest epochs that reach the threshold
    precision = "float32"
    assert fold_steps(plan(epochs, precision)) >= (least or 100) > fold_steps(plan(epochs - 1, precision))
    mode, why = decide_fold_mode(plan(epochs - 1, precision), device="cpu")
    assert mode == "sequential" and why.startswith("not fused: ") if tensorflow else "under" in why
    fused_here = tensorflow and least is not None
    assert resolve_fold_mode(plan(epochs, precision), device="cpu") == ("fused" if fused_here else "sequential")
    assert resolve_fold_mode(plan(epochs, precision), device="cpu", ray=True) == "sequential"  # folds as tasks
    for short_or_long in (1, epochs - 1, epochs):
        assert decide_fold_mode(plan(short_or_long, precision), device="gpu") == ("fused", None)
    for where in ("cpu", "gpu"):  # in bfloat16 fused and sequential folds round apart: not picked
        assert decide_fold_mode(plan(epochs, "mixed_bfloat16"), device=where) == (
            "sequential", "not fused: fused folds equal sequential ones in float32 only")
    if tensorflow and least is None:
        assert decide_fold_mode(plan(200, "float32"), device="cpu")[1] == "not fused: no record of this CPU class"
    # a resumed project keeps its own; an explicit choice is taken as given
    long = plan(2000, "float32")
    assert resolve_fold_mode(short, {"cv": {"fold_mode": "fused"}}, "cpu") == "fused"
    assert resolve_fold_mode(long, {"cv": {"fold_mode": "sequential"}}, "gpu") == "sequential"
    given = dataclasses.replace(long, cv=dataclasses.replace(long.cv, fold_mode="sequential"))
    assert resolve_fold_mode(given, device="gpu") == "sequential"
    given = dataclasses.replace(short, cv=dataclasses.replace(short.cv, fold_mode="fused"))
    assert resolve_fold_mode(given, device="cpu") == "fused"


def test_auto_fold_mode_is_sequential_for_a_model_that_cannot_train_fused_or_has_its_own_fit(small_dataset):
    import keras_tuner

    from tuner_app.models.seed import SeedCNN
    from tuner_app.search import decide_fold_mode, resolve_fold_mode

    class OwnFit(keras_tuner.HyperModel):  # a user's HyperModel that sets its own batch size
        def build(self, hp):
            return SeedCNN().build(hp)

        def fit(self, hp, model, *args, **kwargs):
            return model.fit(*args, **{**kwargs, "batch_size": 32})

    long = CVConfig(folds=2, epochs=50, batch_size=32)
    own = plan_search(small_dataset, OwnFit(), GRID, long, train_limit=200)
    blocked = plan_search(small_dataset, f"{MODELS / 'own_step.py'}:build", None, long, train_limit=200)
    assert own.check.own_fit and own.check.fused_blocker.startswith("its HyperModel has its own fit()")
    assert blocked.check.fused_blocker == "it has its own train_step()"
    for plan in (own, blocked):
        assert resolve_fold_mode(plan, device="gpu") == "sequential"
        assert decide_fold_mode(plan, device="cpu") == ("sequential", f"not fused: {plan.check.fused_blocker}")
