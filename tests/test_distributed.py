"""KerasTuner's chief/worker mode through `tuner-app search --workers N`, on loopback, real processes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import MNIST_SMALL, run_cli

SEARCH = ["search", "--data", str(MNIST_SMALL), "--train-limit", "300", "--folds", "2", "--epochs", "1"]


def _check_grid_completed_once(directory: Path) -> None:
    trials = json.loads(run_cli("results", "--directory", directory, "--project", "w", "-f", "json", check=True).stdout)
    assert len(trials) == 6 and all(t["status"] == "COMPLETED" and len(t["folds"]) == 2 for t in trials)
    assert len({json.dumps(t["hyperparameters"], sort_keys=True) for t in trials}) == 6
    assert len(list((directory / "w").glob("trial_*"))) == 6
    # Trials were shared between the workers, each of which keeps its own tuner file.
    assert (directory / "w" / "worker0.json").exists() and (directory / "w" / "worker1.json").exists()


def test_chief_and_two_workers_complete_each_grid_point_once(tmp_path):
    proc = run_cli(*SEARCH, "--directory", tmp_path, "--project", "w", "--workers", "2", timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "[worker0]" in proc.stderr and "[worker1]" in proc.stderr
    _check_grid_completed_once(tmp_path)
    assert "best:" in proc.stdout


def _children(pid: int) -> dict[str, int]:
    """{KERASTUNER_TUNER_ID: pid} of the launcher's child processes."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            for var in env:
                if var.startswith(b"KERASTUNER_TUNER_ID="):
                    found[var.split(b"=", 1)[1].decode()] = int(entry.name)
    return found


def test_a_worker_killed_mid_trial_is_restarted_and_its_trial_completed(tmp_path):
    launcher = subprocess.Popen([sys.executable, "-m", "tuner_app", *SEARCH, "--directory", str(tmp_path),
                                 "--project", "w", "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        end = time.monotonic() + 300
        while time.monotonic() < end:  # wait until worker0 is inside a trial
            kids = _children(launcher.pid)
            running = [json.loads(p.read_text()) for p in (tmp_path / "w").glob("trial_*/trial.json")] \
                if (tmp_path / "w").exists() else []
            if "worker0" in kids and any(t["status"] == "RUNNING" for t in running):
                break
            assert launcher.poll() is None, launcher.stderr.read()
            time.sleep(0.05)
        os.kill(kids["worker0"], signal.SIGKILL)
        _, err = launcher.communicate(timeout=600)
    finally:
        launcher.kill()
    assert launcher.returncode == 0, err
    assert "[worker0] killed by signal 9; restarting it" in err
    _check_grid_completed_once(tmp_path)
