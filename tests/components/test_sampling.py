"""Sampling: parameter validation, top-k / top-p filtering, seeded determinism."""

from __future__ import annotations

import math

import pytest
import torch

from components.models.sampling import filter_logits, make_generator, make_sampler, validate_sampling


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(max_new_tokens=2.5), "max_new_tokens"),
        (dict(temperature=-1.0), "temperature"),
        (dict(temperature=math.nan), "temperature"),
        (dict(top_k=-1), "top_k"),
        (dict(top_k=1.5), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.01), "top_p"),
    ],
)
def test_invalid_parameters_name_the_parameter(kwargs, name):
    params = dict(max_new_tokens=5, temperature=1.0, top_k=0, top_p=1.0) | kwargs
    with pytest.raises(ValueError, match=name):
        validate_sampling(**params)


def test_valid_parameters_pass():
    validate_sampling(max_new_tokens=1, temperature=0.5, top_k=0, top_p=1.0)
    validate_sampling(max_new_tokens=10, temperature=2, top_k=5, top_p=0.1)


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0]])
    kept = torch.isfinite(filter_logits(logits, 1.0, top_k=2, top_p=1.0))
    assert kept.tolist() == [[False, True, True, False]]


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.1, 0.5, 0.3, 0.1]])
    kept = torch.isfinite(filter_logits(probs.log(), 1.0, top_k=0, top_p=0.75))
    assert kept.tolist() == [[False, True, True, False]]
    # A tiny top_p still keeps the most likely token.
    kept = torch.isfinite(filter_logits(probs.log(), 1.0, top_k=0, top_p=1e-6))
    assert kept.tolist() == [[False, True, False, False]]


def test_temperature_zero_is_greedy_and_ignores_the_seed():
    logits = torch.tensor([[1.0, 2.0, 1.5], [3.0, 0.0, 2.9]])
    for seed in (0, 1, None):
        sample = make_sampler(temperature=0, top_k=2, top_p=0.5, generator=make_generator(seed), banned_ids=[0])
        assert sample(logits).tolist() == [[1], [2]]  # the most likely token that is not banned


def test_low_temperature_approaches_greedy():
    logits = torch.tensor([[1.0, 2.0, 1.5]]).repeat(50, 1)
    sample = make_sampler(temperature=1e-3, generator=make_generator(0))
    assert (sample(logits) == 1).all()


def test_banned_ids_are_never_drawn():
    logits = torch.zeros(200, 3)
    sample = make_sampler(generator=make_generator(0), banned_ids=[0])
    assert (sample(logits) != 0).all()


def test_same_seed_same_draws_different_seed_differs():
    logits = torch.randn(4, 50)

    def draw(seed: int) -> torch.Tensor:
        sample = make_sampler(temperature=1.5, top_k=20, top_p=0.9, generator=make_generator(seed))
        return torch.cat([sample(logits) for _ in range(10)], dim=1)  # (4, 10)

    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))
