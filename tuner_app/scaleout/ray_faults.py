"""What goes wrong with fold tasks on a Ray cluster, said in one line: a stall, a task's death.

A cluster that loses a node and gets no other, or that is too small for a task, leaves Ray's
tasks pending with no end: `Stall` sees that nothing has started, reported or finished, and that
the cluster's CPUs and GPUs are idle, for a while; it shows what the search waits for, and past `RayConfig.stall_timeout` stops the search
in one line naming what is missing (the finished folds are on disk; the same command resumes).
`cause` names why a task died once Ray gave up on it. Ray's own notices about lost nodes and
retried tasks go to `ray.log` in the project (`native_log`), not between the progress lines.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

from tuner_app.config import RayConfig
from tuner_app.errors import TunerAppError, rerun

LOG_FILE = "ray.log"  # in the project directory: Ray's own lines during a search


class Stall:
    """The engine's clock of progress: `moved()` when a task starts, reports or finishes; `check()`
    in its loop says what it waits for (after `NOTICE_S` of quiet) and raises past the deadline.

    Args:
        config: The search's Ray settings (`stall_timeout`, what a task asks for).
        device: What the tasks train on ("cpu" or "gpu").
    """

    NOTICE_S, ASK_EVERY_S = 30.0, 2.0  # (a worker process starting up imports Keras for several seconds)

    def __init__(self, config: RayConfig, device: str):
        self.config, self.device = config, device
        self.since = time.monotonic()
        self._asked, self._polled, self._what = 0.0, 0.0, ""

    def moved(self) -> None:
        self.since = time.monotonic()

    def busy(self) -> bool:
        """Whether the cluster's CPUs or GPUs are in use, asked every `ASK_EVERY_S`: a task in a long epoch
        (no event for minutes) is work that moves; a task Ray cannot place uses nothing."""
        import ray

        if time.monotonic() - self._polled < self.ASK_EVERY_S:
            return False
        self._polled = time.monotonic()
        try:
            free, total = ray.available_resources(), ray.cluster_resources()
        except Exception:  # noqa: BLE001 - the GCS not answering: ClusterWatch says so
            return False
        return any(free.get(name, 0) < total.get(name, 0) for name in ("CPU", "GPU"))

    def check(self, pending: int) -> str | None:
        """None while work moves (or none is pending); else the line of what the search waits for.

        Raises:
            TunerAppError: nothing moved for `stall_timeout` seconds with tasks pending.
        """
        quiet = time.monotonic() - self.since
        if not pending or quiet < min(self.NOTICE_S, self.config.stall_timeout):
            return None
        if time.monotonic() - self._asked >= self.ASK_EVERY_S:
            self._asked, self._what = time.monotonic(), self.missing()
        if quiet >= self.config.stall_timeout:
            raise TunerAppError(f"--ray: no fold task started, reported or finished for {quiet:.0f} s, waiting for "
                                f"{self._what}; the folds that finished are kept: {rerun('resume')} once the cluster "
                                "can run a task (or give a longer --ray-stall-timeout)")
        return f"waiting for {self._what}, {quiet:.0f} s (stops at {self.config.stall_timeout:.0f} s)"

    def missing(self) -> str:
        """What the cluster lacks for a fold task, e.g. "a node with 1 CPU: 0 of 1 alive nodes have it"."""
        import ray

        need = {"CPU": self.config.cpus_per_task, "GPU": self.config.gpus(self.device)}
        ask = " and ".join(f"{amount:g} {name}" for name, amount in need.items() if amount)
        try:
            alive = [n for n in ray.nodes() if n.get("Alive")]
        except Exception:  # noqa: BLE001 - the GCS not answering: ClusterWatch says so
            return f"a node with {ask} (the cluster does not answer)"
        fit = [n for n in alive if all(n.get("Resources", {}).get(k, 0) >= v for k, v in need.items() if v)]
        if not fit:
            return f"a node with {ask}: 0 of {len(alive)} alive nodes have it"
        return f"a fold task to start on the {len(fit)} node(s) with {ask} (busy, or their tasks hung)"


def cause(error: Exception) -> str:
    """Why Ray gave up on a task, in a few words for the trial's line."""
    import ray

    kinds = [(getattr(ray.exceptions, "OutOfMemoryError", None), "killed by Ray's memory monitor (out of memory)"),
             (getattr(ray.exceptions, "NodeDiedError", None), "its node was lost"),
             (getattr(ray.exceptions, "WorkerCrashedError", None), "its worker process crashed or was killed"),
             (getattr(ray.exceptions, "TaskUnschedulableError", None), "no node can run it")]
    for kind, said in kinds:
        if kind is not None and isinstance(error, kind):
            return f"{said}, after its retries"
    first = str(error).strip().splitlines()
    return first[0][:200] if first else type(error).__name__


@contextlib.contextmanager
def native_log(project_dir: str | Path):
    """Meanwhile, what Ray's native core and Python loggers write to fd 2 goes to the project's ray.log;
    tuner-app's own lines (`sys.stderr`: the progress view, errors) still reach the terminal."""
    sys.stderr.flush()
    saved, terminal = os.dup(2), sys.stderr
    mine = os.fdopen(os.dup(2), "w", buffering=1, encoding=terminal.encoding, errors="backslashreplace")
    sys.stderr = mine
    log = os.open(Path(project_dir) / LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 2)
    os.close(log)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        if sys.stderr is mine:  # (else rich's live view holds it, and gives it back when it stops: left open)
            sys.stderr = terminal


__all__ = ["LOG_FILE", "Stall", "cause", "native_log"]
