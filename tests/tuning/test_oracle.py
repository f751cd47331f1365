import keras_tuner as kt

from tuner_app.tuning.grid import Grid
from tuner_app.tuning.oracle import ResumableGridOracle

SPACE = kt.HyperParameters()
SPACE.Choice("filters", ["8,16", "16,32"], ordered=False)
SPACE.Choice("learning_rate", [0.01, 0.001], ordered=False)
SPACE.Choice("dense_units", [10], ordered=False)
GRID = Grid.from_space(SPACE)


def _oracle(directory) -> ResumableGridOracle:
    oracle = ResumableGridOracle(GRID, objective=kt.Objective("val_accuracy", "max"), seed=1)
    oracle._set_project_dir(str(directory), "p")
    return oracle


def _finish(oracle, trial, score):
    oracle.update_trial(trial.trial_id, {"val_accuracy": score})
    trial.status = "COMPLETED"
    oracle.end_trial(trial)


def test_every_grid_point_once_in_grid_order_then_stopped(tmp_path):
    oracle = _oracle(tmp_path)
    seen = []
    for i in range(len(GRID)):
        trial = oracle.create_trial("tuner0")
        seen.append(trial.hyperparameters.values)
        _finish(oracle, trial, 0.1 * i)
    assert seen == GRID.points
    assert oracle.create_trial("tuner0").status == "STOPPED"


def test_restart_resumes_the_running_trial_then_continues_the_grid(tmp_path):
    first = _oracle(tmp_path)
    _finish(first, first.create_trial("tuner0"), 0.5)
    running = first.create_trial("tuner0")  # the process "dies" here

    second = _oracle(tmp_path)
    second.reload()
    again = second.create_trial("tuner0")
    assert again.trial_id == running.trial_id and again.hyperparameters.values == running.hyperparameters.values
    _finish(second, again, 0.6)
    rest = []
    while (trial := second.create_trial("tuner0")).status == "RUNNING":
        rest.append(trial.hyperparameters.values)
        _finish(second, trial, 0.7)
    assert rest == GRID.points[2:]
    assert sorted(t.trial_id for t in second.trials.values() if t.status == "COMPLETED") == ["0", "1", "2", "3"]


def test_state_files_are_written_whole(tmp_path):
    oracle = _oracle(tmp_path)
    _finish(oracle, oracle.create_trial("tuner0"), 0.5)
    assert not list((tmp_path / "p").rglob(".*.tmp*"))
    assert (tmp_path / "p" / "trial_0" / "trial.json").read_text().endswith("}\n")
