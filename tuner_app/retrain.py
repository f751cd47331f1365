"""Best trial -> its model rebuilt and trained on the whole training set -> test evaluation -> files.

Writes `<project>/best_model.keras`, `retrain.json` and two pictures, each atomically and
durably (`files.atomic_save`). The model is the searched one (`search.json` names it),
rebuilt with the best trial's hyperparameter values; the data is the searched data unless
another is given, in which case a `DataWarning` says so and retrain.json records it.
"""

from __future__ import annotations

import datetime
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import keras
import numpy as np
from sklearn.metrics import confusion_matrix

from tuner_app import data as data_mod
from tuner_app import models, plots
from tuner_app.config import RetrainConfig, Settled
from tuner_app.errors import DataError, DataWarning, SettingError, UsageError
from tuner_app.models.preflight import label_form, labels, own_fit
from tuner_app.results import best_completed, load_results
from tuner_app.runtime import files
from tuner_app.runtime.progress import Progress, epoch_callback, plural
from tuner_app.training import compile_ahead, jax_loop
from tuner_app.training.compile_ahead import retrain_label, retrain_split_at
from tuner_app.training.data_order import fold_batches, fold_rows, validation_batch_size
from tuner_app.tuning import state


def default_config(model: models.LoadedModel, **given) -> RetrainConfig:
    """RetrainConfig from the options given, else the model's suggested `retrain_*` defaults."""
    suggested = {k.removeprefix("retrain_"): v for k, v in model.defaults.items() if k.startswith("retrain_")}
    fields = RetrainConfig.__dataclass_fields__
    given = {k: v for k, v in given.items() if v is not None}  # None: not given, the suggestion stands
    return RetrainConfig(**{k: v for k, v in {**suggested, **given}.items() if k in fields})


def expected_config(model: models.LoadedModel) -> RetrainConfig | None:
    """The retrain a search is usually followed by (`retrain-best`'s defaults), for the tuner to compile
    ahead under JAX on a GPU (`tuner_app.training.compile_ahead`); None elsewhere, or when the model
    suggests settings that retrain-best will refuse (it says so then)."""
    if not jax_loop.applies(model.hypermodel):
        return None
    try:
        return default_config(model)
    except SettingError:
        return None


