"""The test suite's own `alone` marker (tests/conftest.py): under two xdist workers, a test marked
`alone` runs with no other test beside it, while the others still run two at a time."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.backend_independent

SUITE = '''
import time

import pytest


def _span(name, seconds):
    start = time.monotonic()
    time.sleep(seconds)
    with open("spans.txt", "a") as f:
        f.write(f"{name} {start} {time.monotonic()}\\n")


@pytest.mark.parametrize("i", range(6))
def test_other(i):
    _span(f"other{i}", 0.4)


@pytest.mark.alone
@pytest.mark.parametrize("i", range(2))
def test_alone(i):
    _span(f"alone{i}", 0.8)
'''


def test_an_alone_test_runs_with_no_other_beside_it_and_the_others_in_parallel(tmp_path):
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path)
    (tmp_path / "test_inner.py").write_text(SUITE)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    alone: alone\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "test_inner.py"],
                          check=False, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    spans = {name: (float(a), float(b)) for name, a, b in
             (line.split() for line in (tmp_path / "spans.txt").read_text().splitlines())}
    assert len(spans) == 8

    def overlap(x, y):
        return spans[x][0] < spans[y][1] and spans[y][0] < spans[x][1]

    alone = [n for n in spans if n.startswith("alone")]
    assert not [(a, n) for a in alone for n in spans if n != a and overlap(a, n)]
    others = [n for n in spans if n.startswith("other")]
    assert any(overlap(x, y) for x in others for y in others if x < y)  # two workers did run at once
