"""Shared fixtures: the MNIST sample shipped with tuner-app, a CLI runner, and one small finished search."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import pytest

MNIST_SAMPLE = Path(__file__).resolve().parents[1] / "tuner_app" / "datasets" / "mnist_sample"
MODELS = Path(__file__).parent / "user_models"
# The smallest search that still exercises everything: 2 grid points x 2 folds x 1 epoch.
SMALL_SEARCH = ["--data", "mnist-sample", "--train-limit", "400", "--folds", "2", "--epochs", "1",
                "--grid", "filters=16x32,32x64", "--grid", "learning_rate=0.001", "--quiet"]


@pytest.fixture(autouse=True)
def _seed():
    import random

    random.seed(0)
    np.random.seed(0)


@contextmanager
def _flock(path: Path, mode: int):
    with open(path, "a") as f:
        fcntl.flock(f, mode)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


_HELD: list[ExitStack] = []  # this worker's exclusive hold, kept from one `alone` test to the next


@pytest.fixture(autouse=True)
def _alone_if_marked(request, tmp_path_factory):
    """Under pytest-xdist (README: Tests), a test marked `alone` runs with no other test beside it:
    it waits for the other worker's test to end, and that worker waits for it. A readers-writer lock
    on two files the workers share: every test passes the turnstile, then holds the room shared; an
    `alone` test holds the turnstile (so no new test comes in) and the room exclusive, and keeps them
    while this worker's next test is `alone` too (released in `pytest_runtest_teardown`), so that a
    run of them waits for the other worker once. Without xdist, tests run one at a time anyway."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        yield
        return
    shared = tmp_path_factory.getbasetemp().parent  # the workers' basetemps are siblings
    if request.node.get_closest_marker("alone"):
        if not _HELD:
            hold = ExitStack()
            hold.enter_context(_flock(shared / "turnstile.lock", fcntl.LOCK_EX))
            hold.enter_context(_flock(shared / "room.lock", fcntl.LOCK_EX))
            _HELD.append(hold)
        yield
    else:
        with _flock(shared / "turnstile.lock", fcntl.LOCK_EX):
            pass
        with _flock(shared / "room.lock", fcntl.LOCK_SH):
            yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """After a test's fixtures are torn down: the exclusive hold ends unless the next test is `alone`
    too (xdist's worker knows its next test; none at its end)."""
    yield
    if _HELD and (nextitem is None or not nextitem.get_closest_marker("alone")):
        _HELD.pop().close()


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300, check: bool = False,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m tuner_app ARGS` in a real subprocess (same interpreter, same backend)."""
    proc = subprocess.run([sys.executable, "-m", "tuner_app", *map(str, args)], cwd=cwd, check=False, capture_output=True,
                          text=True, timeout=timeout, env={**(env or os.environ), "PYTHONUNBUFFERED": "1"})
    if check and proc.returncode != 0:
        raise AssertionError(f"tuner-app {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def run_cli_here(capsys, *args: str) -> tuple[int, str]:
    """`tuner-app ARGS` in this process, through the same `main()`: (exit code, stderr). No start-up
    cost, for the many bad-input checks; end-to-end runs use `run_cli`'s real subprocess."""
    import warnings

    from tuner_app import cli

    argv, showwarning = sys.argv, warnings.showwarning
    sys.argv = ["tuner-app", *map(str, args)]
    capsys.readouterr()
    try:
        cli.main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv, warnings.showwarning = argv, showwarning
    return code, capsys.readouterr().err


@pytest.fixture(scope="session")
def small_dataset():
    from tuner_app.data import load_dataset

    return load_dataset(dataset="mnist-sample")


@pytest.fixture(scope="session")
def _searched(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("searched") / "tuning_dirs"
    run_cli("search", *SMALL_SEARCH, "--directory", directory, "--project", "small", check=True)
    return directory


@pytest.fixture
def searched(_searched, tmp_path) -> Path:
    """A private copy of a finished small search: returns its --directory (project 'small')."""
    directory = tmp_path / "tuning_dirs"
    shutil.copytree(_searched, directory)
    return directory


# The seed's own 6-point grid on a small subset: 6 trials x 5 folds x 1 epoch.
GRID_SEARCH = ["--data", str(MNIST_SAMPLE), "--train-limit", "300", "--epochs", "1", "--quiet"]


def start_cli(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tuner_app", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def fold_records(pdir) -> dict:
    """{(trial_id, fold): record} of every finished fold on disk."""
    records = {}
    for folds in pdir.glob("trial_*/folds.json"):
        for r in json.loads(folds.read_text()):
            records[(folds.parent.name, r["fold"])] = r
    return records


def wait_for(predicate, timeout=300.0, proc=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited {proc.returncode}: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("timed out")
