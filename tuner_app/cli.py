"""The `tuner-app` command: its commands and options, declared; the work is `tuner_app.api`'s.

Options are typer `Annotated` aliases, shared where `search` and `run` take the same one.
Each command turns its options into a call of `tuner_app.api` and prints the outcome. Known errors
(`TunerAppError`, bad options) become one line on stderr and exit code 2 (usage/input)
or 1 (a failed run, damaged state); warnings the user should see (`DataWarning`) are one
line too; see `main`.
"""

from __future__ import annotations

import signal
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated

import rich.console
import typer
from typer.exceptions import Abort, TyperException

from tuner_app import api, results
from tuner_app.data import DATASETS
from tuner_app.data import describe as describe_data
from tuner_app.errors import (
    DataWarning,
    SearchInterrupted,
    SettingError,
    TunerAppError,
    UsageError,
    remember_command,
    rerun,
)
from tuner_app.runtime.progress import describe, plural

app = typer.Typer(
    name="tuner-app", no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode="rich",
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


class Scale(str, Enum):
    auto = "auto"
    by255 = "255"
    none = "none"


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


# Help panels: options grouped by what they are about (`--help` shows one panel each).
DATA, MODEL, CV, DEVICE, SCALEOUT, PROJECT, FINAL = ("Data", "Model and grid", "Cross-validation",
                                                     "Device and precision", "Scale-out", "Project and output",
                                                     "Final training (retrain-best)")
DataOpt = Annotated[str | None, typer.Option("--data", metavar="NAME|PATH", rich_help_panel=DATA, show_default="mnist", help=f"A dataset name ({', '.join(DATASETS)}), an .npz file or a folder of IDX files.")]
OldDatasetOpt = Annotated[str | None, typer.Option("--dataset", hidden=True, help="The old name of --data NAME.")]
ScaleOpt = Annotated[Scale, typer.Option(rich_help_panel=DATA, help="How pixels become inputs: auto (0..255 divided by 255, [0, 1] as is, else refused), 255, none.")]
TrainLimitOpt = Annotated[int | None, typer.Option(rich_help_panel=DATA, show_default="all", help="Use a stratified subset of N training images.")]
DirectoryOpt = Annotated[Path, typer.Option("--directory", "-d", rich_help_panel=PROJECT, help="Parent directory of all projects.")]
ProjectOpt = Annotated[str, typer.Option("--project", "-p", rich_help_panel=PROJECT, help="Project name: state lives in DIRECTORY/PROJECT.")]
DeviceOpt = Annotated[Device, typer.Option(rich_help_panel=DEVICE, help="auto: a GPU if the backend sees one; gpu: fail without one; cpu: hide GPUs.")]
BackendOpt = Annotated[Backend | None, typer.Option(rich_help_panel=DEVICE, show_default="$KERAS_BACKEND, else tensorflow", help="Keras backend.")]
MixedOpt = Annotated[bool, typer.Option("--mixed-precision", metavar="", hidden=True, help="The old name of --precision mixed.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", metavar="", rich_help_panel=PROJECT, help="No progress output (for scripts).")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", rich_help_panel=DEVICE, show_default="all cores", help="CPU threads for training.")]
SearchThreadsOpt = Annotated[int | None, typer.Option("--threads", rich_help_panel=DEVICE, show_default="all cores", help="CPU threads for training (--workers splits them).")]


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"tuner-app {version('tuner-app')}")
        raise typer.Exit()


@app.callback()
def _common(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print tuner-app's version and exit.")] = False) -> None:
    """Grid search x stratified K-fold CV for any Keras model, on KerasTuner; then retrain the best."""


ModelOpt = Annotated[str, typer.Option("--model", "-m", rich_help_panel=MODEL, help="A preset (seed, extended), FILE.py:NAME or package.module:NAME (a build(hp) function or a HyperModel).")]
GridOpt = Annotated[list[str] | None, typer.Option("--grid", "-g", metavar="NAME=V1,V2", rich_help_panel=MODEL, show_default="the model's", help="Replace a hyperparameter's values; repeat for more names (seed: --grid filters=16x32,64x128).")]
ObjectiveOpt = Annotated[str, typer.Option(rich_help_panel=MODEL, help="Validation metric that scores a fold; NAME:max or NAME:min for one tuner-app does not know.")]
OldFiltersOpt = Annotated[list[str] | None, typer.Option("--filters", hidden=True, help="The old form of --grid filters=...")]
OldLearningRateOpt = Annotated[list[float] | None, typer.Option("--learning-rate", hidden=True, help="The old form of --grid learning_rate=...")]
OldDenseUnitsOpt = Annotated[list[int] | None, typer.Option("--dense-units", hidden=True, help="The old form of --grid dense_units=...")]
FoldsOpt = Annotated[int, typer.Option(rich_help_panel=CV, help="Stratified K-fold splits.")]
SeedOpt = Annotated[int, typer.Option(rich_help_panel=CV, help="Seed of the fold split, the weights and the data order.")]
EpochsOpt = Annotated[int | None, typer.Option(rich_help_panel=CV, show_default="5, or the model's", help="Maximum epochs per fold.")]
BatchSizeOpt = Annotated[int | None, typer.Option(rich_help_panel=CV, show_default="128, or the model's", help="Batch size.")]
PatienceOpt = Annotated[int | None, typer.Option(rich_help_panel=CV, show_default="3, or the model's", help="EarlyStopping patience on the objective (best weights restored).")]
FoldModeOpt = Annotated[FoldMode, typer.Option(rich_help_panel=DEVICE, help="fused: a trial's folds train together, each exactly as alone; auto decides (docs: Concepts).")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", metavar="", rich_help_panel=PROJECT, help="Delete the project's earlier state and start over.")]
SearchPrecisionOpt = Annotated[Precision | None, typer.Option(rich_help_panel=DEVICE, show_default="auto", help="mixed: bfloat16 maths, float32 weights; auto: mixed where it was measured faster.")]
TensorboardOpt = Annotated[bool, typer.Option("--tensorboard", metavar="", rich_help_panel=PROJECT, help="Write TensorBoard logs per trial and fold to DIRECTORY/PROJECT/tensorboard.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", metavar="", rich_help_panel=PROJECT, help="List the grid points and stop; writes nothing.")]
WorkersOpt = Annotated[int | None, typer.Option(rich_help_panel=SCALEOUT, show_default=False, help="Run a KerasTuner chief and N worker processes on this host.")]
ChiefOpt = Annotated[str | None, typer.Option(metavar="HOST:PORT", rich_help_panel=SCALEOUT, show_default=False, help="With --workers: start only the workers, joining this chief.")]
RayOpt = Annotated[bool, typer.Option("--ray", metavar="", rich_help_panel=SCALEOUT, help="Run folds as Ray tasks (--ray-address, else $RAY_ADDRESS, else a local Ray); needs the ray extra.")]
RayAddressOpt = Annotated[str | None, typer.Option(rich_help_panel=SCALEOUT, show_default=False, help="With --ray: the cluster's address (HOST:6379, ray://HOST:10001, auto).")]
CpusPerTaskOpt = Annotated[float | None, typer.Option(rich_help_panel=SCALEOUT, show_default="1", help="With --ray: CPU cores each fold task reserves and trains with.")]
StallTimeoutOpt = Annotated[float | None, typer.Option("--ray-stall-timeout", metavar="SECONDS", rich_help_panel=SCALEOUT, show_default="600", help="With --ray: stop when no fold task starts or finishes for this long.")]
GpusPerTaskOpt = Annotated[float | None, typer.Option(rich_help_panel=SCALEOUT, show_default="1 on a GPU, else 0", help="With --ray: GPUs each fold task reserves (a fraction shares one).")]


def _data(data: str | None, dataset: str | None) -> tuple[str | None, Path | None]:
    """`--data NAME|PATH` (or the old `--dataset NAME`) as (dataset name, path): a known name is a name."""
    if data is None:
        return dataset, None
    if dataset is not None:
        raise UsageError(f"--dataset is the old name of --data: give one (--data {data} or --data {dataset})")
    if data in DATASETS:
        return data, None
    if not Path(data).exists() and not Path(data).suffix and "/" not in data:  # meant as a name: data.py refuses it
        return data, None
    return dataset, Path(data)


def _precision(precision: Precision | None, mixed_precision: bool, default: str) -> str:
    if mixed_precision and precision not in (None, Precision.mixed):
        raise UsageError(f"--mixed-precision and --precision {precision.value} disagree; give one of them")
    return "mixed" if mixed_precision else (precision.value if precision else default)


def _progress(quiet: bool, header: str | None = None):
    from tuner_app.runtime.progress import Progress, RichProgress

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


def _request(options: dict, workers: int | None = None) -> api.SearchRequest:
    """The search command's options as an `api.SearchRequest`."""
    o = dict(options)
    ray = api.ray_config(o.pop("ray"), o.pop("ray_address"), o.pop("cpus_per_task"), o.pop("gpus_per_task"), workers,
                         o.pop("ray_stall_timeout"))
    precision = _precision(o.pop("precision"), o.pop("mixed_precision"), "auto")
    for name in ("device", "backend", "fold_mode", "scale"):
        o[name] = o[name].value if isinstance(o[name], Enum) else o[name]
    o.pop("quiet")
    o["dataset"], o["data"] = _data(o["data"], o["dataset"])
    return api.SearchRequest(**{**o, "grid": o["grid"] or [], "ray": ray, "precision": precision})


@app.command()
def search(
    ctx: typer.Context,
    data: DataOpt = None,
    train_limit: TrainLimitOpt = None,
    scale: ScaleOpt = Scale.auto,
    model: ModelOpt = "seed",
    grid: GridOpt = None,
    objective: ObjectiveOpt = "val_accuracy",
    folds: FoldsOpt = 5,
    seed: SeedOpt = 42,
    epochs: EpochsOpt = None,
    batch_size: BatchSizeOpt = None,
    patience: PatienceOpt = None,
    device: DeviceOpt = Device.auto,
    backend: BackendOpt = None,
    precision: SearchPrecisionOpt = None,
    fold_mode: FoldModeOpt = FoldMode.auto,
    threads: SearchThreadsOpt = None,
    workers: WorkersOpt = None,
    chief: ChiefOpt = None,
    ray: RayOpt = False,
    ray_address: RayAddressOpt = None,
    cpus_per_task: CpusPerTaskOpt = None,
    gpus_per_task: GpusPerTaskOpt = None,
    ray_stall_timeout: StallTimeoutOpt = None,
    directory: DirectoryOpt = Path("tuning_dirs"),
    project: ProjectOpt = "default",
    overwrite: OverwriteOpt = False,
    dry_run: DryRunOpt = False,
    tensorboard: TensorboardOpt = False,
    quiet: QuietOpt = False,
    dataset: OldDatasetOpt = None,
    mixed_precision: MixedOpt = False,
    filters: OldFiltersOpt = None,
    learning_rate: OldLearningRateOpt = None,
    dense_units: OldDenseUnitsOpt = None,
):
    """Score every grid point of a model by stratified K-fold CV; resumes an interrupted search."""
    options = {k: v for k, v in locals().items() if k not in ("ctx", "dry_run", "workers", "chief")}
    request = _request(options, workers)
    if workers is not None and api.role() is None:
        api.check_launch(workers, chief)
        if not dry_run:
            code = api.launch(_argv(ctx, ("workers", "chief", "quiet")), workers, quiet, chief)
            if code == 0 and not quiet and chief is None:
                _show(request.directory, request.project)
            raise typer.Exit(code)
    elif chief is not None:
        raise UsageError(f"--chief {chief}: give --workers N too (the workers to start)")
    _search(request, dry_run, quiet)


def _search(request: api.SearchRequest, dry_run: bool, quiet: bool) -> None:
    prepared = api.prepare(request, dry_run)
    plan, cv = prepared.plan, prepared.plan.cv
    if dry_run:
        out.print(results.grid_table(plan.grid.points, plan.grid.names, api.grid_params(prepared)))
        out.print(f"data {describe_data(plan.dataset, plan.scale)}")
        out.print(f"{plural(len(plan.grid), 'point')} x {cv.folds} folds x up to {plural(cv.epochs, 'epoch')}, "
                  f"{prepared.settled.describe_fold_mode()}, {prepared.settled.describe_precision()}; objective "
                  f"{cv.objective} ({cv.direction}); labels {plan.check.label_form}; nothing was written")
        return
    try:
        api.run_prepared(prepared, request, _progress(quiet, prepared.header))
    except (SearchInterrupted, KeyboardInterrupt) as e:
        signum = e.signum if isinstance(e, SearchInterrupted) else signal.SIGINT
        done = results.completed_trials(prepared.pdir)
        err.print(f"interrupted ({signal.Signals(signum).name}): {done}/{len(plan.grid)} trials complete, finished "
                  f"folds are kept; {rerun('resume')}", soft_wrap=True)
        raise typer.Exit(128 + signum) from None
    if not quiet:
        _show(request.directory, request.project)


def _show(directory: Path, project: str) -> None:
    ranked, folds = results.ranked_trials(directory, project)
    out.print(results.table(ranked, folds))
    best = results.best_completed(ranked)
    if best:
        out.print(f"best: {describe(best['hyperparameters'])}: mean {best['objective']} {best['score']:.4f} "
                  f"± {best['std']:.4f} (trial {best['trial_id']})")


@app.command("results")
def show_results(
    directory: DirectoryOpt = Path("tuning_dirs"),
    project: ProjectOpt = "default",
    format: Annotated[Format, typer.Option("--format", "-f", help="table for people; csv or json for tools.")] = Format.table,
    plot: Annotated[Path | None, typer.Option(help="Also write a PNG of every configuration's fold scores.")] = None,
):
    """Show a project's trials ranked by the mean fold objective (also while a search runs)."""
    if plot is not None:
        results.plot_trials(directory, project, plot)
        err.print(f"wrote {plot}")
    if format is Format.table:
        _show(directory, project)
        return
    ranked, _ = results.ranked_trials(directory, project)
    sys.stdout.write(results.to_json(ranked) + "\n" if format is Format.json else results.to_csv(ranked))


RetrainEpochsOpt = Annotated[int | None, typer.Option("--retrain-epochs", rich_help_panel=FINAL, show_default="10, or the model's", help="retrain-best's --epochs.")]
RetrainBatchSizeOpt = Annotated[int | None, typer.Option("--retrain-batch-size", rich_help_panel=FINAL, show_default="--batch-size if given, else 128 or the model's", help="retrain-best's --batch-size.")]
RetrainValidationSplitOpt = Annotated[float | None, typer.Option("--retrain-validation-split", rich_help_panel=FINAL, show_default="0.1", help="retrain-best's --validation-split.")]
RetrainPrecisionOpt = Annotated[Precision | None, typer.Option("--retrain-precision", metavar="PRECISION", rich_help_panel=FINAL, show_default="float32", help="retrain-best's --precision: auto, float32 or mixed.")]
OldValidationSplitOpt = Annotated[float | None, typer.Option("--validation-split", hidden=True, help="The old name of --retrain-validation-split.")]
TRAIN = "Training"


@app.command("retrain-best")
def retrain_best(
    data: Annotated[str | None, typer.Option("--data", metavar="NAME|PATH", rich_help_panel=DATA, show_default="the searched data", help="A dataset name, an .npz file or a folder of IDX files.")] = None,
    train_limit: TrainLimitOpt = None,
    epochs: Annotated[int | None, typer.Option(rich_help_panel=TRAIN, show_default="10, or the model's", help="Training epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option(rich_help_panel=TRAIN, show_default="128, or the model's", help="Batch size.")] = None,
    validation_split: Annotated[float | None, typer.Option(rich_help_panel=TRAIN, show_default="0.1", help="Fraction of the training set held out to watch training.")] = None,
    seed: Annotated[int | None, typer.Option(rich_help_panel=TRAIN, show_default="the search's --seed", help="Seed of the weights and the data order.")] = None,
    device: DeviceOpt = Device.auto,
    backend: BackendOpt = None,
    precision: Annotated[Precision | None, typer.Option(rich_help_panel=DEVICE, show_default="float32", help="The final model's arithmetic, whatever the search's was.")] = None,
    threads: ThreadsOpt = None,
    directory: DirectoryOpt = Path("tuning_dirs"),
    project: ProjectOpt = "default",
    quiet: QuietOpt = False,
    dataset: OldDatasetOpt = None,
    mixed_precision: MixedOpt = False,
):
    """Train the best trial's model on the whole training set, test it, save it."""
    requested = _precision(precision, mixed_precision, "float32")
    dataset, path = _data(data, dataset)
    result = api.retrain(dataset, path, train_limit, directory, project, epochs, batch_size, validation_split, seed,
                         device.value, backend.value if backend else None, requested, threads, _progress(quiet))
    if not quiet:
        written = results.retrain_files(directory, project)
        err.print(f"trial {result['trial_id']}: {describe(result['hyperparameters'])} (CV {result['objective']} "
                  f"{result['cv_score']:.4f}); {result['backend']} on {result['device']} ({result['precision']}), "
                  f"{result['seconds']:.1f} s; wrote {written[0]}, {', '.join(p.name for p in written[1:-1])} and "
                  f"{written[-1].name}", soft_wrap=True)
    print(f"test accuracy: {result['test_accuracy']:.4f}")


@app.command()
def run(
    data: DataOpt = None,
    train_limit: TrainLimitOpt = None,
    scale: ScaleOpt = Scale.auto,
    model: ModelOpt = "seed",
    grid: GridOpt = None,
    objective: ObjectiveOpt = "val_accuracy",
    folds: FoldsOpt = 5,
    seed: SeedOpt = 42,
    epochs: EpochsOpt = None,
    batch_size: BatchSizeOpt = None,
    patience: PatienceOpt = None,
    device: DeviceOpt = Device.auto,
    backend: BackendOpt = None,
    precision: SearchPrecisionOpt = None,
    fold_mode: FoldModeOpt = FoldMode.auto,
    threads: ThreadsOpt = None,
    ray: RayOpt = False,
    ray_address: RayAddressOpt = None,
    cpus_per_task: CpusPerTaskOpt = None,
    gpus_per_task: GpusPerTaskOpt = None,
    ray_stall_timeout: StallTimeoutOpt = None,
    directory: DirectoryOpt = Path("tuning_dirs"),
    project: ProjectOpt = "default",
    overwrite: OverwriteOpt = False,
    tensorboard: TensorboardOpt = False,
    quiet: QuietOpt = False,
    retrain_epochs: RetrainEpochsOpt = None,
    retrain_batch_size: RetrainBatchSizeOpt = None,
    retrain_validation_split: RetrainValidationSplitOpt = None,
    retrain_precision: RetrainPrecisionOpt = None,
    dataset: OldDatasetOpt = None,
    mixed_precision: MixedOpt = False,
    filters: OldFiltersOpt = None,
    learning_rate: OldLearningRateOpt = None,
    dense_units: OldDenseUnitsOpt = None,
    validation_split: OldValidationSplitOpt = None,
):
    """The whole job in one process: search (or resume), then retrain-best on the same data."""
    options = {k: v for k, v in locals().items() if not k.startswith("retrain_") and k != "validation_split"}
    if validation_split is not None and retrain_validation_split is not None:
        raise UsageError("--validation-split is the old name of --retrain-validation-split: give one")
    split = validation_split if retrain_validation_split is None else retrain_validation_split
    option = "--validation-split" if validation_split is not None else "--retrain-validation-split"
    try:
        api.check_retrain_options(epochs=retrain_epochs, validation_split=split, batch_size=retrain_batch_size)
    except SettingError as e:  # before the search; named as `run` names it
        raise UsageError(e.as_option({"epochs": "--retrain-epochs", "validation_split": option,
                                      "batch_size": "--retrain-batch-size"}[e.name])) from None
    _search(_request(options), dry_run=False, quiet=quiet)
    retrain_best(data=data, train_limit=train_limit, directory=directory, project=project, epochs=retrain_epochs,
                 batch_size=batch_size if retrain_batch_size is None else retrain_batch_size, validation_split=split,
                 seed=seed, device=device, backend=backend, precision=retrain_precision, threads=threads, quiet=quiet,
                 dataset=dataset, mixed_precision=False)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    if issubclass(category, DataWarning):
        print(f"tuner-app: warning: {message}", file=sys.stderr)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def main() -> None:
    """Entry point: run the app, turning expected errors into one line and an exit code."""
    warnings.showwarning = _show_warning
    remember_command(sys.argv[1:])
    try:
        code = app(prog_name="tuner-app", standalone_mode=False)
    except TyperException as e:  # typer's (vendored click's) usage errors
        if type(e).__name__ == "NoArgsIsHelpError":  # `tuner-app` alone: the help, and which command is missing
            print("tuner-app: error: give a command: search, results, retrain-best or run", file=sys.stderr)
        elif e.format_message():  # one line, with Click's hint to the command's help
            ctx = getattr(e, "ctx", None)
            hint = f" Try '{ctx.command_path} --help' for help." if ctx is not None else ""
            message = e.format_message()
            print(f"tuner-app: error: {message}{'' if message.endswith('.') else '.'}{hint}", file=sys.stderr)
        sys.exit(e.exit_code)
    except Abort:
        sys.exit(1)
    except SettingError as e:  # a setting named in Python's terms: say it in the CLI's
        option = {"stall_timeout": "--ray-stall-timeout"}.get(e.name, "--" + e.name.replace("_", "-"))
        print(f"tuner-app: error: {e.as_option(option)}", file=sys.stderr)
        sys.exit(e.exit_code)
    except TunerAppError as e:
        if not e.said:  # (a lost Ray cluster's line is printed as soon as it is known)
            print(f"tuner-app: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
