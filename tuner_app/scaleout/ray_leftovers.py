"""Nothing left running when a search on a local Ray ends, however it ends.

A local Ray started by the search process dies with it, except two of Ray's helper
processes (its dashboard and runtime-env agents), which outlive a killed search by a
minute or more (they try to report to a Ray that is gone). `watch()` starts a small
reaper process that remembers the processes Ray started under the search process and
kills those still there as soon as the search process is gone (its pipe closes: killed
or not). The process table is read with psutil, on any OS.

    python -m tuner_app.scaleout.ray_leftovers PID    # stdin: a pipe from PID; run by watch()
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading

import psutil

MARK = "/ray/"  # in the command line of the processes Ray starts (gcs_server, raylet, its monitors)


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def command_line(pid: int) -> str:
    """The command line of process `pid` ("" when it is gone or unreadable)."""
    try:
        return _cmdline(psutil.Process(pid))
    except psutil.Error:
        return ""


def alive(pid: int, created: float) -> bool:
    """Whether process `pid` still runs and is the one created at `created` (not a reused pid)."""
    try:
        return psutil.Process(pid).create_time() == created
    except psutil.Error:
        return False


def ray_processes(root: int) -> dict[int, float]:
    """{pid: creation time} of the processes under `root` that Ray started, and theirs."""
    try:
        children = psutil.Process(root).children()
    except psutil.Error:
        return {}
    found: dict[int, float] = {}
    for child in children:
        if MARK not in _cmdline(child):
            continue
        for proc in [child, *_descendants(child)]:
            try:
                found[proc.pid] = proc.create_time()
            except psutil.Error:
                continue
    found.pop(os.getpid(), None)
    return found


def _descendants(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


def reap(root: int, interval: float = 1.0) -> None:
    """Remember `root`'s Ray processes until stdin closes, then kill those still running."""
    closed = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.buffer.read(), closed.set()), daemon=True).start()
    seen: dict[int, float] = {}
    while not closed.is_set():
        seen.update(ray_processes(root))
        closed.wait(interval)
    for pid, created in seen.items():
        if alive(pid, created):  # the same process, not a new one with a reused pid
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()


def watch() -> subprocess.Popen:
    """Start the reaper for this process; close its stdin (or end this process) to let it act."""
    return subprocess.Popen([sys.executable, "-m", "tuner_app.scaleout.ray_leftovers", str(os.getpid())],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def release(reaper: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """After a clean shutdown: let the reaper kill what is left and wait for it."""
    if reaper is not None:
        reaper.stdin.close()
        try:
            reaper.wait(timeout)
        except subprocess.TimeoutExpired:
            reaper.kill()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the search; the reaper acts when it ends
    reap(int(sys.argv[1]))
