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
from tuner_app.errors import DataWarning, SearchInterrupted, SettingError, TunerAppError, UsageError
from tuner_app.runtime.progress import describe, plural

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


class Scale(str, Enum):
    auto = "auto"
    by255 = "255"
    none = "none"


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


DatasetOpt = Annotated[str | None, typer.Option(help=f"Dataset by name: {', '.join(DATASETS)} (mnist-sample ships with tuner-app; the others Keras downloads). [default: mnist]", show_default=False)]
DataOpt = Annotated[Path | None, typer.Option(help="Local dataset: an .npz (x_train, y_train, x_test, y_test) or a directory of the four IDX files. Overrides --dataset.")]
ScaleOpt = Annotated[Scale, typer.Option(help="How images become inputs. auto: 8-bit pixels (0..255, divided by 255) or values already in [0, 1]; other values are refused, not rescaled. 255: divide by 255. none: as they are (standardised data). retrain-best uses the search's.")]
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


ModelOpt = Annotated[str, typer.Option(help="The model: a preset (seed, extended), FILE.py:NAME or package.module:NAME, where NAME is a build(hp) function or a keras_tuner.HyperModel.")]
GridOpt = Annotated[list[str] | None, typer.Option(help="NAME=V1,V2: replace a declared hyperparameter's values for this search; repeat for more names (a value with a comma: NAME='[\"16,32\",\"32,64\"]').", show_default=False)]
ObjectiveOpt = Annotated[str, typer.Option(help="The validation metric that scores a fold (val_loss: lower is better); NAME:max or NAME:min for others.")]
FiltersOpt = Annotated[list[str] | None, typer.Option(help="--model seed: conv filter pair 'F1,F2'; repeat for more grid values. [default: 16,32 32,64 64,128]", show_default=False)]
LearningRateOpt = Annotated[list[float] | None, typer.Option(help="--model seed: Adam learning rate; repeatable. [default: 0.001 0.0005]", show_default=False)]
DenseUnitsOpt = Annotated[list[int] | None, typer.Option(help="--model seed: hidden dense units; repeatable. [default: 120]", show_default=False)]
FoldsOpt = Annotated[int, typer.Option(help="Stratified K-fold splits.")]
SeedOpt = Annotated[int, typer.Option(help="Seed of the fold split, the weight initialisation and each fold's per-epoch data order.")]
EpochsOpt = Annotated[int | None, typer.Option(help="Maximum epochs per fold. [default: 5, or what the model suggests (extended: 15)]", show_default=False)]
BatchSizeOpt = Annotated[int | None, typer.Option(help="Batch size. [default: 128, or the model's]", show_default=False)]
PatienceOpt = Annotated[int | None, typer.Option(help="EarlyStopping patience on the objective (best weights restored). [default: 3, or the model's]", show_default=False)]
FoldModeOpt = Annotated[FoldMode, typer.Option(help="fused: a trial's folds train together in one model, each exactly as it would alone; sequential: one fold after another; auto: in float32, fused on a GPU, and on a CPU under TensorFlow (not with --ray) where each fold trains enough steps for that CPU class (records: 100 on AMD with AVX512_BF16 and Intel with AMX, 1,875 on Intel without AMX); otherwise, and for a model that cannot train fused exactly, sequential (the header says why); a resume keeps the first run's.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Delete the project's earlier state and start over.")]
SearchPrecisionOpt = Annotated[Precision | None, typer.Option(help="mixed: bfloat16 arithmetic with float32 weights (faster where the hardware has bfloat16 units); auto: mixed where bfloat16 was measured faster (GPUs of compute capability >= 8.0, AMX CPUs, AMD CPUs with AVX512_BF16 under TensorFlow or PyTorch), else float32; a resume keeps the first run's. [default: auto]", show_default=False)]
TensorboardOpt = Annotated[bool, typer.Option("--tensorboard", help="Write TensorBoard logs per trial and fold (with HParams) to DIRECTORY/PROJECT/tensorboard.")]
RayOpt = Annotated[bool, typer.Option("--ray", help="Run the folds as tasks on Ray: on the cluster at --ray-address, else at $RAY_ADDRESS, else on a local Ray on this machine. Needs pip install 'tuner-app[ray]'.")]
RayAddressOpt = Annotated[str | None, typer.Option(help="With --ray: the Ray cluster's address (HOST:6379, ray://HOST:10001, auto).", show_default=False)]
CpusPerTaskOpt = Annotated[float | None, typer.Option(help="With --ray: CPU cores each fold task reserves (and trains with). [default: 1]", show_default=False)]
GpusPerTaskOpt = Annotated[float | None, typer.Option(help="With --ray: GPUs each fold task reserves; a fraction lets folds share a GPU. [default: 1 on a GPU search, else 0]", show_default=False)]


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
    ray = api.ray_config(o.pop("ray"), o.pop("ray_address"), o.pop("cpus_per_task"), o.pop("gpus_per_task"), workers)
    precision = _precision(o.pop("precision"), o.pop("mixed_precision"), "auto")
    for name in ("device", "backend", "fold_mode", "scale"):
        o[name] = o[name].value if isinstance(o[name], Enum) else o[name]
    o.pop("quiet")
    return api.SearchRequest(**{**o, "grid": o["grid"] or [], "ray": ray, "precision": precision})


