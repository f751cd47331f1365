"""The Ray cluster a search runs on: joining it (or starting a local one), watching it, leaving it.

`connect` joins the cluster at `RayConfig.address` (else $RAY_ADDRESS, else a local Ray for the
search's duration) before any file is written, so an unreachable cluster changes nothing;
`slots` says how many fold tasks fit it at once. A local Ray that loses its raylet or GCS under
the search (`check_local_ray`), or a cluster whose GCS stops answering (`ClusterWatch`), ends
the search in one line, its finished folds kept; where Ray's core ends the driver itself first
(the node on its machine gone with the cluster), `tuner_app.scaleout.exit_notice` says the line.
A local Ray started here ends with this process (`tuner_app.scaleout.ray_leftovers` ends the
helper processes Ray would leave behind).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import tempfile
import threading
import time

from tuner_app.config import RayConfig
from tuner_app.errors import TunerAppError, UsageError, rerun
from tuner_app.runtime import interrupts
from tuner_app.scaleout import exit_notice, ray_leftovers

_local: dict = {}  # a local Ray's reaper (tuner_app.scaleout.ray_leftovers); a joined cluster's watch and last_line watcher
_ADDRESS_HINT = ("check --ray-address or RAY_ADDRESS (`ray status` on the head node prints it), or give neither for "
                 "a local Ray")


def connect(config: RayConfig, backend: str, device: str) -> None:
    """Join the Ray cluster at `config.address`, or start a local one; workers get the backend.

    Raises:
        UsageError: Ray is not installed, or no cluster answers at the address.
    """
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray: pip install 'tuner-app[ray]'") from None
    kwargs = {"runtime_env": {"env_vars": task_env(config, backend, device)}, "log_to_driver": False,
              "logging_level": "ERROR", "configure_logging": False}
    address = address_of(config)
    if address is None:  # a local Ray, on loopback, without the dashboard
        kwargs.update(address="local", include_dashboard=False, _node_ip_address="127.0.0.1")
    else:
        kwargs["address"] = address
        _check_reachable(address)
        for name in ("RAY_py_gcs_connect_timeout_s", "RAY_gcs_rpc_server_connect_timeout_s"):
            os.environ.setdefault(name, "20")  # a refusal (e.g. a token missing) in 20 s, not Ray's minutes
        _check_token(address)
    # A task the memory monitor kills is retried as often as one whose worker or node died, not without end
    # (Ray's default): the driver owns its tasks, and its core worker reads this when Ray starts here.
    os.environ.setdefault("RAY_task_oom_retries", str(config.max_retries))
    logging.getLogger("ray").setLevel(logging.ERROR)  # its notices would break the one-line messages
    # The engine reads every result it needs; the others (the sibling folds of a failed trial,
    # cancelled) are dropped on purpose: Ray would print their errors when it frees them.
    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
    with tempfile.TemporaryFile() as native:
        try:
            # SIGTERM stops the search as a lone one stops, not by Ray's abort; Ray's native log lines
            # (retries against a cluster that refuses us) are kept aside, for the one-line error.
            with interrupts.kept(), _fd2_to(native):
                ray.init(**kwargs)
        except Exception as e:  # noqa: BLE001 - whatever stops Ray from starting or connecting
            native.seek(0)
            raise UsageError(_connect_error(address, e, native.read().decode(errors="replace"))) from None
    if address is None:
        _local["reaper"] = ray_leftovers.watch()
    _watch_last_line(address)


def task_env(config: RayConfig, backend: str, device: str) -> dict[str, str]:
    """The environment of every fold task's worker process: the backend, its threads and, on a GPU,
    only its share of the GPU's memory (TensorFlow grows into what it uses; JAX takes no more than
    `gpus_per_task` of it instead of its default 75%; PyTorch's share is set in the task,
    `tuner_app.scaleout.ray_engine.limit_gpu_memory`)."""
    threads = str(max(1, int(config.cpus_per_task)))
    env = {"KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": threads,
           "TF_NUM_INTRAOP_THREADS": threads, "TF_NUM_INTEROP_THREADS": threads}
    if device == "cpu":
        env.update(CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
        return env
    share = config.gpus(device)
    env.update(TF_FORCE_GPU_ALLOW_GROWTH="true", XLA_PYTHON_CLIENT_PREALLOCATE="false")
    if 0 < share < 1:
        env.update(XLA_PYTHON_CLIENT_MEM_FRACTION=f"{share:.3f}", TUNER_APP_GPU_SHARE=f"{share:g}")
    return env


def _lost(address: str, why: str) -> TunerAppError:
    return TunerAppError(f"lost the Ray cluster at {address}: {why}; the folds that finished are kept: once the "
                         f"cluster is back, {rerun('resume')}")


def _watch_last_line(address: str | None) -> None:
    """The line for Ray's core ending this process when the node on this machine stops (tuner_app.scaleout.exit_notice):
    a joined cluster's node, or the local Ray's (its raylet ends with its dashboard agent, whose death it shares)."""
    try:
        from ray._private import worker

        raylet_socket = worker.global_worker.node.raylet_socket_name
    except Exception:  # noqa: BLE001 - Ray's private node API: without it, no watcher
        return
    if not exit_notice.node_is_up(raylet_socket):  # a socket the watcher could not tell up from down by
        return
    error = _local_stopped("its node ended, and Ray's core ended this process") if address is None else \
        _lost(address, "the Ray node on this machine stopped, and Ray's core ended this process")
    _local["last_line"] = exit_notice.watch(f"tuner-app: error: {error}", raylet_socket)


_RAY_CORE = ("gcs_server", "raylet")  # a local Ray cannot go on without them (Ray's process types)


def address_of(config: RayConfig) -> str | None:
    """The cluster to join (--ray-address, else $RAY_ADDRESS); None: start a local Ray."""
    return config.address or os.environ.get("RAY_ADDRESS") or None


def check_local_ray() -> None:
    """Stop with one line when the local Ray this search started has lost its raylet or GCS (`ray stop` from
    another shell, a raylet killed): its driver would otherwise end on Ray's own lines seconds later,
    exit 1 and no word of tuner-app's. Ray's node object knows the processes it started (none when
    the search joined a cluster)."""
    from ray._private import worker

    node = getattr(worker, "_global_node", None)
    try:
        dead = node.dead_processes() if node is not None else []
        stopped = sorted({kind for kind, _process in dead if kind in _RAY_CORE})
    except Exception:  # noqa: BLE001 - Ray's private node API: without it, Ray's own handling as before
        return
    if stopped:
        raise _local_stopped(f"{', '.join(stopped)} exited")


def _local_stopped(why: str) -> TunerAppError:
    return TunerAppError(f"the local Ray stopped under the search ({why}); the folds that finished are kept: "
                         f"{rerun('resume')}")


class ClusterWatch(threading.Thread):
    """Stop with one line when the cluster a search joined stops answering (its head gone, `ray stop` on it).

    Ray's driver waits for a lost GCS for `gcs_rpc_server_reconnect_timeout_s` (60 s by default; a
    GCS with fault tolerance restarts within it), then Ray's native core ends the process on its
    own lines, exit 1. Meanwhile Ray's calls in the engine's loop may wait with no end (an actor on
    the lost node is neither answering nor known dead), so this thread asks the GCS a trivial
    question every 2 s (1 s timeout). Once the GCS has not answered for that window less 15 s, the
    engine's loop raises `lost` at its next check. If the search has not left Ray (`disconnect`)
    8 s later, stuck in one of Ray's calls, this thread prints the same line and ends the process,
    exit 1, as Ray would at the window's end. The finished folds are on disk either way (each
    written atomically when it came in)."""

    EVERY_S, ASK_TIMEOUT_S, LEAVE_WAIT_S = 2.0, 1, 8.0

    def __init__(self, address: str | None):
        """address: the cluster joined; None (a local Ray started here, `check_local_ray`'s): no watch."""
        super().__init__(name="tuner-app-cluster-watch", daemon=True)
        self.address = address
        window = float(os.environ.get("RAY_gcs_rpc_server_reconnect_timeout_s", "60"))
        self.grace = max(1.0, window - 15)
        self.lost: TunerAppError | None = None
        self._done, self._left = threading.Event(), threading.Event()

    def begin(self) -> None:
        if self.address is not None:
            _local["watch"] = self
            self.start()

    def end(self) -> None:
        """The search's end: no more asking (a lost cluster's watch waits for `left`)."""
        self._done.set()
        if self.is_alive() and self.lost is None:
            self.join()

    def left(self) -> None:
        """The search has left Ray (`disconnect`)."""
        self._left.set()

    def check(self) -> None:
        """The engine's loop: raise `lost` once the cluster is."""
        if self.lost is not None:
            raise self.lost

    def run(self) -> None:
        from ray._private import worker

        silent_since = None
        while not self._done.wait(self.EVERY_S):
            try:
                worker.global_worker.gcs_client.internal_kv_exists(b"tuner-app", b"tuner-app",
                                                                   timeout=self.ASK_TIMEOUT_S)
                silent_since = None
                continue
            except (AttributeError, TypeError, NotImplementedError):  # Ray's private client API changed, or Ray
                return  # Client mode: Ray's own handling
            except Exception:  # noqa: BLE001 - no answer, however Ray says it (RpcError, a timeout, OSError, ...)
                silent_since = silent_since or time.monotonic()
            silent = time.monotonic() - silent_since
            if silent >= self.grace:
                self.lost = _lost(self.address, f"its GCS has not answered for {silent:.0f} s")
                if not self._left.wait(self.LEAVE_WAIT_S):  # stuck in one of Ray's calls
                    say(self.lost)
                    os._exit(self.lost.exit_code)
                return


@contextlib.contextmanager
def _fd2_to(sink):
    """Native code's stderr (fd 2) into `sink` meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(sink.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _connect_error(address: str | None, error: Exception, native: str) -> str:
    """One line: why Ray did not start or connect, and what to do."""
    where = address or "a local Ray"
    if "InvalidAuthToken" in native or "Unauthenticated" in native or "Unauthenticated" in str(error):
        return _token_refused(where)
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"--ray: cannot start or reach {where} ({first}); {_ADDRESS_HINT}"


def _token_refused(where: str) -> str:
    return (f"--ray: {where} uses token authentication and refused this process; set RAY_AUTH_MODE=token and its "
            "token (RAY_AUTH_TOKEN, or the file ~/.ray/auth_token; `ray get-auth-token` on the head prints it)")


def _check_token(address: str) -> None:
    """A usage error at once when the cluster's GCS at a HOST:PORT address refuses this process's token (Ray's
    own client answers in milliseconds; `ray.init` retries for RAY_py_gcs_connect_timeout_s first). Any other
    outcome, or a Ray without this client, is left to `ray.init`."""
    if address.startswith("ray://") or not address.rpartition(":")[2].isdigit():
        return
    try:
        from ray._raylet import AuthenticationError, GcsClient
    except ImportError:
        return
    with tempfile.TemporaryFile() as native:
        try:
            with _fd2_to(native):  # Ray's native warning line: the error stays one line
                GcsClient(address=address)
        except AuthenticationError:
            raise UsageError(_token_refused(address)) from None
        except Exception:  # noqa: BLE001, S110 - not a refused token: ray.init connects or says why
            pass


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """A usage error, at once, when nothing listens at a HOST:PORT address (Ray itself retries for minutes)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto", or a form Ray resolves itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise UsageError(f"--ray: cannot reach {address} ({e.strerror or e}); {_ADDRESS_HINT}") from None


def say(error: TunerAppError) -> None:
    """Print the search's one line for `error` now (the CLI then prints nothing more)."""
    print(f"tuner-app: error: {error}", file=sys.stderr, flush=True)
    error.said = True
    exit_notice.done(_local.pop("last_line", None))  # said: nothing left for the watcher to say


def disconnect() -> None:
    """Leave Ray (a local Ray stops, and the reaper ends what it leaves). After a lost cluster, Ray's
    native lines are muted (its core worker goes on logging the objects it tries to recover, up to
    the process's end), the search's one line is printed at once, and Ray is left to its exit
    handler: Ray's native core ends the process at its reconnect window's end, whatever the
    process is doing then."""
    import ray

    watch = _local.get("watch")
    if watch is not None and watch.lost is not None:
        # no ray.shutdown(): against a lost GCS it can wait until Ray's native core ends the process
        # at its window's end; Ray's own exit handler shuts down, after the line said here
        _mute_native_stderr()
        say(watch.lost)
    elif ray.is_initialized():
        ray.shutdown()
    ray_leftovers.release(_local.pop("reaper", None))
    exit_notice.done(_local.pop("last_line", None))
    watch = _local.pop("watch", None)
    if watch is not None:
        watch.left()


def _mute_native_stderr() -> None:
    """From now on, what native code writes to fd 2 goes nowhere; Python's `sys.stderr` (tuner-app's
    error line) keeps writing where fd 2 did."""
    sys.stderr.flush()
    sys.stderr = os.fdopen(os.dup(2), "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


def capacity(config: RayConfig, device: str) -> int:
    """How many fold tasks the cluster's alive nodes hold at once now (0: not one fits)."""
    import ray

    resources = ray.cluster_resources()
    asked = {"CPU": config.cpus_per_task, "GPU": config.gpus(device)}
    return int(min(resources.get(name, 0) // amount for name, amount in asked.items() if amount))


def slots(config: RayConfig, device: str) -> int:
    """How many tasks the cluster runs at once with this config, at the search's start.

    Raises:
        UsageError: not one task fits the cluster as it is now (Ray would wait for it forever).
    """
    import ray

    count = capacity(config, device)
    if count < 1:
        resources = ray.cluster_resources()
        asked = {"CPU": config.cpus_per_task, "GPU": config.gpus(device)}
        have = ", ".join(f"{resources.get(n, 0):g} {n}" for n in asked)
        raise UsageError(f"--ray: a fold task asks for {config.cpus_per_task:g} CPU and {asked['GPU']:g} GPU, but the "
                         f"cluster has {have}; lower --cpus-per-task/--gpus-per-task, add nodes (an autoscaling "
                         "group needs at least one node up), or pass --device cpu")
    return count


__all__ = ["ClusterWatch", "address_of", "capacity", "check_local_ray", "connect", "disconnect", "say", "slots",
           "task_env"]
