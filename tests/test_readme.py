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
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", README, re.DOTALL) if "run_search(" in b]
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
