"""The settings of a search and of a retrain, each validated once, here.

As in scikit-learn's `_validate_params`, every field has one rule, checked when the
settings object is made; a violation raises `SettingError` naming the field in Python's
terms (`folds=1: must be an integer >= 2`), which the CLI rewrites in its own
(`--folds 1: ...`). Nothing downstream checks these values again.

This module imports neither Keras nor KerasTuner.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

from tuner_app.errors import SettingError, UsageError

POLICIES = ("float32", "mixed_bfloat16")  # the Keras dtype policies tuner-app trains with
DIRECTIONS = ("max", "min")
FOLD_MODES = ("auto", "fused", "sequential")
# The fields of a fold record (trial_<id>/folds.json) that are not metrics; the others are the fold's metrics.
RECORD_FIELDS = ("fold", "epochs", "best_epoch", "train_size", "val_size", "seconds", "rss_mb", "finished_at")


def check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> None:
    """Raise SettingError unless `value` is an int in [minimum, maximum)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (maximum and value >= maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum})"
        raise SettingError(name, value, f"must be an integer {bound}")


def check_policy(name: str, value: object) -> None:
    """Raise SettingError unless `value` is one of `POLICIES`."""
    if value not in POLICIES:
        raise SettingError(name, value, f"use {' or '.join(POLICIES)}")


def objective_direction(name: str) -> str | None:
    """'max' or 'min' for the metric names whose direction is known (KerasTuner's rules), else None."""
    from keras_tuner.src.engine.metrics_tracking import infer_metric_direction

    return infer_metric_direction(name)


@dataclass(frozen=True)
class CVConfig:
    """How each grid point is scored.

    Args:
        folds: Number of stratified folds.
        seed: Drives the fold split (StratifiedKFold random_state) and weight initialisation
            (fold k's model is built after `keras.utils.set_random_seed(seed + k)`).
        epochs: Maximum epochs per fold.
        batch_size: Training batch size.
        patience: EarlyStopping patience on the objective (best weights restored).
        precision: Keras dtype policy, "float32" or "mixed_bfloat16" (see `tuner_app.runtime.hardware`).
        objective: The validation metric that scores a fold, e.g. "val_accuracy" or "val_loss";
            "NAME:max" or "NAME:min" also gives its direction.
        direction: "max" or "min"; None infers it from the name as KerasTuner does
            (accuracy-like: max, loss-like: min).
        fold_mode: "fused" (a trial's folds train together, see `tuner_app.training.fused`),
            "sequential" (one fold after another) or "auto" (decided when the search starts:
            fused where the model allows it; a resume keeps the first run's).
    """

    folds: int = 5
    seed: int = 42
    epochs: int = 5
    batch_size: int = 128
    patience: int = 3
    precision: str = "float32"
    objective: str = "val_accuracy"
    direction: str | None = None
    fold_mode: str = "auto"

    def __post_init__(self):
        check_int("folds", self.folds, 2)
        check_int("seed", self.seed, 0, 2**31)
        for name in ("epochs", "batch_size", "patience"):
            check_int(name, getattr(self, name), 1)
        check_policy("precision", self.precision)
        if self.fold_mode not in FOLD_MODES:
            raise SettingError("fold_mode", self.fold_mode, f"use {', '.join(FOLD_MODES)}")
        name, _, given = str(self.objective).partition(":")
        direction = given or self.direction or objective_direction(name)
        if not name.strip() or name != name.strip():
            raise SettingError("objective", self.objective, "give a metric name, e.g. val_accuracy or val_loss")
        if direction not in DIRECTIONS:
            raise SettingError("objective", self.objective, f"the direction of {name!r} is unknown; "
                               f"give it as {name}:max or {name}:min")
        object.__setattr__(self, "objective", name)
        object.__setattr__(self, "direction", direction)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RetrainConfig:
    """How the final model is trained (the seed notebook's values by default).

    Args:
        epochs: Training epochs.
        batch_size: Batch size.
        validation_split: Fraction of the training set held out (the last part, as in Keras).
        seed: Weight-initialisation seed; None takes the search's seed.
        precision: "float32" (default: the final model is the deliverable, trained at full
            precision even when the search ranked configurations in bfloat16) or "mixed_bfloat16".
    """

    epochs: int = 10
    batch_size: int = 128
    validation_split: float = 0.1
    seed: int | None = None
    precision: str = "float32"

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            check_int(name, getattr(self, name), 1)
        if self.seed is not None:
            check_int("seed", self.seed, 0, 2**31)
        split = self.validation_split
        if isinstance(split, bool) or not isinstance(split, (int, float)) or not (math.isfinite(split) and 0 < split < 1):
            raise SettingError("validation_split", split, "must be strictly between 0 and 1, e.g. 0.1")
        check_policy("precision", self.precision)


