"""The real `tuner-app` command in subprocesses: the seed's job end to end, and bad input."""

import json

import numpy as np
import pytest
from conftest import SMALL_SEARCH, run_cli


def test_help_lists_every_command():
    proc = run_cli("--help", check=True)
    for command in ("search", "results", "retrain-best", "run"):
        assert command in proc.stdout
    search_help = run_cli("search", "--help", check=True).stdout
    for option in ("--data", "--train-limit", "--grid", "--folds", "--seed", "--epochs", "--batch-size", "--patience",
                   "--directory", "--project", "--overwrite", "--device", "--backend", "--precision"):
        assert option in search_help
    for hidden in ("--dataset", "--filters", "--learning-rate", "--dense-units", "--mixed-precision"):  # old names
        assert hidden not in search_help
    bare = run_cli()
    assert bare.returncode == 2 and "Commands" in bare.stdout
    assert bare.stderr.strip().splitlines()[-1] == "tuner-app: error: give a command: search, results, retrain-best or run"
    from importlib.metadata import version

    assert run_cli("--version", check=True).stdout == f"tuner-app {version('tuner-app')}\n"


def test_help_groups_the_options_in_panels_with_one_line_each():
    import os

    text = run_cli("run", "--help", env={**os.environ, "COLUMNS": "200"}, check=True).stdout
    panels = ["Data", "Model and grid", "Cross-validation", "Device and precision", "Scale-out", "Project and output",
              "Final training (retrain-best)"]
    found = [line.split("─ ", 1)[1].split(" ─")[0] for line in text.splitlines() if line.startswith("╭─ ")]
    assert found[0] == "Options" and found[1:] == panels
    retrain = text.split("Final training (retrain-best)", 1)[1]
    for option in ("--retrain-epochs", "--retrain-batch-size", "--retrain-validation-split", "--retrain-precision"):
        assert option in retrain
    import typer

    from tuner_app.cli import app

    for name, command in typer.main.get_command(app).commands.items():  # one sentence of help per option
        for param in command.params:
            if getattr(param, "help", None) and not param.hidden:
                assert "\n" not in param.help and len(param.help) <= 120, (name, param.name, param.help)


def test_shell_completion_completes_commands_and_choices():
    import os

    env = {**os.environ, "_TUNER_APP_COMPLETE": "complete_bash", "COMP_WORDS": "tuner-app se", "COMP_CWORD": "1"}
    assert run_cli(env=env, check=True).stdout.split() == ["search"]
    env.update(COMP_WORDS="tuner-app search --fold-mode ", COMP_CWORD="3")
    assert run_cli(env=env, check=True).stdout.split() == ["auto", "fused", "sequential"]
    assert "--install-completion" in run_cli("--help", check=True).stdout


def test_results_json_lists_every_trial_with_its_fold_records(searched):
    proc = run_cli("results", "--directory", searched, "--project", "small", "--format", "json", check=True)
    trials = json.loads(proc.stdout)
    assert len(trials) == 2
    for t in trials:
        assert t["status"] == "COMPLETED" and len(t["folds"]) == 2
        assert t["score"] == pytest.approx(np.mean([f["val_accuracy"] for f in t["folds"]]), abs=1e-12)
        assert set(t["folds"][0]) >= {"fold", "val_accuracy", "val_loss", "epochs", "seconds", "finished_at"}
    assert trials[0]["score"] >= trials[1]["score"]
    table = run_cli("results", "--directory", searched, "--project", "small", check=True).stdout
    assert "16,32" in table and "32,64" in table and "best:" in table
    csv = run_cli("results", "--directory", searched, "--project", "small", "-f", "csv", check=True).stdout
    assert csv.splitlines()[0].startswith("rank,trial_id,status") and len(csv.splitlines()) == 3




@pytest.mark.backend_independent
def test_rerunning_a_finished_search_trains_nothing(searched):
    pdir = searched / "small"
    before = {p: p.read_bytes() for p in pdir.rglob("folds.json")}
    run_cli("search", *SMALL_SEARCH, "--directory", searched, "--project", "small", check=True)
    assert before == {p: p.read_bytes() for p in pdir.rglob("folds.json")}


