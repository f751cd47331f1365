"""KerasTuner's chief/worker mode through `tuner-app search --workers N`, on loopback, real processes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import MNIST_SAMPLE, run_cli

pytestmark = pytest.mark.backend_independent  # CI runs it in the TensorFlow pass only (README: Tests)

SEARCH = ["search", "--data", str(MNIST_SAMPLE), "--train-limit", "300", "--folds", "2", "--epochs", "1"]


def _check_grid_completed_once(directory: Path) -> None:
    trials = json.loads(run_cli("results", "--directory", directory, "--project", "w", "-f", "json", check=True).stdout)
    assert len(trials) == 6 and all(t["status"] == "COMPLETED" and len(t["folds"]) == 2 for t in trials)
    assert len({json.dumps(t["hyperparameters"], sort_keys=True) for t in trials}) == 6
    assert len(list((directory / "w").glob("trial_*"))) == 6
    # Trials were shared between the workers, each of which keeps its own tuner file.
    assert (directory / "w" / "worker0.json").exists() and (directory / "w" / "worker1.json").exists()


def _ongoing_trials(pdir: Path) -> dict:
    """The chief's record of which tuner runs which trial ({} before it exists or while it is rewritten)."""
    try:
        return json.loads((pdir / "oracle.json").read_text()).get("ongoing_trials", {})
    except (OSError, ValueError):
        return {}


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
        while time.monotonic() < end:  # wait until worker0 is inside a trial (the chief's oracle.json says so)
            kids = _children(launcher.pid)
            if "worker0" in kids and "worker0" in _ongoing_trials(tmp_path / "w"):
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


# --- faults: the launcher never hangs, leaves no process behind, and a rerun resumes ---------------------------

GRID_SEARCH = ["search", "--data", "mnist-sample", "--train-limit", "300", "--epochs", "1"]  # 6 points x 5 folds


