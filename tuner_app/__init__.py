"""tuner-app: grid search x stratified K-fold CV for any Keras model, on KerasTuner.

The Python API, imported on first use (Keras loads then: set KERAS_BACKEND before it):

    from tuner_app import CVConfig, load_dataset, load_results, retrain_best, search

    ds = load_dataset(dataset="mnist-sample")
    pdir = search(ds, "seed", cv=CVConfig(folds=3, epochs=2))
    load_results(pdir)[0]                  # the best trial, with its fold records
    retrain_best(None, "tuning_dirs", "default")
"""

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "search": "tuner_app.api",
    "run_search": "tuner_app.api",
    "plan_search": "tuner_app.tuning.plan",
    "retrain_best": "tuner_app.retrain",
    "load_results": "tuner_app.results",
    "load_dataset": "tuner_app.data",
    "CVConfig": "tuner_app.config",
    "RetrainConfig": "tuner_app.config",
    "RayConfig": "tuner_app.config",
}
__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'tuner_app' has no attribute {name!r}")
