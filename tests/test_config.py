"""Settings: each rule in one place, violations named in Python's terms (the CLI renames them)."""

import pytest

from tuner_app.config import CVConfig, RetrainConfig
from tuner_app.errors import SettingError

pytestmark = pytest.mark.backend_independent  # CI runs it in the TensorFlow pass only (README: Tests)


@pytest.mark.parametrize("kwargs, name", [
    ({"folds": 1}, "folds"), ({"folds": 2.5}, "folds"), ({"epochs": 0}, "epochs"), ({"batch_size": 0}, "batch_size"),
    ({"patience": 0}, "patience"), ({"seed": -1}, "seed"), ({"seed": 2**31}, "seed"), ({"precision": "fp8"}, "precision"),
    ({"folds": True}, "folds"), ({"objective": "val_foo"}, "objective"), ({"objective": "val_auc:up"}, "objective"),
])
def test_cv_settings_are_checked_once_by_name(kwargs, name):
    with pytest.raises(SettingError) as info:
        CVConfig(**kwargs)
    assert info.value.name == name and str(info.value).startswith(f"{name}=")
    assert info.value.as_option(f"--{name.replace('_', '-')}").startswith(f"--{name.replace('_', '-')} ")


def test_objective_direction_is_inferred_or_given():
    assert CVConfig().objective == "val_accuracy" and CVConfig().direction == "max"
    assert CVConfig(objective="val_loss").direction == "min"
    custom = CVConfig(objective="val_foo:max")
    assert (custom.objective, custom.direction) == ("val_foo", "max")
    assert CVConfig(objective="val_foo", direction="min").direction == "min"
    with pytest.raises(SettingError):  # an unknown direction; its wording: tests/test_cli_errors.py
        CVConfig(objective="val_foo")


@pytest.mark.parametrize("kwargs, name", [
    ({"epochs": 0}, "epochs"), ({"validation_split": 1.5}, "validation_split"), ({"validation_split": 0}, "validation_split"),
    ({"seed": -3}, "seed"), ({"precision": "half"}, "precision"),
])
def test_retrain_settings(kwargs, name):
    with pytest.raises(SettingError) as info:
        RetrainConfig(**kwargs)
    assert info.value.name == name
