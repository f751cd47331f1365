"""tuner_app.scaleout.exit_notice: a search process ended by Ray's native core (`_Exit(1)`, no Python code run)
still ends on tuner-app's one line, when the Ray node on its machine is down; else nothing is said.

Each test runs a real search-like process that starts the watcher and ends as Ray's core ends it
(`os._exit(1)`), or on its own (`done()`), with a real Unix socket standing for the raylet's."""

import socket
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.backend_independent

LINE = "tuner-app: error: lost the Ray cluster at 10.0.0.1:6379: the Ray node on this machine stopped"

SEARCH = """
import os, sys
from tuner_app.scaleout import exit_notice
proc = exit_notice.watch(sys.argv[1], sys.argv[2])
print(proc.pid, flush=True)
if sys.argv[3] == "done":
    exit_notice.done(proc)
os._exit(1)  # as Ray's core ends its driver
"""


def search(raylet_socket, end: str) -> tuple[subprocess.CompletedProcess, int]:
    """Run the search-like process; its output once every writer of its stderr (the watcher too) has closed it."""
    began = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", SEARCH, LINE, str(raylet_socket), end], check=False,
                          capture_output=True, text=True, timeout=60)
    assert time.monotonic() - began < 30  # the watcher ends at once, whatever it says
    return proc, int(proc.stdout.split()[0])


def gone(pid: int, timeout: float = 5.0) -> bool:
    """Whether the process has ended (it closes its stderr a moment before it does)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def raylet(tmp_path):
    """A listening Unix socket: a raylet that is up."""
    path = tmp_path / "raylet"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
        s.listen()
        yield path


def test_a_search_ended_by_ray_with_its_node_down_ends_on_the_line(tmp_path):
    stopped = tmp_path / "raylet"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(stopped))  # the socket file of a raylet that has exited: nothing listens on it
    proc, watcher = search(stopped, end="killed")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [LINE]
    assert gone(watcher)


def test_a_search_ended_by_ray_or_killed_with_its_node_up_says_nothing(raylet):
    proc, watcher = search(raylet, end="killed")
    assert proc.returncode == 1 and proc.stderr == ""
    assert gone(watcher)


def test_a_search_that_ends_on_its_own_says_nothing_more(tmp_path):
    proc, watcher = search(tmp_path / "no-raylet", end="done")
    assert proc.returncode == 1 and proc.stderr == ""
    assert gone(watcher)
