"""A search on Ray: folds run as Ray tasks, the search process owns the oracle and every file.

The search process is Ray's driver. It asks the oracle (the same `ResumableGridOracle` a
lone search uses) for as many trials as keep the cluster's task slots full, submits each of
their pending folds as a Ray task (or, in fused mode, a trial's pending folds as one task),
and writes each fold record to the trial's `FoldStore` as its result comes back: workers
need no shared filesystem, and `tuning_dirs/` lives on the driver's disk only. The images
and labels go into Ray's object store once. A task computes exactly what the lone search's
`train_fold` computes (same split, seed and data order), so the records are the same.

Faults: a task whose worker process or node dies is run again by Ray (up to
`RayConfig.max_retries` times); a fold's record is written once, when a result arrives. A
killed driver loses only the folds in flight: the same command resumes from the records on
disk, as a lone search does. SIGTERM or Ctrl-C cancels the tasks in flight and stops as a
lone search stops. A local Ray started here ends with this process (Ray's own services are
tied to the process that started them). A local Ray that loses its raylet or GCS under the
search (`_check_local_ray`), or a cluster whose GCS stops answering (`_ClusterWatch`), ends the
search in one line, its finished folds kept; where Ray's core ends the driver itself first (the
node on its machine gone with the cluster), `tuner_app.last_line` says the line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

import numpy as np

from tuner_app import interrupt, last_line, reaper
from tuner_app.errors import TunerAppError, UsageError
from tuner_app.folds import FoldStore, splits
from tuner_app.models.checks import labels
from tuner_app.oracle import COMPLETED, INVALID, RUNNING
from tuner_app.progress import Progress
from tuner_app.settings import RayConfig

_local: dict = {}  # a local Ray's reaper (tuner_app.reaper); a joined cluster's watch and last_line watcher
_ADDRESS_HINT = ("check --ray-address or RAY_ADDRESS (`ray status` on the head node prints it), or give neither for "
                 "a local Ray")
TASK_NAME = "tuner-app-fold"  # what a busy Ray worker process shows as its title: ray::tuner-app-fold


def connect(config: RayConfig, backend: str, device: str) -> None:
    """Join the Ray cluster at `config.address`, or start a local one; workers get the backend.

    Raises:
        UsageError: Ray is not installed, or no cluster answers at the address.
    """
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray: pip install 'tuner-app[ray]'") from None
    threads = str(max(1, int(config.cpus_per_task)))
    env = {"KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": threads,
           "TF_NUM_INTRAOP_THREADS": threads, "TF_NUM_INTEROP_THREADS": threads}
    if device == "cpu":
        env.update(CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
    kwargs = {"runtime_env": {"env_vars": env}, "log_to_driver": False, "logging_level": "ERROR",
              "configure_logging": False}
    address = _address(config)
    if address is None:  # a local Ray, on loopback, without the dashboard
        kwargs.update(address="local", include_dashboard=False, _node_ip_address="127.0.0.1")
    else:
        kwargs["address"] = address
        _check_reachable(address)
        for name in ("RAY_py_gcs_connect_timeout_s", "RAY_gcs_rpc_server_connect_timeout_s"):
            os.environ.setdefault(name, "20")  # a refusal (e.g. a token missing) in 20 s, not Ray's minutes
        _check_token(address)
    logging.getLogger("ray").setLevel(logging.ERROR)  # its notices would break the one-line messages
    # The engine reads every result it needs; the others (the sibling folds of a failed trial,
    # cancelled) are dropped on purpose: Ray would print their errors when it frees them.
    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
    with tempfile.TemporaryFile() as native:
        try:
            # SIGTERM stops the search as a lone one stops, not by Ray's abort; Ray's native log lines
            # (retries against a cluster that refuses us) are kept aside, for the one-line error.
            with interrupt.kept(), _fd2_to(native):
                ray.init(**kwargs)
        except Exception as e:  # noqa: BLE001 - whatever stops Ray from starting or connecting
            native.seek(0)
            raise UsageError(_connect_error(address, e, native.read().decode(errors="replace"))) from None
    if address is None:
        _local["reaper"] = reaper.watch()
    else:
        _watch_last_line(address)


def _lost(address: str, why: str) -> TunerAppError:
    return TunerAppError(f"lost the Ray cluster at {address}: {why}; the folds that finished are kept: rerun the same "
                         "command once the cluster is back")


def _watch_last_line(address: str) -> None:
    """The line for Ray's core ending this process when the node on this machine stops (tuner_app.last_line)."""
    try:
        from ray._private import worker

        raylet_socket = worker.global_worker.node.raylet_socket_name
    except Exception:  # noqa: BLE001 - Ray's private node API: without it, no watcher
        return
    if not last_line.node_is_up(raylet_socket):  # a socket the watcher could not tell up from down by
        return
    error = _lost(address, "the Ray node on this machine stopped, and Ray's core ended this process")
    _local["last_line"] = last_line.watch(f"tuner-app: error: {error}", raylet_socket)


