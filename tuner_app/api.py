"""What a notebook calls, and what the CLI calls: a search settled once and run, and the retrain.

    import tuner_app

    ds = tuner_app.load_dataset(dataset="mnist-sample")
    pdir = tuner_app.search(ds, "seed", cv=tuner_app.CVConfig(folds=3, epochs=2))
    tuner_app.load_results(pdir)[0]            # the best trial, with its fold records
    tuner_app.retrain_best(None, "tuning_dirs", "default")

Every choice that depends on the hardware (backend, device, precision, fold mode) is made by
`tuner_app.settle`, called here once before a search starts; the `Settled` value it returns
is what the tuner, the fold trainers, Ray tasks and workers read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner_app.config import CVConfig, RayConfig, RetrainConfig, Settled, parse_grid_option
from tuner_app.errors import TunerAppError, UsageError, failed_fold_line, rerun
from tuner_app.runtime import files
from tuner_app.runtime.progress import Progress, plural
from tuner_app.tuning import state

if TYPE_CHECKING:  # (importing them loads Keras: the backend is chosen first, by `settle`)
    from tuner_app.tuning.plan import SearchPlan
    from tuner_app.tuning.tuner import CVTuner


@dataclass
class SearchRequest:
    """A search as the CLI's options ask for it (see `tuner-app search --help` for each field)."""

    model: str = "seed"
    grid: list[str] = field(default_factory=list)
    objective: str = "val_accuracy"
    dataset: str | None = None
    data: Path | None = None
    train_limit: int | None = None
    scale: str = "auto"
    filters: list[str] | None = None
    learning_rate: list[float] | None = None
    dense_units: list[int] | None = None
    folds: int = 5
    seed: int = 42
    epochs: int | None = None
    batch_size: int | None = None
    patience: int | None = None
    fold_mode: str = "auto"
    directory: Path = Path("tuning_dirs")
    project: str = "default"
    overwrite: bool = False
    device: str = "auto"
    backend: str | None = None
    precision: str = "auto"
    tensorboard: bool = False
    threads: int | None = None
    ray: RayConfig | None = None


@dataclass
class Prepared:
    """A search checked and settled, nothing written yet.

    Args:
        plan: The checked plan (its `cv` carries the settled precision and fold mode).
        settled: Backend, device, precision, fold mode and role, decided once.
        pdir: The project directory.
        header: The line a search shows once the checks pass.
    """

    plan: Any
    settled: Settled
    pdir: Path
    header: str


def role() -> str | None:
    """This process's KerasTuner role: None (a lone search), "chief" or "worker" (KERASTUNER_* variables)."""
    from tuner_app.scaleout import chief_worker

    return chief_worker.role()


def check_launch(workers: int, chief: str | None) -> None:
    """Refuse `--workers`/`--chief` values that `launch` cannot use (UsageError)."""
    from tuner_app.scaleout import chief_worker

    chief_worker.check_launch(workers, chief)


def launch(argv: list[str], workers: int, quiet: bool, chief: str | None) -> int:
    """Start a KerasTuner chief and `workers` worker processes running `tuner-app search ARGV`; their exit code."""
    from tuner_app.scaleout import chief_worker

    return chief_worker.launch(argv, workers, quiet, chief)


def ray_config(ray: bool, address: str | None = None, cpus_per_task: float | None = None,
               gpus_per_task: float | None = None, workers: int | None = None,
               stall_timeout: float | None = None) -> RayConfig | None:
    """The RayConfig of `--ray` (None without it); its options only with it."""
    if not ray:
        given = [o for o, v in (("--ray-address", address), ("--cpus-per-task", cpus_per_task),
                                ("--gpus-per-task", gpus_per_task), ("--ray-stall-timeout", stall_timeout))
                 if v is not None]
        if given:
            raise UsageError(f"{given[0]} belongs to --ray: add --ray, or drop it")
        return None
    if workers is not None:
        raise UsageError("--ray and --workers are two engines: pick one (docs: Scale-out)")
    optional = {"stall_timeout": stall_timeout} if stall_timeout is not None else {}
    return RayConfig(address, 1.0 if cpus_per_task is None else cpus_per_task, gpus_per_task, **optional)


