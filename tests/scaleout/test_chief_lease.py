"""KerasTuner's chief with a worker gone for good (its host lost: nothing restarts it): the chief
gives its trial to another worker once the worker's lease runs out, instead of waiting with no end.
Real processes on loopback, as on several hosts: a chief and two workers started by hand."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import MNIST_SAMPLE, run_cli

pytestmark = pytest.mark.backend_independent

SEARCH = ["search", "--data", str(MNIST_SAMPLE), "--train-limit", "300", "--folds", "2", "--epochs", "1", "--quiet"]


def _ongoing(pdir) -> dict:
    try:
        return json.loads((pdir / "oracle.json").read_text()).get("ongoing_trials", {})
    except (OSError, ValueError):
        return {}


def test_a_worker_gone_for_good_loses_its_trial_to_another_at_the_end_of_its_lease(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": str(port),
           "TUNER_APP_WORKER_LEASE_S": "20", "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "tuner_app", *SEARCH, "-d", str(tmp_path), "-p", "w"]

    def start(name):
        return subprocess.Popen(args, env={**env, "KERASTUNER_TUNER_ID": name}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    chief = start("chief")
    procs = [chief]
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "w" / "search.json").exists():
            assert chief.poll() is None and time.monotonic() < deadline, chief.communicate()[1]
            time.sleep(0.2)
        procs += [start("worker-a"), start("worker-b")]
        deadline = time.monotonic() + 180
        while "worker-b" not in _ongoing(tmp_path / "w"):  # worker-b holds a trial
            assert procs[2].poll() is None and time.monotonic() < deadline, procs[2].communicate()[1]
            time.sleep(0.05)
        procs[2].send_signal(signal.SIGKILL)  # its host gone: nothing restarts it
        _, chief_err = chief.communicate(timeout=300)
        _, worker_err = procs[1].communicate(timeout=60)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert chief.returncode == 0 and procs[1].returncode == 0, chief_err + worker_err
    assert "worker-b has not been heard of for" in chief_err and "goes to worker-a" in chief_err, chief_err
    trials = json.loads(run_cli("results", "-d", tmp_path, "-p", "w", "-f", "json", check=True).stdout)
    assert len(trials) == 6 and all(t["status"] == "COMPLETED" and len(t["folds"]) == 2 for t in trials)
    assert len({json.dumps(t["hyperparameters"], sort_keys=True) for t in trials}) == 6
