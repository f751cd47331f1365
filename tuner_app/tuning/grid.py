"""The grid a hypermodel declares, its `--grid` overrides, and its points in order.

The hyperparameters are found as KerasTuner finds them: by building the hypermodel, again
with other parent values until every conditional scope has been active once
(`Tuner._activate_all_conditions`). The points are every combination of the active
hyperparameters, each once, in KerasTuner's GridSearch order: the first declared
hyperparameter varies slowest, each one's default first, then its other values in the
order declared. A hyperparameter under a condition takes part only in the points where
its parent has one of the parent values; elsewhere it is absent from the point, as in a
KerasTuner trial.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras_tuner
from keras_tuner.src.engine.hyperparameters import hp_types

from tuner_app import models
from tuner_app.errors import UsageError
from tuner_app.tuning import state

MAX_DISCOVERY_BUILDS = 100


def discover(hypermodel: keras_tuner.HyperModel, precision: str = "float32") -> keras_tuner.HyperParameters:
    """Every hyperparameter the hypermodel declares, conditional ones included.

    Raises whatever the build raises (the caller names the model).
    """
    space = keras_tuner.HyperParameters()
    hypermodel.declare_hyperparameters(space)
    never_active, once_active = [], []
    hp = space.copy()
    for _ in range(MAX_DISCOVERY_BUILDS):
        models.build(hypermodel, hp, precision)
        space.merge(hp, overwrite=False)
        for conditions in hp.active_scopes:
            if conditions not in once_active:
                once_active.append(conditions)
            if conditions in never_active:
                never_active.remove(conditions)
        for conditions in hp.inactive_scopes:
            if conditions not in once_active and conditions not in never_active:
                never_active.append(conditions)
        if not never_active:
            break
        hp = space.copy()
        for condition in never_active[0]:
            hp.values[condition.name] = condition.values[0]
        _fill_defaults(hp)
    return space


def _fill_defaults(hp: keras_tuner.HyperParameters) -> None:
    """Give every active hyperparameter a value (its default), drop inactive ones (deterministic,
    unlike KerasTuner's `ensure_active_values`, which samples at random)."""
    for h in hp.space:
        if hp.is_active(h):
            hp.values.setdefault(h.name, h.default)
        else:
            hp.values.pop(h.name, None)


def apply_overrides(space: keras_tuner.HyperParameters, overrides: dict[str, list]) -> keras_tuner.HyperParameters:
    """A copy of `space` where each overridden hyperparameter becomes a Choice of the given values.

    Values given as strings (from the command line) are converted to the hyperparameter's
    type; the first value becomes the default. The conditions of the hyperparameter are kept.

    Raises:
        UsageError: a name the model does not declare, a value of the wrong type, a value twice.
    """
    declared = [h.name for h in space.space]
    unknown = [name for name in overrides if name not in declared]
    if unknown:
        raise UsageError(f"--grid {unknown[0]}: the model declares no hyperparameter {unknown[0]!r} "
                         f"(it declares {', '.join(dict.fromkeys(declared)) or 'none'}); check the name")
    new = keras_tuner.HyperParameters()
    for h in space.space:
        if h.name in overrides:
            values = [_convert(h, v) for v in overrides[h.name]]
            if len(set(map(repr, values))) != len(values):
                raise UsageError(f"--grid {h.name}: a value is given twice; each grid value must be distinct")
            h = hp_types.Choice(h.name, values, ordered=False, conditions=h.conditions)
        new._register(h)
    return new


def _kind(h) -> type:
    if isinstance(h, hp_types.Boolean):
        return bool
    if isinstance(h, hp_types.Int):
        return int
    if isinstance(h, hp_types.Float):
        return float
    first = h.value if isinstance(h, hp_types.Fixed) else next(iter(h.values))
    return type(first)


def _convert(h, value):
    kind = _kind(h)
    if not isinstance(value, str) or kind is str:
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not kind:
            raise UsageError(f"--grid {h.name}={value!r}: {h.name} takes {kind.__name__} values")
        return value
    try:
        if kind is bool:
            lowered = value.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return lowered in ("true", "1", "yes")
        return kind(value)
    except ValueError:
        raise UsageError(f"--grid {h.name}={value}: {h.name} takes {kind.__name__} values") from None


def _values(h) -> list:
    """The grid values of one hyperparameter, default first; UsageError when it has no finite grid."""
    if isinstance(h, hp_types.Fixed):
        return [h.value]
    if isinstance(h, hp_types.Boolean):
        return [h.default, not h.default]
    if isinstance(h, (hp_types.Int, hp_types.Float)) and h.step is None:
        kind = "Float" if isinstance(h, hp_types.Float) else "Int"
        raise UsageError(
            f"hyperparameter {h.name!r} ({kind} {h.min_value}..{h.max_value}, sampling {h.sampling}) has no finite "
            f"grid: give it a step, e.g. hp.{kind}({h.name!r}, {h.min_value}, {h.max_value}, step=...), or its values "
            f"with --grid {h.name}=V1,V2")
    values = list(h.values)
    if isinstance(h, hp_types.Float):
        values = [float(f"{v:.12g}") for v in values]
    default = float(f"{h.default:.12g}") if isinstance(h, hp_types.Float) else h.default
    return [default] + [v for v in values if v != default]


def enumerate_points(space: keras_tuner.HyperParameters) -> list[dict]:
    """Every active combination, once, in KerasTuner's GridSearch order (see the module docstring)."""
    names = [h.name for h in space.space]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"hyperparameter {twice[0]!r} is declared more than once (under different conditions); "
                         "give each declaration its own name")
    grid_values = [(h, _values(h)) for h in space.space]
    points: list[dict] = []

    def extend(i: int, point: dict) -> None:
        if i == len(grid_values):
            points.append(dict(point))
            return
        h, values = grid_values[i]
        if not all(c.is_active(point) for c in h.conditions):
            extend(i + 1, point)
            return
        for v in values:
            point[h.name] = v
            extend(i + 1, point)
        del point[h.name]

    extend(0, {})
    return points


@dataclass
class Grid:
    """The grid of one search: its hyperparameters (a KerasTuner space) and its points in order.

    Args:
        hyperparameters: The space, overrides applied (what the oracle is given).
        points: Every point, as KerasTuner hyperparameter values (active ones only).
    """

    hyperparameters: keras_tuner.HyperParameters
    points: list[dict]

    @classmethod
    def from_space(cls, space: keras_tuner.HyperParameters, overrides: dict[str, list] | None = None) -> Grid:
        space = apply_overrides(space, overrides or {})
        return cls(space, enumerate_points(space))

    def __len__(self) -> int:
        return len(self.points)

    @property
    def names(self) -> list[str]:
        return [h.name for h in self.hyperparameters.space]

    def record(self) -> dict:
        """What search.json stores, and a resume must match: each hyperparameter's grid values and the points' hash."""
        return {"hyperparameters": {h.name: _values(h) for h in self.hyperparameters.space},
                "size": len(self.points), "fingerprint": state.points_fingerprint(self.points)}
