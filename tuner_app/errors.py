"""The errors tuner-app raises on purpose, each mapped to one exit code.

The CLI prints `str(error)` as one line on stderr and exits with `exit_code`;
anything else is a bug and keeps its traceback.
"""


class TunerAppError(Exception):
    """Base class: a failure with a one-line, actionable message."""

    exit_code = 1
    said = False  # True once printed (a lost Ray cluster's line is said at once; the CLI does not repeat it)


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


class SearchInterrupted(BaseException):
    """SIGTERM or Ctrl-C during a search.

    A BaseException so that KerasTuner's per-trial `except Exception` does not
    mark the interrupted trial as failed: the trial stays RUNNING on disk and is
    resumed, with its finished folds, on the next run.
    """

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