_RAY_CORE = ("gcs_server", "raylet")  # a local Ray cannot go on without them (Ray's process types)


def _address(config: RayConfig) -> str | None:
    """The cluster to join (--ray-address, else $RAY_ADDRESS); None: start a local Ray."""
    return config.address or os.environ.get("RAY_ADDRESS") or None


def _check_local_ray() -> None:
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
        raise TunerAppError(f"the local Ray stopped under the search ({', '.join(stopped)} exited); the folds that "
                            "finished are kept: rerun the same command to resume")


class _ClusterWatch(threading.Thread):
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
        """address: the cluster joined; None (a local Ray started here, `_check_local_ray`'s): no watch."""
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
    last_line.done(_local.pop("last_line", None))  # said: nothing left for the watcher to say


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
    reaper.release(_local.pop("reaper", None))
    last_line.done(_local.pop("last_line", None))
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


def slots(config: RayConfig, device: str) -> int:
    """How many tasks the cluster runs at once with this config.

    Raises:
        UsageError: not one task fits the cluster as it is now (Ray would wait for it forever).
    """
    import ray

    resources = ray.cluster_resources()
    asked = {"CPU": config.cpus_per_task, "GPU": config.gpus(device)}
    counts = [resources.get(name, 0) // amount for name, amount in asked.items() if amount]
    if min(counts) < 1:
        have = ", ".join(f"{resources.get(n, 0):g} {n}" for n in asked)
        raise UsageError(f"--ray: a fold task asks for {config.cpus_per_task:g} CPU and {asked['GPU']:g} GPU, but the "
                         f"cluster has {have}; lower --cpus-per-task/--gpus-per-task, add nodes (an autoscaling "
                         "group needs at least one node up), or pass --device cpu")
    return int(min(counts))


_worker: dict = {}  # what a Ray worker process keeps between the tasks of one search: its model caches


def _worker_caches(key: str, hypermodel, precision: str) -> dict:
    """The ModelCache and FusedModels of search `key` in this worker process (new for another search)."""
    from tuner_app import fused
    from tuner_app.model_cache import ModelCache

    if _worker.get("key") != key:
        import keras

        keras.backend.clear_session()
        _worker.clear()
        _worker.update(key=key, fold=ModelCache(hypermodel, precision), fused=fused.FusedModels(hypermodel, precision))
    return _worker


class _Relay(Progress):
    """Progress events of a task, sent to the driver through a Ray queue."""

    def __init__(self, queue, trial_id: str):
        self.queue, self.trial_id = queue, trial_id

    def _send(self, *event) -> None:
        with contextlib.suppress(Exception):  # progress never fails a fold (the driver may be gone)
            self.queue.put_nowait((self.trial_id, *event))

    def fold_start(self, fold, folds, epochs):
        self._send("fold_start", fold, folds, epochs)

    def folds_start(self, active, folds, epochs, epoch=0):
        self._send("folds_start", list(active), folds, epochs, epoch)

    def epoch_end(self, epoch, logs):
        self._send("epoch_end", epoch, {k: float(v) for k, v in (logs or {}).items()})


def run_folds(job: dict, hypermodel, x: np.ndarray, y: np.ndarray, trial_id: str, hp, folds: list[int],
              fold_splits: list, queue) -> list[dict]:
    """A Ray task: train `folds` of one trial (one fold, or several fused) and return their records.

    Args:
        job: The search's key (to keep caches between tasks of one search), CV settings and fold mode.
        hypermodel: Builds and fits the models.
        x, y: All training images and labels (labels in the loss's form), from the object store.
        trial_id: The trial, for progress events.
        hp: The trial's hyperparameters.
        folds: The folds to train (1-based).
        fold_splits: The (train, validation) indices of every fold.
        queue: A `ray.util.queue.Queue` for progress events.
    """
    from tuner_app import fused
    from tuner_app.errors import failing_as
    from tuner_app.folds import train_fold

    cv = job["cv"]
    caches = _worker_caches(job["key"], hypermodel, cv.precision)
    progress = _Relay(queue, trial_id)
    if cv.fold_mode != "fused":
        (k,) = folds
        with failing_as(f"fold {k}"):
            return [train_fold(hypermodel, caches["fold"], cv, hp, k, x, y, fold_splits[k - 1], progress)]
    records = []
    trial_dir = tempfile.mkdtemp(prefix="tuner-app-fused-")  # the per-epoch checkpoint: this worker's own
    try:
        with failing_as(f"folds {', '.join(map(str, folds))} (fused)"):
            fused.train_folds(hypermodel, cv, hp, folds, x, y, fold_splits, trial_dir,
                              lambda record, history: records.append(record), progress, caches["fused"])
    finally:
        shutil.rmtree(trial_dir, ignore_errors=True)
    return records


@dataclass
class _Trial:
    trial: object
    store: FoldStore
    tasks: int = 0  # tasks of this trial in flight


class RayEngine:
    """Runs a `CVTuner`'s search with its folds as Ray tasks (see the module docstring).

    Args:
        tuner: The tuner: its oracle, hooks (trial begin/end), hypermodel, CV settings and progress.
        config: Where and how the tasks run.
        device: "cpu" or "gpu": what the tasks train on.
    """

    def __init__(self, tuner, config: RayConfig, device: str):
        self.tuner, self.config, self.device = tuner, config, device
        self.progress: Progress = tuner.progress
        self.queue_lost = False  # Ray's progress queue died: no more progress events

    def search(self, x: np.ndarray, y: np.ndarray) -> None:
        """Score every grid point of the tuner's oracle; returns when no point is left."""
        import ray
        from ray.util.queue import Queue

        tuner, cv = self.tuner, self.tuner.cv
        capacity = slots(self.config, self.device)
        tuner.concurrent = True
        fold_splits = splits(y, cv.folds, cv.seed)
        _pickle_by_value(tuner.hypermodel)
        refs = {"x": ray.put(x), "y": ray.put(labels(y, tuner.label_form, tuner.num_classes)),
                "hypermodel": ray.put(tuner.hypermodel), "splits": ray.put(fold_splits)}
        queue = Queue()
        job = {"key": f"{tuner.project_dir}:{os.getpid()}:{time.time()}", "cv": cv}
        task = ray.remote(run_folds).options(
            name=TASK_NAME, num_cpus=self.config.cpus_per_task, num_gpus=self.config.gpus(self.device),
            max_retries=self.config.max_retries, retry_exceptions=False)
        tuner.oracle.verbose = 0  # KerasTuner's own printing, off as in a lone search
        tuner.oracle.ongoing_trials.clear()  # a resume: unfinished trials are in the retry queue (oracle.reload)
        running: dict[str, _Trial] = {}
        inflight: dict = {}  # ObjectRef -> (trial id, folds)
        exhausted, ids = False, 0
        watch = _ClusterWatch(_address(self.config))
        tuner.on_search_begin()
        watch.begin()
        try:
            while True:
                interrupt.check()
                while not exhausted and len(inflight) < capacity:
                    trial = tuner.oracle.create_trial(f"ray-{ids}")
                    ids += 1
                    if trial.status != RUNNING:  # STOPPED, or IDLE: every point taken, the last ones running here
                        exhausted = True
                        break
                    run = self._begin(trial)
                    pending = [k for k in range(1, cv.folds + 1) if k not in run.store]
                    groups = [pending] if cv.fold_mode == "fused" and pending else [[k] for k in pending]
                    for group in groups:
                        ref = task.remote(job, refs["hypermodel"], refs["x"], refs["y"], trial.trial_id,
                                          trial.hyperparameters, group, refs["splits"], queue)
                        inflight[ref] = (trial.trial_id, group)
                    run.tasks = len(groups)
                    running[trial.trial_id] = run
                    if not groups:
                        self._end(running.pop(trial.trial_id))
                if not inflight:
                    break
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=0.25)
                _check_local_ray()
                watch.check()
                self._relay(queue)
                for ref in ready:
                    if ref in inflight:  # (a failed trial's other tasks were dropped)
                        trial_id, _group = inflight.pop(ref)
                        self._collect(ref, running[trial_id], running, inflight)
            self._relay(queue)
        finally:
            watch.end()
            if watch.lost is None:  # a lost cluster answers no cancel (the call could outlast Ray's window)
                for ref in inflight:
                    ray.cancel(ref, force=True)
            tuner.on_search_end()

    def _begin(self, trial) -> _Trial:
        self.tuner.on_trial_begin(trial)
        store = FoldStore(self.tuner.get_trial_dir(trial.trial_id))
        self.progress.trial_focus(trial.trial_id)
        for k in sorted(store.records):
            self.progress.fold_reused(store.records[k], self.tuner.cv.folds)
        return _Trial(trial, store)

    def _collect(self, ref, run: _Trial, running: dict, inflight: dict) -> None:
        """A finished task's records into its trial's store; the trial ends when its last task is in."""
        import ray

        try:
            records = ray.get(ref)
        except ray.exceptions.RayError as e:  # the fold raised, or its worker died more often than retried
            self._fail(run, e, running, inflight)
            return
        for record in records:
            if record["fold"] not in run.store:
                run.store.add(record)
                self.progress.trial_focus(run.trial.trial_id)
                self.progress.fold_end(record, self.tuner.cv.folds)
        run.tasks -= 1
        if run.tasks == 0:
            self._end(running.pop(run.trial.trial_id))

    def _end(self, run: _Trial) -> None:
        """Report the trial's means to the oracle and end it, as KerasTuner's loop does."""
        tuner, trial = self.tuner, run.trial
        tuner.oracle.update_trial(trial.trial_id, metrics=run.store.means())
        trial.status = COMPLETED
        self.progress.trial_focus(None)
        tuner.on_trial_end(trial)

    def _fail(self, run: _Trial, error: Exception, running: dict, inflight: dict) -> None:
        """End a trial whose fold failed, as KerasTuner ends a trial that raised (its folds done so far stay)."""
        import ray

        for ref, (trial_id, _group) in list(inflight.items()):
            if trial_id == run.trial.trial_id:
                ray.cancel(ref, force=True)
                del inflight[ref]
        running.pop(run.trial.trial_id, None)
        trial = run.trial
        trial.status = INVALID
        trial.message = str(error)
        self.progress.trial_focus(None)
        self.tuner.on_trial_end(trial)

    def _relay(self, queue) -> None:
        """Forward the tasks' progress events to the search's listener.

        Progress only: when Ray's queue actor cannot be reached (a busy node, or the actor died)
        the events are dropped and the search goes on, as the tasks' own puts do; the folds'
        records come back with the tasks' results. Each ask waits 2 s at most: with the cluster's
        GCS gone, an actor on a lost node is neither answering nor known dead, and Ray's own
        `Queue` calls would wait with no end, holding up the engine's loop and its checks."""
        import ray

        if self.queue_lost:
            return
        try:
            size = ray.get(queue.actor.qsize.remote(), timeout=2)
            events = ray.get(queue.actor.get_nowait_batch.remote(size), timeout=2) if size else []
        except ray.exceptions.ActorDiedError:
            self.queue_lost = True  # gone for good: stop asking it
            return
        except ray.exceptions.RayError:
            return
        for trial_id, kind, *args in events:
            self.progress.trial_focus(trial_id)
            getattr(self.progress, kind)(*args)


def _pickle_by_value(hypermodel) -> None:
    """Ship a user's model code inside the tasks: workers need neither the file nor the module."""
    from ray import cloudpickle

    for obj in (hypermodel, getattr(hypermodel, "fn", None)):  # a HyperModel, or a build(hp) function's wrapper
        name = getattr(obj, "__module__", None) or ""  # an instance's is its class's
        module = sys.modules.get(name)
        if module is not None and not name.startswith(("tuner_app.", "keras", "builtins")):
            cloudpickle.register_pickle_by_value(module)


__all__ = ["RayEngine", "connect", "disconnect", "run_folds", "slots"]
