"""The errors tuner-app raises on purpose, each mapped to one exit code.

The CLI prints `str(error)` as one line on stderr and exits with `exit_code`;
anything else is a bug and keeps its traceback.
"""

import contextlib
import re
import shlex

_command: list[str] = []  # the command line this process runs (set by the CLI), for the advice to rerun it


def remember_command(argv: list[str]) -> None:
    """The CLI's arguments (after the program's name), for `rerun`."""
    _command[:] = ["tuner-app", *argv]


def rerun(to: str) -> str:
    """Advice that can be followed literally: "rerun the same command to resume", or, when that command
    has --overwrite (rerun as it is, it would delete what it should resume), the command without it."""
    if "--overwrite" in _command:
        return f"rerun without --overwrite to {to}: {shlex.join(a for a in _command if a != '--overwrite')}"
    return f"rerun the same command to {to}"


class TunerAppError(Exception):
    """Base class: a failure with a one-line, actionable message."""

    exit_code = 1
    said = False  # True once printed (a lost Ray cluster's line is said at once; the CLI does not repeat it)


class DiskFull(TunerAppError):
    """No room to write the search's state (exit code 1): nothing was half-written, what was written is kept."""


class UsageError(TunerAppError):
    """Bad options or bad input data (exit code 2)."""

    exit_code = 2


class DataError(UsageError):
    """A dataset that cannot be read or does not fit the task (exit code 2)."""


class SettingError(UsageError):
    """One setting breaks its rule; names it in Python's terms (`folds=1: ...`).

    The CLI rewrites it in its own terms (`--folds 1: ...`) with `as_option`.

    Args:
        name: The setting's Python name (a dataclass field or keyword argument).
        value: The value given.
        rule: What the value must be, e.g. "must be an integer >= 2".
    """

    def __init__(self, name: str, value: object, rule: str):
        super().__init__(f"{name}={value!r}: {rule}")
        self.name, self.value, self.rule = name, value, rule

    def as_option(self, option: str) -> str:
        """The message with the CLI's option name, e.g. `--folds 1: must be ...`."""
        return f"{option} {self.value}: {self.rule}"


class ModelError(UsageError):
    """A user's model that cannot be loaded, built, or trained on the data (exit code 2)."""


class DataWarning(UserWarning):
    """Something the user should know but that does not stop the run (shown as one line)."""


class StateError(TunerAppError):
    """Damaged or missing state under the search directory (exit code 1)."""

    exit_code = 1


class FoldFailed(RuntimeError):
    """A fold's training raised: names the fold(s) and the model's own exception in one line (the
    traceback stays in the trial's `trial.json`).

    Args:
        folds: What failed, e.g. "fold 2" or "folds 1-5 (fused)".
        error: The exception the training raised.
    """

    def __init__(self, folds: str, error: BaseException | None = None):
        # (error None: `folds` is the whole message, as pickle rebuilds it in a Ray driver from `args`)
        super().__init__(folds if error is None else f"{folds}: {type(error).__name__}: {summary(error)}")


@contextlib.contextmanager
def failing_as(folds: str):
    """A training error inside becomes `FoldFailed` naming `folds` and the model's own exception (its
    traceback chained, in `trial.json`); the tool's own errors pass as they are (and a stop request,
    which is no Exception)."""
    try:
        yield
    except (TunerAppError, FoldFailed):
        raise
    except Exception as e:
        raise FoldFailed(folds, e) from e


def failed_fold_line(message: str) -> str | None:
    """What a `FoldFailed` said, from the traceback text of a failed trial (KerasTuner's or Ray's)."""
    token = f"{FoldFailed.__module__}.{FoldFailed.__name__}: "
    found = [line.split(token, 1)[1].strip() for line in message.splitlines() if token in line]
    return found[-1] if found else None


# Lines of a framework's error text that say where, not what (TensorFlow's graph errors, JAX's tracebacks)
_WHERE = ("Graph execution error", "Detected at node", "Stack trace", "File ", "[[", "The above exception",
          "Traceback", "---", "For simplicity, JAX", "When tracing", "Node:", "Exception encountered when calling")
_STYLE = re.compile(r"\x1b\[[0-9;]*m")  # Keras' bold in a layer's error


def summary(error: BaseException) -> str:
    """The first line of `error`'s message that says what went wrong, at most 300 characters."""
    text = _STYLE.sub("", str(getattr(error, "message", None) or error))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith(_WHERE)]
    return ((said or lines or ["(no message)"])[0])[:300]


class SearchInterrupted(BaseException):
    """SIGTERM or Ctrl-C during a search.

    A BaseException so that KerasTuner's per-trial `except Exception` does not
    mark the interrupted trial as failed: the trial stays RUNNING on disk and is
    resumed, with its finished folds, on the next run.
    """

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
