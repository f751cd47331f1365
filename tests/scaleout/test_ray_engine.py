"""`search --ray` on a real local Ray (loopback, no dashboard): results, faults, bad input.

Each test starts its own local Ray from the search process, with Ray's files in a fresh
short temporary directory (RAY_TMPDIR), so that the processes of that Ray can be found
(and must be gone when the search is).
"""

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import MODELS, fold_records, run_cli, start_cli, wait_for

from tuner_app.scaleout import ray_leftovers

ray = pytest.importorskip("ray")  # installed with the test extra: `pip install '.[test]'`

# Three points of the seed's grid (its filter pairs at one learning rate) on a small subset, 3 folds x 1
# epoch, one thread per fold (each Ray task trains with --cpus-per-task threads, so the lone search it is
# compared with does too): 9 fold tasks, several trials at once on the two CPUs.
GRID = ["--data", "mnist-sample", "--train-limit", "300", "--folds", "3", "--epochs", "1", "--grid",
        "learning_rate=0.001", "--quiet"]
NOT_COMPARED = ("seconds", "rss_mb", "finished_at")

# Under the two xdist workers one worker runs this file (`--dist loadfile`), one test after another,
# beside the other worker's tests: a Ray search on a busy host must finish as a lone one.
pytestmark = pytest.mark.backend_independent