def prepare(request: SearchRequest, dry_run: bool = False) -> Prepared:
    """Check a search and settle what it runs on; write nothing.

    Raises:
        UsageError: bad options, data, model or grid (one line naming it and the fix).
    """
    from tuner_app import settle

    r = request
    if r.model != "seed" and (r.filters or r.learning_rate or r.dense_units):
        raise UsageError(f"--filters, --learning-rate and --dense-units belong to --model seed; for --model {r.model} "
                         "use --grid NAME=V1,V2")
    overrides = parse_grid_option(r.grid or [])
    pdir = state.project_dir(r.directory, r.project)
    this_role = role()
    recorded = None if dry_run else _recorded(pdir, this_role, r.overwrite)
    # A Ray driver trains nothing: it decides device and precision for the tasks, as a chief does.
    settled = settle.settle(r.backend, r.device, r.precision, "chief" if r.ray else this_role, recorded, r.threads)
    settled = dataclasses.replace(settled, role=this_role)
    from tuner_app.data import describe, load_dataset
    from tuner_app.models.seed import grid_overrides, seed_grid
    from tuner_app.tuning.plan import fold_steps, plan_search

    ds = load_dataset(r.data, r.dataset or "mnist")
    if r.model == "seed":
        overrides = {**grid_overrides(r.filters, r.learning_rate, r.dense_units), **overrides}
        overrides = seed_grid(overrides)
    given = {"folds": r.folds, "seed": r.seed, "epochs": r.epochs, "batch_size": r.batch_size, "patience": r.patience,
             "precision": settled.precision, "objective": r.objective, "fold_mode": r.fold_mode}
    plan = plan_search(ds, r.model, overrides, given, r.train_limit, r.scale)
    settled = settle.settle_fold_mode(settled, r.fold_mode, fold_steps(plan), plan.check.fused_blocker, recorded,
                                      ray=r.ray is not None)
    plan.cv = cv = dataclasses.replace(plan.cv, fold_mode=settled.fold_mode)
    loaded = plan.model
    where = "serving the oracle for workers on" if settled.role == "chief" else "on"
    if r.ray:
        where = f"on Ray ({r.ray.address or os.environ.get('RAY_ADDRESS') or 'local'}), tasks on"
    header = (f"model {loaded.spec}; data {describe(plan.dataset, plan.scale)}; backend {settled.backend} {where} "
              f"{settled.device}, {settled.describe_precision()}; {plural(len(plan.grid), 'grid point')} x "
              f"{cv.folds} folds, {settled.describe_fold_mode()}")
    return Prepared(plan, settled, pdir, header)


def _recorded(pdir: Path, this_role: str | None, overwrite: bool) -> dict | None:
    """The project's stored settings that a resume or a worker adopts (None for a new project)."""
    if this_role == "worker":
        from tuner_app.scaleout import chief_worker

        chief_worker.wait_for_file(pdir / state.SEARCH_FILE)
    elif overwrite or not (pdir / state.SEARCH_FILE).exists():
        return None
    return state.stored_settings(pdir)


def run_prepared(prepared: Prepared, request: SearchRequest, progress: Progress | None = None) -> Path:
    """Run (or resume) a prepared search, stopping cleanly on SIGTERM/SIGINT (`SearchInterrupted`)."""
    from tuner_app.runtime.interrupts import stop_on_signals


    if prepared.settled.role == "worker":
        from tuner_app.scaleout import chief_worker

        chief_worker.watch_chief()
    with stop_on_signals(immediate=prepared.settled.role == "chief"):
        return run_plan(prepared.plan, prepared.settled, request.directory, request.project, request.overwrite,
                        progress, tensorboard=request.tensorboard, ray=request.ray)


def run_plan(plan: SearchPlan, settled: Settled, directory: str | Path = "tuning_dirs", project: str = "default",
             overwrite: bool = False, progress: Progress | None = None, reuse_models: bool | None = None,
             tensorboard: bool = False, ray: RayConfig | None = None) -> Path:
    """Create or resume the project of a checked plan and run the search; return the project directory.

    Args:
        plan: The checked plan (`tuner_app.tuning.plan.plan_search`), its `cv` as settled.
        settled: Backend, device, precision, fold mode and role, decided once (`tuner_app.settle`).
        directory: Parent directory of all projects.
        project: This search's name; its state lives in `<directory>/<project>/`.
        overwrite: Delete an existing project of that name first.
        progress: Listener for progress events.
        reuse_models: See `tuner_app.training.model_cache.ModelCache`; False builds a new model for every fold.
        tensorboard: Write TensorBoard logs per trial and fold (needs the tensorflow package).
        ray: Run the folds as tasks on Ray (`tuner_app.scaleout.ray_engine`); None: in this process.
    """
    from tuner_app import data as data_mod
    from tuner_app.scaleout import ray_cluster

    if tensorboard:
        _check_tensorboard()
    progress = progress or Progress()
    pdir = state.project_dir(directory, project)
    files.check_writable(Path(directory))
    if ray is not None and (settled.role or tensorboard):
        raise UsageError("--ray runs the folds on Ray's workers: drop " + (
            "KerasTuner's KERASTUNER_* variables (its chief/worker mode)" if settled.role
            else "--tensorboard (not on Ray yet)"))
    settings = plan.settings(settled.backend, settled.device)
    state.refuse_changed(pdir, settings, overwrite)  # read-only: a refused run writes nothing
    x = data_mod.scale_images(plan.dataset.x_train, plan.scale)
    with contextlib.ExitStack() as stack:
        if ray is not None:  # before any file is written: an unreachable cluster changes nothing
            ray_cluster.connect(ray, settled.backend, settled.device)
            stack.callback(ray_cluster.disconnect)
            ray_cluster.slots(ray, settled.device)  # at least one task fits the cluster
        _run(plan, x, pdir, directory, project, settings, settled, overwrite, progress, reuse_models, tensorboard, ray)
    return pdir


