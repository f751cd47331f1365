"""Best trial -> fresh model trained on the whole training set -> test evaluation -> files.

Writes `<project>/best_model.keras` and `<project>/retrain.json`, each atomically.
"""

from __future__ import annotations

import datetime
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
from sklearn.metrics import confusion_matrix

from tuner_app import data as data_mod
from tuner_app import plots, report, state
from tuner_app.errors import DataError, UsageError
from tuner_app.hypermodel import build_cnn, check_precision
from tuner_app.progress import Progress, epoch_callback
from tuner_app.space import parse_filters


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
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UsageError(f"--{name.replace('_', '-')} {value}: must be an integer >= 1")
        if not 0 < self.validation_split < 1:
            raise UsageError(f"--validation-split {self.validation_split}: must be strictly between 0 and 1, e.g. 0.1")
        check_precision(self.precision)


def save_model_atomic(model: keras.Model, path: Path) -> None:
    """`model.save` to a temp file beside `path`, then rename over it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".keras")
    os.close(fd)
    try:
        model.save(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def retrain_best(
    dataset: data_mod.Dataset,
    directory: str | Path = "tuning_dirs",
    project: str = "default",
    config: RetrainConfig | None = None,
    train_limit: int | None = None,
    device_info: dict | None = None,
    progress: Progress | None = None,
) -> dict:
    """Train the best completed trial's configuration on the whole training set and test it.

    Args:
        dataset: The loaded dataset; its image shape and classes must match the search's.
        directory: Parent directory of all projects.
        project: The searched project.
        config: Epochs, batch size, validation split, seed.
        train_limit: Train on a stratified subset of this many images (quick runs).
        device_info: What `tuner_app.device.resolve` reported, stored in retrain.json.
        progress: Listener for progress events.

    Returns:
        The report written to retrain.json.
    """
    config = config or RetrainConfig()
    progress = progress or Progress()
    pdir = state.project_dir(directory, project)
    search = state.read_search(pdir)
    best = report.best_completed(report.load_results(pdir))
    if best is None:
        raise UsageError(f"project {pdir} has no completed trial yet; run (or resume) `tuner-app search` first")
    shape, classes = list(dataset.input_shape), dataset.num_classes
    if shape != search["data"]["input_shape"] or classes != search["data"]["num_classes"]:
        raise DataError(
            f"data {dataset.source}: images {tuple(shape)} with {classes} classes, but the search used "
            f"{tuple(search['data']['input_shape'])} with {search['data']['num_classes']}; pass the searched dataset"
        )
    if train_limit is not None:
        dataset = data_mod.stratified_subset(dataset, train_limit)
    seed = search["cv"]["seed"] if config.seed is None else config.seed
    x, y = data_mod.scale_images(dataset.x_train), data_mod.one_hot(dataset.y_train, classes)
    x_test, y_test = data_mod.scale_images(dataset.x_test), data_mod.one_hot(dataset.y_test, classes)

    hp = best["hyperparameters"]
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = build_cnn(dataset.input_shape, classes, parse_filters(hp["filters"]), hp["dense_units"], hp["learning_rate"],
                      config.precision)
    progress.message(f"retraining trial {best['trial_id']} on {len(x)} images for {config.epochs} epochs")
    progress.fold_start(1, 1, config.epochs)
    start = time.perf_counter()
    history = model.fit(x, y, epochs=config.epochs, batch_size=config.batch_size,
                        validation_split=config.validation_split, verbose=0, callbacks=[epoch_callback(progress)])
    train_seconds = time.perf_counter() - start
    # One pass over the test set gives the loss and accuracy `evaluate` would and the confusion matrix.
    probabilities = model.predict(x_test, batch_size=config.batch_size, verbose=0)
    test_loss = float(np.mean(keras.ops.convert_to_numpy(keras.losses.categorical_crossentropy(y_test, probabilities))))
    predicted = np.argmax(probabilities, axis=1)
    test_accuracy = float(np.mean(predicted == dataset.y_test))
    seconds = time.perf_counter() - start
    progress.close()
    confusion = confusion_matrix(dataset.y_test, predicted, labels=list(range(classes)))

    save_model_atomic(model, pdir / state.MODEL_FILE)
    result = {
        "trial_id": best["trial_id"], "hyperparameters": hp, "cv_score": best["score"], "cv_std": best["std"],
        "test_accuracy": float(test_accuracy), "test_loss": float(test_loss),
        "train_size": len(x), "test_size": len(x_test), "params": int(model.count_params()),
        **asdict(config), "seed": seed,
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
        "backend": keras.backend.backend(), "device": (device_info or {}).get("device", "cpu"),
        "gpus": (device_info or {}).get("gpus", []),
        "train_seconds": round(train_seconds, 2), "seconds": round(seconds, 2),
        "confusion_matrix": confusion.tolist(),
        "data": dataset.source, "model": str(pdir / state.MODEL_FILE),
        "plots": [str(pdir / state.CURVES_FILE), str(pdir / state.CONFUSION_FILE)],
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    plots.plot_history(result["history"], pdir / state.CURVES_FILE)
    plots.plot_confusion(confusion, pdir / state.CONFUSION_FILE)
    state.atomic_write_json(pdir / state.RETRAIN_FILE, result)
    return result


def evaluate_saved(path: str | Path, dataset: data_mod.Dataset, batch_size: int = 128) -> tuple[float, float]:
    """Reload a saved model in Keras' safe mode and return (test loss, test accuracy)."""
    model = keras.saving.load_model(str(path), safe_mode=True)
    x, y = data_mod.scale_images(dataset.x_test), data_mod.one_hot(dataset.y_test, dataset.num_classes)
    loss, acc = model.evaluate(x, y, batch_size=batch_size, verbose=0)
    return float(loss), float(acc)


__all__ = ["RetrainConfig", "evaluate_saved", "retrain_best"]
