"""tuner-app: grid search x stratified K-fold CV for Keras CNNs, on KerasTuner.

The Python API (what the CLI calls; importing these loads Keras, so select the backend
first with `tuner_app.device.configure` or KERAS_BACKEND):

    from tuner_app.data import load_dataset
    from tuner_app.tuner import CVConfig, run_search
    from tuner_app.retrain import retrain_best
    from tuner_app.report import load_results
"""

__version__ = "0.1.0"