def retrain_best(
    dataset: data_mod.Dataset | None = None,
    directory: str | Path = "tuning_dirs",
    project: str = "default",
    config: RetrainConfig | dict | None = None,
    train_limit: int | None = None,
    settled: Settled | None = None,
    progress: Progress | None = None,
    hypermodel: Any = None,
) -> dict:
    """Train the best completed trial's model on the whole training set and test it.

    Args:
        dataset: The data; None loads the searched data (`search.json`'s source). Other data
            with the searched image shape and classes is used with a `DataWarning`.
        directory: Parent directory of all projects.
        project: The searched project.
        config: Epochs, batch size, validation split, seed, precision; a dict gives some of
            them (None values and missing keys: the model's suggested `retrain_*` values, else
            RetrainConfig's, the seed notebook's).
        train_limit: Train on a stratified subset of this many images (quick runs).
        settled: The device it trains on (`tuner_app.settle.settle`), stored in retrain.json; None: the CPU.
        progress: Listener for progress events.
        hypermodel: The model to rebuild; None loads what the search recorded (a Python object
            passed to `search` has to be passed again).

    Returns:
        The report written to retrain.json.
    """
    progress = progress or Progress()
    pdir = state.project_dir(directory, project)
    searched = state.stored_settings(pdir)
    best = best_completed(load_results(pdir))
    if best is None:
        raise UsageError(f"project {pdir} has no completed trial yet; run (or resume) `tuner-app search` first")
    dataset = dataset or data_mod.load_source(searched["data"]["source"])
    shape, classes = list(dataset.input_shape), dataset.num_classes
    if shape != searched["data"]["input_shape"] or classes != searched["data"]["num_classes"]:
        raise DataError(
            f"data {dataset.source}: images {tuple(shape)} with {classes} classes, but the search used "
            f"{tuple(searched['data']['input_shape'])} with {searched['data']['num_classes']}; pass the searched dataset"
        )
    same_data = _same_data(dataset, searched["data"])
    if not same_data:
        warnings.warn(DataWarning(f"retraining on {dataset.source}, which is not the data searched "
                                  f"({searched['data']['source']}); the CV scores were measured on the latter"))
    loaded = _model(searched["model"], hypermodel, dataset)
    config = config if isinstance(config, RetrainConfig) else default_config(loaded, **(config or {}))
    if train_limit is not None:
        dataset = data_mod.stratified_subset(dataset, train_limit)
    seed = searched["cv"]["seed"] if config.seed is None else config.seed
    scale = searched["data"]["scale"]  # the search's reading of its images, on whatever data this trains
    data_mod.check_scale(dataset, scale)
    x, x_test = data_mod.scale_images(dataset.x_train, scale), data_mod.scale_images(dataset.x_test, scale)

    hp = models.hyperparameters(best["hyperparameters"])
    if jax_loop.applies(loaded.hypermodel):  # JAX on a GPU: what the search compiled for this retrain
        compile_ahead.cache_compilations(pdir / state.XLA_CACHE_DIR)
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = models.build(loaded.hypermodel, hp, config.precision)
    form = label_form(model)
    trained = retrain_split_at(x, config)
    progress.message(f"retraining trial {best['trial_id']} on {trained} images ({len(x) - trained} more held out "
                     f"for validation) for {plural(config.epochs, 'epoch')}")
    progress.fold_start(1, 1, config.epochs)
    start = time.perf_counter()
    history = _fit(loaded.hypermodel, hp, model, x, labels(dataset.y_train, form, classes), config, seed,
                   [epoch_callback(progress)])
    train_seconds = time.perf_counter() - start
    jax_loop.stop_compiling_later()  # (the other architectures' retrains: not needed now)
    test_metrics, y_pred = _test(model, x_test, labels(dataset.y_test, form, classes),
                                 validation_batch_size(config.batch_size, x_test.shape[1:]))
    predicted = np.argmax(y_pred, axis=1)
    seconds = time.perf_counter() - start
    progress.close()
    confusion = confusion_matrix(dataset.y_test, predicted, labels=list(range(classes)))

    files.atomic_save(pdir / state.MODEL_FILE, lambda tmp: model.save(tmp))
    logs = getattr(history, "history", history) or {}
    result = {
        "trial_id": best["trial_id"], "hyperparameters": best["hyperparameters"], "model": loaded.spec,
        "objective": searched["cv"]["objective"], "cv_score": best["score"], "cv_std": best["std"],
        "test_accuracy": float(np.mean(predicted == dataset.y_test)),
        "test_loss": float(test_metrics.get("loss", float("nan"))),
        "test_metrics": {k: float(v) for k, v in test_metrics.items()},
        "train_size": len(x), "test_size": len(x_test), "params": int(model.count_params()),
        **asdict(config), "seed": seed,
        "history": {k: [float(v) for v in vs] for k, vs in logs.items()},
        "backend": keras.backend.backend(), "device": settled.device if settled else "cpu",
        "gpus": list(settled.gpus) if settled else [],
        "train_seconds": round(train_seconds, 2), "seconds": round(seconds, 2),
        "confusion_matrix": confusion.tolist(),
        "data": dataset.source, "searched_data": searched["data"]["source"], "same_data_as_search": same_data,
        "model_file": str(pdir / state.MODEL_FILE),
        "plots": [str(pdir / state.CURVES_FILE), str(pdir / state.CONFUSION_FILE)],
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    plots.plot_history(result["history"], pdir / state.CURVES_FILE)
    plots.plot_confusion(confusion, pdir / state.CONFUSION_FILE)
    files.atomic_write_json(pdir / state.RETRAIN_FILE, result)
    return result


def _fit(hypermodel, hp, model: keras.Model, x: np.ndarray, y: np.ndarray, config: RetrainConfig, seed: int,
         callbacks: list):
    """`hypermodel.fit` as `model.fit(x, y, validation_split=...)` splits (the last rows validate), the
    training rows in a new seeded order every epoch (`tuner_app.training.data_order`, "fold" 0); a HyperModel
    with its own `fit` gets the arrays and Keras' shuffle."""
    if own_fit(hypermodel):
        return hypermodel.fit(hp, model, x, y, epochs=config.epochs, batch_size=config.batch_size,
                              validation_split=config.validation_split, verbose=0, callbacks=callbacks)
    split_at, val_size = retrain_split_at(x, config), validation_batch_size(config.batch_size, x.shape[1:])
    batches, follow = fold_batches(x, y, np.arange(split_at), config.batch_size, seed, 0)
    if jax_loop.usable(hypermodel, model, batches):
        jax_loop.wait_for(retrain_label(model))  # (`compile_ahead`: a search's background compilation)
        return jax_loop.fit(model, batches, fold_rows(x, y, np.arange(split_at, len(x)), val_size),
                                 epochs=config.epochs, callbacks=[follow, *callbacks])
    return hypermodel.fit(hp, model, batches, validation_data=(x[split_at:], y[split_at:]), epochs=config.epochs,
                          validation_batch_size=val_size, shuffle=False, verbose=0,
                          callbacks=[follow, *callbacks])


def _test(model: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int) -> tuple[dict, np.ndarray]:
    """What `model.evaluate(x, y, return_dict=True)` reports, and `model.predict(x)`, from one pass over
    `x`: the compiled loss (weight penalties included) and metrics computed on all predictions at
    once, as Keras' own step computes them per batch (the same up to float rounding). A model with
    its own `test_step` gets Keras' two passes."""
    y_pred = model.predict(x, batch_size=batch_size, verbose=0)
    if type(model).test_step is not keras.Model.test_step:
        return model.evaluate(x, y, batch_size=batch_size, verbose=0, return_dict=True), y_pred
    model.reset_metrics()
    loss = model.compute_loss(x=x, y=y, y_pred=y_pred, training=False)
    found = {k: float(v) for k, v in model.compute_metrics(x, y, y_pred, sample_weight=None).items()}
    return {**found, "loss": float(loss)}, y_pred


def _same_data(dataset: data_mod.Dataset, searched: dict) -> bool:
    """Whether `dataset` holds the searched training images (after the search's train limit)."""
    limit = searched.get("train_limit")
    try:
        view = data_mod.stratified_subset(dataset, limit) if limit is not None else dataset
    except UsageError:  # the search's limit does not fit this data: other data
        return False
    return view.fingerprint() == searched.get("fingerprint")


def _model(searched: dict, hypermodel, dataset: data_mod.Dataset) -> models.LoadedModel:
    """The searched model, loaded again; a changed model file is said and used."""
    if hypermodel is None and searched["spec"].startswith("__main__:"):
        raise UsageError(f"the search's model {searched['spec']} was defined in a notebook or script; "
                         "pass it again: retrain_best(..., hypermodel=...)")
    spec, target = searched["spec"], hypermodel
    where, _, name = spec.rpartition(":")
    if target is None and searched.get("file") and models.names_file(where):
        # the file the search read, from any working directory (a relative FILE.py was the search's)
        if not Path(searched["file"]).is_file():
            raise UsageError(f"the search's model file {searched['file']} ({spec}) is gone; put it back there to "
                             "retrain the best trial")
        target = f"{searched['file']}:{name}"
    loaded = models.load_model(target or spec, dataset.input_shape, dataset.num_classes)
    if target is not hypermodel:
        loaded = replace(loaded, spec=spec)  # reported as the search named it
    if searched.get("sha256") and loaded.sha256 and loaded.sha256 != searched["sha256"]:
        warnings.warn(DataWarning(f"model file {loaded.file} changed since the search; retraining the file as it "
                                  "is now"))
    return loaded


def evaluate_saved(path: str | Path, dataset: data_mod.Dataset, batch_size: int = 128,
                   scale: str = "auto") -> tuple[float, float]:
    """Reload a saved model in Keras' safe mode and return (test loss, test accuracy by argmax); `scale`:
    the search's (`search.json`'s `data.scale`)."""
    model = keras.saving.load_model(str(path), safe_mode=True)
    x = data_mod.scale_images(dataset.x_test, scale)
    loss = model.evaluate(x, labels(dataset.y_test, label_form(model), dataset.num_classes), batch_size=batch_size,
                          verbose=0, return_dict=True)["loss"]
    accuracy = np.mean(np.argmax(model.predict(x, batch_size=batch_size, verbose=0), axis=1) == dataset.y_test)
    return float(loss), float(accuracy)


__all__ = ["RetrainConfig", "default_config", "evaluate_saved", "retrain_best"]
