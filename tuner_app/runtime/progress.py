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

    def search_start(self, total: int, done: int, where: str, objective: str = "val_accuracy",
                     direction: str = "max") -> None: ...
    def trial_start(self, trial_id: str, values: dict, index: int | None, total: int) -> None: ...
    def trial_focus(self, trial_id: str | None) -> None:
        """The events that follow are trial `trial_id`'s (None: no trial's); only when several
        trials run at once (a search on Ray), where the fold lines then name their trial."""
    def fold_start(self, fold: int, folds: int, epochs: int) -> None: ...
    def folds_start(self, active: list[int], folds: int, epochs: int, epoch: int = 0) -> None: ...
    def fold_reused(self, record: dict, folds: int) -> None: ...
    def epoch_end(self, epoch: int, logs: dict) -> None: ...
    def fold_end(self, record: dict, folds: int) -> None: ...
    def trial_end(self, trial_id: str, score: float | None, status: str) -> None: ...
    def message(self, text: str) -> None: ...
    def waiting(self, text: str | None) -> None:
        """What the search waits for (a Ray cluster that cannot run its tasks); None: no longer waiting."""
    def close(self) -> None: ...


def epoch_callback(progress: Progress):
    """A Keras callback that forwards each epoch's logs to `progress.epoch_end`."""
    import keras

    class _EpochHook(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            progress.epoch_end(epoch, logs or {})

    return _EpochHook()


def format_value(value) -> str:
    """A hyperparameter value as people read it: 0.0005, not 0.00050000000000000001."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def plural(n: int, word: str) -> str:
    """'1 epoch', '2 epochs'."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def describe(values: dict) -> str:
    """'filters=64,128 learning_rate=0.0005 dense_units=120' for one grid point."""
    return " ".join(f"{name}={format_value(value)}" for name, value in values.items()) or "(no hyperparameters)"


class RichProgress(Progress):
    """Bars for trials and for the epochs of the current fold, a log line per fold.

    Args:
        console: Where to write (default: stderr).
        header: A line said when the search starts, once every check has passed (a refused
            search says its one line only).
    """

    def __init__(self, console: rich.console.Console | None = None, header: str | None = None):
        self.console = console or rich.console.Console(file=sys.stderr)
        self.header = header
        self.bars = rich.progress.Progress(
            rich.progress.TextColumn("{task.description}"),
            rich.progress.BarColumn(),
            rich.progress.MofNCompleteColumn(),
            rich.progress.TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self._trials = self._epochs = self._wait = None
        self._fold = ""
        self._where = ""  # "trial 3 " while several trials run at once (trial_focus)
        self._best: float | None = None
        self._objective, self._better = "val_accuracy", max

    def search_start(self, total, done, where, objective="val_accuracy", direction="max"):
        self._objective, self._better = objective, max if direction == "max" else min
        if self.header:
            self.console.print(self.header, soft_wrap=True)
        self.bars.start()
        self._trials = self.bars.add_task("trials", total=total, completed=done)
        if done:
            self.console.log(f"resuming {where}: {done}/{total} trials already complete")

    def trial_start(self, trial_id, values, index, total):
        self.bars.update(self._trials, description=f"trial {trial_id} ({describe(values)})")
        where = f"trial {trial_id} ({index} of {total})" if index else f"trial {trial_id} (of {total})"
        self.console.log(f"{where}: {describe(values)}")

    def trial_focus(self, trial_id):
        self._where = f"trial {trial_id} " if trial_id is not None else ""

    def fold_start(self, fold, folds, epochs):
        if self._epochs is not None:
            self.bars.remove_task(self._epochs)
        self._fold = f"  {self._where}fold {fold}/{folds} epochs"
        self._epochs = self.bars.add_task(self._fold, total=epochs)

    def folds_start(self, active, folds, epochs, epoch=0):
        if self._epochs is not None:
            self.bars.remove_task(self._epochs)
        self._fold = f"  {self._where}folds {','.join(map(str, active))}/{folds} fused, epochs"
        self._epochs = self.bars.add_task(self._fold, total=epochs, completed=epoch)
        if epoch:
            self.console.log(f"  {self._where}folds {','.join(map(str, active))}: resuming at epoch {epoch + 1}")

    def fold_reused(self, record, folds):
        self.console.log(f"  {self._where}fold {record['fold']}/{folds}: {self._score(record)} (kept from before)")

    def _score(self, logs: dict) -> str:
        value = logs.get(self._objective)
        return f"{self._objective} {value:.4f}" if value is not None else ""

    def epoch_end(self, epoch, logs):
        score = self._score(logs)
        self.bars.update(self._epochs, advance=1, description=f"{self._fold}, {score}" if score else self._fold)

    def fold_end(self, record, folds):
        self.console.log(
            f"  {self._where}fold {record['fold']}/{folds}: {self._score(record)} after {plural(record['epochs'], 'epoch')}, {record['seconds']:.1f} s"
        )

    def trial_end(self, trial_id, score, status):
        self.bars.advance(self._trials)
        if score is not None:
            self._best = score if self._best is None else self._better(self._best, score)
            self.console.log(f"trial {trial_id} {status.lower()}: mean {self._objective} {score:.4f} "
                             f"(best so far {self._best:.4f})")
        else:
            self.console.log(f"trial {trial_id} {status.lower()}")

    def message(self, text):
        self.console.log(text)

    def waiting(self, text):
        if text is None and self._wait is not None:
            self.bars.remove_task(self._wait)
            self._wait = None
        elif text is not None and self._wait is None:
            self._wait = self.bars.add_task(text, total=None)
        elif text is not None:
            self.bars.update(self._wait, description=text)

    def close(self):
        self.bars.stop()