def _launch(directory: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tuner_app", *GRID_SEARCH, "--directory", str(directory),
                             "--project", "w", "--workers", "2", *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _fold_records(pdir: Path) -> dict:
    records = {}
    for folds in pdir.glob("trial_*/folds.json"):
        for r in json.loads(folds.read_text()):
            records[(folds.parent.name, r["fold"])] = r
    return records


def _wait(predicate, launcher, timeout=300):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        assert launcher.poll() is None, launcher.stderr.read()
        time.sleep(0.05)
    raise AssertionError("timed out")


def _alive(pids) -> list[int]:
    """The pids that are still running (zombies waiting for a parent count as ended)."""
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            alive.append(pid)
    return alive


def _rerun_completes_6_by_5_keeping(directory: Path, kept: dict) -> None:
    """The same command again: a chief and two workers complete every grid point once, reusing `kept`."""
    proc = run_cli(*GRID_SEARCH, "--directory", directory, "--project", "w", "--workers", "2", timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "[worker0]" in proc.stderr and "[worker1]" in proc.stderr and "best:" in proc.stdout
    assert (directory / "w" / "worker0.json").exists() and (directory / "w" / "worker1.json").exists()
    trials = json.loads(run_cli("results", "--directory", directory, "--project", "w", "-f", "json").stdout)
    assert len(trials) == 6 and all(t["status"] == "COMPLETED" and len(t["folds"]) == 5 for t in trials)
    assert len({json.dumps(t["hyperparameters"], sort_keys=True) for t in trials}) == 6
    now = _fold_records(directory / "w")
    assert kept and all(now[key]["finished_at"] == r["finished_at"] for key, r in kept.items())  # reused


def test_a_killed_chief_ends_the_launcher_within_60_s_with_nothing_left_and_a_rerun_resumes(tmp_path):
    launcher = _launch(tmp_path)
    try:
        _wait(lambda: (tmp_path / "w").exists() and len(_fold_records(tmp_path / "w")) >= 2, launcher)
        kids = _children(launcher.pid)
        os.kill(kids["chief"], signal.SIGKILL)
        killed = time.monotonic()
        _, err = launcher.communicate(timeout=60)
        assert time.monotonic() - killed < 60
    finally:
        launcher.kill()
    assert launcher.returncode not in (0, None), err
    assert "the chief was killed by signal 9; stopped the workers" in err
    time.sleep(0.5)
    assert _alive(kids.values()) == []
    _rerun_completes_6_by_5_keeping(tmp_path, _fold_records(tmp_path / "w"))


def test_a_worker_killed_past_the_restart_limit_ends_the_search_and_a_rerun_resumes(tmp_path):
    from tuner_app.scaleout.chief_worker import MAX_RESTARTS

    launcher = _launch(tmp_path)
    try:
        _wait(lambda: (tmp_path / "w").exists() and len(_fold_records(tmp_path / "w")) >= 1, launcher)
        seen = set()
        for _ in range(MAX_RESTARTS + 1):
            # kill each new incarnation of worker0 as soon as it is up
            _wait(lambda: _children(launcher.pid).get("worker0") not in (None, *seen), launcher, timeout=120)
            pid = _children(launcher.pid)["worker0"]
            seen.add(pid)
            os.kill(pid, signal.SIGKILL)
        _, err = launcher.communicate(timeout=60)
    finally:
        launcher.kill()
    assert launcher.returncode == 1, err
    assert f"worker0 was killed {MAX_RESTARTS + 1} times" in err and "rerun the same command to resume" in err
    _rerun_completes_6_by_5_keeping(tmp_path, _fold_records(tmp_path / "w"))


def test_a_chief_that_never_serves_does_not_make_the_launcher_wait_forever(tmp_path, monkeypatch):
    """The chief blocks reading its data (a FIFO nobody writes): the launcher gives up after its bound."""
    from tuner_app.scaleout import chief_worker

    fifo = tmp_path / "data.npz"
    os.mkfifo(fifo)
    monkeypatch.setattr(chief_worker, "CHIEF_START_S", 5.0)
    start = time.monotonic()
    code = chief_worker.launch(["--data", str(fifo), "--directory", str(tmp_path / "d"), "--project", "w"], 1)
    assert code == 1 and time.monotonic() - start < 5.0 + chief_worker.STOP_GRACE_S + 5


def _fake_nvidia_smi(directory: Path) -> dict:
    """An environment whose PATH has an `nvidia-smi` that reports two H100s (compute capability 9.0)."""
    script = directory / "nvidia-smi"
    script.write_text("#!/bin/sh\n"
                      'case "$1" in\n'
                      '  --query-gpu=index) printf "0\\n1\\n" ;;\n'
                      '  --query-gpu=index,compute_cap) printf "0, 9.0\\n1, 9.0\\n" ;;\n'
                      '  *) printf "GPU 0: NVIDIA H100\\nGPU 1: NVIDIA H100\\n" ;;\n'
                      "esac\n")
    script.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    return {**env, "PATH": f"{directory}:{env['PATH']}", "PYTHONUNBUFFERED": "1"}


def test_on_a_gpu_host_the_chief_resolves_device_and_precision_once_and_workers_adopt_them(tmp_path):
    """The chief sees no GPU through its backend (it hides them: it trains nothing) but resolves for its
    workers from nvidia-smi, records gpu / bfloat16, and a worker adopts what was recorded."""
    from tuner_app.scaleout.chief_worker import _free_port

    env = _fake_nvidia_smi(tmp_path)
    dist = {"KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": str(_free_port())}
    args = [sys.executable, "-m", "tuner_app", *SEARCH, "--directory", str(tmp_path), "--project", "g",
            "--device", "auto", "--precision", "auto"]
    chief = subprocess.Popen(args, env={**env, **dist, "KERASTUNER_TUNER_ID": "chief"}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: (tmp_path / "g" / "search.json").exists(), chief, timeout=120)
        search = json.loads((tmp_path / "g" / "search.json").read_text())
        assert search["device"] == "gpu" and search["cv"]["precision"] == "mixed_bfloat16"
        # A worker on this (GPU-less) host adopts gpu, and says its backend sees none, instead of training
        # on another device or precision than the search recorded.
        worker = run_cli(*SEARCH, "--directory", tmp_path, "--project", "g", timeout=120,
                         env={**env, **dist, "KERASTUNER_TUNER_ID": "worker0"})
        assert worker.returncode == 2 and "--device gpu" in worker.stderr and "sees no GPU" in worker.stderr
        assert chief.poll() is None  # the chief itself never needed a GPU
    finally:
        chief.send_signal(signal.SIGTERM)
        chief.communicate(timeout=60)
    assert chief.returncode == 128 + signal.SIGTERM


def test_workers_joining_a_chief_elsewhere_complete_the_grid(tmp_path):
    """`--workers N --chief HOST:PORT` (what each compose worker service runs) starts only workers, which
    join a chief started on its own, and ends with 0 once the grid is done."""
    from tuner_app.scaleout.chief_worker import _free_port

    port = str(_free_port())
    env = {**os.environ, "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": port,
           "KERASTUNER_TUNER_ID": "chief", "PYTHONUNBUFFERED": "1"}
    args = [*SEARCH, "--directory", str(tmp_path), "--project", "w", "--grid", "filters=8x16", "--quiet"]
    chief = subprocess.Popen([sys.executable, "-m", "tuner_app", *args], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        joined = run_cli(*args, "--workers", "1", "--chief", f"127.0.0.1:{port}", timeout=300,
                         env={k: v for k, v in os.environ.items() if not k.startswith("KERASTUNER_")})
        assert joined.returncode == 0, joined.stderr
        chief.communicate(timeout=120)
    finally:
        chief.kill()
    assert chief.returncode == 0
    trials = json.loads(run_cli("results", "--directory", tmp_path, "--project", "w", "-f", "json").stdout)
    assert len(trials) == 2 and all(t["status"] == "COMPLETED" and len(t["folds"]) == 2 for t in trials)
    assert (tmp_path / "w" / f"worker-{__import__('socket').gethostname()}.json").exists()