def _run(plan: SearchPlan, x, pdir: Path, directory, project: str, settings: dict, settled: Settled, overwrite: bool,
         progress: Progress, reuse_models: bool | None, tensorboard: bool, ray: RayConfig | None) -> None:
    from tuner_app import retrain
    from tuner_app.scaleout import ray_engine
    from tuner_app.tuning.tuner import CVTuner

    # Only the oracle's owner (a lone search, or the chief) locks and writes the project.
    with contextlib.nullcontext() if settled.role == "worker" else files.ProjectLock(Path(directory), project) as lock:
        if lock is not None:
            state.refuse_changed(pdir, settings, overwrite)  # again, now that no other search can change it
            state.create(pdir, settings, overwrite)
            lock.claim()
            files.remove_stale_temporaries(pdir)  # what killed processes left half-written
        with contextlib.redirect_stdout(io.StringIO()):  # KerasTuner prints "Reloading Tuner from ..."
            tuner = CVTuner(plan.model.hypermodel, plan.grid, plan.cv, plan.dataset.num_classes, plan.check.label_form,
                            progress, reuse_models, tensorboard, retrain=retrain.expected_config(plan.model),
                            directory=str(directory), project_name=project)
        progress.search_start(len(plan.grid), tuner.completed() or 0, str(pdir), plan.cv.objective, plan.cv.direction)
        try:
            if ray is not None:
                ray_engine.RayEngine(tuner, ray, settled.device).search(x, plan.dataset.y_train)
            else:
                with _frozen_gc():
                    tuner.search(x, plan.dataset.y_train, verbose=0)
        except RuntimeError as e:  # KerasTuner's "consecutive failures exceeded the limit"
            raise TunerAppError(f"search stopped: {str(e).splitlines()[0]}; {_failure_hint(tuner)}") from None
        finally:
            progress.close()
    failed = [] if tuner._is_worker() else [t for t in tuner.oracle.trials.values() if t.status == "FAILED"]
    if failed:
        raise TunerAppError(f"{len(failed)} trial(s) failed; {_failure_hint(tuner)}")


