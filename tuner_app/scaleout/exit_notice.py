"""The search's one line even when Ray's native core ends the search process without it.

When the Ray node on the driver's machine stops under a search that joined a cluster, Ray's
core can end the driver at once, exit 1, no Python code run: a lost object's error marker
cannot be written to the node's object store, and Ray quits on that (its plasma client,
`connection.cc`: "The connection to the plasma store is failed. Terminate the process",
a warning in its own log file only). The user would see Ray's "Attempting to recover N lost
objects" line and nothing else.

`watch()` starts a small process that shares the search's stderr and is given the line to
say. The search tells it `done()` whenever it ends on its own (said its line, or finished).
If the search's pipe closes without that (the process is gone) and the node's raylet no
longer accepts connections on its socket, this process prints the line; otherwise (the
search killed by a user, the node still up) it says nothing. It ends either way, at once.

    python -m tuner_app.scaleout.exit_notice SOCKET    # stdin: the line, then "done" or nothing; run by watch()
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

DONE = "done"


def node_is_up(raylet_socket: str, timeout: float = 2.0) -> bool:
    """Whether a process accepts connections on the raylet's socket (a Unix socket)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(raylet_socket)
        except OSError:  # refused (no listener), no such file, or no answer in time
            return False
    return True


def watch(line: str, raylet_socket: str) -> subprocess.Popen:
    """Start the process that says `line` if this process ends without `done()` and its node is down."""
    proc = subprocess.Popen([sys.executable, "-m", "tuner_app.scaleout.exit_notice", raylet_socket], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, start_new_session=True, text=True)
    proc.stdin.write(line + "\n")
    proc.stdin.flush()
    return proc


def done(proc: subprocess.Popen | None, timeout: float = 5.0) -> None:
    """This process ends on its own: nothing for the watcher to say; wait for it to end."""
    if proc is None or proc.stdin.closed:
        return
    try:
        proc.stdin.write(DONE + "\n")
        proc.stdin.close()
    except OSError:  # it is gone already
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


def _main(raylet_socket: str) -> None:
    told = sys.stdin.read().splitlines()  # until the search's end closes the pipe
    if told and told[-1] != DONE and not node_is_up(raylet_socket):
        print(told[0], file=sys.stderr, flush=True)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the search; this process acts when it ends
    _main(sys.argv[1])
