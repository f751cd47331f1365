"""A search, in two steps: plan it (check everything, write nothing), then run it.

`plan_search` loads the model, finds its grid, applies `--grid` overrides and checks the
first grid point against the data; every problem is a one-line usage error before any file
exists. `run_plan` then takes the project lock, creates the project or resumes it (refusing
any changed setting, and leaving the project byte-identical when it refuses), and runs
`CVTuner`. `run_search` does both: the Python API a notebook calls.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gc
import io
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner_app import compiled_loop, distributed, ray_engine, state
from tuner_app import data as data_mod
from tuner_app import grid as grid_mod
from tuner_app import retrain as retrain_mod
from tuner_app.errors import SettingError, TunerAppError, UsageError, failed_fold_line
from tuner_app.models import LoadedModel, load_model
from tuner_app.models.checks import ModelCheck, check_model, failure
from tuner_app.progress import Progress
from tuner_app.settings import CVConfig, RayConfig, RetrainConfig
from tuner_app.tuner import CVTuner


@dataclass
class SearchPlan:
    """Everything a search needs, checked.

    Args:
        dataset: The data (after `train_limit`).
        model: The loaded model.
        grid: Its grid, overrides applied.
        cv: The CV settings.
        check: What checking the first grid point found (label form, metrics, parameters).
        train_limit: The stratified subset size asked for, if any.
    """

    dataset: data_mod.Dataset
    model: LoadedModel
    grid: grid_mod.Grid
    cv: CVConfig
    check: ModelCheck
    train_limit: int | None = None

    def settings(self, backend: str, device: str) -> dict:
        """What search.json stores and a resume must match (compared key by key)."""
        ds = self.dataset
        return {
            "model": self.model.record(),
            "grid": self.grid.record(),
            "cv": self.cv.to_dict(),
            "data": {"source": ds.source, "train_limit": self.train_limit, "fingerprint": ds.fingerprint(),
                     "train_size": len(ds.y_train), "input_shape": list(ds.input_shape), "num_classes": ds.num_classes},
            "backend": backend,
            "device": device,
        }


def default_cv(model: LoadedModel, **given: Any) -> CVConfig:
    """CVConfig from the options given, else the model's suggested defaults, else CVConfig's."""
    fields = CVConfig.__dataclass_fields__
    suggested = {k: v for k, v in model.defaults.items() if k in fields}
    return CVConfig(**{**suggested, **{k: v for k, v in given.items() if v is not None}})


def plan_search(dataset: data_mod.Dataset, hypermodel: Any = "seed", grid: dict[str, list] | None = None,
                cv: CVConfig | None = None, train_limit: int | None = None) -> SearchPlan:
    """Check a search without writing anything.

    Args:
        dataset: The loaded dataset.
        hypermodel: A preset name, "FILE.py:NAME", "module:NAME", a `keras_tuner.HyperModel`, a
            `build(hp)` function, or a `LoadedModel`.
        grid: Overrides of the declared hyperparameters' values, {name: [values]}.
        cv: CV settings (default: the model's suggested defaults, else the seed notebook's).
        train_limit: Keep a stratified subset of this many training images.

    Raises:
        UsageError: bad data, model, grid or settings (one line naming it and the fix).
    """
    loaded = hypermodel if isinstance(hypermodel, LoadedModel) else load_model(
        hypermodel, dataset.input_shape, dataset.num_classes)
    cv = cv or default_cv(loaded)
    if train_limit is not None:
        dataset = data_mod.stratified_subset(dataset, train_limit, min_per_class=cv.folds)
    data_mod.check_folds(dataset.y_train, cv.folds)
    x = data_mod.scale_images(dataset.x_train[: 64])
    try:
        space = grid_mod.discover(loaded.hypermodel, cv.precision)
    except Exception as e:  # noqa: BLE001 - whatever the user's build raises
        raise failure(loaded, {}, tuple(x.shape[1:]), e, "building it") from None
    model_grid = grid_mod.Grid.from_space(space, grid)
    check = check_model(loaded, model_grid.points[0], x, dataset.y_train[: 64], dataset.num_classes, cv.objective,
                        cv.precision, tuple(grid or ()))
    if cv.fold_mode == "fused" and check.fused_blocker:
        raise UsageError(f"--fold-mode fused: model {loaded.spec} cannot train fused ({check.fused_blocker}); "
                         "use --fold-mode sequential")
    return SearchPlan(dataset, loaded, model_grid, cv, check, train_limit)


# `--fold-mode auto` under TensorFlow on a CPU: fused once each fold trains at least this many steps (its
# batches times epochs), by CPU class, each the shortest folds whose records show fused faster there
# (README: "Fused or sequential on the CPU"); a CPU class without records trains sequentially.
CPU_FUSED_MIN_STEPS = {
    "amd-avx512-bf16": 100,  # fused 0.95 at 150 steps (medium-tensorflow-amd-2026-12-01.json), 1.20 at 19
    "intel-amx": 100,  # fused 0.93 at 150 steps (medium-tensorflow-amx-2026-12-01.json), 1.22 at 19
    "intel": 1875,  # fused 1.05 at 150 steps (medium-tensorflow-intel-*-2026-11-30b.json), 0.94 at 1,875
}


def fold_steps(plan: SearchPlan) -> int:
    """The training steps of a fold that runs all its epochs (its training rows in batches, times epochs)."""
    n = len(plan.dataset.y_train)
    rows = n - -(-n // plan.cv.folds)  # the training rows of the fold with the largest validation part
    return -(-rows // plan.cv.batch_size) * plan.cv.epochs


def resolve_fold_mode(plan: SearchPlan, stored: dict | None = None, device: str = "cpu", ray: bool = False) -> str:
    """"fused" or "sequential" for the search (see `decide_fold_mode`)."""
    return decide_fold_mode(plan, stored, device, ray)[0]


def decide_fold_mode(plan: SearchPlan, stored: dict | None = None, device: str = "cpu",
                     ray: bool = False) -> tuple[str, str | None]:
    """(fold mode, why `auto` took sequential, or None). An explicit `--fold-mode` as given; a resumed
    project's own; else sequential for a model that cannot train fused exactly
    (`models.checks.fused_blocker`) and in bfloat16 (where the two round apart); else fused on a GPU. On a CPU under TensorFlow, fused where
    each fold trains at least `CPU_FUSED_MIN_STEPS` steps for this CPU's class: a fused trial
    traces its K-member step once per architecture (seconds more than one model's), then saves a
    few milliseconds on every step. Sequential under PyTorch and JAX on a CPU (not measured fused
    there), and on the CPUs of a Ray cluster (there a trial's folds are tasks spread over the
    workers; fused, they would be one task)."""
    import keras

    from tuner_app.device import cpu_class

    if plan.cv.fold_mode != "auto":
        return plan.cv.fold_mode, None
    if stored and isinstance(stored.get("cv"), dict):
        return stored["cv"]["fold_mode"], None
    if plan.check.fused_blocker:
        return "sequential", f"not fused: {plan.check.fused_blocker}"
    if plan.cv.precision != "float32":  # (README "Fused folds": in bfloat16 the two paths round apart)
        return "sequential", "not fused: fused folds equal sequential ones in float32 only"
    if device == "gpu":
        return "fused", None
    if ray:
        return "sequential", "not fused: a trial's folds are Ray tasks"
    if keras.backend.backend() != "tensorflow":
        return "sequential", f"not fused on a CPU under {keras.backend.backend()}"
    least = CPU_FUSED_MIN_STEPS.get(cpu_class())
    if least is None:
        return "sequential", "not fused: no record of this CPU class"
    if fold_steps(plan) < least:
        return "sequential", f"not fused: {fold_steps(plan)} steps per fold, fused from {least} on this CPU"
    return "fused", None


def grid_params(plan: SearchPlan) -> list[int]:
    """The parameter count of every grid point's model (builds each once; for `--dry-run`)."""
    import keras

    from tuner_app import models

    counts = []
    for point in plan.grid.points:
        hp = plan.grid.hyperparameters.copy()
        hp.values = dict(point)
        counts.append(int(models.build(plan.model.hypermodel, hp).count_params()))
        keras.backend.clear_session()
    return counts


def run_search(
    dataset: data_mod.Dataset,
    hypermodel: Any = "seed",
    grid: dict[str, list] | None = None,
    cv: CVConfig | None = None,
    directory: str | Path = "tuning_dirs",
    project: str = "default",
    train_limit: int | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    reuse_models: bool | None = None,
    tensorboard: bool = False,
    ray: RayConfig | None = None,
) -> Path:
    """Run (or resume) a grid search scored by stratified K-fold CV; return the project directory.

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
        reuse_models: See `tuner_app.model_cache.ModelCache`; False builds a new model for every fold.
        tensorboard: Write TensorBoard logs per trial and fold (needs the tensorflow package).
        ray: Run the folds as Ray tasks (`RayConfig()`: a local Ray; see `tuner_app.ray_engine`).
    """
    plan = plan_search(dataset, hypermodel, grid, cv, train_limit)
    return run_plan(plan, directory, project, overwrite, progress, reuse_models, tensorboard, ray=ray)


def run_plan(plan: SearchPlan, directory: str | Path = "tuning_dirs", project: str = "default", overwrite: bool = False,
             progress: Progress | None = None, reuse_models: bool | None = None, tensorboard: bool = False,
             device: str | None = None, ray: RayConfig | None = None) -> Path:
    """Create or resume the project of a checked plan and run the search (see `run_search`).

    Args:
        device: "cpu" or "gpu", recorded with the search; None: what the backend uses now.
        ray: Run the folds as tasks on Ray (`tuner_app.ray_engine`); None: in this process.
    """
    import keras

    from tuner_app import device as device_mod

    if tensorboard:
        _check_tensorboard()
    progress = progress or Progress()
    pdir = state.project_dir(directory, project)
    state.check_writable(Path(directory))
    role = distributed.role()
    if ray is not None and (role or tensorboard):
        raise UsageError("--ray runs the folds on Ray's workers: drop " + (
            "KerasTuner's KERASTUNER_* variables (its chief/worker mode)" if role else "--tensorboard (not on Ray yet)"))
    if role == "worker":
        distributed.wait_for_file(pdir / state.SEARCH_FILE)
    stored = None if overwrite or not (pdir / state.SEARCH_FILE).exists() else state.stored_settings(pdir)
    device = device or device_mod.resolve("auto")["device"]
    plan.cv = dataclasses.replace(plan.cv, fold_mode=resolve_fold_mode(plan, stored, device, ray=ray is not None))
    settings = plan.settings(keras.backend.backend(), device)
    refuse_changed(pdir, settings, overwrite)  # read-only: a refused run writes nothing
    x = data_mod.scale_images(plan.dataset.x_train)
    with contextlib.ExitStack() as stack:
        if ray is not None:  # before any file is written: an unreachable cluster changes nothing
            ray_engine.connect(ray, settings["backend"], device)
            stack.callback(ray_engine.disconnect)
            ray_engine.slots(ray, device)  # at least one task fits the cluster
        _run(plan, x, pdir, directory, project, settings, role, overwrite, progress, reuse_models, tensorboard, ray,
             device)
    return pdir


def _run(plan: SearchPlan, x, pdir: Path, directory, project: str, settings: dict, role: str | None, overwrite: bool,
         progress: Progress, reuse_models: bool | None, tensorboard: bool, ray: RayConfig | None, device: str) -> None:
    # Only the oracle's owner (a lone search, or the chief) locks and writes the project.
    with contextlib.nullcontext() if role == "worker" else state.ProjectLock(Path(directory), project) as lock:
        if lock is not None:
            refuse_changed(pdir, settings, overwrite)  # again, now that no other search can change it
            _create(pdir, settings, overwrite)
            lock.claim()
            state.remove_stale_temporaries(pdir)  # what killed processes left half-written
        with contextlib.redirect_stdout(io.StringIO()):  # KerasTuner prints "Reloading Tuner from ..."
            tuner = CVTuner(plan.model.hypermodel, plan.grid, plan.cv, plan.dataset.num_classes, plan.check.label_form,
                            progress, reuse_models, tensorboard, retrain=_retrain_next(plan),
                            directory=str(directory), project_name=project)
        progress.search_start(len(plan.grid), tuner.completed() or 0, str(pdir), plan.cv.objective, plan.cv.direction)
        try:
            if ray is not None:
                ray_engine.RayEngine(tuner, ray, device).search(x, plan.dataset.y_train)
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


def _retrain_next(plan: SearchPlan) -> RetrainConfig | None:
    """The retrain a search is usually followed by (`retrain-best`'s defaults), for the tuner to compile
    ahead under JAX on a GPU (`CVTuner._compile_later`); None elsewhere, or when the model suggests
    settings that retrain-best will refuse (it says so then)."""
    if not compiled_loop.applies(plan.model.hypermodel):
        return None
    try:
        return retrain_mod.default_config(plan.model)
    except SettingError:
        return None


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
    from tuner_app.device import native_stderr_muted

    try:
        with native_stderr_muted():
            import tensorboard as _tb  # noqa: F401
            import tensorflow as _tf  # noqa: F401  (tf.summary writes the logs, whatever the backend)
    except ImportError:
        raise UsageError("--tensorboard needs the tensorflow and tensorboard packages: "
                         "pip install 'tuner-app[tensorboard]'") from None


def differences(stored: dict, new: dict, prefix: str = "") -> list[str]:
    """The settings that differ, e.g. ['cv.folds: 5 -> 3'] (paths to the same data or file are not compared)."""
    diffs = []
    for key in sorted(set(stored) | set(new)):
        a, b = stored.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += differences(a, b, f"{prefix}{key}.")
        elif a != b and key not in ("source", "file"):
            diffs.append(f"{prefix}{key}: {a} -> {b}")
    return diffs


def refuse_changed(pdir: Path, settings: dict, overwrite: bool) -> None:
    """Raise UsageError when `pdir` holds a search with other settings, or is not a project; read-only."""
    if overwrite or not pdir.exists():
        return
    if not (pdir / state.SEARCH_FILE).exists():
        if any(pdir.iterdir()):
            raise UsageError(f"{pdir} exists and is not a tuner-app project; pass --overwrite or a new --project")
        return
    stored = state.stored_settings(pdir)
    # The device is recorded (later processes adopt it) but not compared: a search may go on
    # elsewhere, on another device, with the same backend and precision.
    compared = [k for k in settings if k != "device"]
    diffs = differences({k: stored.get(k) for k in compared}, {k: settings[k] for k in compared})
    if diffs:
        raise UsageError(f"project {pdir} was searched with other settings ({'; '.join(diffs)}); "
                         "rerun with the stored settings to resume, or pass --overwrite or a new --project")
    state.check_state(pdir)


def _create(pdir: Path, settings: dict, overwrite: bool) -> None:
    """Start over on --overwrite; write search.json for a new project."""
    if overwrite and pdir.exists():
        shutil.rmtree(pdir)
    if not (pdir / state.SEARCH_FILE).exists():
        created = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        state.atomic_write_json(pdir / state.SEARCH_FILE, {**settings, "created": created})


def _failure_hint(tuner: CVTuner) -> str:
    failed = sorted((t for t in tuner.oracle.trials.values() if t.status == "FAILED"), key=lambda t: t.trial_id)
    if not failed:
        return "rerun to retry"
    t = failed[-1]
    lines = [line.strip() for line in (t.message or "").splitlines() if line.strip()]
    what = failed_fold_line(t.message or "") or (lines[-1:] or ["unknown error"])[-1]
    where = Path(tuner.get_trial_dir(t.trial_id)) / state.TRIAL_FILE
    return f"trial {t.trial_id}: {what} (full traceback in {where}); rerun the same command to retry it"


__all__ = ["SearchPlan", "decide_fold_mode", "default_cv", "plan_search", "resolve_fold_mode", "run_plan", "run_search"]
