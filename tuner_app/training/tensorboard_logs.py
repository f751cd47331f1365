"""TensorBoard logs of a search: per trial and fold, with the trial's HParams (`--tensorboard`).

`<project>/tensorboard/trial_<id>/fold_<k>`: a sequential fold's from Keras' TensorBoard callback,
a fused member's written from its history as that callback writes them.
"""

from __future__ import annotations

from pathlib import Path


def callbacks(project_dir, trial, k: int) -> list:
    """A TensorBoard callback for this fold, with the trial's HParams written beside it."""
    import keras

    return [keras.callbacks.TensorBoard(log_dir=str(log_dir(project_dir, trial, k)), write_graph=False,
                                        profile_batch=0)]

def log_dir(project_dir, trial, k: int) -> Path:
    """`<project>/tensorboard/trial_<id>/fold_<k>`, with the trial's HParams written there."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hparams_api

    logdir = Path(project_dir) / "tensorboard" / f"trial_{trial.trial_id}" / f"fold_{k}"
    with tf.summary.create_file_writer(str(logdir)).as_default():
        hparams_api.hparams(dict(trial.hyperparameters.values), trial_id=f"{trial.trial_id}/fold_{k}")
    return logdir

def write_history(project_dir, trial, k: int, history: dict) -> None:
    """A fused member's epochs as the TensorBoard callback logs them (train/ and validation/, epoch_NAME)."""
    import tensorflow as tf

    logdir = log_dir(project_dir, trial, k)
    for part, prefix in (("train", ""), ("validation", "val_")):
        with tf.summary.create_file_writer(str(logdir / part)).as_default():
            for name, values in history.items():
                if name.startswith(prefix) and (prefix or not name.startswith("val_")):
                    for epoch, value in enumerate(values):
                        tf.summary.scalar(f"epoch_{name[len(prefix):]}", value, step=epoch)
