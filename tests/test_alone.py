"""The test suite's own `alone` marker (tests/conftest.py): under two xdist workers, a test marked
`alone` runs with no other test beside it, while the others still run two at a time; `alone`
tests in a row on one worker (one file: `--dist loadfile`) keep the host between them."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.backend_independent

SPAN = '''
import time

import pytest


def _span(name, seconds):
    start = time.monotonic()
    time.sleep(seconds)
    with open("spans.txt", "a") as f:
        f.write(f"{name} {start} {time.monotonic()}\\n")
'''
ALONE = SPAN + '''

pytestmark = pytest.mark.alone  # as tests/scaleout/test_ray_engine.py


@pytest.mark.parametrize("i", range(5))
def test_alone(i):
    _span(f"alone{i}", 0.3)
'''
OTHER = SPAN + '''

@pytest.mark.parametrize("i", range(4))
def test_other(i):
    _span(f"other{i}SUFFIX", 0.4)
'''
# Appended to the copied conftest: a gap between one test's end and the next one's start (in the
# real suite, reports and the next test's module fixtures), where a released lock changes hands.
GAP = '''

def pytest_runtest_logfinish(nodeid, location):
    import time

    time.sleep(0.3)
'''


def test_an_alone_test_runs_with_no_other_beside_it_and_the_others_in_parallel(tmp_path):
    (tmp_path / "conftest.py").write_text(Path(__file__).with_name("conftest.py").read_text() + GAP)
    (tmp_path / "test_a.py").write_text(ALONE)  # the largest file: xdist hands it out first, beside the others
    for suffix in "bcde":
        (tmp_path / f"test_{suffix}.py").write_text(OTHER.replace("SUFFIX", suffix))
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    alone: alone\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "--dist", "loadfile"],
                          check=False, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    spans = {name: (float(a), float(b)) for name, a, b in
             (line.split() for line in (tmp_path / "spans.txt").read_text().splitlines())}
    assert len(spans) == 21

    def overlap(x, y):
        return spans[x][0] < spans[y][1] and spans[y][0] < spans[x][1]

    alone = [n for n in spans if n.startswith("alone")]
    others = [n for n in spans if n.startswith("other")]
    assert not [(a, n) for a in alone for n in spans if n != a and overlap(a, n)]
    # the five, in a row on one worker, hold the host from the first's start to the last's end
    spans["block"] = (min(spans[a][0] for a in alone), max(spans[a][1] for a in alone))
    assert not [n for n in others if overlap("block", n)]
    assert any(overlap(x, y) for x in others for y in others if x < y)  # two workers did run at once
