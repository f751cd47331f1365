"""The grid a hypermodel declares: discovery, KerasTuner's order, conditions, overrides, finiteness."""

import keras_tuner
import pytest
from conftest import MODELS

from tuner_app import models
from tuner_app.config import parse_grid_option
from tuner_app.errors import UsageError
from tuner_app.tuning import grid

pytestmark = pytest.mark.backend_independent  # CI runs it in the TensorFlow pass only (README: Tests)


def _grid(build, overrides=None):
    return grid.Grid.from_space(grid.discover(models.BuildFunction(build)), overrides)


def _declare_only(declare):
    """A build function that only declares hyperparameters (the grid does not need a model)."""
    def build(hp):
        declare(hp)
    return build


def test_seed_grid_is_the_notebooks_six_points_in_its_loop_order():
    points = _grid(models.load_model("seed").hypermodel.build).points
    assert [(p["filters"], p["learning_rate"], p["dense_units"]) for p in points] == [
        ("16,32", 0.001, 120), ("16,32", 0.0005, 120), ("32,64", 0.001, 120), ("32,64", 0.0005, 120),
        ("64,128", 0.001, 120), ("64,128", 0.0005, 120)]


def test_every_kind_of_hyperparameter_in_kerastuners_gridsearch_order():
    points = _grid(_declare_only(lambda hp: (hp.Int("n", 1, 3, step=2), hp.Boolean("b"), hp.Fixed("f", "x"),
                                             hp.Float("r", 0.0, 0.5, step=0.25)))).points
    assert len(points) == 2 * 2 * 1 * 3
    assert points[:4] == [{"n": 1, "b": False, "f": "x", "r": 0.0}, {"n": 1, "b": False, "f": "x", "r": 0.25},
                          {"n": 1, "b": False, "f": "x", "r": 0.5}, {"n": 1, "b": True, "f": "x", "r": 0.0}]


def test_same_points_as_kerastuners_own_gridsearch(tmp_path):
    """The set of points is what keras_tuner.GridSearch enumerates, conditions included."""
    def declare(hp):
        hp.Choice("model", ["a", "b"])
        with hp.conditional_scope("model", ["b"]):
            hp.Int("depth", 1, 2)
        hp.Boolean("flag")

    ours = _grid(_declare_only(declare)).points
    oracle = keras_tuner.oracles.GridSearchOracle(objective=keras_tuner.Objective("score", "max"))
    oracle._set_project_dir(str(tmp_path), "kt")
    space = keras_tuner.HyperParameters()
    declare(space)
    oracle.update_space(space)
    theirs = []
    while (trial := oracle.create_trial("t")).status == "RUNNING":
        theirs.append(trial.hyperparameters.values)
        oracle.update_trial(trial.trial_id, {"score": 0.0})
        trial.status = "COMPLETED"
        oracle.end_trial(trial)
    key = lambda p: sorted(p.items())
    assert sorted(map(key, ours)) == sorted(map(key, theirs))
    assert len(ours) == 6  # a (x2 flags) + b x depth 1, 2 (x2 flags); depth absent where model == a


def test_conditional_hyperparameters_of_a_users_model_are_found_and_enumerated_once():
    loaded = models.load_model(f"{MODELS / 'dense_net.py'}:build")
    g = grid.Grid.from_space(grid.discover(loaded.hypermodel))
    assert g.names == ["units", "second_layer", "second_units"]
    assert g.points == [{"units": 32, "second_layer": False}, {"units": 32, "second_layer": True, "second_units": 16},
                        {"units": 32, "second_layer": True, "second_units": 32}, {"units": 64, "second_layer": False},
                        {"units": 64, "second_layer": True, "second_units": 16},
                        {"units": 64, "second_layer": True, "second_units": 32}]


def test_overrides_replace_values_keep_conditions_and_convert_types():
    loaded = models.load_model(f"{MODELS / 'dense_net.py'}:build")
    space = grid.discover(loaded.hypermodel)
    g = grid.Grid.from_space(space, parse_grid_option(["units=128", "second_layer=true", "second_units=8,4"]))
    assert g.points == [{"units": 128, "second_layer": True, "second_units": 8},
                        {"units": 128, "second_layer": True, "second_units": 4}]
    assert g.record()["hyperparameters"] == {"units": [128], "second_layer": [True], "second_units": [8, 4]}
    assert g.record()["fingerprint"] != grid.Grid.from_space(space).record()["fingerprint"]


# The wording of these refusals is asserted once, in tests/test_cli_errors.py.
@pytest.mark.parametrize("texts", [["nope=1"], ["units=big"], ["units=32,32"], ["second_layer=maybe"]])
def test_bad_overrides(texts):
    space = grid.discover(models.load_model(f"{MODELS / 'dense_net.py'}:build").hypermodel)
    options = parse_grid_option(texts)  # well-formed: the grid refuses them
    with pytest.raises(UsageError):
        grid.Grid.from_space(space, options)


@pytest.mark.parametrize("texts", [["units"], ["units=1", "units=2"], ["units=1,,2"], ['f=["16,32"']])
def test_bad_grid_options(texts):
    with pytest.raises(UsageError):
        parse_grid_option(texts)


def test_values_with_commas_as_a_json_list():
    assert parse_grid_option(['filters=["16,32","64,128"]']) == {"filters": ["16,32", "64,128"]}


def test_a_hyperparameter_without_a_finite_grid_is_named_unless_overridden():
    declare = _declare_only(lambda hp: hp.Float("dropout", 0.0, 0.5))
    with pytest.raises(UsageError):  # its wording: tests/test_cli_errors.py
        _grid(declare)
    assert _grid(declare, {"dropout": ["0.1", "0.3"]}).points == [{"dropout": 0.1}, {"dropout": 0.3}]


def test_a_model_without_hyperparameters_is_one_point():
    assert _grid(_declare_only(lambda hp: None)).points == [{}]
