"""LSTM and transformer classifiers: they learn, ignore padding, and round-trip through the bundle."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from components.config import ModelSpec, TrainingSpec
from components.data.dataset import ClassificationData
from components.evaluation.classification import macro_f1
from components.models.lstm import LSTMClassifier, LSTMConfig
from components.models.neural_classifier import NeuralClassifierPredictor, train
from components.models.transformer_encoder import TransformerClassifier, TransformerConfig
from components.predictor import load_predictor

TOPICS = {
    "food": "recipe bread cheese soup taste cook oven salad".split(),
    "sport": "goal match team player score win league coach".split(),
    "tech": "software chip phone computer data network code cloud".split(),
}
FILLER = "the a of and to in is was it for on with".split()


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs torch on one thread (the fixture is in conftest.py)."""


def make_split(n: int, rng: random.Random, skew: str | None = None) -> tuple[list[str], list[str]]:
    texts, labels = [], []
    for _ in range(n):
        label = skew if skew and rng.random() < 0.5 else rng.choice(sorted(TOPICS))
        words = [
            rng.choice(TOPICS[label]) if rng.random() < 0.35 else rng.choice(FILLER)
            for _ in range(rng.randint(4, 24))
        ]
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


@pytest.fixture(scope="module")
def data() -> ClassificationData:
    rng = random.Random(0)
    # The validation split leans to one class, so the majority baseline is well above 1/3.
    return ClassificationData(
        *make_split(240, rng), *make_split(60, rng, skew="sport"), *make_split(20, rng), labels=sorted(TOPICS)
    )


def spec(kind: str, **params) -> ModelSpec:
    training = TrainingSpec(device="cpu", epochs=3, batch_size=16, lr=3e-3, max_length=32, num_threads=1)
    return ModelSpec(name=f"tiny-{kind}", kind=kind, params=params, training=training)


def accuracy(predictor, texts, labels) -> float:
    predicted = np.array(predictor.labels)[predictor.predict_proba(texts).argmax(axis=1)]
    return float(np.mean(predicted == np.array(labels)))


CASES = [
    ("lstm", {"embed_dim": 64, "hidden_size": 64}),  # the default design, narrower
    (
        "lstm",
        {"tokenizer": "bpe", "vocab_size": 300, "bidirectional": True, "pooling": "mean", "hidden_size": 32},
    ),
    ("transformer", {"vocab_size": 300, "dim": 64}),
    ("transformer", {"tokenizer": "word", "dim": 32, "num_heads": 2, "num_layers": 1, "monitor": "val_loss"}),
    ("lstm", {"embed_dim": 16, "hidden_size": 32, "pooling": "mean", "embedding_init": "ppmi_svd"}),
]


@pytest.mark.parametrize(
    ("kind", "params"),
    CASES,
    ids=["lstm-word", "bilstm-bpe-mean", "transformer-bpe", "transformer-word", "lstm-ppmi-svd"],
)
def test_learns_and_round_trips_through_the_bundle(kind, params, data, tmp_path):
    metrics = []
    predictor = train(spec(kind, **params), data, tmp_path / "work", lambda m, s: metrics.append(dict(m)))

    losses = [m["train_loss"] for m in metrics if "train_loss" in m]
    assert losses[-1] < 0.6 * losses[0]
    majority = max(data.val_labels.count(label) for label in data.labels) / len(data.val_labels)
    assert accuracy(predictor, data.val_texts, data.val_labels) > majority + 0.2
    assert predictor.metadata["val_macro_f1"] > 0.7

    proba = predictor.predict_proba(data.test_texts)
    assert proba.shape == (len(data.test_texts), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)

    loaded = load_predictor(predictor.save(tmp_path / "bundle"))
    assert (
        isinstance(loaded, NeuralClassifierPredictor) and loaded.kind == kind and loaded.labels == data.labels
    )
    np.testing.assert_allclose(loaded.predict_proba(data.test_texts), proba, rtol=1e-5, atol=1e-7)


def test_predict_handles_empty_inputs_and_unknown_words(data, tmp_path):
    predictor = train(spec("lstm", hidden_size=16, embed_dim=16), data, tmp_path, lambda m, s: None)
    assert predictor.predict_proba([]).shape == (0, 3)
    proba = predictor.predict_proba(["", "zzz qqq never seen", "goal " * 500])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert predictor.predict(["goal match team"])[0]["label"] in data.labels


