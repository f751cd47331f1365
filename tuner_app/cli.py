"""The `tuner-app` command: a thin typer layer over tuner_app's Python API.

Each command parses options, calls library functions and prints. Known errors
(`TunerAppError`, bad options) become one line on stderr and exit code 2 (usage/input)
or 1 (a failed run, damaged state); warnings the user should see (`DataWarning`) are one
line too; see `main`.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated

import rich.console
import typer
from typer.exceptions import Abort, TyperException

from tuner_app import distributed, report, state
from tuner_app.data import DATASETS
from tuner_app.errors import DataWarning, SearchInterrupted, SettingError, TunerAppError, UsageError
from tuner_app.interrupt import stop_on_signals
from tuner_app.progress import describe, plural

app = typer.Typer(
    name="tuner-app", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Grid search x stratified K-fold CV for any Keras model, on KerasTuner; then retrain the best.",
)
out = rich.console.Console()
if not out.is_terminal:  # piped or captured: do not squeeze the table into 80 columns
    out = rich.console.Console(width=160)
err = rich.console.Console(stderr=True, log_path=False)


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"


class Backend(str, Enum):
    tensorflow = "tensorflow"
    jax = "jax"
    torch = "torch"


class Precision(str, Enum):
    auto = "auto"
    float32 = "float32"
    mixed = "mixed"


class FoldMode(str, Enum):
    auto = "auto"
    fused = "fused"
    sequential = "sequential"


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


DatasetOpt = Annotated[str | None, typer.Option(help=f"Dataset by name: {', '.join(DATASETS)} (mnist-sample ships with tuner-app; the others Keras downloads). [default: mnist]", show_default=False)]
DataOpt = Annotated[Path | None, typer.Option(help="Local dataset: an .npz (x_train, y_train, x_test, y_test) or a directory of the four IDX files. Overrides --dataset.")]
TrainLimitOpt = Annotated[int | None, typer.Option(help="Use a stratified subset of N training images (quick runs).")]
DirectoryOpt = Annotated[Path, typer.Option(help="Parent directory of all search projects.")]
ProjectOpt = Annotated[str, typer.Option(help="Project name; state lives in DIRECTORY/PROJECT.")]
DeviceOpt = Annotated[Device, typer.Option(help="auto: GPU if the backend sees one; gpu: fail without one; cpu: hide GPUs.")]
BackendOpt = Annotated[Backend | None, typer.Option(help="Keras backend (default: $KERAS_BACKEND, else tensorflow).", show_default=False)]
MixedOpt = Annotated[bool, typer.Option("--mixed-precision", help="Shorthand for --precision mixed.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output (for scripts).")]
ThreadsOpt = Annotated[int | None, typer.Option(help="CPU threads for training. [default: all cores]", show_default=False)]
SearchThreadsOpt = Annotated[int | None, typer.Option("--threads", help="CPU threads for training. [default: all cores; --workers splits them]", show_default=False)]


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"tuner-app {version('tuner-app')}")
        raise typer.Exit()


@app.callback()
def _common(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print tuner-app's version and exit.")] = False) -> None:
    """Grid search x stratified K-fold CV for any Keras model, on KerasTuner; then retrain the best."""


def _precision(precision: Precision | None, mixed_precision: bool, default: str) -> str:
    if mixed_precision and precision not in (None, Precision.mixed):
        raise UsageError(f"--mixed-precision and --precision {precision.value} disagree; give one of them")
    return "mixed" if mixed_precision else (precision.value if precision else default)


def _progress(quiet: bool, header: str | None = None):
    from tuner_app.progress import Progress, RichProgress

    return Progress() if quiet else RichProgress(err, header)


def _argv(ctx: typer.Context, drop: tuple[str, ...]) -> list[str]:
    """The command's parsed options as arguments again (for the processes the launcher starts)."""
    argv = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name in drop or value is None or not getattr(param, "opts", None):
            continue
        for v in value if getattr(param, "multiple", False) else [value]:
            if getattr(param, "is_flag", False):
                argv += [param.opts[0]] if v else []
            else:
                argv += [param.opts[0], str(v.value if isinstance(v, Enum) else v)]
    return argv


