import pytest

from tuner_app.errors import UsageError
from tuner_app.space import SearchSpace, parse_filters


def test_default_grid_is_the_seed_notebooks_six_points_in_its_loop_order():
    points = SearchSpace().points()
    assert len(SearchSpace()) == 6
    assert [(p["filters"], p["learning_rate"]) for p in points] == [
        ("16,32", 0.001), ("16,32", 0.0005), ("32,64", 0.001), ("32,64", 0.0005), ("64,128", 0.001), ("64,128", 0.0005)]
    assert {p["dense_units"] for p in points} == {120}


def test_options_change_the_grid():
    space = SearchSpace(("8,16",), (0.01, 0.02, 0.03), (64, 128))
    assert len(space) == 6 and space.filters == ((8, 16),)
    assert SearchSpace.from_config(space.to_config()) == space


@pytest.mark.parametrize("text", ["16", "16,32,64", "a,b", "0,32", "-1,4", ""])
def test_bad_filter_pairs(text):
    with pytest.raises(UsageError, match="--filters"):
        parse_filters(text)


@pytest.mark.parametrize("kwargs, option", [
    ({"learning_rates": (0.0,)}, "--learning-rate"), ({"learning_rates": (-1e-3,)}, "--learning-rate"),
    ({"learning_rates": (float("nan"),)}, "--learning-rate"), ({"dense_units": (0,)}, "--dense-units"),
    ({"filters": ()}, "grid is empty"), ({"learning_rates": (0.1, 0.1)}, "twice"),
])
def test_invalid_grids(kwargs, option):
    with pytest.raises(UsageError, match=option):
        SearchSpace(**kwargs)