def test_training_resumes_from_its_checkpoint(data, tmp_path):
    s = spec("transformer", vocab_size=300, dim=32, num_heads=2, num_layers=1)
    s = s.model_copy(update={"training": s.training.model_copy(update={"checkpoint_every": 5})})
    first = train(s, data, tmp_path, lambda m, step: None)
    assert (tmp_path / "checkpoints" / "checkpoint.pt").is_file()
    records = []
    again = train(s, data, tmp_path, lambda m, step: records.append(m))  # resumes a finished run: no steps
    assert not any("train_loss" in m for m in records)
    np.testing.assert_allclose(
        again.predict_proba(data.val_texts), first.predict_proba(data.val_texts), atol=1e-6
    )


def test_unknown_or_bad_params_are_errors(data, tmp_path):
    with pytest.raises(ValueError, match="unknown lstm params"):
        train(spec("lstm", hidden=64), data, tmp_path, lambda m, s: None)
    with pytest.raises(ValueError, match="tokenizer"):
        train(spec("transformer", tokenizer="chars"), data, tmp_path, lambda m, s: None)
    with pytest.raises(ValueError, match="embedding_init"):
        train(spec("lstm", embedding_init="glove"), data, tmp_path, lambda m, s: None)


@pytest.mark.parametrize(
    "model",
    [
        LSTMClassifier(LSTMConfig(vocab_size=30, num_classes=3, dropout=0.0)),
        LSTMClassifier(
            LSTMConfig(vocab_size=30, num_classes=3, bidirectional=True, pooling="mean", dropout=0.0)
        ),
        TransformerClassifier(
            TransformerConfig(vocab_size=30, num_classes=3, max_length=16, dim=16, num_heads=2, dropout=0.0)
        ),
    ],
    ids=["lstm", "bilstm-mean", "transformer"],
)
def test_padding_does_not_change_the_logits(model):
    model.eval()
    ids = torch.randint(2, 30, (3, 9))
    lengths = torch.tensor([9, 4, 1])
    for row, n in enumerate(lengths):
        ids[row, n:] = 0
    logits = model(ids, lengths)  # (B, C)
    assert logits.shape == (3, 3)
    alone = torch.cat([model(ids[r : r + 1, : lengths[r]], lengths[r : r + 1]) for r in range(3)])
    wider = model(torch.cat([ids, torch.zeros(3, 4, dtype=torch.long)], dim=1), lengths)
    torch.testing.assert_close(alone, logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(wider, logits, atol=1e-5, rtol=1e-5)


def test_macro_f1_matches_its_definition():
    y_true = np.array([0, 0, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 0])
    # class 0: tp 1 fp 1 fn 1 -> 0.5; class 1: tp 2 fp 1 fn 0 -> 0.8; class 2: 0
    assert macro_f1(y_true, y_pred, 3) == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_macro_f1_is_exactly_the_per_class_definition_even_for_absent_classes():
    """The evaluator's early stopping compares these numbers: they must not move by one ulp."""

    def by_definition(y_true, y_pred, num_classes):
        f1 = []
        for c in range(num_classes):
            tp = np.sum((y_pred == c) & (y_true == c))
            fp = np.sum((y_pred == c) & (y_true != c))
            fn = np.sum((y_pred != c) & (y_true == c))
            f1.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
        return float(np.mean(f1))

    rng = np.random.default_rng(0)
    for _ in range(200):
        n, num_classes = int(rng.integers(1, 40)), int(rng.integers(2, 7))
        # Draw from fewer classes than exist, so some are absent from truth, predictions or both.
        y_true = rng.integers(0, max(1, num_classes - 1), n)
        y_pred = rng.integers(0, num_classes, n)
        assert macro_f1(y_true, y_pred, num_classes) == by_definition(y_true, y_pred, num_classes)
    # a class absent from the batch and never predicted scores 0 and still counts in the mean
    assert macro_f1(np.array([0, 1]), np.array([0, 1]), 4) == 0.5


def test_attention_dropout_is_set_apart_from_dropout():
    def attention_rates(**kw):
        model = TransformerClassifier(
            TransformerConfig(vocab_size=30, num_classes=3, dim=16, num_heads=2, **kw)
        )
        return {block.attn.dropout for block in model.blocks}, model.blocks[0].attn.resid_dropout.p

    assert attention_rates(dropout=0.3) == ({0.3}, 0.3)  # unset: follows dropout
    assert attention_rates(dropout=0.3, attention_dropout=0.0) == ({0.0}, 0.3)
    with pytest.raises(ValueError, match="dropout"):
        TransformerConfig(vocab_size=30, num_classes=3, attention_dropout=1.0)
    # in training mode with no attention dropout, the attention output is deterministic
    model = TransformerClassifier(
        TransformerConfig(
            vocab_size=30, num_classes=3, dim=16, num_heads=2, dropout=0.0, attention_dropout=0.0
        )
    ).train()
    ids, lengths = torch.randint(1, 30, (2, 8)), torch.tensor([8, 5])
    torch.testing.assert_close(model(ids, lengths), model(ids, lengths))