def _recorded(pdir: Path, role: str | None, overwrite: bool) -> dict | None:
    """The project's stored settings that a resume or a worker adopts (None for a new project)."""
    if role == "worker":
        distributed.wait_for_file(pdir / state.SEARCH_FILE)
    elif overwrite or not (pdir / state.SEARCH_FILE).exists():
        return None
    return state.stored_settings(pdir)


@app.command()
def search(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="The model: a preset (seed, extended), FILE.py:NAME or package.module:NAME, where NAME is a build(hp) function or a keras_tuner.HyperModel.")] = "seed",
    grid: Annotated[list[str] | None, typer.Option(help="NAME=V1,V2: replace a declared hyperparameter's values for this search; repeat for more names (a value with a comma: NAME='[\"16,32\",\"32,64\"]').", show_default=False)] = None,
    objective: Annotated[str, typer.Option(help="The validation metric that scores a fold (val_loss: lower is better); NAME:max or NAME:min for others.")] = "val_accuracy",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the grid points (with each model's parameter count) and stop; writes nothing.")] = False,
    dataset: DatasetOpt = None,
    data: DataOpt = None,
    train_limit: TrainLimitOpt = None,
    filters: Annotated[list[str] | None, typer.Option(help="--model seed: conv filter pair 'F1,F2'; repeat for more grid values. [default: 16,32 32,64 64,128]", show_default=False)] = None,
    learning_rate: Annotated[list[float] | None, typer.Option(help="--model seed: Adam learning rate; repeatable. [default: 0.001 0.0005]", show_default=False)] = None,
    dense_units: Annotated[list[int] | None, typer.Option(help="--model seed: hidden dense units; repeatable. [default: 120]", show_default=False)] = None,
    folds: Annotated[int, typer.Option(help="Stratified K-fold splits.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the fold split, the weight initialisation and each fold's per-epoch data order.")] = 42,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs per fold. [default: 5, or what the model suggests (extended: 15)]", show_default=False)] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size. [default: 128, or the model's]", show_default=False)] = None,
    patience: Annotated[int | None, typer.Option(help="EarlyStopping patience on the objective (best weights restored). [default: 3, or the model's]", show_default=False)] = None,
    fold_mode: Annotated[FoldMode, typer.Option(help="fused: a trial's folds train together in one model, each exactly as it would alone; sequential: one fold after another; auto: in float32, fused on a GPU, and on a CPU under TensorFlow (not with --ray) where each fold trains enough steps for that CPU class (records: 100 on AMD with AVX512_BF16 and Intel with AMX, 1,875 on Intel without AMX); otherwise, and for a model that cannot train fused exactly, sequential (the header says why); a resume keeps the first run's.")] = FoldMode.auto,
    directory: DirectoryOpt = Path("tuning_dirs"),
    project: ProjectOpt = "default",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Delete the project's earlier state and start over.")] = False,
    device: DeviceOpt = Device.auto,
    backend: BackendOpt = None,
    precision: Annotated[Precision | None, typer.Option(help="mixed: bfloat16 arithmetic with float32 weights (faster where the hardware has bfloat16 units); auto: mixed where bfloat16 was measured faster (GPUs of compute capability >= 8.0, AMX CPUs, AMD CPUs with AVX512_BF16 under TensorFlow or PyTorch), else float32; a resume keeps the first run's. [default: auto]", show_default=False)] = None,
    mixed_precision: MixedOpt = False,
    tensorboard: Annotated[bool, typer.Option("--tensorboard", help="Write TensorBoard logs per trial and fold (with HParams) to DIRECTORY/PROJECT/tensorboard.")] = False,
    workers: Annotated[int | None, typer.Option(help="Run a KerasTuner chief and N worker processes on this host (one GPU each, or sharing the CPU cores).", show_default=False)] = None,
    chief: Annotated[str | None, typer.Option(help="With --workers: start only the N workers, joining the chief at HOST:PORT.", show_default=False)] = None,
    threads: SearchThreadsOpt = None,
    ray: Annotated[bool, typer.Option("--ray", help="Run the folds as tasks on Ray: on the cluster at --ray-address, else at $RAY_ADDRESS, else on a local Ray on this machine. Needs pip install 'tuner-app[ray]'.")] = False,
    ray_address: Annotated[str | None, typer.Option(help="With --ray: the Ray cluster's address (HOST:6379, ray://HOST:10001, auto).", show_default=False)] = None,
    cpus_per_task: Annotated[float | None, typer.Option(help="With --ray: CPU cores each fold task reserves (and trains with). [default: 1]", show_default=False)] = None,
    gpus_per_task: Annotated[float | None, typer.Option(help="With --ray: GPUs each fold task reserves; a fraction lets folds share a GPU. [default: 1 on a GPU search, else 0]", show_default=False)] = None,
    quiet: QuietOpt = False,
):
    """Score every grid point of a model by stratified K-fold CV; resumes an interrupted search."""
    pdir = state.project_dir(directory, project)
    role = distributed.role()
    ray_config = _ray_config(ray, ray_address, cpus_per_task, gpus_per_task, workers)
    if workers is not None and role is None and not dry_run:
        code = distributed.launch(_argv(ctx, ("workers", "chief", "quiet")), workers, quiet, chief)
        if code == 0 and not quiet and chief is None:
            _show(pdir)
        raise typer.Exit(code)
    if chief is not None:
        raise UsageError(f"--chief {chief}: give --workers N too (the workers to start)")
    if model != "seed" and (filters or learning_rate or dense_units):
        raise UsageError(f"--filters, --learning-rate and --dense-units belong to --model seed; for --model {model} "
                         "use --grid NAME=V1,V2")
    from tuner_app import device as device_mod
    from tuner_app.settings import parse_grid_option

    overrides = parse_grid_option(grid or [])
    recorded = None if dry_run else _recorded(pdir, role, overwrite)
    # A Ray driver trains nothing: it resolves device and precision for the tasks, as a chief does.
    info = device_mod.settle(backend.value if backend else None, device.value,
                             _precision(precision, mixed_precision, "auto"), "chief" if ray_config else role,
                             recorded, threads)
    from tuner_app.data import load_dataset
    from tuner_app.models import load_model
    from tuner_app.models.seed import grid_overrides
    from tuner_app.search import decide_fold_mode, default_cv, plan_search, run_plan

    ds = load_dataset(data, dataset or "mnist")
    loaded = load_model(model, ds.input_shape, ds.num_classes)
    if model == "seed":
        overrides = {**grid_overrides(filters, learning_rate, dense_units), **overrides}
    cv = default_cv(loaded, folds=folds, seed=seed, epochs=epochs, batch_size=batch_size, patience=patience,
                    precision=info["precision"], objective=objective, fold_mode=fold_mode.value)
    plan = plan_search(ds, loaded, overrides, cv, train_limit)
    mode, why = decide_fold_mode(plan, recorded, info["device"], ray=ray_config is not None)
    plan.cv = dataclasses.replace(cv, fold_mode=mode)
    mode = f"{mode} ({why})" if why else mode
    if dry_run:
        from tuner_app.search import grid_params

        out.print(report.grid_table(plan.grid.points, plan.grid.names, grid_params(plan)))
        out.print(f"{plural(len(plan.grid), 'point')} x {cv.folds} folds x up to {plural(cv.epochs, 'epoch')}, {mode}, "
                  f"{cv.precision}; objective {cv.objective} ({cv.direction}); labels {plan.check.label_form}; "
                  "nothing was written")
        return
    if role == "worker":
        distributed.watch_chief()
    where = "serving the oracle for workers on" if role == "chief" else "on"
    if ray_config:
        where = f"on Ray ({ray_config.address or os.environ.get('RAY_ADDRESS') or 'local'}), tasks on"
    header = (f"model {loaded.spec}; backend {info['backend']} {where} {info['device']}, {cv.precision}; "
              f"{plural(len(plan.grid), 'grid point')} x {cv.folds} folds, {mode}")  # said once the checks pass
    try:
        with stop_on_signals(immediate=role == "chief"):
            run_plan(plan, directory, project, overwrite, _progress(quiet, header), tensorboard=tensorboard,
                     device=info["device"], ray=ray_config)
    except (SearchInterrupted, KeyboardInterrupt) as e:
        signum = e.signum if isinstance(e, SearchInterrupted) else signal.SIGINT
        done = sum(r["status"] == "COMPLETED" for r in report.load_results(pdir)) \
            if (pdir / state.SEARCH_FILE).exists() else 0
        err.print(f"interrupted ({signal.Signals(signum).name}): {done}/{len(plan.grid)} trials complete, finished "
                  "folds are kept; rerun the same command to resume", soft_wrap=True)
        raise typer.Exit(128 + signum) from None
    if not quiet:
        _show(pdir)


