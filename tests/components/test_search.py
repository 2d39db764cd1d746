import pytest

from components.config import ModelSpec, ParamRange, SweepSpec
from components.search import apply_point, grid_points, random_points


def test_grid_is_every_combination_up_to_trials():
    sweep = SweepSpec(method="grid", trials=10, space={"C": [1, 10], "min_df": [1, 2, 3]})
    points = grid_points(sweep)
    assert len(points) == 6
    assert {(p["C"], p["min_df"]) for p in points} == {(c, m) for c in (1, 10) for m in (1, 2, 3)}


def test_grid_rejects_ranges():
    with pytest.raises(ValueError, match="C"):
        grid_points(SweepSpec(method="grid", space={"C": ParamRange(low=0.1, high=10)}))


def test_random_points_are_seeded_and_in_range():
    sweep = SweepSpec(trials=20, seed=3, space={"C": ParamRange(low=0.01, high=100, log=True),
                                                 "training.epochs": ParamRange(low=1, high=4, type="int")})
    points = random_points(sweep)
    assert points == random_points(sweep)
    assert points != random_points(sweep.model_copy(update={"seed": 4}))
    assert all(0.01 <= p["C"] <= 100 and p["training.epochs"] in {1, 2, 3, 4} for p in points)


def test_apply_point_sets_params_and_training_fields():
    spec = ModelSpec(name="lstm", kind="lstm", params={"hidden": 128})
    trial = apply_point(spec, {"hidden": 64, "training.lr": 0.01}, trial=3)
    assert trial.name == "lstm-t3" and trial.params["hidden"] == 64 and trial.training.lr == 0.01
    assert spec.params["hidden"] == 128  # the base spec is untouched
    with pytest.raises(ValueError, match="lrr"):
        apply_point(spec, {"training.lrr": 0.1}, trial=0)
