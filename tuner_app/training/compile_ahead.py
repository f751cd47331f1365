"""Compiling ahead, under JAX on a GPU (the compiled loop, `tuner_app.training.jax_loop`).

At the first trial a process trains, `CompileAhead` starts compiling every other architecture of
the grid in the background (`jax_loop.compile_later`, into `<project>/xla_cache`), to run while
the trials train; at a later trial it waits for that trial's architecture's compilation if it is
still under way (compiling it again would take as long). With the search's usual retrain known
(`retrain-best`'s defaults), it compiles that too (`compile_retrain_later`), and the retrain
waits for it. On one H200 the chunks' compilations, made before each new architecture's first
epoch, took about a third of the `full` search (24 of 77 s).
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import keras_tuner
import numpy as np

from tuner_app import models
from tuner_app.config import CVConfig, RetrainConfig
from tuner_app.training import fused, jax_loop
from tuner_app.training.data_order import FoldBatches, validation_batch_size
from tuner_app.training.model_cache import architecture_key


class CompileAhead:
    """The background compilations of one search's grid (see the module's docstring).

    Args:
        hypermodel: The search's hypermodel.
        grid: Its grid (`tuner_app.tuning.grid.Grid`).
        cv: The CV settings (fold mode, batch size, precision).
        splits: The folds' (train, validation) row indices.
        retrain: The retrain expected next, or None.
        cache_dir: JAX's persistent compilation cache for this project.
    """

    def __init__(self, hypermodel: keras_tuner.HyperModel, grid, cv: CVConfig, splits: list, retrain: RetrainConfig | None,
                 cache_dir: Path):
        self.hypermodel, self.grid, self.cv, self._splits, self.retrain = hypermodel, grid, cv, splits, retrain
        self.cache_dir = cache_dir
        self._later: dict | None = None  # {point: its architecture's background compilation}

    def before_trial(self, hp: keras_tuner.HyperParameters, x, y_fit) -> None:
        """Under JAX on a GPU (the compiled loop): at the first trial this process trains, start compiling
        every other architecture of the grid in the background (`jax_loop.compile_later`, into
        `<project>/xla_cache`), to run while the trials train; at a later trial, wait for its own
        architecture's compilation if it is still under way (compiling it again would take as long).
        On one H200 the chunks' compilations, made before each new architecture's first epoch, took
        about a third of the `full` search (24 of 77 s)."""
        if self._later is None:
            cache_compilations(self.cache_dir)
            self._later = self._start_later(hp, x, y_fit)
        waiting = self._later.get(_point(hp.values))
        if waiting is not None:
            jax_loop.wait(waiting)

    def _start_later(self, first: keras_tuner.HyperParameters, x, y_fit) -> dict:
        """{point: its architecture's compilation} for the grid's architectures but `first`'s, each on a
        throwaway model built here (before `first`'s model: every fold's build is seeded anew)."""
        futures: dict[str, object] = {}
        later, architectures = {}, {}
        points = [dict(first.values), *(p for p in self.grid.points if dict(p) != dict(first.values))]
        for i, point in enumerate(points):
            hp = self.grid.hyperparameters.copy()
            hp.values = dict(point)
            model = models.build(self.hypermodel, hp, self.cv.precision)
            key = architecture_key(model)
            if key is None:
                continue
            if key not in futures:
                futures[key] = None if i == 0 else self._compile_point(hp, model, x, y_fit)
                architectures[key] = hp
            if futures[key] is not None:
                later[_point(point)] = futures[key]
        if self.retrain is not None:
            for hp in architectures.values():
                compile_retrain_later(self.hypermodel, hp, x, y_fit, self.retrain)
        return later

    def _compile_point(self, hp: keras_tuner.HyperParameters, model, x, y_fit):
        """Start compiling what the folds of `hp` will call (`model`: a build of it); the last future."""
        folds = list(range(1, self.cv.folds + 1))
        sizes = self.cv.batch_size, validation_batch_size(self.cv.batch_size, x.shape[1:])
        if self.cv.fold_mode == "fused":
            model = fused.FusedModels(self.hypermodel, self.cv.precision, reuse=False).fresh(
                hp, folds, self.cv.seed, x.shape[1:])
            calls = [tuple(FoldBatches(x, y_fit, {k: self._splits[k - 1][part] for k in folds}, sizes[part],
                                       shuffle=part == 0, name=fused.member_name) for part in (0, 1))]
        else:
            calls = [(FoldBatches(x, y_fit, {k: tr}, sizes[0]), FoldBatches(x, y_fit, {k: va}, sizes[1], shuffle=False))
                     for k, (tr, va) in enumerate(self._splits, 1)]
        future = None
        for train, val in calls:
            if jax_loop.usable(self.hypermodel, model, train, val):
                future = jax_loop.compile_later(model, train, val)
        return future


def cache_compilations(directory: str | Path) -> None:
    """Keep every XLA compilation of this process in JAX's persistent compilation cache in `directory`
    (however short: the chunks of a small model compile in under JAX's default 1 s threshold), unless
    the user set a cache directory of their own (`JAX_COMPILATION_CACHE_DIR`). Like the rest of a
    project directory, the cache is trusted: whoever can write to it can run code in the search."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    current = jax.config.values.get("jax_compilation_cache_dir")
    if current and (not jax_loop._LATER_DIR or current != jax_loop._LATER_DIR[-1]):
        return  # the user's own
    if current != str(directory):
        Path(directory).mkdir(parents=True, exist_ok=True)
        compilation_cache.set_cache_dir(str(directory))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        compilation_cache.reset_cache()  # (a process that compiled before found no directory and stopped looking)
        jax_loop._LATER_DIR.append(str(directory))


def compile_retrain_later(hypermodel, hp, x: np.ndarray, y: np.ndarray, config: RetrainConfig) -> None:
    """Under JAX on a GPU: start compiling in the background (`jax_loop.compile_later`) what the
    retrain of `hp` on the images `x` (labels `y`, in the loss's form) with `config` will call; a search
    does so while it trains, and the retrain (`tuner_app.retrain`) waits for it."""
    model = models.build(hypermodel, hp, config.precision)
    split_at = retrain_split_at(x, config)
    train = FoldBatches(x, y, {0: np.arange(split_at)}, config.batch_size)
    val = FoldBatches(x, y, {0: np.arange(split_at, len(x))}, validation_batch_size(config.batch_size, x.shape[1:]),
                      shuffle=False)
    if jax_loop.usable(hypermodel, model, train, val):
        jax_loop.compile_later(model, train, val, label=retrain_label(model))


def retrain_split_at(x: np.ndarray, config: RetrainConfig) -> int:
    """The first validation row: `model.fit(validation_split=...)` holds out the last rows."""
    return int(np.floor(len(x) * (1.0 - config.validation_split)))


def retrain_label(model: keras.Model) -> tuple:
    return ("retrain", architecture_key(model))


def _point(values: dict) -> str:
    """A grid point as a dictionary key."""
    return json.dumps(values, sort_keys=True, default=str)