def _ray_config(ray: bool, address: str | None, cpus_per_task: float | None, gpus_per_task: float | None,
                workers: int | None):
    """The RayConfig of `--ray` (None without it); its options only with it."""
    from tuner_app.settings import RayConfig

    if not ray:
        given = [o for o, v in (("--ray-address", address), ("--cpus-per-task", cpus_per_task),
                                ("--gpus-per-task", gpus_per_task)) if v is not None]
        if given:
            raise UsageError(f"{given[0]} belongs to --ray: add --ray, or drop it")
        return None
    if workers is not None:
        raise UsageError("--ray and --workers are two engines: pick one (README: Ray or KerasTuner's chief/worker)")
    return RayConfig(address, 1.0 if cpus_per_task is None else cpus_per_task, gpus_per_task)


def _show(pdir: Path) -> None:
    results = report.load_results(pdir)
    folds = state.read_search(pdir)["cv"]["folds"]
    out.print(report.table(results, folds))
    best = report.best_completed(results)
    if best:
        out.print(f"best: {describe(best['hyperparameters'])}: mean {best['objective']} {best['score']:.4f} "
                  f"± {best['std']:.4f} (trial {best['trial_id']})")


@app.command()
def results(
    directory: DirectoryOpt = Path("tuning_dirs"),
    project: ProjectOpt = "default",
    format: Annotated[Format, typer.Option("--format", "-f", help="table for people; csv or json for tools.")] = Format.table,
    plot: Annotated[Path | None, typer.Option(help="Also write a PNG of every configuration's fold scores.")] = None,
):
    """Show a project's trials ranked by the mean fold objective (also while a search runs)."""
    pdir = state.project_dir(directory, project)
    if plot is not None:
        from tuner_app.plots import plot_results

        if plot.suffix.lower() != ".png":
            raise UsageError(f"--plot {plot}: give a .png file name")
        state.check_writable(plot.parent)
        plot_results(report.load_results(pdir), plot)
        err.print(f"wrote {plot}")
    if format is Format.table:
        _show(pdir)
        return
    ranked = report.load_results(pdir)
    sys.stdout.write(report.to_json(ranked) + "\n" if format is Format.json else report.to_csv(ranked))


