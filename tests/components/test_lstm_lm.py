"""LSTM language model: shapes, tying, carried state equals re-running the text, learning."""

from __future__ import annotations

import math

import pytest
import torch

from components.models.lstm_lm import LSTMLanguageModel, LSTMLMConfig


def tiny_lstm(**overrides) -> LSTMLanguageModel:
    torch.manual_seed(0)
    cfg = dict(vocab_size=11, block_size=32, n_embd=8, hidden_size=16, n_layer=2, dropout=0.0)
    cfg.update(overrides)
    return LSTMLanguageModel(LSTMLMConfig(**cfg)).eval()


def test_forward_shapes_and_loss():
    model = tiny_lstm()
    idx = torch.randint(0, 11, (3, 7))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 7, 11)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("tie, hidden", [(True, 16), (True, 8), (False, 16)])
def test_tied_and_untied_heads(tie, hidden):
    model = tiny_lstm(tie_weights=tie, hidden_size=hidden)
    assert (model.lm_head.weight is model.wte.weight) == tie
    assert model(torch.zeros(1, 3, dtype=torch.long))[0].shape == (1, 3, 11)


def test_carried_state_matches_rerunning_the_text():
    model = tiny_lstm()
    prompt = torch.randint(0, 11, (2, 4))
    carried = model.generate(prompt, 12, use_cache=True)
    rerun = model.generate(prompt, 12, use_cache=False)
    assert carried.shape == (2, 16)
    assert torch.equal(carried, rerun)


def test_learns_a_repeating_sequence():
    torch.manual_seed(0)
    model = tiny_lstm(n_layer=1).train()
    data = torch.arange(11).repeat(20)  # 0 1 2 ... 10 0 1 ...
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-2)
    for _ in range(60):
        starts = torch.randint(0, data.numel() - 17, (8,))
        x = torch.stack([data[s : s + 16] for s in starts])
        y = torch.stack([data[s + 1 : s + 17] for s in starts])
        _, loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.3 * math.log(11)
    out = model.eval().generate(torch.tensor([[3, 4]]), 5)
    assert out[0, 2:].tolist() == [5, 6, 7, 8, 9]


def test_config_validation():
    with pytest.raises(ValueError, match="hidden_size"):
        LSTMLMConfig(hidden_size=0)
