"""Nothing left running when a search on a local Ray ends, however it ends.

A local Ray started by the search process dies with it, except two of Ray's helper
processes (its dashboard and runtime-env agents), which outlive a killed search by a
minute or more (they try to report to a Ray that is gone). `watch()` starts a small
reaper process that remembers the processes Ray started under the search process and
kills those still there as soon as the search process is gone (its pipe closes: killed
or not). Linux (/proc); elsewhere it does nothing.

    python -m tuner_app.reaper PID    # stdin: a pipe from PID; run by watch()
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

MARK = "/ray/"  # in the command line of the processes Ray starts (gcs_server, raylet, its monitors)


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of a process, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), fields[19]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def ray_processes(root: int) -> dict[int, str]:
    """{pid: start time} of the processes under `root` that Ray started, and theirs."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))):
            parents[int(entry.name)] = st
    found = {pid: st[1] for pid, st in parents.items() if st[0] == root and MARK in _cmdline(pid)}
    grew = True
    while grew:
        more = {pid: st[1] for pid, st in parents.items() if st[0] in found and pid not in found}
        found.update(more)
        grew = bool(more)
    found.pop(os.getpid(), None)
    return found


def reap(root: int, interval: float = 1.0) -> None:
    """Remember `root`'s Ray processes until stdin closes, then kill those still running."""
    seen: dict[int, str] = {}
    while True:
        seen.update(ray_processes(root))
        readable, _, _ = select.select([sys.stdin], [], [], interval)
        if readable and not os.read(sys.stdin.fileno(), 4096):
            break
    for pid, start in seen.items():
        st = _stat(pid)
        if st is not None and st[1] == start:  # the same process, not a new one with a reused pid
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def watch() -> subprocess.Popen | None:
    """Start the reaper for this process; close its stdin (or end this process) to let it act."""
    if not Path("/proc/self/stat").exists():
        return None
    return subprocess.Popen([sys.executable, "-m", "tuner_app.reaper", str(os.getpid())], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


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