@contextlib.contextmanager
def _frozen_gc():
    """Keep what exists now (the imported libraries, the data, the tuner) out of the garbage
    collector's full passes while the search runs: tracing creates objects fast enough to
    trigger a dozen of them per search, and each walked every object of TensorFlow and Keras
    (2 s of a 48 s `small` search; 0.6 s frozen). Unfrozen again after, as Python's `gc.freeze`
    documentation describes."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _check_tensorboard() -> None:
    from tuner_app.runtime.hardware import native_stderr_muted

    try:
        with native_stderr_muted():
            import tensorboard as _tb  # noqa: F401
            import tensorflow as _tf  # noqa: F401  (tf.summary writes the logs, whatever the backend)
    except ImportError:
        raise UsageError("--tensorboard needs the tensorflow and tensorboard packages: "
                         "pip install 'tuner-app[tensorboard]'") from None


def _failure_hint(tuner: CVTuner) -> str:
    failed = sorted((t for t in tuner.oracle.trials.values() if t.status == "FAILED"), key=lambda t: t.trial_id)
    if not failed:
        return "rerun to retry"
    t = failed[-1]
    lines = [line.strip() for line in (t.message or "").splitlines() if line.strip()]
    what = failed_fold_line(t.message or "") or (lines[-1:] or ["unknown error"])[-1]
    where = Path(tuner.get_trial_dir(t.trial_id)) / state.TRIAL_FILE
    detail = "full traceback" if len(lines) > 1 else "recorded"
    return f"trial {t.trial_id}: {what} ({detail} in {where}); {rerun('retry it')}"


def search(dataset: Any, hypermodel: Any = "seed", grid: dict[str, list] | None = None, cv: CVConfig | None = None,
           directory: str | Path = "tuning_dirs", project: str = "default", train_limit: int | None = None,
           overwrite: bool = False, progress: Progress | None = None, reuse_models: bool | None = None,
           tensorboard: bool = False, ray: RayConfig | None = None, scale: str = "auto") -> Path:
    """Run (or resume) a grid search scored by stratified K-fold CV; return the project directory.

    The backend is the one Keras runs on (KERAS_BACKEND); the device is what it sees; the
    precision is `cv.precision`; the fold mode `cv.fold_mode`, "auto" decided as the CLI decides it.

    Args:
        dataset: The loaded dataset (see `tuner_app.data.load_dataset`).
        hypermodel: The model: "seed" (default), "extended", "FILE.py:NAME", "module:NAME", a
            `keras_tuner.HyperModel` or a `build(hp)` function returning a compiled model.
        grid: {hyperparameter name: [values]} replacing declared values for this search.
        cv: Fold, seed, epoch, precision and objective settings (default: the model's, else the seed's).
        directory: Parent directory of all projects.
        project: This search's name; its state lives in `<directory>/<project>/`.
        train_limit: Keep a stratified subset of this many training images.
        overwrite: Delete an existing project of that name first.
        progress: Listener for progress events.
        reuse_models: See `tuner_app.training.model_cache.ModelCache`; False builds a new model for every fold.
        tensorboard: Write TensorBoard logs per trial and fold (needs the tensorflow package).
        ray: Run the folds as Ray tasks (`RayConfig()`: a local Ray; see `tuner_app.scaleout.ray_engine`).
        scale: How images become inputs: "auto" (8-bit pixels or [0, 1]; other values refused), "255", "none".
    """
    from tuner_app import settle
    from tuner_app.tuning.plan import fold_steps, plan_search

    plan = plan_search(dataset, hypermodel, grid, cv, train_limit, scale)
    pdir = state.project_dir(directory, project)
    this_role = role()
    recorded = _recorded(pdir, this_role, overwrite)
    precision = {"float32": "float32", "mixed_bfloat16": "mixed"}[plan.cv.precision]
    settled = settle.settle(None, (recorded or {}).get("device", "auto"), precision, this_role)
    settled = settle.settle_fold_mode(settled, plan.cv.fold_mode, fold_steps(plan), plan.check.fused_blocker,
                                      recorded, ray=ray is not None)
    plan.cv = dataclasses.replace(plan.cv, fold_mode=settled.fold_mode)
    return run_plan(plan, settled, directory, project, overwrite, progress, reuse_models, tensorboard, ray)


run_search = search  # (its first name, kept for notebooks that use it)


def retrain(dataset: str | None = None, data: Path | None = None, train_limit: int | None = None,
            directory: Path = Path("tuning_dirs"), project: str = "default", epochs: int | None = None,
            batch_size: int | None = None, validation_split: float | None = None, seed: int | None = None,
            device: str = "auto", backend: str | None = None, precision: str = "float32", threads: int | None = None,
            progress: Progress | None = None) -> dict:
    """`retrain-best` as the CLI runs it: settle the backend and device, load the data, retrain the best trial."""
    from tuner_app import settle

    pdir = state.project_dir(directory, project)
    state.read_search(pdir)  # no project: say so before loading a backend
    settled = settle.settle(backend, device, precision, threads=threads)
    from tuner_app.data import load_dataset
    from tuner_app.retrain import retrain_best

    ds = load_dataset(data, dataset) if data is not None or dataset is not None else None
    options = {"epochs": epochs, "batch_size": batch_size, "validation_split": validation_split, "seed": seed,
               "precision": settled.precision}
    return retrain_best(ds, directory, project, options, train_limit, settled, progress)


def check_retrain_options(**given) -> None:
    """Check retrain options before a search, not after it.

    Raises:
        SettingError: naming the setting (`run` says it with its own option names).
    """
    RetrainConfig(**{k: v for k, v in given.items() if v is not None})


def grid_params(prepared: Prepared) -> list[int]:
    """The parameter count of every grid point's model (`--dry-run`)."""
    from tuner_app.tuning.plan import grid_params as params

    return params(prepared.plan)


__all__ = ["Prepared", "SearchRequest", "grid_params", "launch", "prepare", "ray_config", "retrain", "role", "run_plan",
           "run_prepared", "run_search", "search"]
