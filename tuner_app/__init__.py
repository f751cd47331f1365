"""tuner-app: grid search x stratified K-fold CV for any Keras model, on KerasTuner.

The Python API (what the CLI calls; importing these loads Keras, so choose the backend first
with `tuner_app.device.settle` or KERAS_BACKEND):

    from tuner_app.data import load_dataset
    from tuner_app.settings import CVConfig
    from tuner_app.search import plan_search, run_search
    from tuner_app.report import load_results
    from tuner_app.retrain import retrain_best
"""

__version__ = "0.1.0"
