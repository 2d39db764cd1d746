"""Hyperparameter search spaces: grid and seeded random points, and applying a point to a spec.

Optuna's sampler (flows/search.py, for `maas sweep` and the pipeline) uses the same space through
`suggest`; a trial that falls behind is stopped by raising `Pruned` from its metrics callback.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from typing import Any

from components.config import ModelSpec, ParamRange, SearchSpace, SweepSpec

TRAINING_PREFIX = "training."


class Pruned(Exception):
    """A search trial stopped early because its scores so far fall behind (the flow tells Optuna)."""


def grid_points(sweep: SweepSpec) -> list[dict[str, Any]]:
    """Every combination of the listed values (ranges are not allowed in a grid)."""
    ranges = [name for name, values in sweep.space.items() if isinstance(values, ParamRange)]
    if ranges:
        raise ValueError(f"a grid needs lists of values, not ranges: {ranges}")
    names = sorted(sweep.space)
    points = [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(sweep.space[n] for n in names))]
    return points[: sweep.trials]


def _sample(values: list[Any] | ParamRange, rng: random.Random) -> Any:
    if isinstance(values, list):
        return rng.choice(values)
    if values.log:
        value = math.exp(rng.uniform(math.log(values.low), math.log(values.high)))
    else:
        value = rng.uniform(values.low, values.high)
    return int(round(value)) if values.type == "int" else value


def random_points(sweep: SweepSpec) -> list[dict[str, Any]]:
    """`trials` seeded random points: the same seed gives the same points."""
    rng = random.Random(sweep.seed)
    return [{name: _sample(sweep.space[name], rng) for name in sorted(sweep.space)} for _ in range(sweep.trials)]


def _is_plain(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def suggest(trial: Any, space: SearchSpace) -> dict[str, Any]:
    """A point from an Optuna trial (duck-typed: suggest_categorical / suggest_float / suggest_int).

    Optuna's categorical choices must be plain values: a list of lists (n-gram ranges) is
    suggested by its JSON text and mapped back.
    """
    point = {}
    for name in sorted(space):
        values = space[name]
        if isinstance(values, list) and all(_is_plain(v) for v in values):
            point[name] = trial.suggest_categorical(name, values)
        elif isinstance(values, list):
            texts = [json.dumps(v) for v in values]
            point[name] = values[texts.index(trial.suggest_categorical(name, texts))]
        elif values.type == "int":
            point[name] = trial.suggest_int(name, int(values.low), int(values.high), log=values.log)
        else:
            point[name] = trial.suggest_float(name, values.low, values.high, log=values.log)
    return point


def apply_point(spec: ModelSpec, point: dict[str, Any], trial: int) -> ModelSpec:
    """The candidate with the point's values: `training.lr` sets a TrainingSpec field, others set params."""
    params = dict(spec.params)
    training = spec.training.model_dump()
    for name, value in point.items():
        if name.startswith(TRAINING_PREFIX):
            field = name.removeprefix(TRAINING_PREFIX)
            if field not in training:
                raise ValueError(f"unknown training field {field!r} in sweep space")
            training[field] = value
        else:
            params[name] = value
    return spec.model_copy(update={"name": f"{spec.name}-t{trial}", "params": params, "search": None,
                                   "training": spec.training.model_validate(training)})