@dataclass(frozen=True)
class RayConfig:
    """Where and how folds run on Ray.

    Args:
        address: A Ray cluster's address ("HOST:6379", "ray://HOST:10001", "auto"); None: the one in
            $RAY_ADDRESS, else a local Ray on this machine for the search's duration.
        cpus_per_task: CPU cores a task reserves (and the threads it trains with).
        gpus_per_task: GPUs a task reserves; fractions let small folds share a GPU. None: 1 when
            the search trains on a GPU, else 0.
        max_retries: How many times Ray reruns a task whose worker process or node died, or that
            Ray's memory monitor killed.
        stall_timeout: Seconds with fold tasks pending and none starting, reporting or finishing
            (a node lost and not replaced, a cluster too small) before the search stops.
    """

    address: str | None = None
    cpus_per_task: float = 1.0
    gpus_per_task: float | None = None
    max_retries: int = 3
    stall_timeout: float = 600.0

    def __post_init__(self):
        if not isinstance(self.cpus_per_task, (int, float)) or not self.cpus_per_task > 0:
            raise SettingError("cpus_per_task", self.cpus_per_task, "must be a number > 0")
        if self.gpus_per_task is not None and not (isinstance(self.gpus_per_task, (int, float))
                                                   and 0 <= self.gpus_per_task and (self.gpus_per_task <= 1
                                                                                    or self.gpus_per_task % 1 == 0)):
            raise SettingError("gpus_per_task", self.gpus_per_task, "must be >= 0: a fraction <= 1 or a whole number")
        check_int("max_retries", self.max_retries, 0)
        if isinstance(self.stall_timeout, bool) or not isinstance(self.stall_timeout, (int, float)) \
                or not self.stall_timeout > 0:
            raise SettingError("stall_timeout", self.stall_timeout, "must be a number of seconds > 0, e.g. 600")

    def gpus(self, device: str) -> float:
        """GPUs per task on a search that trains on `device`."""
        if self.gpus_per_task is not None:
            return float(self.gpus_per_task)
        return 1.0 if device == "gpu" else 0.0


@dataclass(frozen=True)
class Settled:
    """What a search runs on: decided once, before it starts (`tuner_app.settle`), and read by
    everything after it (the tuner, the fold trainers, Ray tasks, workers, a resume).

    Args:
        backend: The Keras backend: "tensorflow", "jax" or "torch".
        device: "cpu" or "gpu": where the folds train.
        gpus: The GPUs the backend sees (a KerasTuner chief: those its workers get).
        precision: The Keras dtype policy the folds train in: "float32" or "mixed_bfloat16".
        fold_mode: "fused" or "sequential"; None until the search's plan is known.
        why: Why `--fold-mode auto` took sequential (said in the search's header), else None.
        role: This process's KerasTuner role: None (a lone search), "chief" or "worker".
    """

    backend: str
    device: str
    gpus: tuple[str, ...] = ()
    precision: str = "float32"
    fold_mode: str | None = None
    why: str | None = None
    role: str | None = None

    def describe_precision(self) -> str:
        """The search's precision as the header says it (the final model trains in float32 unless asked)."""
        return "float32" if self.precision == "float32" else f"{self.precision} (retrain-best: float32 unless asked)"

    def describe_fold_mode(self) -> str:
        """The fold mode as the header says it, e.g. "sequential (not fused: ...)"."""
        return f"{self.fold_mode} ({self.why})" if self.why else str(self.fold_mode)


def parse_grid_option(texts: list[str]) -> dict[str, list[str]]:
    """`["units=32,64", 'act=["relu","gelu"]']` -> {"units": ["32", "64"], "act": ["relu", "gelu"]}.

    Values are separated by commas; a value holding a comma is given as a JSON list.
    """
    overrides: dict[str, list] = {}
    for text in texts:
        name, sep, raw = text.partition("=")
        name = name.strip()
        if not sep or not name or not raw.strip():
            raise UsageError(f"--grid {text!r}: give NAME=V1,V2,... e.g. --grid units=32,64")
        if name in overrides:
            raise UsageError(f"--grid {name}: given twice; list all its values in one --grid {name}=V1,V2")
        if raw.lstrip().startswith("["):
            try:
                values = json.loads(raw)
            except json.JSONDecodeError as e:
                raise UsageError(f"--grid {text!r}: not a JSON list ({e.msg}); e.g. --grid 'filters=[\"16,32\",\"32,64\"]'") from None
        else:
            values = [v.strip() for v in raw.split(",")]
        if not isinstance(values, list) or not values or any(v == "" for v in values):
            raise UsageError(f"--grid {text!r}: give at least one value and no empty ones")
        overrides[name] = values
    return overrides
