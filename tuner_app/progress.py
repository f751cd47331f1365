"""Progress of a search or a retrain: a small listener interface and a rich implementation.

The tuner and the retrain call these hooks; the CLI picks the listener (rich bars on
stderr, or nothing with --quiet). Notebook users can pass their own.
"""

from __future__ import annotations

import sys

import rich.console
import rich.progress


class Progress:
    """No-op listener; subclass and override what you need."""

    def search_start(self, total: int, done: int, where: str) -> None: ...
    def trial_start(self, trial_id: str, values: dict, index: int | None, total: int) -> None: ...
    def fold_start(self, fold: int, folds: int, epochs: int) -> None: ...
    def fold_reused(self, record: dict, folds: int) -> None: ...
    def epoch_end(self, epoch: int, logs: dict) -> None: ...
    def fold_end(self, record: dict, folds: int) -> None: ...
    def trial_end(self, trial_id: str, score: float | None, status: str) -> None: ...
    def message(self, text: str) -> None: ...
    def close(self) -> None: ...


def epoch_callback(progress: Progress):
    """A Keras callback that forwards each epoch's logs to `progress.epoch_end`."""
    import keras

    class _EpochHook(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            progress.epoch_end(epoch, logs or {})

    return _EpochHook()


def describe(values: dict) -> str:
    """'filters=64,128 lr=0.0005 dense=120' for one grid point."""
    return f"filters={values['filters']} lr={values['learning_rate']:g} dense={values['dense_units']}"


class RichProgress(Progress):
    """Bars for trials and for the epochs of the current fold, a log line per fold."""

    def __init__(self, console: rich.console.Console | None = None):
        self.console = console or rich.console.Console(file=sys.stderr)
        self.bars = rich.progress.Progress(
            rich.progress.TextColumn("{task.description}"),
            rich.progress.BarColumn(),
            rich.progress.MofNCompleteColumn(),
            rich.progress.TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self._trials = self._epochs = None
        self._fold = ""
        self._best: float | None = None

    def search_start(self, total, done, where):
        self.bars.start()
        self._trials = self.bars.add_task("trials", total=total, completed=done)
        if done:
            self.console.log(f"resuming {where}: {done}/{total} trials already complete")

    def trial_start(self, trial_id, values, index, total):
        self.bars.update(self._trials, description=f"trial {trial_id} ({describe(values)})")
        where = f"trial {index}/{total} [id {trial_id}]" if index else f"trial {trial_id} of {total}"
        self.console.log(f"{where}: {describe(values)}")

    def fold_start(self, fold, folds, epochs):
        if self._epochs is not None:
            self.bars.remove_task(self._epochs)
        self._fold = f"  fold {fold}/{folds} epochs"
        self._epochs = self.bars.add_task(self._fold, total=epochs)

    def fold_reused(self, record, folds):
        self.console.log(f"  fold {record['fold']}/{folds}: val_accuracy {record['val_accuracy']:.4f} (kept from before)")

    def epoch_end(self, epoch, logs):
        acc = logs.get("val_accuracy")
        desc = self._fold if acc is None else f"{self._fold}, val_accuracy {acc:.4f}"
        self.bars.update(self._epochs, advance=1, description=desc)

    def fold_end(self, record, folds):
        self.console.log(
            f"  fold {record['fold']}/{folds}: val_accuracy {record['val_accuracy']:.4f} "
            f"after {record['epochs']} epochs, {record['seconds']:.1f} s"
        )

    def trial_end(self, trial_id, score, status):
        self.bars.advance(self._trials)
        if score is not None:
            self._best = score if self._best is None else max(self._best, score)
            self.console.log(f"trial {trial_id} {status.lower()}: mean val_accuracy {score:.4f} (best so far {self._best:.4f})")
        else:
            self.console.log(f"trial {trial_id} {status.lower()}")

    def message(self, text):
        self.console.log(text)

    def close(self):
        self.bars.stop()
