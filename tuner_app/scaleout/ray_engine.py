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
lone search stops. The cluster itself (joining, watching, leaving): `tuner_app.scaleout.ray_cluster`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from tuner_app.config import RayConfig
from tuner_app.models.preflight import labels
from tuner_app.runtime import interrupts
from tuner_app.runtime.progress import Progress
from tuner_app.scaleout import ray_cluster, ray_faults
from tuner_app.training.trial import FoldTrainer, splits
from tuner_app.tuning.oracle import COMPLETED, INVALID, RUNNING
from tuner_app.tuning.state import FoldStore

TASK_NAME = "tuner-app-fold"  # what a busy Ray worker process shows as its title: ray::tuner-app-fold
_worker: dict = {}  # what a Ray worker process keeps between the tasks of one search: its FoldTrainer


def _worker_trainer(key: str, hypermodel, cv) -> FoldTrainer:
    """The FoldTrainer (and so the model caches) of search `key` in this worker process (new for another search)."""
    if _worker.get("key") != key:
        import keras

        keras.backend.clear_session()
        _worker.clear()
        _worker.update(key=key, trainer=FoldTrainer(hypermodel, cv))
    return _worker["trainer"]


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
    limit_gpu_memory()
    cv = job["cv"]
    trainer = _worker_trainer(job["key"], hypermodel, cv)
    records = []
    trial_dir = tempfile.mkdtemp(prefix="tuner-app-fused-")  # a fused trial's per-epoch state: this worker's own
    try:
        trainer.train(hp, folds, x, y, fold_splits, trial_dir, lambda record, history: records.append(record),
                      _Relay(queue, trial_id))
    finally:
        shutil.rmtree(trial_dir, ignore_errors=True)
    return records


def limit_gpu_memory() -> None:
    """PyTorch in a task with a share of a GPU (`--gpus-per-task` below 1) takes that share of its memory at
    most (TensorFlow and JAX are limited by the task's environment: `ray_cluster.task_env`)."""
    share = os.environ.get("TUNER_APP_GPU_SHARE")
    if share and os.environ.get("KERAS_BACKEND") == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_per_process_memory_fraction(float(share))


@dataclass
class _Trial:
    trial: object
    store: FoldStore
    tasks: int = 0  # tasks of this trial in flight


class RayTaskFailed(Exception):
    """A task Ray gave up on (its worker, node or memory lost more often than retried), by its cause."""

    def __init__(self, cause: str):
        super().__init__(cause)
        self.cause = cause


class RayEngine:
    """Runs a `CVTuner`'s search with its folds as Ray tasks (see the module docstring).

    Args:
        tuner: The tuner: its oracle, hooks (trial begin/end), hypermodel, CV settings and progress.
        config: Where and how the tasks run.
        device: "cpu" or "gpu": what the tasks train on.
    """

    CAPACITY_EVERY_S = 5.0  # how often the cluster's size is read again

    def __init__(self, tuner, config: RayConfig, device: str):
        self.tuner, self.config, self.device = tuner, config, device
        self.progress: Progress = tuner.progress
        self.queue_lost = False  # Ray's progress queue died: no more progress events

    def search(self, x: np.ndarray, y: np.ndarray) -> None:
        """Score every grid point of the tuner's oracle; returns when no point is left."""
        import ray
        from ray.util.queue import Queue

        tuner, cv = self.tuner, self.tuner.cv
        ray_cluster.slots(self.config, self.device)  # a usage error now when not one task fits
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
        watch = ray_cluster.ClusterWatch(ray_cluster.address_of(self.config))
        stall, capacity, counted = ray_faults.Stall(self.config, self.device), 1, 0.0
        tuner.on_search_begin()
        watch.begin()
        native = ray_faults.native_log(tuner.project_dir)
        native.__enter__()
        try:
            while True:
                interrupts.check()
                if time.monotonic() - counted >= self.CAPACITY_EVERY_S:  # nodes that join get tasks
                    capacity, counted = max(1, ray_cluster.capacity(self.config, self.device)), time.monotonic()
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
                ray_cluster.check_local_ray()
                watch.check()
                if self._relay(queue) or ready or stall.busy():
                    stall.moved()
                self.progress.waiting(stall.check(len(inflight)))
                for ref in ready:
                    if ref in inflight:  # (a failed trial's other tasks were dropped)
                        trial_id, _group = inflight.pop(ref)
                        self._collect(ref, running[trial_id], running, inflight)
            self._relay(queue)
        finally:
            self.progress.waiting(None)
            native.__exit__(None, None, None)
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
        except (ray.exceptions.RayTaskError, ray.exceptions.UnserializableException) as e:  # the fold raised
            self._fail(run, e, running, inflight)
            return
        except ray.exceptions.RayError as e:  # its worker, node or memory gone more often than retried
            self._fail(run, RayTaskFailed(ray_faults.cause(e)), running, inflight)
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
        trial.message = error.cause if isinstance(error, RayTaskFailed) else str(error)
        self.progress.trial_focus(None)
        self.tuner.on_trial_end(trial)

    def _relay(self, queue) -> int:
        """Forward the tasks' progress events to the search's listener; how many there were.

        Progress only: when Ray's queue actor cannot be reached (a busy node, or the actor died)
        the events are dropped and the search goes on, as the tasks' own puts do; the folds'
        records come back with the tasks' results. Each ask waits 2 s at most: with the cluster's
        GCS gone, an actor on a lost node is neither answering nor known dead, and Ray's own
        `Queue` calls would wait with no end, holding up the engine's loop and its checks."""
        import ray

        if self.queue_lost:
            return 0
        try:
            size = ray.get(queue.actor.qsize.remote(), timeout=2)
            events = ray.get(queue.actor.get_nowait_batch.remote(size), timeout=2) if size else []
        except ray.exceptions.ActorDiedError:
            self.queue_lost = True  # gone for good: stop asking it
            return 0
        except ray.exceptions.RayError:
            return 0
        for trial_id, kind, *args in events:
            self.progress.trial_focus(trial_id)
            getattr(self.progress, kind)(*args)
        return len(events)


def _pickle_by_value(hypermodel) -> None:
    """Ship a user's model code inside the tasks: workers need neither the file nor the module."""
    from ray import cloudpickle

    for obj in (hypermodel, getattr(hypermodel, "fn", None)):  # a HyperModel, or a build(hp) function's wrapper
        name = getattr(obj, "__module__", None) or ""  # an instance's is its class's
        module = sys.modules.get(name)
        if module is not None and not name.startswith(("tuner_app.", "keras", "builtins")):
            cloudpickle.register_pickle_by_value(module)


__all__ = ["RayEngine", "run_folds"]
