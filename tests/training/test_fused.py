"""Fused folds: members start as the sequential path's models, train as they would alone, agree with
the sequential path, survive SIGKILL to the same result, and reuse a compiled fused model."""

import json
import signal

import keras
import numpy as np
import pytest
from conftest import run_cli, start_cli, wait_for

from tuner_app import models
from tuner_app.config import CVConfig
from tuner_app.data import one_hot, scale_images
from tuner_app.errors import DataWarning
from tuner_app.models.seed import SeedCNN
from tuner_app.training import fused, fused_model
from tuner_app.training.folds import splits, train_fold
from tuner_app.training.model_cache import ModelCache

SEED_POINT = {"filters": "16,32", "learning_rate": 0.001, "dense_units": 120}
METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


@pytest.fixture(scope="module")
def folds_data(small_dataset):
    x, y = scale_images(small_dataset.x_train), one_hot(small_dataset.y_train, 10)
    return x, y, splits(small_dataset.y_train, 3, 42)


def fused_records(x, y, split, cv, folds=(1, 2, 3), tmp_path=None, cache=None) -> dict:
    records = {}
    fused.train_folds(SeedCNN(), cv, models.hyperparameters(SEED_POINT), list(folds), x, y, split, tmp_path,
                      lambda record, history: records.setdefault(record["fold"], record), cache=cache)
    return records


def test_members_start_from_the_weights_of_the_sequential_paths_models(folds_data):
    x = folds_data[0]
    hp = models.hyperparameters(SEED_POINT)
    model = fused.FusedModels(SeedCNN()).fresh(hp, [1, 2, 3], 42, x.shape[1:])
    members = {k: [v.numpy() if hasattr(v, "numpy") else keras.ops.convert_to_numpy(v)
                   for v in model.get_layer(f"fold_{k}").weights] for k in (1, 2, 3)}
    sequential = ModelCache(SeedCNN(), reuse=False)
    for k in (1, 2, 3):
        alone = [keras.ops.convert_to_numpy(v) for v in sequential.fresh(hp, 42 + k).weights]
        assert len(alone) == len(members[k])
        assert all(np.array_equal(a, b) for a, b in zip(alone, members[k]))


def test_a_member_trains_as_its_sequential_fold(folds_data, tmp_path):
    """Fused, each member's record is its sequential fold's (`folds.train_fold`: same initial weights,
    same batches, EarlyStopping) up to float rounding: no member sees another's data, gradients or
    optimizer state."""
    x, y, split = folds_data
    cv = CVConfig(folds=3, epochs=3, patience=1, precision="float32")
    together = fused_records(x, y, split, cv, tmp_path=tmp_path)
    hp = models.hyperparameters(SEED_POINT)
    for k in (1, 2, 3):
        alone = train_fold(SeedCNN(), ModelCache(SeedCNN(), reuse=False), cv, hp, k, x, y, split[k - 1])
        assert together[k]["epochs"] == alone["epochs"] and together[k]["best_epoch"] == alone["best_epoch"]
        for name in METRICS:
            assert together[k][name] == pytest.approx(alone[name], abs=2e-4), (k, name)


def test_fused_and_sequential_fold_records_agree_through_a_search_on_folds_a_batch_apart(tmp_path, small_dataset):
    """Through the whole search, the two fold modes give every fold the same record, on 961 images whose
    5 folds train on 768 or 769 rows: 6 or 7 batches of 128 (a member without a batch takes no step)."""
    from tuner_app.api import run_search

    records = {}
    for mode in ("fused", "sequential"):
        cv = CVConfig(folds=5, epochs=4, fold_mode=mode, precision="float32")
        pdir = run_search(small_dataset, "seed", {"filters": ["16,32"], "learning_rate": [0.001]}, cv,
                          directory=tmp_path, project=mode, train_limit=961)
        assert json.loads((pdir / "search.json").read_text())["cv"]["fold_mode"] == mode
        records[mode] = json.loads(next(pdir.glob("trial_*/folds.json")).read_text())
        assert [r["fold"] for r in records[mode]] == [1, 2, 3, 4, 5]
    assert {r["train_size"] for r in records["fused"]} == {768, 769}
    assert np.mean([r["val_accuracy"] for r in records["sequential"]]) > 0.5  # it learnt (chance: 0.1)
    for fused_record, sequential in zip(records["fused"], records["sequential"]):
        assert fused_record["best_epoch"] == sequential["best_epoch"]
        for name in METRICS:
            assert fused_record[name] == pytest.approx(sequential[name], rel=2e-3, abs=1e-6), (sequential["fold"], name)


