"""A search's plan: everything checked, nothing written.

`plan_search` loads the model, finds its grid, applies `--grid` overrides and checks the
first grid point against the data; every problem is a one-line usage error before any file
exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuner_app import data as data_mod
from tuner_app.config import CVConfig
from tuner_app.errors import UsageError
from tuner_app.models import LoadedModel, load_model
from tuner_app.models.preflight import ModelCheck, check_model, failure
from tuner_app.tuning import grid as grid_mod


@dataclass
class SearchPlan:
    """Everything a search needs, checked.

    Args:
        dataset: The data (after `train_limit`).
        model: The loaded model.
        grid: Its grid, overrides applied.
        cv: The CV settings.
        check: What checking the first grid point found (label form, metrics, parameters).
        train_limit: The stratified subset size asked for, if any.
        scale: How the images become the model's inputs (`tuner_app.data.check_scale`).
    """

    dataset: data_mod.Dataset
    model: LoadedModel
    grid: grid_mod.Grid
    cv: CVConfig
    check: ModelCheck
    train_limit: int | None = None
    scale: str = "auto"

    def settings(self, backend: str, device: str) -> dict:
        """What search.json stores and a resume must match (compared key by key)."""
        ds = self.dataset
        return {
            "model": self.model.record(),
            "grid": self.grid.record(),
            "cv": self.cv.to_dict(),
            "data": {"source": ds.source, "train_limit": self.train_limit, "fingerprint": ds.fingerprint(),
                     "train_size": len(ds.y_train), "input_shape": list(ds.input_shape), "num_classes": ds.num_classes,
                     "scale": self.scale},
            "backend": backend,
            "device": device,
        }


def default_cv(model: LoadedModel, **given: Any) -> CVConfig:
    """CVConfig from the options given, else the model's suggested defaults, else CVConfig's."""
    fields = CVConfig.__dataclass_fields__
    suggested = {k: v for k, v in model.defaults.items() if k in fields}
    return CVConfig(**{**suggested, **{k: v for k, v in given.items() if v is not None}})


def plan_search(dataset: data_mod.Dataset, hypermodel: Any = "seed", grid: dict[str, list] | None = None,
                cv: CVConfig | dict | None = None, train_limit: int | None = None, scale: str = "auto") -> SearchPlan:
    """Check a search without writing anything.

    Args:
        dataset: The loaded dataset.
        hypermodel: A preset name, "FILE.py:NAME", "module:NAME", a `keras_tuner.HyperModel`, a
            `build(hp)` function, or a `LoadedModel`.
        grid: Overrides of the declared hyperparameters' values, {name: [values]}.
        cv: CV settings; a dict: those given (None: not given), the model's suggested defaults for the
            others, else the seed notebook's (`default_cv`).
        train_limit: Keep a stratified subset of this many training images.
        scale: "auto" (8-bit pixels or [0, 1]; anything else refused), "255" or "none" (`tuner_app.data.check_scale`).

    Raises:
        UsageError: bad data, model, grid or settings (one line naming it and the fix).
    """
    loaded = hypermodel if isinstance(hypermodel, LoadedModel) else load_model(
        hypermodel, dataset.input_shape, dataset.num_classes)
    cv = cv if isinstance(cv, CVConfig) else default_cv(loaded, **(cv or {}))
    if train_limit is not None:
        dataset = data_mod.stratified_subset(dataset, train_limit, min_per_class=cv.folds)
    data_mod.check_folds(dataset.y_train, cv.folds)
    data_mod.check_scale(dataset, scale)
    x = data_mod.scale_images(dataset.x_train[: 64], scale)
    try:
        space = grid_mod.discover(loaded.hypermodel, cv.precision)
    except Exception as e:  # noqa: BLE001 - whatever the user's build raises
        raise failure(loaded, {}, tuple(x.shape[1:]), e, "building it") from None
    model_grid = grid_mod.Grid.from_space(space, grid)
    check = check_model(loaded, model_grid.points[0], x, dataset.y_train[: 64], dataset.num_classes, cv.objective,
                        cv.precision, tuple(grid or ()))
    if cv.fold_mode == "fused" and check.fused_blocker:
        raise UsageError(f"--fold-mode fused: model {loaded.spec} cannot train fused ({check.fused_blocker}); "
                         "use --fold-mode sequential")
    return SearchPlan(dataset, loaded, model_grid, cv, check, train_limit, scale)


def fold_steps(plan: SearchPlan) -> int:
    """The training steps of a fold that runs all its epochs (its training rows in batches, times epochs)."""
    n = len(plan.dataset.y_train)
    rows = n - -(-n // plan.cv.folds)  # the training rows of the fold with the largest validation part
    return -(-rows // plan.cv.batch_size) * plan.cv.epochs


def grid_params(plan: SearchPlan) -> list[int]:
    """The parameter count of every grid point's model (builds each once; for `--dry-run`)."""
    import keras

    from tuner_app import models

    counts = []
    for point in plan.grid.points:
        hp = plan.grid.hyperparameters.copy()
        hp.values = dict(point)
        counts.append(int(models.build(plan.model.hypermodel, hp).count_params()))
        keras.backend.clear_session()
    return counts