def test_run_searches_then_retrains_the_best_in_one_process(tmp_path):
    proc = run_cli("run", *SMALL_SEARCH, "--fold-mode", "fused", "--retrain-epochs", "1", "--directory", tmp_path,
                   "--project", "job", check=True)
    pdir = tmp_path / "job"
    searched = json.loads((pdir / "search.json").read_text())
    assert searched["cv"]["fold_mode"] == "fused" and searched["cv"]["epochs"] == 1
    results = json.loads(run_cli("results", "--directory", tmp_path, "--project", "job", "-f", "json", check=True).stdout)
    assert len(results) == 2 and all(t["status"] == "COMPLETED" and len(t["folds"]) == 2 for t in results)
    retrained = json.loads((pdir / "retrain.json").read_text())
    assert retrained["trial_id"] == results[0]["trial_id"]  # the best, by the search's ranking
    assert retrained["epochs"] == 1 and retrained["train_size"] == 400  # the searched subset
    assert (pdir / "best_model.keras").exists()
    assert proc.stdout.strip().splitlines()[-1] == f"test accuracy: {retrained['test_accuracy']:.4f}"
    # Run again: the search is complete, so only the retrain runs (and gives the same model).
    again = run_cli("run", *SMALL_SEARCH, "--retrain-epochs", "1", "--directory", tmp_path, "--project", "job", check=True)
    assert again.stdout.strip().splitlines()[-1] == proc.stdout.strip().splitlines()[-1]
    # The --retrain-* options reach the retrain alone: the search, complete, trains nothing.
    folds = {p: p.read_bytes() for p in pdir.rglob("folds.json")}
    run_cli("run", *SMALL_SEARCH, "--retrain-epochs", "1", "--retrain-precision", "mixed", "--retrain-batch-size", "64",
            "--retrain-validation-split", "0.2", "-d", tmp_path, "-p", "job", check=True)
    final = json.loads((pdir / "retrain.json").read_text())
    assert (final["precision"], final["batch_size"], final["validation_split"]) == ("mixed_bfloat16", 64, 0.2), final
    assert retrained["precision"] == "float32" and folds == {p: p.read_bytes() for p in pdir.rglob("folds.json")}




def test_device_gpu_without_a_gpu_is_an_error(tmp_path):
    from tuner_app.runtime.hardware import resolve

    if resolve("auto")["device"] == "gpu":
        pytest.skip("this machine has a GPU")
    proc = run_cli("search", *SMALL_SEARCH, "--directory", tmp_path, "--device", "gpu")
    assert proc.returncode == 2 and "sees no GPU" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_precision_is_chosen_per_command_and_recorded(searched, tmp_path):
    run_cli("search", *SMALL_SEARCH, "--directory", tmp_path, "--project", "fp32",
            "--precision", "float32", check=True)
    assert json.loads((tmp_path / "fp32" / "search.json").read_text())["cv"]["precision"] == "float32"
    run_cli("retrain-best", "--directory", searched, "--project", "small", "--epochs", "1", "--train-limit", "200",
            "--precision", "mixed", check=True)
    assert json.loads((searched / "small" / "retrain.json").read_text())["precision"] == "mixed_bfloat16"




def test_the_saved_model_is_fsynced_before_it_replaces_the_old_one(searched, monkeypatch):
    """README says every file is written durably: the model's temporary file is fsynced, then renamed."""
    import os

    from tuner_app.retrain import retrain_best

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
                        or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", str(a), str(b))) or real_replace(a, b))
    retrain_best(None, searched, "small", {"epochs": 1}, train_limit=200)
    model = str(searched / "small" / "best_model.keras")
    rename = next(i for i, e in enumerate(events) if e[0] == "replace" and e[2] == model)
    tmp = events[rename][1]
    assert ("fsync", tmp) in events[:rename]  # the file's bytes are on disk before it takes the name
    assert ("fsync", str(searched / "small")) in events[rename:]  # and the rename itself, after
