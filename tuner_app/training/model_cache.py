"""Models exactly as a fresh seeded build makes them, compiled once per architecture where it pays.

Every fold starts from the model `hypermodel.build(hp)` makes right after
`keras.utils.set_random_seed(fold seed)`. Under TensorFlow and JAX, building, compiling and
tracing (JAX: XLA-compiling) the train and validation steps again for every fold costs seconds, so the cache
keeps the last compiled model and, when the next fold's fresh model has the same
architecture and compile settings (learning rate aside), copies the fresh model's variables
(weights, normalisation statistics, random-layer seeds) and a zeroed optimizer into it and
trains that instead. The arithmetic is the same; `tests/training/test_model_cache.py` checks the
fold scores equal fresh models'. Only `keras.Sequential` and functional models are reused:
their configuration describes them completely.
"""

from __future__ import annotations

import json

import keras
import keras_tuner
import numpy as np

from tuner_app import models

PREPARE_MAX_BYTES = 256 * 2**20  # what `ModelCache.prepare` may hold in prepared fresh models


def architecture_key(model: keras.Model) -> str | None:
    """A description of what the model computes and how it is compiled, without names and a numeric
    learning rate; None when the model cannot be described (a subclassed model)."""
    if type(model) not in (keras.Sequential, keras.Model) and type(model).__name__ != "Functional":
        return None
    try:
        compile_config = model.get_compile_config()
        optimizer = compile_config["optimizer"]["config"]
        if isinstance(optimizer.get("learning_rate"), (int, float)):  # a number: copied with the optimizer's variables
            optimizer.pop("learning_rate")  # (a schedule stays in the key: it is the optimizer's code, not a variable)
        return json.dumps(_nameless([model.get_config(), compile_config]), sort_keys=True, default=str)
    except (NotImplementedError, TypeError, KeyError, AttributeError):
        return None


def _nameless(config):
    if isinstance(config, dict):
        return {k: _nameless(v) for k, v in config.items() if k != "name"}
    if isinstance(config, list):
        return [_nameless(v) for v in config]
    return config


class ModelCache:
    """Hands out the model a fold trains, exactly as a fresh seeded build.

    Args:
        hypermodel: Builds the models.
        precision: Dtype policy of the builds.
        reuse: Reuse one compiled model per architecture (see the module docstring); None
            reuses under TensorFlow and JAX, the backends that gain (tracing, compiling) and are
            checked to give identical folds (a reused PyTorch model trains differently).
    """

    def __init__(self, hypermodel: keras_tuner.HyperModel, precision: str = "float32", reuse: bool | None = None):
        self.hypermodel, self.precision = hypermodel, precision
        self.reuse = keras.backend.backend() in ("tensorflow", "jax") if reuse is None else reuse
        self._model: keras.Model | None = None
        self._key: str | None = None
        self._ready: dict[int, keras.Model] = {}  # prepared fresh builds by seed, for the hp of _ready_for
        self._ready_for: dict | None = None

    def prepare(self, hp: keras_tuner.HyperParameters, seeds: list[int]) -> None:
        """Build the fresh models of `seeds` (folds about to train one after another) now, each after
        its own seeding, so that `fresh` hands them out later without seeding again.

        Under TensorFlow every `set_random_seed` clears the runtime's kernel cache, and with it
        the compiled train and validation steps of the reused model: seeding before each fold
        instantiated them again in every fold (0.19 s a fold for the seed's CNN, Intel CPU).
        Prepared, they are instantiated once per trial. Only for reused models (the others are
        built per fold anyway), and only where nothing else draws from the global random state
        between a fold's seeding and its end (tuner-app's own fit: a HyperModel's own `fit` may
        shuffle with the fold's seed). A model whose K-1 prepared copies would hold more than
        `PREPARE_MAX_BYTES` is seeded fold by fold as before (its folds are long enough for
        0.19 s not to matter).
        """
        self._ready, self._ready_for = {}, None
        if not self.reuse or len(seeds) < 2:
            return
        first = self.fresh(hp, seeds[0])  # (clears the session first for a new architecture)
        if self._model is None:  # not reusable
            return
        if (len(seeds) - 1) * sum(np.prod(v.shape) * np.dtype(v.dtype).itemsize for v in first.variables) > PREPARE_MAX_BYTES:
            self._ready, self._ready_for = {seeds[0]: first}, dict(hp.values)
            return
        self._ready = {seeds[0]: first, **{seed: self._build(hp, seed) for seed in seeds[1:]}}
        self._ready_for = dict(hp.values)

    def fresh(self, hp: keras_tuner.HyperParameters, seed: int) -> keras.Model:
        """The model of `hp` as a build after `set_random_seed(seed)` makes it, ready to fit."""
        ready = self._ready.pop(seed, None) if self._ready_for == hp.values else None
        if ready is not None:
            return ready if ready is self._model else self._load(ready)
        if not self.reuse:
            keras.backend.clear_session()  # a model per fold: drop the last one's graph; memory stays flat
            return self._build(hp, seed)
        model = self._build(hp, seed)
        key = architecture_key(model)
        if key is None or key != self._key:
            # A new architecture: free the old one, then build again after the clear, exactly as
            # the sequence (clear, seed, build) of the non-reusing path.
            self._model = self._key = None
            keras.backend.clear_session()
            model = self._build(hp, seed)
            self._model, self._key = (model, key) if key is not None else (None, None)
            return model
        return self._load(model)

    def _build(self, hp, seed: int) -> keras.Model:
        keras.utils.set_random_seed(seed)
        return models.build(self.hypermodel, hp, self.precision)

    def _load(self, fresh: keras.Model) -> keras.Model:
        """The cached compiled model with `fresh`'s variables, a zeroed optimizer and its learning rate."""
        model = self._model
        fresh.optimizer.build(fresh.trainable_variables)
        pairs = [*zip(model.variables, fresh.variables), *zip(model.optimizer.variables, fresh.optimizer.variables)]
        for target, value in pairs:
            target.assign(keras.ops.convert_to_numpy(value))  # a copy: JAX must not see one buffer twice
        # (the learning rate is one of the optimizer's variables: setting `learning_rate` to fresh's variable
        # would add that variable to the cached optimizer's, which JAX would then get twice)
        return model
