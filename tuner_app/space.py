"""The discrete search space: the grid's values, their validation, their order.

The grid is the product filters x learning_rate x dense_units, enumerated in that
order (filters outermost), the seed notebook's loop order.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from tuner_app.errors import UsageError

DEFAULT_FILTERS = ((16, 32), (32, 64), (64, 128))
DEFAULT_LEARNING_RATES = (0.001, 0.0005)
DEFAULT_DENSE_UNITS = (120,)


def parse_filters(text: str) -> tuple[int, int]:
    """'16,32' -> (16, 32); anything else raises UsageError naming --filters."""
    parts = [p.strip() for p in str(text).replace("x", ",").split(",")]
    try:
        pair = tuple(int(p) for p in parts)
    except ValueError:
        pair = ()
    if len(pair) != 2 or min(pair) < 1:
        raise UsageError(f"--filters {text!r}: give two positive integers, the filters of conv 1 and conv 2, e.g. --filters 32,64")
    return pair  # type: ignore[return-value]


def filters_label(pair: tuple[int, int]) -> str:
    """(16, 32) -> '16,32', the value stored as the `filters` hyperparameter."""
    return f"{pair[0]},{pair[1]}"


@dataclass(frozen=True)
class SearchSpace:
    """A grid of CNN hyperparameters.

    Args:
        filters: (conv1, conv2) filter counts to try.
        learning_rates: Adam learning rates to try.
        dense_units: Sizes of the hidden dense layer to try.
    """

    filters: tuple[tuple[int, int], ...] = DEFAULT_FILTERS
    learning_rates: tuple[float, ...] = DEFAULT_LEARNING_RATES
    dense_units: tuple[int, ...] = DEFAULT_DENSE_UNITS

    def __post_init__(self):
        filters = tuple(parse_filters(f) if isinstance(f, str) else tuple(f) for f in self.filters)
        for pair in filters:
            if len(pair) != 2 or not all(isinstance(v, int) and v >= 1 for v in pair):
                raise UsageError(f"--filters {pair!r}: give two positive integers, e.g. --filters 32,64")
        for lr in self.learning_rates:
            if not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
                raise UsageError(f"--learning-rate {lr!r}: must be a positive number, e.g. --learning-rate 0.001")
        for units in self.dense_units:
            if not isinstance(units, int) or units < 1:
                raise UsageError(f"--dense-units {units!r}: must be a positive integer, e.g. --dense-units 120")
        for name, values in (("filters", filters), ("learning-rate", self.learning_rates), ("dense-units", self.dense_units)):
            if not values:
                raise UsageError(f"--{name}: the grid is empty; give at least one value")
            if len(set(values)) != len(values):
                raise UsageError(f"--{name}: a value is given twice; each grid value must be distinct")
        object.__setattr__(self, "filters", filters)
        object.__setattr__(self, "learning_rates", tuple(float(v) for v in self.learning_rates))
        object.__setattr__(self, "dense_units", tuple(self.dense_units))

    def __len__(self) -> int:
        return len(self.filters) * len(self.learning_rates) * len(self.dense_units)

    def points(self) -> list[dict]:
        """Every grid point as KerasTuner hyperparameter values, in grid order."""
        return [
            {"filters": filters_label(f), "learning_rate": lr, "dense_units": d}
            for f, lr, d in itertools.product(self.filters, self.learning_rates, self.dense_units)
        ]

    def to_config(self) -> dict:
        return {"filters": [list(f) for f in self.filters], "learning_rates": list(self.learning_rates),
                "dense_units": list(self.dense_units)}

    @classmethod
    def from_config(cls, config: dict) -> SearchSpace:
        return cls(tuple(tuple(f) for f in config["filters"]), tuple(config["learning_rates"]),
                   tuple(config["dense_units"]))