def test_the_reused_fused_model_gives_the_records_of_a_fresh_one(folds_data, tmp_path):
    x, y, split = folds_data
    cv = CVConfig(folds=3, epochs=2, precision="float32")
    cache = fused.FusedModels(SeedCNN(), reuse=True)
    first = fused_records(x, y, split, cv, tmp_path=tmp_path, cache=cache)
    again = fused_records(x, y, split, cv, tmp_path=tmp_path, cache=cache)  # reuses the first's model
    fresh = fused_records(x, y, split, cv, tmp_path=tmp_path, cache=fused.FusedModels(SeedCNN(), reuse=False))
    for k in (1, 2, 3):
        for name in METRICS:
            assert again[k][name] == pytest.approx(first[k][name], abs=1e-6)
            assert fresh[k][name] == pytest.approx(first[k][name], abs=1e-6)


# One grid point, 3 folds, up to 8 epochs, patience 1: fused, one fold stops after its 3rd epoch while another
# trains on (TensorFlow: to its 8th; as sequential): a trial long enough to be killed with one member done.
FUSED_SEARCH = ["--data", "mnist-sample", "--train-limit", "600", "--folds", "3", "--epochs", "8", "--patience", "1",
                "--batch-size", "32", "--grid", "filters=16x32", "--grid", "learning_rate=0.001", "--fold-mode", "fused",
                "--precision", "float32", "--quiet"]


def comparable(pdir) -> dict:
    folds = json.loads(next(pdir.glob("trial_*/folds.json")).read_text())
    return {r["fold"]: {k: v for k, v in r.items() if k not in ("seconds", "rss_mb", "finished_at")} for r in folds}


