"""The order training data comes in: each fold's own seeded permutation, new in every epoch.

Fold k's epoch e visits its training rows in the order of `np.random.default_rng((seed, k, e))`,
on every backend and in both fold modes, so a sequential fold and the same fold fused see the
same batches (and the retrain, "fold" 0, its own order).

Why not Keras' `shuffle=True`: tuner-app seeds every fold (`keras.utils.set_random_seed`) so
that its records are reproducible, and once TensorFlow's global seed is set, Keras' array
adapter (`tf.random.shuffle` inside a `tf.data` map) draws the same permutation in every epoch
(each epoch's iterator restarts the seeded op: TensorFlow issue 35682). Under JAX and PyTorch
Keras reshuffles, but in its own order, not the fused path's.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable

import keras
import numpy as np


class FoldBatches(keras.utils.PyDataset):
    """One batch of every fold's rows per step; an epoch is the longest fold's batches.

    Fold k's batches in an epoch are exactly those its sequential fit is given (one fold's
    `FoldBatches`): its rows in the epoch's order, the partial batch first (so that the batch
    shapes Keras samples to type a TensorFlow dataset vary). Folds one batch apart (uneven
    folds): a fold that has run out of batches is given a filler batch of its own rows and a 0
    in the step's `active` mask, and the step is `(x, y, active)`; the fused model then keeps
    that member as it was (`tuner_app.training.fused_model`). Never an empty batch.

    Args:
        x: All images; y: all labels (in the form the loss takes).
        indices: {k: the fold's training row indices}.
        batch_size: Rows per fold per step.
        seed: Seed of the orders.
        epoch: The epoch whose order the batches follow (`FollowEpoch` sets it at every epoch's start).
        shuffle: Reorder every epoch (training) or not (validation).
        name: Fold k's input and output name (`x` and `y` are dicts of them, for a fused model);
            None: one fold, `x` and `y` plain arrays (for one model).
    """

    def __init__(self, x, y, indices: dict[int, np.ndarray], batch_size: int, seed: int = 0, epoch: int = 0,
                 shuffle: bool = True, name: Callable[[int], str] | None = None):
        super().__init__()
        if name is None and len(indices) != 1:
            raise ValueError(f"plain batches are of one fold, not {len(indices)}")
        self.x, self.y, self.indices, self.batch_size = x, y, indices, batch_size
        self.seed, self.epoch, self.shuffle, self.name = seed, epoch, shuffle, name
        self._order_epoch, self._orders = None, {}
        self.counts = {k: -(-len(i) // batch_size) for k, i in indices.items()}  # each fold's own batches
        self.steps = max(self.counts.values())
        self.uneven = name is not None and len(set(self.counts.values())) > 1

    @property
    def num_batches(self) -> int:
        return self.steps

    def __len__(self) -> int:
        return self.steps

    def order(self, k: int, epoch: int) -> np.ndarray:
        rows = self.indices[k]
        return np.random.default_rng((self.seed, k, epoch)).permutation(rows) if self.shuffle else rows

    def _batch_rows(self, k: int, step: int) -> np.ndarray:
        if self._order_epoch != self.epoch:
            self._orders, self._order_epoch = {m: self.order(m, self.epoch) for m in self.indices}, self.epoch
        return step_rows(self._orders[k], step, self.batch_size)

    def epoch_rows(self, epoch: int) -> list[list[np.ndarray]]:
        """Every step's rows of every fold in `epoch` ([step][fold]), as `__getitem__` gives them."""
        orders = [self.order(k, epoch) for k in self.indices]
        return [[step_rows(order, step, self.batch_size) for order in orders] for step in range(self.steps)]

    def active(self, step: int) -> np.ndarray:
        """1 for each fold (in `indices`' order) that has a batch of its own in `step`, else 0."""
        return np.array([step < n for n in self.counts.values()], np.float32)

    def __getitem__(self, step: int):
        data = structure({k: self._batch_rows(k, step) for k in self.indices}, self.x.__getitem__,
                         self.y.__getitem__, self.name)
        return (*data, self.active(step)) if self.uneven else data

    def tf_dataset(self, x, y):
        """The same batches as a tf.data pipeline (TensorFlow backend): Python yields only the row
        indices, TensorFlow gathers the images from `x` and `y` (tensors of `self.x`, `self.y`); a
        Python generator of whole batches ran epochs 2x slower.

        TensorFlow keeps every `from_generator` generator for the rest of the process, so the
        generator holds these batches (and their images) by a weak reference only and the
        returned dataset holds them strongly: a fold's images are freed after its fit."""
        import tensorflow as tf

        folds, batches = list(self.indices), weakref.ref(self)

        uneven = self.uneven

        def rows():
            this = batches()
            for step in range(this.steps):
                found = tuple(this._batch_rows(k, step).astype(np.int64, copy=False) for k in folds)
                yield (*found, this.active(step)) if uneven else found

        def gather(*r):
            data = structure(dict(zip(folds, r)), lambda i: tf.gather(x, i), lambda i: tf.gather(y, i), self.name)
            return (*data, r[-1]) if uneven else data

        signature = tuple(tf.TensorSpec([None], tf.int64) for _ in folds)
        if uneven:
            signature += (tf.TensorSpec([len(folds)], tf.float32),)
        dataset = tf.data.Dataset.from_generator(rows, output_signature=signature)
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(self.steps)).map(gather).prefetch(2)
        # No autotuning: its background thread made every iterator's deletion (each epoch's and
        # validation pass's end) wait for it, up to 2 s on a CPU; this pipeline has nothing to tune.
        options = tf.data.Options()
        options.autotune.enabled = False
        dataset = dataset.with_options(options)
        dataset.fold_batches = self
        return dataset

    def for_fit(self):
        """What to give `fit`: these batches, or under TensorFlow their tf.data pipeline."""
        if keras.backend.backend() != "tensorflow":
            return self
        return self.tf_dataset(as_tensor(self.x), as_tensor(self.y))


def step_rows(order: np.ndarray, step: int, batch_size: int) -> np.ndarray:
    """The rows of `step` of one fold whose epoch visits `order`: the partial batch first, then full ones;
    past its last batch a filler of `batch_size` of its rows (its member is not `active` then)."""
    first = len(order) % batch_size or batch_size
    if step >= -(-len(order) // batch_size):
        return np.resize(order, batch_size)
    start = 0 if step == 0 else first + (step - 1) * batch_size
    return order[start:first if step == 0 else start + batch_size]


def structure(rows: dict[int, object], take_x, take_y, name: Callable[[int], str] | None):
    """(inputs, targets) of one step from each fold's rows: plain (`name` None, one fold) or a dict per fold."""
    if name is None:
        (r,) = rows.values()
        return take_x(r), take_y(r)
    return ({f"{name(k)}_input": take_x(r) for k, r in rows.items()}, {name(k): take_y(r) for k, r in rows.items()})


_TENSORS: dict[int, object] = {}


def one_copy(a: np.ndarray, copies: dict[int, object], make: Callable):
    """`make(a)` once for as long as the array `a` lives, kept in `copies`: every fold and trial of a search
    gathers its batches from the same copy of the images instead of copying its rows each time."""
    key = id(a)
    if key not in copies:
        copies[key] = make(a)
        weakref.finalize(a, copies.pop, key, None)
    return copies[key]


def as_tensor(a: np.ndarray):
    """One TensorFlow copy of the array `a` for as long as `a` lives."""
    import tensorflow as tf

    return one_copy(a, _TENSORS, tf.constant)


class FollowEpoch(keras.callbacks.Callback):
    """Sets the batches' epoch before Keras starts each epoch's pass over them.

    Under TensorFlow it also builds the model's compiled metrics, loss and optimizer from
    the first batch's shapes when training begins: Keras (without a distribution strategy)
    leaves that to the first trace of the train step, and TensorFlow traces a step that
    created variables a second time (a second of tracing per model on the fused folds).
    """

    def __init__(self, batches: FoldBatches):
        super().__init__()
        self.batches = batches

    def on_train_begin(self, logs=None):
        build = getattr(self.model, "_symbolic_build", None)  # Keras' own build before a trace
        if keras.backend.backend() == "tensorflow" and build is not None and not self.model.run_eagerly:
            build(data_batch=self.batches[0][:2])

    def on_epoch_begin(self, epoch, logs=None):
        self.batches.epoch = epoch


def fold_batches(x, y, rows: np.ndarray, batch_size: int, seed: int, k: int) -> tuple[object, FollowEpoch]:
    """Fold k's training rows of `x`, `y` in its seeded per-epoch order, as `fit` takes it, and the
    callback that moves it from epoch to epoch."""
    batches = FoldBatches(x, y, {k: rows}, batch_size, seed)
    return batches.for_fit(), FollowEpoch(batches)


# Validation and test batches: forward passes only, so larger than training's (fewer, fuller steps)
VALIDATION_ROWS = 256  # the most rows in one
VALIDATION_VALUES = 1 << 20  # and the most input values (4 MB of float32 images)


def validation_batch_size(batch_size: int, sample_shape) -> int:
    """Rows per validation or test batch for training batches of `batch_size` rows of `sample_shape`:
    up to `VALIDATION_ROWS` rows and `VALIDATION_VALUES` input values, never fewer than a training
    batch. A pass's metrics are those of any other batch size up to float rounding (they are means
    over its rows). On a CPU a pass ran 5-15% faster at 256 rows than at 128 and 1.1-2.4x faster than
    at 32, little faster beyond (`benchmarks/eval_batch.py`, docs/benchmarks.md); on a GPU
    it takes half the steps of 128-row batches."""
    per_row = max(1, math.prod(int(d) for d in sample_shape))
    return max(batch_size, min(VALIDATION_ROWS, VALIDATION_VALUES // per_row))


def fold_rows(x, y, rows: np.ndarray, batch_size: int):
    """Rows of `x`, `y` in their order, as `fit` takes them (validation data)."""
    return FoldBatches(x, y, {0: rows}, batch_size, shuffle=False).for_fit()


__all__ = ["FoldBatches", "FollowEpoch", "as_tensor", "fold_batches", "fold_rows", "one_copy", "structure",
           "validation_batch_size"]
