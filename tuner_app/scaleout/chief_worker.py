"""Scale-out on KerasTuner's chief/worker engine, and a launcher that never hangs.

KerasTuner's own protocol: every process runs the same search command; the one whose
KERASTUNER_TUNER_ID contains "chief" serves the oracle over gRPC at
KERASTUNER_ORACLE_IP:KERASTUNER_ORACLE_PORT, the others (any other id) ask it for trials,
train them and report back. The project directory must be shared (a volume, NFS): workers
write the fold records, the chief the oracle and trial files. A worker restarted with the
same id gets its unfinished trial back and reuses the folds it had finished.

`launch` runs a chief and N workers on this host (or, with `chief=HOST:PORT`, N workers
that join a chief elsewhere), one GPU each when GPUs are visible, otherwise sharing the CPU
cores. Every wait is bounded, and every way it can end is said in one line:

- a worker killed by a signal is restarted with its id, up to MAX_RESTARTS times; past that
  the search is stopped (exit 1) and a rerun resumes;
- a worker that fails (exit 2 for bad usage, 1 for a failed run) is not restarted: the
  search is stopped with its exit code;
- the chief that dies (or never opens its port) stops the workers (exit 1);
- Ctrl-C/SIGTERM stop everything (exit 130/143);
- the children die with the launcher (PR_SET_PDEATHSIG), and a worker whose chief stops
  answering exits by itself within CHIEF_LOST_S (`watch_chief`).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tuner_app.errors import UsageError, rerun
from tuner_app.runtime import interrupts
from tuner_app.runtime.hardware import visible_gpus

MAX_RESTARTS = 3
CHIEF_START_S = 120.0  # the chief opens its port within this (it loads Keras and checks the model first)
CHIEF_LOST_S = 30.0  # a chief silent this long is gone
END_GRACE_S = 60.0  # after the chief ends, workers get this long to see the end
STOP_GRACE_S = 10.0  # SIGTERM, then SIGKILL after this
PROJECT_WAIT_S = 600.0  # a worker waits this long for the chief's search.json


def role() -> str | None:
    """'chief', 'worker', or None when not in KerasTuner's distributed mode."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return None
    missing = [v for v in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID") if not os.environ.get(v)]
    if missing:
        raise UsageError(f"KERASTUNER_ORACLE_IP is set but {', '.join(missing)} is not; set all three, or none")
    return "chief" if "chief" in os.environ["KERASTUNER_TUNER_ID"] else "worker"


def chief_address() -> tuple[str, int]:
    """The chief's (host, port) from KerasTuner's environment variables."""
    return os.environ["KERASTUNER_ORACLE_IP"], int(os.environ["KERASTUNER_ORACLE_PORT"])


def wait_for_file(path: Path, timeout: float = PROJECT_WAIT_S) -> None:
    """A worker waits for the chief to create the project (search.json)."""
    end = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > end:
            raise UsageError(f"worker: {path} did not appear in {timeout:.0f} s; start the chief first, "
                             "and give every process the same --directory on a shared filesystem")
        time.sleep(0.5)


def answers(host: str, port: int, timeout: float = 2.0) -> bool:
    """Whether something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def watch_chief(timeout: float = CHIEF_LOST_S, interval: float = 2.0) -> None:
    """In a worker: exit (code 1) once the chief has not answered for `timeout` seconds.

    KerasTuner's client waits an hour for a silent chief; this daemon thread ends the
    worker instead, so that a lost chief never leaves workers hanging. Its fold records
    are on disk: rerunning the search resumes.
    """
    host, port = chief_address()

    def watch():
        silent_since = None
        while True:
            time.sleep(interval)
            if answers(host, port):
                silent_since = None
                continue
            silent_since = silent_since or time.monotonic()
            if time.monotonic() - silent_since >= timeout:
                sys.stderr.write(f"tuner-app: error: worker {os.environ.get('KERASTUNER_TUNER_ID')}: the chief at "
                                 f"{host}:{port} has not answered for {timeout:.0f} s; exiting (rerun the search to "
                                 "resume: finished folds are kept)\n")
                sys.stderr.flush()
                os._exit(1)

    threading.Thread(target=watch, name="watch-chief", daemon=True).start()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the parent's stop() still ends its children


def _pump(stream, prefix: str, quiet: bool) -> None:
    for line in stream:
        if (line.strip() and not quiet) or "error" in line.lower():
            sys.stderr.write(f"{prefix} {line}")
            sys.stderr.flush()


class _Proc:
    """One child process (the chief or a worker), its output pumped to stderr with a prefix."""

    def __init__(self, name: str, cmd: list[str], env: dict, quiet: bool):
        self.name, self.cmd, self.env, self.quiet, self.restarts = name, cmd, env, quiet, 0
        self.start()

    def start(self) -> None:
        self.popen = subprocess.Popen(self.cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True, bufsize=1, preexec_fn=_die_with_parent)  # noqa: PLW1509 (prctl only)
        threading.Thread(target=_pump, args=(self.popen.stderr, f"[{self.name}]", self.quiet), daemon=True).start()

    @property
    def code(self) -> int | None:
        return self.popen.poll()


def _say(text: str) -> None:
    sys.stderr.write(f"tuner-app: {text}\n")
    sys.stderr.flush()


def _stop(procs: list[_Proc], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM every live process, SIGKILL those still alive after `grace` seconds; reap them all."""
    for p in procs:
        if p.code is None:
            p.popen.send_signal(signal.SIGTERM)
    end = time.monotonic() + grace
    for p in procs:
        try:
            p.popen.wait(timeout=max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.popen.kill()
            p.popen.wait()


def _exit_reason(code: int) -> str:
    return f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"


def launch(search_argv: list[str], workers: int, quiet: bool = False, chief: str | None = None) -> int:
    """Run `tuner-app search SEARCH_ARGV` as a chief and `workers` workers on this host.

    Args:
        search_argv: The search command's options (as values turned into arguments, without --workers).
        workers: Number of worker processes.
        quiet: Only errors from the processes.
        chief: "HOST:PORT" of a chief running elsewhere: start only the workers, which join it.

    Returns:
        The exit code: 0 when every grid point completed, 128 + signal when stopped, else
        the code that ended it (1: a process died or a wait ran out; 2: bad usage).
    """
    check_launch(workers, chief)
    host, port = _parse_chief(chief) if chief else ("127.0.0.1", _free_port())
    gpus = visible_gpus()
    threads = max(1, (os.cpu_count() or 1) // workers)
    base = {**os.environ, "KERASTUNER_ORACLE_IP": host, "KERASTUNER_ORACLE_PORT": str(port), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "tuner_app", "search", *search_argv] + (["--quiet"] if quiet else [])
    procs: list[_Proc] = []
    stopping: list[int] = []

    def on_signal(signum, frame):
        stopping.append(signum)

    with interrupts.handling(on_signal):
        try:
            if chief is None:
                procs.append(_Proc("chief", cmd, {**base, "KERASTUNER_TUNER_ID": "chief"}, quiet))
            code = _wait_for_chief(host, port, procs[0] if procs else None, stopping)
            if code is not None:
                return code
            for i, name in enumerate(_worker_ids(workers, chief)):
                env = {**base, "KERASTUNER_TUNER_ID": name}
                if gpus:
                    env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
                worker_cmd = [a for a in cmd if a != "--overwrite"]  # only the chief starts the project over
                procs.append(_Proc(name, worker_cmd + ([] if gpus else ["--threads", str(threads)]), env, quiet))
            return _supervise(procs, host, port, stopping)
        finally:
            _stop(procs)


def check_launch(workers: int, chief: str | None) -> None:
    """Refuse `--workers`/`--chief` values `launch` cannot use (a `--dry-run` checks them too)."""
    if workers < 1:
        raise UsageError(f"--workers {workers}: must be >= 1 (or leave it out for one process)")
    if chief:
        _parse_chief(chief)


def _parse_chief(chief: str) -> tuple[str, int]:
    host, _, port = chief.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--chief {chief!r}: give HOST:PORT of the chief, e.g. --chief chief-host:8000")
    return host, int(port)


def _worker_ids(workers: int, chief: str | None) -> list[str]:
    if chief is None:
        return [f"worker{i}" for i in range(workers)]
    # Joining a chief elsewhere: ids unique per host, stable across restarts of this launcher.
    stem = os.environ.get("KERASTUNER_TUNER_ID") or f"worker-{socket.gethostname()}"
    return [stem] if workers == 1 else [f"{stem}-{i}" for i in range(workers)]


def _wait_for_chief(host: str, port: int, chief: _Proc | None, stopping: list[int]) -> int | None:
    """None once the chief answers; else the exit code to end with (it died, or did not start in time)."""
    end = time.monotonic() + CHIEF_START_S
    while time.monotonic() < end:
        if stopping:
            return 128 + stopping[0]
        if chief is not None and chief.code is not None:
            code = chief.code
            if code != 0:
                _say(f"the chief {_exit_reason(code)} before serving the search; see its lines above")
            return code
        if answers(host, port, timeout=1.0):
            return None
        time.sleep(0.2)
    _say(f"error: the chief at {host}:{port} did not answer within {CHIEF_START_S:.0f} s; stopped the search "
         f"({rerun('resume')})")
    return 1


def _supervise(procs: list[_Proc], host: str, port: int, stopping: list[int]) -> int:
    """Watch the chief and the workers until the search ends; return the exit code."""
    chief = procs[0] if procs[0].name == "chief" else None
    workers = [p for p in procs if p is not chief]
    silent_since = None
    while True:
        if stopping:
            return 128 + stopping[0]
        if chief is not None and chief.code is not None:
            return _chief_ended(chief, workers)
        if chief is None:  # a chief elsewhere: it is gone when it stops answering
            silent_since = None if answers(host, port, timeout=1.0) else silent_since or time.monotonic()
            if silent_since and time.monotonic() - silent_since > CHIEF_LOST_S:
                _say(f"error: the chief at {host}:{port} has not answered for {CHIEF_LOST_S:.0f} s; stopped the "
                     f"workers ({rerun('resume')})")
                return 1
            if all(w.code == 0 for w in workers):
                return 0
        for w in workers:
            code = w.code
            if code is None or code == 0:
                continue
            if code < 0 and w.restarts < MAX_RESTARTS:  # killed (OOM killer, kill -9): the same id resumes
                w.restarts += 1
                _say(f"[{w.name}] killed by signal {-code}; restarting it ({w.restarts}/{MAX_RESTARTS})")
                w.start()
                continue
            if code < 0:
                _say(f"error: {w.name} was killed {w.restarts + 1} times (signal {-code}); stopped the search, "
                     f"finished folds are kept ({rerun('resume')})")
                return 1
            _say(f"error: {w.name} {_exit_reason(code)}; stopped the search (see its lines above)")
            return code
        time.sleep(0.2)


def _chief_ended(chief: _Proc, workers: list[_Proc]) -> int:
    code = chief.code
    if code != 0:
        _say(f"error: the chief {_exit_reason(code)}; stopped the workers, finished folds are kept "
             f"({rerun('resume')})")
        return 1 if code < 0 else code
    end = time.monotonic() + END_GRACE_S  # the search is complete: workers see the end and exit
    while time.monotonic() < end and any(w.code is None for w in workers):
        time.sleep(0.2)
    failed = [w for w in workers if w.code not in (None, 0)]
    return failed[0].code if failed and failed[0].code > 0 else 0