@pytest.fixture
def ray_env(monkeypatch):
    """A fresh directory for Ray's session files (short: Ray's socket paths must fit 107 bytes)."""
    where = tempfile.mkdtemp(prefix="tr", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", where)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    try:
        yield where
        assert wait_ray_gone(where), f"Ray processes of {where} still running: {ray_processes(where)}"
    finally:
        shutil.rmtree(where, ignore_errors=True)


def ray_processes(where: str, title: str = "") -> list[int]:
    """PIDs of the processes of the Ray whose files are in `where` (or, with `title`, whose command line has it)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (proc / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        ours = where in cmdline or f"RAY_TMPDIR={where}" in environ
        if ours and title in cmdline and int(proc.name) != os.getpid():
            pids.append(int(proc.name))
    return pids


def wait_ray_gone(where: str, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not [p for p in ray_processes(where) if "pytest" not in ray_leftovers.command_line(p)]:
            return True
        time.sleep(0.2)
    return False


def ray_started_by(proc, timeout: float = 120.0) -> dict[int, float]:
    """{pid: creation time} of the processes of the local Ray under the search `proc`, once its agents run."""
    def complete():
        found = ray_leftovers.ray_processes(proc.pid)
        titles = " ".join(ray_leftovers.command_line(pid) for pid in found)
        return found if all(t in titles for t in ("gcs_server", "raylet", "DashboardAgent", "RuntimeEnvAgent")) else {}

    wait_for(complete, timeout, proc)
    return complete()


def still_running(processes: dict[int, float], timeout: float = 15.0) -> list[str]:
    """Which of `processes` (pid: creation time) are still there after `timeout` seconds."""
    end = time.monotonic() + timeout
    while True:
        left = [f"{pid} {ray_leftovers.command_line(pid)}" for pid, start in processes.items() if ray_leftovers.alive(pid, start)]
        if not left or time.monotonic() > end:
            return left
        time.sleep(0.2)


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:  # gone
        return ""


def rerun_reuses(directory: Path, kept: dict, lone: dict, *, ray: bool = True) -> None:
    """The search of project p again, on a local Ray or (`ray=False`) alone, one thread as a Ray task:
    the `kept` fold records are not retrained, and the grid's records equal the lone search's."""
    run_cli("search", *GRID, *(["--ray"] if ray else ["--threads", "1"]), "--directory", directory, "--project", "p",
            check=True)
    records = fold_records(directory / "p")
    assert all(records[key]["finished_at"] == r["finished_at"] for key, r in kept.items())  # not retrained
    assert by_point(directory / "p") == lone


def by_point(pdir: Path) -> dict:
    """{grid point: [fold records without timings]} of a project."""
    out = {}
    for trial in pdir.glob("trial_*/trial.json"):
        values = json.loads(trial.read_text())["hyperparameters"]["values"]
        folds = json.loads((trial.parent / "folds.json").read_text())
        out[json.dumps(values, sort_keys=True)] = [{k: v for k, v in r.items() if k not in NOT_COMPARED} for r in folds]
    return out


@pytest.fixture(scope="module")
def lone(tmp_path_factory) -> dict:
    directory = tmp_path_factory.mktemp("lone")
    run_cli("search", *GRID, "--threads", "1", "--directory", directory, "--project", "p", check=True)
    return by_point(directory / "p")


def test_ray_search_equals_a_lone_search(tmp_path, ray_env, lone):
    run_cli("search", *GRID, "--ray", "--directory", tmp_path, "--project", "p", check=True)
    results = json.loads(run_cli("results", "--directory", tmp_path, "--project", "p", "-f", "json", check=True).stdout)
    assert len(results) == 3 and all(t["status"] == "COMPLETED" for t in results)
    assert by_point(tmp_path / "p") == lone  # 3 x 3 fold records: same folds, seeds and scores


def test_a_ray_worker_killed_mid_fold_is_retried_and_a_lost_progress_queue_costs_progress_only(tmp_path, ray_env,
                                                                                               lone):
    """Two faults in one search. Ray's queue actor that carries the tasks' progress events dies (as it
    became unreachable once on a busy machine), then a worker dies in the middle of a fold: the fold is
    retried and the search goes on to the lone search's records, lines of output less, no traceback."""
    proc = start_cli("search", *GRID, "--ray", "--directory", tmp_path, "--project", "p")
    pdir = tmp_path / "p"
    wait_for(lambda: pdir.exists() and len(fold_records(pdir)) >= 2, proc=proc)
    wait_for(lambda: ray_processes(ray_env, "ray::_QueueActor"), proc=proc)
    for victim in ray_processes(ray_env, "ray::_QueueActor"):
        os.kill(victim, signal.SIGKILL)
    wait_for(lambda: ray_processes(ray_env, "ray::tuner-app-fold"), proc=proc)  # a worker in a fold now
    os.kill(ray_processes(ray_env, "ray::tuner-app-fold")[0], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert by_point(pdir) == lone  # every grid point once, every fold once, the same scores
    assert len(list(pdir.glob("trial_*"))) == 3


def test_a_killed_driver_leaves_nothing_running_and_the_rerun_reuses_its_folds(tmp_path, ray_env, lone):
    proc = start_cli("search", *GRID, "--ray", "--directory", tmp_path, "--project", "p")
    pdir = tmp_path / "p"
    started = ray_started_by(proc)
    wait_for(lambda: pdir.exists() and len(fold_records(pdir)) >= 3, proc=proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the search ended before it was killed"
    assert not still_running(started), f"Ray outlived its driver: {still_running(started, 0)}"
    rerun_reuses(tmp_path, fold_records(pdir), lone)


def test_sigterm_cancels_the_tasks_and_stops_as_a_lone_search(tmp_path, ray_env):
    proc = start_cli("search", *GRID, "--ray", "--directory", tmp_path, "--project", "p")
    pdir = tmp_path / "p"
    started = ray_started_by(proc)
    wait_for(lambda: pdir.exists() and len(fold_records(pdir)) >= 1, proc=proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "interrupted (SIGTERM)" in stderr and "Traceback" not in stderr
    assert not still_running(started), still_running(started, 0)


def test_a_local_ray_stopped_under_the_search_ends_it_in_one_line_and_the_rerun_reuses_its_folds(
        tmp_path, ray_env, lone):
    """The search's raylet killed (what `ray stop` from another shell does): tuner-app's one line and
    exit 1, where the driver used to end on Ray's lines alone; nothing of that Ray left running; the
    rerun keeps the finished folds and completes the grid."""
    proc = start_cli("search", *GRID, "--ray", "--directory", tmp_path, "--project", "p")
    pdir = tmp_path / "p"
    started = ray_started_by(proc)
    wait_for(lambda: pdir.exists() and len(fold_records(pdir)) >= 2, proc=proc)
    (raylet,) = [pid for pid in started if process_name(pid) == "raylet"]
    os.kill(raylet, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    assert stderr.strip().splitlines()[-1] == ("tuner-app: error: the local Ray stopped under the search (raylet "
                                               "exited); the folds that finished are kept: rerun the same command "
                                               "to resume"), stderr
    assert "Traceback" not in stderr
    assert not still_running(started), still_running(started, 0)
    kept = fold_records(pdir)
    assert kept
    rerun_reuses(tmp_path, kept, lone, ray=False)  # (the killed driver's test reruns on Ray)


@pytest.mark.parametrize("args, message", [
    (["--ray", "--cpus-per-task", "0"], "--cpus-per-task 0.0: must be a number > 0"),
    (["--ray", "--gpus-per-task", "1.5"], "--gpus-per-task 1.5"),
    (["--cpus-per-task", "2"], "--cpus-per-task belongs to --ray"),
    (["--ray-address", "127.0.0.1:6379"], "--ray-address belongs to --ray"),
    (["--ray", "--workers", "2"], "--ray and --workers"),
    (["--ray", "--tensorboard"], "--tensorboard"),
    (["--ray", "--ray-stall-timeout", "0"], "--ray-stall-timeout 0.0: must be a number of seconds > 0"),
])
def test_bad_ray_options_are_one_line_usage_errors(tmp_path, args, message):
    r = run_cli("search", *GRID, *args, "--directory", tmp_path, "--project", "p")
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "p").exists()


def test_an_unreachable_ray_cluster_is_a_usage_error_and_writes_nothing(tmp_path, ray_env):
    r = run_cli("search", *GRID, "--ray", "--ray-address", "127.0.0.1:1", "--directory", tmp_path, "--project", "p",
                timeout=180)
    assert r.returncode == 2, r.stderr
    assert "cannot reach 127.0.0.1:1" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "p").exists()


def test_a_task_that_fits_no_node_is_a_usage_error_not_a_wait(tmp_path, ray_env):
    r = run_cli("search", *GRID, "--ray", "--gpus-per-task", "1", "--directory", tmp_path, "--project", "p")
    assert r.returncode == 2, r.stderr
    assert "a fold task asks for 1 CPU and 1 GPU, but the cluster has" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "p").exists()


def test_fused_folds_on_ray_equal_a_lone_fused_search(tmp_path, ray_env):
    """With --fold-mode fused a trial's pending folds are one task; its records are the lone search's."""
    grid = [*GRID, "--fold-mode", "fused", "--grid", "filters=16x32,32x64"]
    run_cli("search", *grid, "--threads", "1", "--directory", tmp_path, "--project", "lone", check=True)
    run_cli("search", *grid, "--ray", "--directory", tmp_path, "--project", "ray", check=True)
    assert len(by_point(tmp_path / "ray")) == 2
    assert by_point(tmp_path / "ray") == by_point(tmp_path / "lone")


def stop_head(where: str) -> None:
    """What `ray stop --force` does to the head started under `where` (ray_env), and to no other Ray
    on the host: SIGTERM, then SIGKILL after 10 s, to its processes (a driver left running aside)."""
    def head() -> list[int]:
        return [p for p in ray_processes(where) if not any(t in ray_leftovers.command_line(p) for t in ("pytest", "-m tuner_app"))]

    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        for pid in head():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        end = time.monotonic() + grace
        while head() and time.monotonic() < end:
            time.sleep(0.2)


@contextlib.contextmanager
def ray_head(where: str):
    """`ray start --head` (as on a VM) on a free loopback port, with token authentication, its files under
    `where` (ray_env); yields its address and the token's environment, and stops it after (`stop_head`:
    not `ray stop`, which would stop every Ray on the host, the other test worker's too)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    ray_cli = [sys.executable, "-m", "ray.scripts.scripts"]
    start = subprocess.run([*ray_cli, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                            "--node-ip-address=127.0.0.1", "--disable-usage-stats"], check=False,
                           capture_output=True, text=True, timeout=120, env={**os.environ, **token})
    assert start.returncode == 0, start.stderr
    try:
        yield f"127.0.0.1:{port}", token
    finally:
        stop_head(where)


def test_a_users_model_file_on_a_running_cluster_equals_a_lone_search(tmp_path, ray_env, monkeypatch):
    """A cluster started with token authentication, then `--ray-address`: refused without the token
    (one line, at once), and with it the user's FILE.py travels inside the tasks."""
    model = tmp_path / "user_model.py"
    shutil.copy(MODELS / "dense_net.py", model)
    own = [a for a in GRID if a not in ("--grid", "learning_rate=0.001")]  # (the seed's hyperparameter)
    small = [*own, "--model", f"{model}:build", "--grid", "units=32", "--directory", tmp_path]
    with ray_head(ray_env) as (address, token):
        args = [*small, "--ray-address", address]
        began = time.monotonic()
        refused = run_cli("search", *args, "--ray", "--project", "ray", env={**os.environ, "RAY_AUTH_MODE": "token",
                                                                             "RAY_AUTH_TOKEN": "0" * 64})
        # at once: not after ray.init's 20 s of retries (RAY_py_gcs_connect_timeout_s), start-up aside
        assert time.monotonic() - began < 20, "the refused token was reported only after ray.init's retries"
        assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert "uses token authentication" in refused.stderr and not (tmp_path / "ray").exists()
        for name, value in token.items():
            monkeypatch.setenv(name, value)
        run_cli("search", *args, "--ray", "--project", "ray", check=True)
    run_cli("search", *small, "--threads", "1", "--project", "lone", check=True)
    assert len(by_point(tmp_path / "ray")) == 3
    assert by_point(tmp_path / "ray") == by_point(tmp_path / "lone")


def test_a_cluster_lost_under_the_search_ends_it_in_one_line_and_the_rerun_reuses_its_folds(tmp_path, ray_env, lone):
    """The cluster the search joined stopped under it (its head's processes ended, as `ray stop` there
    does): tuner-app's one line and exit 1 inside Ray's reconnect window (20 s here, 60 s by default),
    where the driver used to wait the window out and end on Ray's lines; the rerun keeps the finished
    folds and completes the grid."""
    pdir = tmp_path / "p"
    with ray_head(ray_env) as (address, token):
        env = {**os.environ, **token, "RAY_gcs_rpc_server_reconnect_timeout_s": "20", "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "tuner_app", "search", *GRID, "--ray", "--ray-address", address,
                                 "--directory", str(tmp_path), "--project", "p"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        wait_for(lambda: pdir.exists() and len(fold_records(pdir)) >= 2, proc=proc)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    # tuner-app's line, not Ray's "Failed to connect to GCS within 20 s...": said by the search once its GCS has
    # not answered for 5 s, or, where Ray's core ended the search first (the node on this machine stopped under a
    # lost object's recovery), by tuner_app.scaleout.exit_notice
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"tuner-app: error: lost the Ray cluster at {address}: "), stderr
    assert last.endswith("; the folds that finished are kept: once the cluster is back, rerun the same command to resume")
    assert "Traceback" not in stderr and stderr.count("tuner-app: error:") == 1, stderr  # said once, not again at exit
    kept = fold_records(pdir)
    assert kept
    rerun_reuses(tmp_path, kept, lone, ray=False)  # (the killed driver's test reruns on Ray)


def test_a_fold_that_raises_on_ray_fails_its_trial_as_in_a_lone_search(tmp_path, ray_env):
    model = f"{MODELS / 'broken.py'}:FailsInTraining"
    proc = run_cli("search", "--model", model, "--data", "mnist-sample", "--train-limit", "200", "--folds", "2",
                   "--epochs", "1", "--ray", "--directory", tmp_path, "--project", "f", "--quiet")
    assert proc.returncode == 1
    # (both folds fail; the line names the one whose result came back first)
    assert re.search(r"1 trial\(s\) failed; trial 1: fold [12]: RuntimeError: simulated out of memory in the test "
                     r"model \(full traceback in ", proc.stderr), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    trial = json.loads((tmp_path / "f" / "trial_1" / "trial.json").read_text())
    assert trial["status"] == "FAILED" and "broken.py" in trial["message"]
    trials = json.loads(run_cli("results", "--directory", tmp_path, "--project", "f", "-f", "json").stdout)
    assert sorted(t["status"] for t in trials) == ["COMPLETED", "FAILED"]  # the other point was scored