def test_sigkill_in_the_middle_of_a_fused_trial_with_a_member_stopped_early_then_resume_equals_an_uninterrupted_run(
        tmp_path):
    run_cli("search", *FUSED_SEARCH, "--directory", tmp_path / "ref", "--project", "p", check=True)
    reference = comparable(tmp_path / "ref" / "p")
    epochs = {k: r["epochs"] for k, r in reference.items()}  # (TensorFlow: 5, 8, 3; PyTorch: 4, 6, 3)
    first, last = min(epochs, key=epochs.get), max(epochs, key=epochs.get)
    assert epochs[first] < epochs[last], "a member stops early while another trains on"
    pdir = tmp_path / "p"
    proc = start_cli("search", *FUSED_SEARCH, "--directory", tmp_path, "--project", "p")
    meta = {}

    def one_member_done() -> bool:
        found = list(pdir.glob(f"trial_*/{fused.STATE_FILE}"))
        if found:
            try:
                with np.load(found[0]) as saved:
                    meta.update(json.loads(str(saved["meta"])), path=found[0])
            except (OSError, ValueError, KeyError):  # (replaced meanwhile)
                return False
        return meta.get("epoch", 0) >= epochs[first]

    wait_for(one_member_done, proc=proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = meta["members"]["done"]
    assert done[str(first)] and not done[str(last)], "killed with one member stopped early and one still training"
    before = {r["fold"]: r["finished_at"] for r in json.loads(next(pdir.glob("trial_*/folds.json")).read_text())}
    assert first in before and last not in before
    resumed = run_cli("search", *FUSED_SEARCH, "--directory", tmp_path, "--project", "p", check=True)
    assert resumed.returncode == 0
    assert not meta["path"].exists()  # a finished trial drops its fused state
    assert comparable(pdir) == reference
    after = {r["fold"]: r["finished_at"] for r in json.loads(next(pdir.glob("trial_*/folds.json")).read_text())}
    assert all(after[k] == at for k, at in before.items())  # the folds recorded before the kill were kept


def test_fold_mode_fused_on_a_model_that_cannot_is_a_usage_error(tmp_path, capsys):
    from conftest import MODELS, run_cli_here

    code, err = run_cli_here(capsys, "search", "--model", f"{MODELS / 'own_step.py'}:build", "--data",
                             "mnist-sample", "--fold-mode", "fused", "--directory", tmp_path, "--quiet")
    assert code == 2 and "--fold-mode fused" in err and "train_step" in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_auto_says_why_it_did_not_fuse(tmp_path):
    from conftest import MODELS

    proc = run_cli("search", "--model", f"{MODELS / 'own_step.py'}:build", "--data", "mnist-sample", "--directory",
                   tmp_path, "--dry-run", check=True)
    assert "sequential (not fused: it has its own train_step())" in proc.stdout


def test_a_preset_with_its_own_fit_trains_fused(tmp_path, small_dataset):
    """`extended`'s fit adds a cosine learning-rate schedule: fused training goes through it."""
    from tuner_app.api import run_search

    cv = CVConfig(folds=2, epochs=2, fold_mode="fused", precision="float32")
    pdir = run_search(small_dataset, "extended", {"filters": ["32,64"], "dropout": [0.25]}, cv, directory=tmp_path,
                      project="x", train_limit=400)
    records = json.loads(next(pdir.glob("trial_*/folds.json")).read_text())
    assert [r["fold"] for r in records] == [1, 2] and all(r["epochs"] == 2 for r in records)
    assert all(0.0 <= r["val_accuracy"] <= 1.0 and np.isfinite(r["val_loss"]) for r in records)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the member-by-member step is TensorFlow's")
@pytest.mark.parametrize("loss", ["categorical_crossentropy", keras.losses.CategoricalCrossentropy()])
def test_the_member_by_member_step_trains_as_keras_own_step(loss):
    """Under TensorFlow on a CPU the fused step runs one member after another (memory); its update is
    the one Keras' own step makes from the members' summed losses (weight penalties included)."""
    x = np.random.default_rng(0).random((64, 6), dtype=np.float32)
    y = one_hot(np.arange(64) % 3, 3)
    trained = {}
    for serial in (True, False):
        members = {}
        for k in (1, 2):
            keras.utils.set_random_seed(k)
            members[k] = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu",
                                           kernel_regularizer="l2"), keras.layers.Dense(3, activation="softmax")])
            members[k].compile(optimizer="adam", loss=loss, metrics=["accuracy"])
        model = fused.fuse(members, (6,), serial=serial)
        assert isinstance(model, fused_model.MemberByMember) == serial
        xs = {fused_model.input_name(k): x for k in (1, 2)}
        ys = {fused.member_name(k): y for k in (1, 2)}
        model.fit(xs, ys, batch_size=16, epochs=2, shuffle=False, verbose=0)
        trained[serial] = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    for a, b in zip(*trained.values()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("damage", ["truncated", "another version"])
def test_a_damaged_fused_checkpoint_restarts_its_folds_from_epoch_1_with_one_warning(folds_data, tmp_path, damage):
    x, y, split = folds_data
    cv = CVConfig(folds=3, epochs=2, precision="float32")
    (tmp_path / "fresh").mkdir()
    fresh = fused_records(x, y, split, cv, tmp_path=tmp_path / "fresh")
    state_file = tmp_path / "damaged" / fused.STATE_FILE
    state_file.parent.mkdir()
    if damage == "truncated":  # a checkpoint cut short (a full disk, a copy interrupted)
        state_file.write_bytes(b"PK\x03\x04" + bytes(100))
    else:  # readable, but of other variables (a checkpoint of an earlier tuner-app)
        np.savez(state_file, meta=np.array(json.dumps({"epoch": 1, "elapsed": 1.0, "members": fused.Members(
            [1, 2, 3], cv).to_dict()})), v0=np.zeros(3), o0=np.zeros(3))
    with pytest.warns(DataWarning, match="checkpoint is unreadable .*; folds 1, 2, 3 restart from epoch 1"):
        again = fused_records(x, y, split, cv, tmp_path=tmp_path / "damaged")
    assert not state_file.exists()
    for k in (1, 2, 3):
        assert {m: again[k][m] for m in METRICS} == pytest.approx({m: fresh[k][m] for m in METRICS}, abs=1e-6)
