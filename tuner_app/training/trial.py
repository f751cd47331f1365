"""Training a trial's folds, fused or one after another: the one entry the tuner and Ray tasks use.

`FoldTrainer` keeps what a process reuses between trials (the model cache and the fused
model cache) and trains the folds it is given in the search's fold mode, calling
`on_record(record, history)` as each fold finishes. A failure names the folds it happened in
(`tuner_app.errors.failing_as`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import keras_tuner
import numpy as np

from tuner_app.config import CVConfig
from tuner_app.errors import failing_as
from tuner_app.models.preflight import own_fit
from tuner_app.runtime import interrupts
from tuner_app.runtime.progress import Progress
from tuner_app.training import fused
from tuner_app.training.folds import splits, train_fold
from tuner_app.training.model_cache import ModelCache


class FoldTrainer:
    """Trains a trial's folds in `cv.fold_mode`; keeps the models a next trial can reuse.

    Args:
        hypermodel: Builds and fits the models.
        cv: The CV settings (fold mode, seed, precision, epochs, ...).
        reuse_models: See `tuner_app.training.model_cache.ModelCache`; False builds a new model for every fold.
    """

    def __init__(self, hypermodel: keras_tuner.HyperModel, cv: CVConfig, reuse_models: bool | None = None):
        self.hypermodel, self.cv = hypermodel, cv
        self.cache = ModelCache(hypermodel, cv.precision, reuse_models)
        self.fused_cache = fused.FusedModels(hypermodel, cv.precision, reuse_models)

    def train(self, hp: keras_tuner.HyperParameters, folds: list[int], x: np.ndarray, y: np.ndarray,
              fold_splits: list, trial_dir: str | Path, on_record: Callable[[dict, dict | None], None],
              progress: Progress | None = None, callbacks: Callable[[int], list] | None = None) -> None:
        """Train `folds` (1-based) of the trial `hp`; `on_record(record, history)` as each one finishes.

        Args:
            hp: The trial's hyperparameters.
            folds: The folds to train (those not yet recorded).
            x, y: All training images and labels (labels in the loss's form).
            fold_splits: The (train, validation) indices of every fold (`splits`).
            trial_dir: Where a fused trial keeps its per-epoch state.
            on_record: Receives each finished fold's record, and a fused member's per-epoch logs (else None).
            progress: Listener for fold and epoch events.
            callbacks: Extra Keras callbacks of fold k (a sequential fold's TensorBoard callback).
        """
        if not folds:
            return
        if self.cv.fold_mode == "fused":
            with failing_as(f"folds {', '.join(map(str, folds))} (fused)"):
                fused.train_folds(self.hypermodel, self.cv, hp, folds, x, y, fold_splits, trial_dir, on_record,
                                  progress, self.fused_cache)
            return
        if not own_fit(self.hypermodel):
            self.cache.prepare(hp, [self.cv.seed + k for k in folds])
        for k in folds:
            interrupts.check()
            with failing_as(f"fold {k}"):
                record = train_fold(self.hypermodel, self.cache, self.cv, hp, k, x, y, fold_splits[k - 1], progress,
                                    callbacks(k) if callbacks else [])
            on_record(record, None)


__all__ = ["FoldTrainer", "splits"]
