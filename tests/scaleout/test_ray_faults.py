"""Faults of a real Ray cluster that a one-node local Ray cannot show: nodes on this machine that join,
and are lost, under a search; Ray's memory monitor killing tasks; what a task's process is given.

The cluster is Ray's own `ray.cluster_utils.Cluster`: a head and worker nodes as real processes on
127.0.0.1 (a worker node lost is its raylet and worker processes killed with SIGKILL, as a machine
that goes away). A file of its own, so that pytest-xdist runs it beside test_ray_engine.py.
"""

import contextlib
import os
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import fold_records, run_cli, start_cli, wait_for

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.backend_independent

SEARCH = ["--data", "mnist-sample", "--train-limit", "300", "--folds", "2", "--epochs", "1", "--quiet"]


@pytest.fixture
def cluster(monkeypatch, tmp_path_factory):
    """A head with no CPUs (it runs no fold) whose GCS notices a lost node within a second or two; the nodes
    on this machine's address (the driver joins a cluster by it: Ray turns 127.0.0.1 into it)."""
    import tempfile

    from ray.cluster_utils import Cluster

    where = tempfile.mkdtemp(prefix="tr", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    monkeypatch.setenv("RAY_TMPDIR", where)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_health_check_period_ms", "500")
    monkeypatch.setenv("RAY_health_check_failure_threshold", "3")
    monkeypatch.setenv("RAY_health_check_initial_delay_ms", "500")
    made = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        yield made
    finally:
        made.shutdown()


@contextlib.contextmanager
def killed_at_the_end(proc):
    """The search `proc`, killed if it still runs when the block ends (a failed assertion inside it)."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def busy_fold_tasks() -> int:
    """This test's Ray worker processes running a fold task now (Ray titles a busy worker by its task)."""
    import psutil

    busy = 0
    for proc in psutil.Process().children(recursive=True):
        try:
            busy += "tuner-app-fold" in " ".join(proc.cmdline())
        except psutil.Error:
            continue
    return busy


def test_a_node_that_joins_gets_tasks_and_a_cluster_left_without_nodes_stops_at_the_deadline(cluster, tmp_path):
    """Capacity is followed, not read once; a lost node not replaced is one line at the stall deadline
    (not a wait with no end), Ray's own lines go to the project's ray.log, and a rerun with a node back
    completes with the folds that finished kept."""
    first = cluster.add_node(num_cpus=1)
    args = ["search", *SEARCH, "--ray", "--ray-address", cluster.address, "--ray-stall-timeout", "20",
            "-d", tmp_path, "-p", "p"]
    pdir = tmp_path / "p"
    with killed_at_the_end(start_cli(*args)) as proc:
        wait_for(lambda: pdir.exists() and len(fold_records(pdir)) >= 1, timeout=180, proc=proc)
        assert busy_fold_tasks() <= 1  # one node of 1 CPU: one task at a time
        second = cluster.add_node(num_cpus=1)
        wait_for(lambda: busy_fold_tasks() >= 2, timeout=60, proc=proc)  # the joined node got a task
        cluster.remove_node(first, allow_graceful=False)
        cluster.remove_node(second, allow_graceful=False)
        lost_at = time.monotonic()
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert time.monotonic() - lost_at < 20 + 30  # the deadline, and a little for the search to leave Ray
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("tuner-app: error: --ray: no fold task started, reported or finished for 2"), err
    assert "waiting for a node with 1 CPU: 0 of 1 alive nodes have it" in lines[0], err
    assert (pdir / "ray.log").exists()
    kept = fold_records(pdir)  # every fold that finished before the stop
    cluster.add_node(num_cpus=2)
    run_cli(*args, check=True, timeout=600)
    records = fold_records(pdir)
    assert len(records) == 12  # 6 points x 2 folds
    assert all(records[key]["finished_at"] == r["finished_at"] for key, r in kept.items())  # not trained again


def test_tasks_killed_by_rays_memory_monitor_are_retried_a_bounded_number_of_times_then_fail_their_trial(
        tmp_path, monkeypatch):
    """A local Ray whose memory monitor kills every task (threshold 1% of the memory): each is retried
    --max-retries times (not without end, Ray's default), then its trial fails in a line naming the cause."""
    import tempfile

    monkeypatch.setenv("RAY_TMPDIR", tempfile.mkdtemp(prefix="tr", dir="/tmp"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_memory_usage_threshold", "0.01")
    monkeypatch.setenv("RAY_memory_monitor_refresh_ms", "100")
    proc = run_cli("search", *SEARCH, "--grid", "filters=8x16", "--grid", "learning_rate=0.01", "--ray",
                   "-d", tmp_path, "-p", "p", timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "killed by Ray's memory monitor (out of memory), after its retries" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_a_tasks_process_gets_its_share_of_the_gpu_and_its_threads():
    """What a fold task's worker process is given, read inside a real Ray task: on a GPU search, memory
    growth (TensorFlow) and no preallocation beyond its share (JAX); its threads; the backend."""
    script = textwrap.dedent("""
        import json, os, ray
        from tuner_app.config import RayConfig
        from tuner_app.scaleout import ray_cluster
        ray_cluster.connect(RayConfig(cpus_per_task=1, gpus_per_task=0.25), "jax", "gpu")
        names = ["KERAS_BACKEND", "OMP_NUM_THREADS", "TF_FORCE_GPU_ALLOW_GROWTH", "XLA_PYTHON_CLIENT_PREALLOCATE",
                 "XLA_PYTHON_CLIENT_MEM_FRACTION", "TUNER_APP_GPU_SHARE"]
        seen = ray.get(ray.remote(lambda: {n: os.environ.get(n) for n in names}).options(num_gpus=0).remote())
        ray_cluster.disconnect()
        print(json.dumps(seen))
    """)
    import json
    import tempfile

    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="tr", dir="/tmp")}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, env=env,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen == {"KERAS_BACKEND": "jax", "OMP_NUM_THREADS": "1", "TF_FORCE_GPU_ALLOW_GROWTH": "true",
                    "XLA_PYTHON_CLIENT_PREALLOCATE": "false", "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.250",
                    "TUNER_APP_GPU_SHARE": "0.25"}


def test_the_local_rays_node_dying_with_its_dashboard_agent_ends_the_search_on_tuner_apps_line(tmp_path, monkeypatch):
    """Ray's dashboard agent killed: Ray ends the raylet with it (they share their fate), and Ray's core may end
    the search's process on its own. The last line on the terminal is tuner-app's, Ray's lines are in the
    project's ray.log, and the rerun resumes."""
    import signal
    import tempfile

    import psutil

    monkeypatch.setenv("RAY_TMPDIR", tempfile.mkdtemp(prefix="tr", dir="/tmp"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    args = ["search", *SEARCH, "--grid", "learning_rate=0.001", "--ray", "-d", tmp_path, "-p", "p"]
    pdir = tmp_path / "p"
    with killed_at_the_end(start_cli(*args)) as proc:
        wait_for(lambda: pdir.exists() and len(fold_records(pdir)) >= 1, timeout=180, proc=proc)
        (agent,) = [p for p in psutil.Process(proc.pid).children(recursive=True)
                    if "dashboard/agent.py" in " ".join(p.cmdline())]
        agent.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("tuner-app: error: the local Ray stopped under the search ("), err
    assert last.endswith("the folds that finished are kept: rerun the same command to resume"), err
    assert "Traceback" not in err
    kept = fold_records(pdir)
    run_cli(*args, check=True, timeout=600)
    records = fold_records(pdir)
    assert len(records) == 6 and all(records[key]["finished_at"] == r["finished_at"] for key, r in kept.items())
