"""README's examples run as written: the notebook example, the example model file's grid."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli

pytestmark = pytest.mark.backend_independent  # CI runs it in the TensorFlow pass only (README: Tests)

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_the_notebook_example_runs_as_written(tmp_path):
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", README, re.DOTALL) if "from tuner_app import" in b]
    proc = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, check=False, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    best, accuracy = proc.stdout.strip().splitlines()[-2:]
    assert "'units':" in best and 0.5 < float(accuracy) <= 1.0


def test_the_example_model_is_the_file_readme_shows_and_has_18_points(tmp_path):
    shown = next(b for b in re.findall(r"```python\n(.*?)```", README, re.DOTALL) if "def build(hp, input_shape" in b)
    source = (ROOT / "examples" / "my_model.py").read_text()
    assert shown.split("import keras", 1)[1].strip() in source
    proc = run_cli("search", "--model", ROOT / "examples" / "my_model.py:build", "--dataset", "mnist-sample",
                   "--dry-run", "--directory", tmp_path, check=True)
    assert "18 grid points" in proc.stdout


@pytest.mark.parametrize("command", ["search", "run", "results", "retrain-best"])
def test_every_option_of_a_command_is_in_readmes_section_on_it(command):
    """`tuner-app COMMAND --help` and README's "### `tuner-app COMMAND`" section (with the sections it
    points to: run takes search's options, retrain-best shares search's --directory and the like)
    name the same options; defaults and wording are the section's."""
    rest = run_cli(command, "--help", check=True).stdout.partition("\n")[2]  # (past the usage: "python -m ...")
    helped = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+|-[a-z])\b", rest)) - {"--help"}
    sections = {"run": ("run", "search"), "retrain-best": ("retrain-best", "search")}.get(command, (command,))
    text = "".join(re.search(rf"### `tuner-app {name}`\n(.*?)\n## ", README, re.DOTALL).group(1) for name in sections)
    missing = sorted(o for o in helped if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", text))
    assert not missing, f"options of `tuner-app {command}` that README's section does not name: {missing}"