@app.command("retrain-best")
def retrain_best(
    dataset: Annotated[str | None, typer.Option(help="Dataset by name (see search). [default: the searched data]", show_default=False)] = None,
    data: DataOpt = None,
    train_limit: TrainLimitOpt = None,
    directory: DirectoryOpt = Path("tuning_dirs"),
    project: ProjectOpt = "default",
    epochs: Annotated[int | None, typer.Option(help="Training epochs. [default: 10, or what the model suggests (extended: 30)]", show_default=False)] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size. [default: 128]", show_default=False)] = None,
    validation_split: Annotated[float | None, typer.Option(help="Fraction held out for validation during training. [default: 0.1]", show_default=False)] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the weight initialisation and the per-epoch data order. [default: the search's --seed]", show_default=False)] = None,
    device: DeviceOpt = Device.auto,
    backend: BackendOpt = None,
    precision: Annotated[Precision | None, typer.Option(help="auto, float32 or mixed (see search --help). [default: float32: the final model at full precision, whatever the search used]", show_default=False)] = None,
    mixed_precision: MixedOpt = False,
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
):
    """Train the best trial's model on the whole training set, test it, save it."""
    requested = _precision(precision, mixed_precision, "float32")
    pdir = state.project_dir(directory, project)
    state.read_search(pdir)  # no project: say so before loading a backend
    from tuner_app import device as device_mod

    info = device_mod.settle(backend.value if backend else None, device.value, requested, threads=threads)
    from tuner_app.data import load_dataset
    from tuner_app.retrain import retrain_best as run_retrain

    ds = load_dataset(data, dataset) if data is not None or dataset is not None else None
    options = {"epochs": epochs, "batch_size": batch_size, "validation_split": validation_split, "seed": seed,
               "precision": info["precision"]}
    result = run_retrain(ds, directory, project, options, train_limit, info, _progress(quiet))
    if not quiet:
        err.print(f"trial {result['trial_id']}: {describe(result['hyperparameters'])} (CV {result['objective']} "
                  f"{result['cv_score']:.4f}); {result['backend']} on {result['device']} ({result['precision']}), "
                  f"{result['seconds']:.1f} s; wrote {pdir / state.MODEL_FILE}, {state.RETRAIN_FILE}, "
                  f"{state.CURVES_FILE} and {state.CONFUSION_FILE}", soft_wrap=True)
    print(f"test accuracy: {result['test_accuracy']:.4f}")


def run(
    ctx: typer.Context,
    retrain_epochs: Annotated[int | None, typer.Option(help="retrain-best's --epochs: the final model's training epochs. [default: 10, or what the model suggests (extended: 30)]", show_default=False)] = None,
    validation_split: Annotated[float | None, typer.Option(help="retrain-best's --validation-split. [default: 0.1]", show_default=False)] = None,
    retrain_precision: Annotated[Precision | None, typer.Option(help="retrain-best's --precision: the final model's arithmetic, whatever the search's --precision. [default: float32]", show_default=False)] = None,
    **options,
):
    """The whole job in one process: search (or resume), then retrain-best on the same data; the options are search's."""
    _check_retrain_options(epochs=retrain_epochs, validation_split=validation_split)  # before the search
    search(ctx, **options, dry_run=False, workers=None, chief=None)
    retrain_best(dataset=options["dataset"], data=options["data"], train_limit=options["train_limit"],
                 directory=options["directory"], project=options["project"], epochs=retrain_epochs,
                 batch_size=options["batch_size"], validation_split=validation_split, seed=options["seed"],
                 device=options["device"], backend=options["backend"], precision=retrain_precision, mixed_precision=False,
                 threads=options["threads"], quiet=options["quiet"])


def _check_retrain_options(**given) -> None:
    """Refuse `run`'s retrain options by their own names before the search starts, not after it."""
    from tuner_app.settings import RetrainConfig

    try:
        RetrainConfig(**{k: v for k, v in given.items() if v is not None})
    except SettingError as e:
        raise UsageError(e.as_option("--retrain-epochs" if e.name == "epochs" else "--" + e.name.replace("_", "-"))) \
            from None


def _run_signature() -> None:
    """`run` takes search's options (but --dry-run, --workers and --chief) and three of retrain-best's."""
    import inspect

    own = list(inspect.signature(run, eval_str=True).parameters.values())[:-1]
    taken = [p for name, p in inspect.signature(search, eval_str=True).parameters.items()
             if name not in ("ctx", "dry_run", "workers", "chief")]
    taken = [p.replace(annotation=ThreadsOpt) if p.name == "threads" else p for p in taken]  # run has no --workers
    run.__signature__ = inspect.Signature(own + taken)
    run.__annotations__ = {**search.__annotations__, **run.__annotations__}
    run.__annotations__.pop("options", None)


_run_signature()
app.command("run")(run)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    if issubclass(category, DataWarning):
        print(f"tuner-app: warning: {message}", file=sys.stderr)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def main() -> None:
    """Entry point: run the app, turning expected errors into one line and an exit code."""
    warnings.showwarning = _show_warning
    try:
        code = app(standalone_mode=False)
    except TyperException as e:  # typer's (vendored click's) usage errors
        if type(e).__name__ == "NoArgsIsHelpError":  # `tuner-app` alone: the help, and which command is missing
            print(f"{e.format_message()}\n\ntuner-app: error: give a command: search, results, retrain-best or run",
                  file=sys.stderr)
        elif e.format_message():
            print(f"tuner-app: error: {e.format_message()}", file=sys.stderr)
        sys.exit(e.exit_code)
    except Abort:
        sys.exit(1)
    except SettingError as e:  # a setting named in Python's terms: say it in the CLI's
        print(f"tuner-app: error: {e.as_option('--' + e.name.replace('_', '-'))}", file=sys.stderr)
        sys.exit(e.exit_code)
    except TunerAppError as e:
        if not e.said:  # (a lost Ray cluster's line is printed as soon as it is known)
            print(f"tuner-app: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
