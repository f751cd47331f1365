"""README and the documentation site: their examples run as written, their generated pages are
current, and README stays a front door (length, the CI's set-up commands, no work history)."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from conftest import MNIST_SAMPLE, run_cli

pytestmark = pytest.mark.backend_independent  # CI runs it in the TensorFlow pass only (README: Tests)

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"


def _blocks(text: str, lang: str = "python") -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.DOTALL)


def _commands(text: str, start: str) -> list[str]:
    """The indented command lines of a Markdown text that start with START, comments dropped."""
    return [line.strip().split("  #")[0].strip() for line in text.splitlines()
            if line.startswith("    ") and line.strip().startswith(start)]


def test_readme_walkthrough_runs_on_a_users_npz_and_model_file(tmp_path, monkeypatch):
    """README's first walkthrough: the arrays saved as its line does, its model file as shown, its four
    commands; the search and retrain run shortened (--folds/--epochs appended: the grid is as written)."""
    from tuner_app.data import load_dataset

    ds = load_dataset(MNIST_SAMPLE)
    x_train, y_train, x_test, y_test = ds.x_train[:300], ds.y_train[:300], ds.x_test[:60], ds.y_test[:60]
    save, model = _blocks(README)[:2]
    monkeypatch.chdir(tmp_path)
    exec(save, {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test, "np": np})  # noqa: S102
    (tmp_path / "mymodel.py").write_text(model)
    section = README.split("## Your data, your model", 1)[1].split("\n## ", 1)[0]
    commands = _commands(section, "tuner-app")
    assert [c.split()[1] for c in commands] == ["search", "search", "results", "retrain-best"]
    shorter = {1: ["--folds", "2", "--epochs", "1"], 3: ["--epochs", "1"]}
    outputs = []
    for i, command in enumerate(commands):
        args = command.split()[1:] + shorter.get(i, []) + ["-q"] * (i in (1, 3))
        outputs.append(run_cli(*args, cwd=tmp_path, check=True).stdout)
    assert "12 grid points" in outputs[0] or "12 points" in outputs[0]
    assert "best:" in outputs[2] and "test accuracy:" in outputs[3]
    assert (tmp_path / "tuning_dirs" / "mine" / "best_model.keras").exists()


def test_the_notebook_example_runs_as_written(tmp_path):
    (block,) = [b for b in _blocks((DOCS / "api.md").read_text()) if "from tuner_app import" in b]
    proc = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, check=False, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    best, accuracy = proc.stdout.strip().splitlines()[-2:]
    assert "'units':" in best and 0.5 < float(accuracy) <= 1.0


def test_the_example_model_is_the_file_the_docs_show_and_has_18_points(tmp_path):
    shown = next(b for b in _blocks((DOCS / "own-model.md").read_text()) if "def build(hp, input_shape" in b)
    source = (ROOT / "examples" / "my_model.py").read_text()
    assert shown.split("import keras", 1)[1].strip() in source
    proc = run_cli("search", "--model", ROOT / "examples" / "my_model.py:build", "--data", "mnist-sample",
                   "--dry-run", "--directory", tmp_path, check=True)
    assert "18 grid points" in proc.stdout


def test_the_cli_reference_is_what_the_app_says_now():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "cli_reference.py"), "--check"], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_every_visible_option_of_every_command_is_in_the_cli_reference():
    from tuner_app.cli import app

    page = (DOCS / "cli.md").read_text()
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        section = page.split(f"## `tuner-app {name}`", 1)[1].split("\n## ", 1)[0]
        for param in command.params:
            for option in getattr(param, "opts", []) if not getattr(param, "hidden", False) else []:
                assert f"`{option}" in section or f", {option}" in section, f"{name} {option}"


def test_readme_is_a_front_door():
    lines = README.splitlines()
    assert len(lines) <= 300
    ci = [line.split("  #")[0].strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    setup = _commands(README, "python3 -m venv") + _commands(README, "tuner-app run --data mnist-sample") + \
        _commands(README, "python -m pytest")
    assert len(setup) == 3 and all(command in ci for command in setup), setup


@pytest.mark.parametrize("path", ["README.md", *sorted(str(p.relative_to(ROOT)) for p in DOCS.glob("*.md"))])
def test_no_work_history_in_readme_or_docs(path):
    """History lives in CHANGELOG.md: no commit hashes, no sessions, no 'not measured since'."""
    text = (ROOT / path).read_text()
    assert not re.search(r"\bcommit [0-9a-f]{7,40}\b|\b[0-9a-f]{7}\b(?= \()", text), path
    assert not re.search(r"this (stop|session)|not measured (yet|since)|a later session", text, re.IGNORECASE), path


def test_readmes_links_resolve():
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", README):
        assert (ROOT / target).exists(), target