@app.command()
def search(
    ctx: typer.Context,
    model: ModelOpt = "seed",
    grid: GridOpt = None,
    objective: ObjectiveOpt = "val_accuracy",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the grid points (with each model's parameter count) and stop; writes nothing.")] = False,
    dataset: DatasetOpt = None,
    data: DataOpt = None,
    train_limit: TrainLimitOpt = None,
    scale: ScaleOpt = Scale.auto,
    filters: FiltersOpt = None,
    learning_rate: LearningRateOpt = None,
    dense_units: DenseUnitsOpt = None,
    folds: FoldsOpt = 5,
    seed: SeedOpt = 42,
    epochs: EpochsOpt = None,
    batch_size: BatchSizeOpt = None,
    patience: PatienceOpt = None,
    fold_mode: FoldModeOpt = FoldMode.auto,
    directory: DirectoryOpt = Path("tuning_dirs"),
    project: ProjectOpt = "default",
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = Device.auto,
    backend: BackendOpt = None,
    precision: SearchPrecisionOpt = None,
    mixed_precision: MixedOpt = False,
    tensorboard: TensorboardOpt = False,
    workers: Annotated[int | None, typer.Option(help="Run a KerasTuner chief and N worker processes on this host (one GPU each, or sharing the CPU cores).", show_default=False)] = None,
    chief: Annotated[str | None, typer.Option(help="With --workers: start only the N workers, joining the chief at HOST:PORT.", show_default=False)] = None,
    threads: SearchThreadsOpt = None,
    ray: RayOpt = False,
    ray_address: RayAddressOpt = None,
    cpus_per_task: CpusPerTaskOpt = None,
    gpus_per_task: GpusPerTaskOpt = None,
    quiet: QuietOpt = False,
):
    """Score every grid point of a model by stratified K-fold CV; resumes an interrupted search."""
    options = {k: v for k, v in locals().items() if k not in ("ctx", "dry_run", "workers", "chief")}
    request = _request(options, workers)
    if workers is not None and api.role() is None and not dry_run:
        code = api.launch(_argv(ctx, ("workers", "chief", "quiet")), workers, quiet, chief)
        if code == 0 and not quiet and chief is None:
            _show(request.directory, request.project)
        raise typer.Exit(code)
    if chief is not None:
        raise UsageError(f"--chief {chief}: give --workers N too (the workers to start)")
    _search(request, dry_run, quiet)


def _search(request: api.SearchRequest, dry_run: bool, quiet: bool) -> None:
    prepared = api.prepare(request, dry_run)
    plan, cv = prepared.plan, prepared.plan.cv
    if dry_run:
        out.print(results.grid_table(plan.grid.points, plan.grid.names, api.grid_params(prepared)))
        out.print(f"{plural(len(plan.grid), 'point')} x {cv.folds} folds x up to {plural(cv.epochs, 'epoch')}, "
                  f"{prepared.settled.describe_fold_mode()}, {cv.precision}; objective {cv.objective} ({cv.direction}); "
                  f"labels {plan.check.label_form}; nothing was written")
        return
    try:
        api.run_prepared(prepared, request, _progress(quiet, prepared.header))
    except (SearchInterrupted, KeyboardInterrupt) as e:
        signum = e.signum if isinstance(e, SearchInterrupted) else signal.SIGINT
        done = results.completed_trials(prepared.pdir)
        err.print(f"interrupted ({signal.Signals(signum).name}): {done}/{len(plan.grid)} trials complete, finished "
                  "folds are kept; rerun the same command to resume", soft_wrap=True)
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


RetrainEpochsOpt = Annotated[int | None, typer.Option(help="Training epochs. [default: 10, or what the model suggests (extended: 30)]", show_default=False)]
ValidationSplitOpt = Annotated[float | None, typer.Option(help="Fraction held out for validation during training. [default: 0.1]", show_default=False)]


@app.command("retrain-best")
def retrain_best(
    dataset: Annotated[str | None, typer.Option(help="Dataset by name (see search). [default: the searched data]", show_default=False)] = None,
    data: DataOpt = None,
    train_limit: TrainLimitOpt = None,
    directory: DirectoryOpt = Path("tuning_dirs"),
    project: ProjectOpt = "default",
    epochs: RetrainEpochsOpt = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size. [default: 128]", show_default=False)] = None,
    validation_split: ValidationSplitOpt = None,
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
    result = api.retrain(dataset, data, train_limit, directory, project, epochs, batch_size, validation_split, seed,
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
    model: ModelOpt = "seed",
    grid: GridOpt = None,
    objective: ObjectiveOpt = "val_accuracy",
    dataset: DatasetOpt = None,
    data: DataOpt = None,
    train_limit: TrainLimitOpt = None,
    scale: ScaleOpt = Scale.auto,
    filters: FiltersOpt = None,
    learning_rate: LearningRateOpt = None,
    dense_units: DenseUnitsOpt = None,
    folds: FoldsOpt = 5,
    seed: SeedOpt = 42,
    epochs: EpochsOpt = None,
    batch_size: BatchSizeOpt = None,
    patience: PatienceOpt = None,
    fold_mode: FoldModeOpt = FoldMode.auto,
    directory: DirectoryOpt = Path("tuning_dirs"),
    project: ProjectOpt = "default",
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = Device.auto,
    backend: BackendOpt = None,
    precision: SearchPrecisionOpt = None,
    mixed_precision: MixedOpt = False,
    tensorboard: TensorboardOpt = False,
    threads: ThreadsOpt = None,
    ray: RayOpt = False,
    ray_address: RayAddressOpt = None,
    cpus_per_task: CpusPerTaskOpt = None,
    gpus_per_task: GpusPerTaskOpt = None,
    retrain_epochs: Annotated[int | None, typer.Option(help="retrain-best's --epochs: the final model's training epochs. [default: 10, or what the model suggests (extended: 30)]", show_default=False)] = None,
    validation_split: Annotated[float | None, typer.Option(help="retrain-best's --validation-split. [default: 0.1]", show_default=False)] = None,
    retrain_precision: Annotated[Precision | None, typer.Option(help="retrain-best's --precision: the final model's arithmetic, whatever the search's --precision. [default: float32]", show_default=False)] = None,
    quiet: QuietOpt = False,
):
    """The whole job in one process: search (or resume), then retrain-best on the same data; the options are search's."""
    options = {k: v for k, v in locals().items() if k not in ("retrain_epochs", "validation_split", "retrain_precision")}
    api.check_retrain_options(epochs=retrain_epochs, validation_split=validation_split)  # before the search
    _search(_request(options), dry_run=False, quiet=quiet)
    retrain_best(dataset=dataset, data=data, train_limit=train_limit, directory=directory, project=project,
                 epochs=retrain_epochs, batch_size=batch_size, validation_split=validation_split, seed=seed,
                 device=device, backend=backend, precision=retrain_precision, mixed_precision=False, threads=threads,
                 quiet=quiet)


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
