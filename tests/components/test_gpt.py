"""GPT decoder: shapes, causality, KV-cache equivalence, tying, config validation."""

from __future__ import annotations

import pytest
import torch

from components.models.gpt import GPT, GPTConfig, KVCache


def tiny_gpt(**overrides) -> GPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=23, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0, bias=True)
    cfg.update(overrides)
    return GPT(GPTConfig(**cfg)).eval()


def test_forward_shapes_and_loss():
    model = tiny_gpt()
    idx = torch.randint(0, 23, (3, 10))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 10, 23)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert model(idx)[1] is None


def test_weights_are_tied():
    model = tiny_gpt()
    assert model.lm_head.weight is model.transformer.wte.weight


def test_attention_is_causal():
    model = tiny_gpt()
    idx = torch.randint(0, 23, (1, 12))
    changed = idx.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 23
    a, b = model(idx)[0], model(changed)[0]
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_cached_forward_matches_full_forward():
    model = tiny_gpt()
    idx = torch.randint(0, 23, (2, 12))
    full = model(idx)[0]
    cache = model.new_cache()
    parts = [model(idx[:, :5], cache=cache)[0], model(idx[:, 5:6], cache=cache)[0]]
    parts.append(model(idx[:, 6:], cache=cache)[0])  # several new tokens at once: needs the offset mask
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 12


@pytest.mark.parametrize("bias", [True, False])
def test_cached_and_uncached_greedy_decoding_agree(bias):
    model = tiny_gpt(bias=bias)
    prompt = torch.randint(0, 23, (2, 5))
    # 30 new tokens with block_size 16: crosses the point where the window starts to slide.
    cached = model.generate(prompt, 30, use_cache=True)
    uncached = model.generate(prompt, 30, use_cache=False)
    assert cached.shape == (2, 35)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached[:, :5], prompt)


def test_long_prompt_is_cropped():
    model = tiny_gpt()
    prompt = torch.randint(0, 23, (1, 40))  # longer than block_size
    out = model.generate(prompt, 3)
    assert out.shape == (1, 43)
    with pytest.raises(ValueError, match="block_size"):
        model(prompt)


def test_cache_overflow_raises():
    cache = KVCache(n_layer=1, max_len=4)
    k = torch.zeros(1, 1, 5, 2)
    with pytest.raises(ValueError, match="overflow"):
        cache.update(0, k, k)


def test_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=10, n_head=3)
    with pytest.raises(ValueError, match="dropout"):
        GPTConfig(dropout=1.5)
    with pytest.raises(ValueError, match="activation"):
        GPTConfig(activation="swish")


def test_relu2_activation_squares_the_relu():
    model = tiny_gpt(activation="relu2")
    mlp = model.transformer.h[0].mlp
    x = torch.randn(2, 3, 16)
    hidden = mlp.c_fc(x)
    expected = mlp.c_proj(torch.relu(hidden) ** 2)
    torch.testing.assert_close(mlp(x), expected)
    # and it is not GELU: the same weights give another output
    gelu = mlp.c_proj(torch.nn.functional.gelu(hidden))
    assert not torch.allclose(mlp(x), gelu)


def test_relu2_model_keeps_cache_equivalence():
    model = tiny_gpt(activation="relu2")
    prompt = torch.randint(0, 23, (1, 4))
    assert torch.equal(
        model.generate(prompt, 20, use_cache=True), model.generate(prompt, 20, use_cache=False)
    )
