"""The folds of a trial: the split, training one fold, its record, and the store of records.

A fold's record is the best epoch's metrics (every metric the model compiles, training and
validation), chosen by the objective: `EarlyStopping` restores exactly those weights, so they
are what evaluating the restored model would give, with no second evaluation.
"""

from __future__ import annotations

import datetime
import time

import keras
import keras_tuner
import numpy as np
import psutil
from sklearn.model_selection import StratifiedKFold

from tuner_app.config import RECORD_FIELDS, CVConfig
from tuner_app.models.preflight import own_fit
from tuner_app.runtime import interrupts
from tuner_app.runtime.progress import Progress, epoch_callback
from tuner_app.training import jax_loop
from tuner_app.training.data_order import fold_batches, fold_rows, validation_batch_size
from tuner_app.training.model_cache import ModelCache

NOT_METRICS = ("learning_rate", "lr")  # what learning-rate callbacks add to the logs


def splits(y: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (train, validation) index pairs of stratified K-fold; the same for every trial."""
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(skf.split(np.zeros(len(y)), y))


def train_fold(hypermodel: keras_tuner.HyperModel, cache: ModelCache, cv: CVConfig, hp: keras_tuner.HyperParameters,
               k: int, x: np.ndarray, y: np.ndarray, split: tuple[np.ndarray, np.ndarray],
               progress: Progress | None = None, callbacks: list = ()) -> dict:
    """Train fold `k` (1-based) from its fresh model (seed `cv.seed + k`); return its record.

    The fit goes through `hypermodel.fit`, so a HyperModel that tunes its own training
    (batch size, callbacks) does so here too. The fold's training rows come in its seeded
    per-epoch order (`tuner_app.training.data_order`, the fused member's order), gathered from one copy of
    `x` that every fold shares, except for a HyperModel with its own `fit`, which gets the
    fold's arrays (it may set the batch size) and Keras' shuffle; under TensorFlow that shuffle
    repeats one order in every epoch of a seeded fold.

    Args:
        hypermodel: Builds and fits the model.
        cache: Hands out the fresh model.
        cv: Epochs, batch size, patience, objective.
        hp: The trial's hyperparameters.
        k: The fold number.
        x, y: All training images and labels (labels in the loss's form).
        split: The fold's (training, validation) row indices.
        progress: Listener for epoch events.
        callbacks: More Keras callbacks (TensorBoard).
    """
    progress = progress or Progress()
    progress.fold_start(k, cv.folds, cv.epochs)
    start = time.perf_counter()
    tr, va = split
    model = cache.fresh(hp, cv.seed + k)
    stop = keras.callbacks.EarlyStopping(monitor=cv.objective, mode=cv.direction, patience=cv.patience,
                                         restore_best_weights=True)
    callbacks = [stop, epoch_callback(progress), interrupts.keras_callback(), *callbacks]
    if own_fit(hypermodel):
        history = hypermodel.fit(hp, model, x[tr], y[tr], validation_data=(x[va], y[va]), epochs=cv.epochs,
                                 batch_size=cv.batch_size, verbose=0, callbacks=callbacks)
    else:
        batches, follow = fold_batches(x, y, tr, cv.batch_size, cv.seed, k)
        val = fold_rows(x, y, va, validation_batch_size(cv.batch_size, x.shape[1:]))
        if jax_loop.usable(hypermodel, model, batches, val):
            history = jax_loop.fit(model, batches, val, epochs=cv.epochs, callbacks=[follow, *callbacks])
        else:
            history = hypermodel.fit(hp, model, batches, validation_data=val, epochs=cv.epochs, shuffle=False,
                                     verbose=0, callbacks=[follow, *callbacks])
    logs = getattr(history, "history", history)
    if not isinstance(logs, dict) or cv.objective not in logs:
        found = ", ".join(logs) if isinstance(logs, dict) else type(history).__name__
        raise RuntimeError(f"the fold's history has no {cv.objective!r} (it has: {found}); fit must return "
                           "model.fit's History and the model must compute the objective")
    return fold_record(k, logs, cv, len(tr), len(va), time.perf_counter() - start)


def fold_record(k: int, logs: dict[str, list[float]], cv: CVConfig, train_size: int, val_size: int,
                seconds: float) -> dict:
    """Fold k's record from its per-epoch logs: every metric at the best epoch (the first best, as
    EarlyStopping restores), and how long and how big."""
    scores = np.asarray(logs[cv.objective], dtype=float)
    best = int(np.argmax(scores) if cv.direction == "max" else np.argmin(scores))
    return {
        "fold": k,
        **{name: float(values[best]) for name, values in logs.items() if name not in RECORD_FIELDS + NOT_METRICS},
        "epochs": len(scores),
        "best_epoch": best + 1,
        "train_size": train_size,
        "val_size": val_size,
        "seconds": round(seconds, 3),
        "rss_mb": rss_mb(),
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
    }


def rss_mb() -> float:
    """This process's resident memory now, to show that it does not grow per trial."""
    return round(psutil.Process().memory_info().rss / 2**20, 1)
