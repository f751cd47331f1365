"""The `tuner-app` command: a thin typer layer over tuner_app's Python API.

Each command parses options, calls library functions and prints. Known errors
(`TunerAppError`, bad options) become one line on stderr and exit code 2 (usage/input)
or 1 (a failed run, damaged state); see `main`.
"""

from __future__ import annotations

import signal
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import rich.console
import typer
from typer.exceptions import Abort, TyperException

from tuner_app import report, state
from tuner_app.errors import SearchInterrupted, TunerAppError, UsageError
from tuner_app.interrupt import stop_on_signals

app = typer.Typer(
    name="tuner-app", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Grid search x stratified K-fold CV for Keras CNNs, on KerasTuner; then retrain the best.",
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


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


DataOpt = Annotated[Path | None, typer.Option(help="Local dataset: an .npz (x_train, y_train, x_test, y_test) or a directory of the four IDX files. Overrides --dataset.")]
TrainLimitOpt = Annotated[int | None, typer.Option(help="Use a stratified subset of N training images (quick runs).")]
DirectoryOpt = Annotated[Path, typer.Option(help="Parent directory of all search projects.")]
ProjectOpt = Annotated[str, typer.Option(help="Project name; state lives in DIRECTORY/PROJECT.")]
DeviceOpt = Annotated[Device, typer.Option(help="auto: GPU if the backend sees one; gpu: fail without one; cpu: hide GPUs.")]
BackendOpt = Annotated[Backend | None, typer.Option(help="Keras backend (default: $KERAS_BACKEND, else tensorflow).", show_default=False)]
PrecisionOpt = Annotated[Precision | None, typer.Option(help="mixed: bfloat16 arithmetic with float32 weights (about 2x faster on GPUs and AMX CPUs); auto: mixed where the hardware runs bfloat16 natively, else float32. [default: auto]", show_default=False)]
MixedOpt = Annotated[bool, typer.Option("--mixed-precision", help="Shorthand for --precision mixed.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output (for scripts).")]


def _load(data: Path | None, dataset: str):
    from tuner_app.data import load_dataset

    return load_dataset(data, dataset)


def _start(backend: Backend | None, device: Device) -> dict:
    from tuner_app import device as device_mod

    device_mod.configure(backend.value if backend else None, device.value)
    return device_mod.resolve(device.value)


def _precision(precision: Precision | None, mixed_precision: bool) -> Precision | None:
    if mixed_precision and precision not in (None, Precision.mixed):
        raise UsageError(f"--mixed-precision and --precision {precision.value} disagree; give one of them")
    return Precision.mixed if mixed_precision else precision


def _progress(quiet: bool):
    from tuner_app.progress import Progress, RichProgress

    return Progress() if quiet else RichProgress(err)


@app.command()
def search(
    dataset: Annotated[str, typer.Option(help="Keras dataset to download when --data is not given.")] = "mnist",
    data: DataOpt = None,
    train_limit: TrainLimitOpt = None,
    filters: Annotated[list[str] | None, typer.Option(help="Conv filter pair 'F1,F2'; repeat for more grid values. [default: 16,32 32,64 64,128]", show_default=False)] = None,
    learning_rate: Annotated[list[float] | None, typer.Option(help="Adam learning rate; repeatable. [default: 0.001 0.0005]", show_default=False)] = None,
    dense_units: Annotated[list[int] | None, typer.Option(help="Hidden dense units; repeatable. [default: 120]", show_default=False)] = None,
    folds: Annotated[int, typer.Option(help="Stratified K-fold splits.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the fold split and the weight initialisation.")] = 42,
    epochs: Annotated[int, typer.Option(help="Maximum epochs per fold.")] = 5,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 128,
    patience: Annotated[int, typer.Option(help="EarlyStopping patience on val_accuracy (best weights restored).")] = 3,
    directory: DirectoryOpt = Path("tuning_dirs"),
    project: ProjectOpt = "default",
    overwrite: Annotated[bool, typer.Option(help="Delete the project's earlier state and start over.")] = False,
    device: DeviceOpt = Device.auto,
    backend: BackendOpt = None,
    precision: PrecisionOpt = None,
    mixed_precision: MixedOpt = False,
    tensorboard: Annotated[bool, typer.Option("--tensorboard", help="Write TensorBoard logs per trial and fold (with HParams) to DIRECTORY/PROJECT/tensorboard.")] = False,
    workers: Annotated[int | None, typer.Option(help="Run a KerasTuner chief and N worker processes on this host (one GPU each, or sharing the CPU cores).", show_default=False)] = None,
    quiet: QuietOpt = False,
):
    """Score every grid point by stratified K-fold CV; resumes an interrupted search."""
    from tuner_app import distributed
    from tuner_app.space import DEFAULT_DENSE_UNITS, DEFAULT_FILTERS, DEFAULT_LEARNING_RATES, SearchSpace

    state.validate_project_name(project)
    space = SearchSpace(tuple(filters or DEFAULT_FILTERS), tuple(learning_rate or DEFAULT_LEARNING_RATES),
                        tuple(dense_units or DEFAULT_DENSE_UNITS))
    if workers is not None and distributed.role() is None:
        code = distributed.launch(_without_workers(sys.argv[sys.argv.index("search") + 1:]), workers, quiet)
        if code == 0 and not quiet:
            _show(state.project_dir(directory, project), folds)
        raise typer.Exit(code)
    precision = _precision(precision, mixed_precision) or Precision.auto
    info = _start(backend, device)
    from tuner_app.device import precision as resolve_precision
    from tuner_app.tuner import CVConfig, run_search

    cv = CVConfig(folds=folds, seed=seed, epochs=epochs, batch_size=batch_size, patience=patience,
                  precision=resolve_precision(precision.value, info))
    ds = _load(data, dataset)
    if not quiet:
        err.print(f"backend {info['backend']} on {info['device']}, {cv.precision}; {len(space)} grid points x {folds} folds")
    pdir = state.project_dir(directory, project)
    try:
        with stop_on_signals(immediate=distributed.role() == "chief"):
            run_search(ds, space, cv, directory, project, train_limit, overwrite, _progress(quiet),
                       tensorboard=tensorboard)
    except (SearchInterrupted, KeyboardInterrupt) as e:
        signum = e.signum if isinstance(e, SearchInterrupted) else signal.SIGINT
        done = sum(r["status"] == "COMPLETED" for r in report.load_results(pdir)) if (pdir / state.SEARCH_FILE).exists() else 0
        err.print(f"interrupted ({signal.Signals(signum).name}): {done}/{len(space)} trials complete, finished folds "
                  "are kept; rerun the same command to resume", soft_wrap=True)
        raise typer.Exit(128 + signum) from None
    if not quiet:
        _show(pdir, folds)


def _without_workers(args: list[str]) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--workers":
            skip = True
        elif not a.startswith("--workers="):
            out.append(a)
    return out


def _show(pdir: Path, folds: int | None = None) -> None:
    results = report.load_results(pdir)
    out.print(report.table(results, folds))
    best = report.best_completed(results)
    if best:
        hp = best["hyperparameters"]
        out.print(f"best: filters={hp['filters']} learning_rate={hp['learning_rate']:g} dense_units={hp['dense_units']} "
                  f"mean val_accuracy {best['score']:.4f} ± {best['std']:.4f} (trial {best['trial_id']})")


@app.command()
def results(
    directory: DirectoryOpt = Path("tuning_dirs"),
    project: ProjectOpt = "default",
    format: Annotated[Format, typer.Option("--format", "-f", help="table for people; csv or json for tools.")] = Format.table,
    plot: Annotated[Path | None, typer.Option(help="Also write a PNG of every configuration's fold accuracies.")] = None,
):
    """Show a project's trials ranked by mean fold accuracy (also while a search runs)."""
    pdir = state.project_dir(directory, project)
    if plot is not None:
        from tuner_app.plots import plot_results

        if plot.suffix.lower() != ".png":
            raise UsageError(f"--plot {plot}: give a .png file name")
        state.check_writable(plot.parent)
        plot_results(report.load_results(pdir), plot)
        err.print(f"wrote {plot}")
    if format is Format.table:
        folds = state.read_search(pdir)["cv"]["folds"]
        _show(pdir, folds)
        return
    ranked = report.load_results(pdir)
    sys.stdout.write(report.to_json(ranked) + "\n" if format is Format.json else report.to_csv(ranked))


@app.command("retrain-best")
def retrain_best(
    dataset: Annotated[str | None, typer.Option(help="Keras dataset name. [default: the searched dataset]", show_default=False)] = None,
    data: DataOpt = None,
    train_limit: TrainLimitOpt = None,
    directory: DirectoryOpt = Path("tuning_dirs"),
    project: ProjectOpt = "default",
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 10,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 128,
    validation_split: Annotated[float, typer.Option(help="Fraction held out for validation during training.")] = 0.1,
    seed: Annotated[int | None, typer.Option(help="Weight-initialisation seed. [default: the search's --seed]", show_default=False)] = None,
    device: DeviceOpt = Device.auto,
    backend: BackendOpt = None,
    precision: Annotated[Precision | None, typer.Option(help="auto, float32 or mixed (see search --help). [default: float32: the final model at full precision, whatever the search used]", show_default=False)] = None,
    mixed_precision: MixedOpt = False,
    quiet: QuietOpt = False,
):
    """Train the best trial's model on the whole training set, test it, save it."""
    precision = _precision(precision, mixed_precision)
    pdir = state.project_dir(directory, project)
    searched = state.read_search(pdir)
    info = _start(backend, device)
    from tuner_app.data import KERAS_DATASETS
    from tuner_app.device import precision as resolve_precision
    from tuner_app.retrain import RetrainConfig
    from tuner_app.retrain import retrain_best as run_retrain

    config = RetrainConfig(epochs=epochs, batch_size=batch_size, validation_split=validation_split, seed=seed,
                           precision="float32" if precision is None else resolve_precision(precision.value, info))
    if data is None and dataset is None:  # default: the data the search used
        source = searched["data"]["source"]
        data, dataset = (None, source) if source in KERAS_DATASETS else (Path(source), "mnist")
    ds = _load(data, dataset or "mnist")
    result = run_retrain(ds, directory, project, config, train_limit, info, _progress(quiet))
    hp = result["hyperparameters"]
    if not quiet:
        err.print(f"trial {result['trial_id']}: filters={hp['filters']} learning_rate={hp['learning_rate']:g} "
                  f"dense_units={hp['dense_units']} (CV {result['cv_score']:.4f}); {result['backend']} on "
                  f"{result['device']} ({result['precision']}), {result['seconds']:.1f} s; wrote {pdir / state.MODEL_FILE}, {state.RETRAIN_FILE}, "
                  f"{state.CURVES_FILE} and {state.CONFUSION_FILE}", soft_wrap=True)
    print(f"test accuracy: {result['test_accuracy']:.4f}")


def main() -> None:
    """Entry point: run the app, turning expected errors into one line and an exit code."""
    try:
        code = app(standalone_mode=False)
    except TyperException as e:  # typer's (vendored click's) usage errors
        if e.format_message():  # (empty when no_args_is_help already printed the help)
            print(f"tuner-app: error: {e.format_message()}", file=sys.stderr)
        sys.exit(e.exit_code)
    except Abort:
        sys.exit(1)
    except TunerAppError as e:
        print(f"tuner-app: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
