"""Scale-out on KerasTuner's chief/worker engine, and a launcher for one host.

KerasTuner's own protocol: every process runs the same search command; the one whose
KERASTUNER_TUNER_ID contains "chief" serves the oracle over gRPC at
KERASTUNER_ORACLE_IP:KERASTUNER_ORACLE_PORT, the others (any other id) ask it for trials,
train them and report back. The project directory must be shared (a volume, NFS): workers
write the fold records, the chief the oracle and trial files. A worker restarted with the
same id gets its unfinished trial back and reuses the folds it had finished.

`launch` runs a chief and N workers on this host, one GPU each when GPUs are visible,
otherwise sharing the CPU cores, streams their output into one view, restarts a worker that
was killed, and stops them all on Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tuner_app.errors import UsageError

MAX_RESTARTS = 3


def role() -> str | None:
    """'chief', 'worker', or None when not in KerasTuner's distributed mode."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return None
    missing = [v for v in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID") if not os.environ.get(v)]
    if missing:
        raise UsageError(f"KERASTUNER_ORACLE_IP is set but {', '.join(missing)} is not; set all three, or none")
    return "chief" if "chief" in os.environ["KERASTUNER_TUNER_ID"] else "worker"


def wait_for_file(path: Path, timeout: float = 600.0) -> None:
    """A worker waits for the chief to create the project (search.json)."""
    end = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > end:
            raise UsageError(f"worker: {path} did not appear in {timeout:.0f} s; start the chief first, "
                             "and give every process the same --directory on a shared filesystem")
        time.sleep(0.5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def visible_gpus() -> list[str]:
    """GPU indices this host shows (CUDA_VISIBLE_DEVICES, else nvidia-smi), without loading a backend."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [g for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def _pump(stream, prefix: str, quiet: bool) -> None:
    for line in stream:
        if (line.strip() and not quiet) or "error" in line.lower():
            sys.stderr.write(f"{prefix} {line}")
            sys.stderr.flush()


class _Proc:
    def __init__(self, name: str, cmd: list[str], env: dict, quiet: bool):
        self.name, self.cmd, self.env, self.quiet, self.restarts = name, cmd, env, quiet, 0
        self.start()

    def start(self) -> None:
        self.popen = subprocess.Popen(self.cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True, bufsize=1)
        threading.Thread(target=_pump, args=(self.popen.stderr, f"[{self.name}]", self.quiet), daemon=True).start()


def launch(search_args: list[str], workers: int, quiet: bool = False) -> int:
    """Run `tuner-app search SEARCH_ARGS` as a chief and `workers` workers on this host.

    Args:
        search_args: The search command's arguments (without --workers).
        workers: Number of worker processes.
        quiet: Only errors from the processes.

    Returns:
        The exit code: the chief's, or 128 + signal when stopped.
    """
    if workers < 1:
        raise UsageError(f"--workers {workers}: must be >= 1 (or leave it out for one process)")
    port = str(_free_port())
    gpus = visible_gpus()
    threads = max(1, (os.cpu_count() or 1) // workers)
    base = {**os.environ, "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": port,
            "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "tuner_app", "search", *search_args] + (["--quiet"] if quiet else [])
    chief = _Proc("chief", cmd, {**base, "KERASTUNER_TUNER_ID": "chief", "CUDA_VISIBLE_DEVICES": ""}, quiet)
    procs = [chief]
    stopping: list[int] = []

    def stop(signum, frame):
        stopping.append(signum)
        for p in procs:
            if p.popen.poll() is None:
                p.popen.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if not _wait_for_port(int(port), chief):
            return chief.popen.wait()
        for i in range(workers):
            env = {**base, "KERASTUNER_TUNER_ID": f"worker{i}"}
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
            else:
                env.update(CUDA_VISIBLE_DEVICES="", TUNER_APP_THREADS=str(threads))
            procs.append(_Proc(f"worker{i}", cmd, env, quiet))
        while chief.popen.poll() is None:
            for p in procs[1:]:
                code = p.popen.poll()
                if code is not None and code < 0 and not stopping and p.restarts < MAX_RESTARTS:
                    # Killed (OOM killer, kill -9): the same id gets its trial back from the chief.
                    p.restarts += 1
                    sys.stderr.write(f"[{p.name}] killed by signal {-code}; restarting it ({p.restarts}/{MAX_RESTARTS})\n")
                    p.start()
                elif code is not None and code > 0 and not stopping:
                    stop(signal.SIGTERM, None)  # a worker failed for real: stop the others
            time.sleep(0.2)
        for p in procs[1:]:
            p.popen.wait()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if stopping:
        return 128 + stopping[0]
    failed = [p.popen.returncode for p in procs[1:] if p.popen.returncode]
    return chief.popen.returncode or (failed[0] if failed else 0)


def _wait_for_port(port: int, chief: _Proc, timeout: float = 300.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if chief.popen.poll() is not None:
            return False
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.2)
    return False
