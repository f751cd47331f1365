"""The errors tuner-app raises on purpose, each mapped to one exit code.

The CLI prints `str(error)` as one line on stderr and exits with `exit_code`;
anything else is a bug and keeps its traceback.
"""


class TunerAppError(Exception):
    """Base class: a failure with a one-line, actionable message."""

    exit_code = 1


class UsageError(TunerAppError):
    """Bad options or bad input data (exit code 2)."""

    exit_code = 2


class DataError(UsageError):
    """A dataset that cannot be read or does not fit the task (exit code 2)."""


class StateError(TunerAppError):
    """Damaged or missing state under the search directory (exit code 1)."""

    exit_code = 1


class SearchInterrupted(BaseException):
    """SIGTERM or Ctrl-C during a search.

    A BaseException so that KerasTuner's per-trial `except Exception` does not
    mark the interrupted trial as failed: the trial stays RUNNING on disk and is
    resumed, with its finished folds, on the next run.
    """

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
