"""Integrated gradients (components/explain/gradients.py): completeness, a deciding word ranked first, whole words."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn as nn

from components.explain.gradients import token_attributions
from components.explain.words import TextWords
from components.models.neural_classifier import (
    NeuralClassifierPredictor,
    build_model,
    model_config,
    resolve_params,
)
from components.text.bpe import BPETokenizer
from components.text.word_vocab import WordVocab
from tests.components.test_explain import needs_minilm, tiny_pretrained_predictor

WORDS = "river stone cloud apple quiet lamp paper green horse window table ocean zebra".split()


class TriggerModel(nn.Module):
    """Sums a per-token logit vector over the real tokens; the trigger word pushes hard to class 1."""

    def __init__(self, vocab_size: int, trigger_id: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, 2, padding_idx=0)
        with torch.no_grad():
            self.token_embedding.weight[1:].normal_(0.0, 0.2, generator=torch.Generator().manual_seed(0))
            self.token_embedding.weight[trigger_id] = torch.tensor([0.0, 4.0])

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).unsqueeze(-1)  # (B, T, 1)
        return (self.token_embedding(ids) * mask).sum(dim=1)  # (B, 2)


def ig_predictor(kind: str, tokenizer, model: nn.Module, max_length: int = 64) -> NeuralClassifierPredictor:
    config = {"tokenizer": "word" if isinstance(tokenizer, WordVocab) else "bpe", "max_length": max_length}
    predictor = NeuralClassifierPredictor(kind, config, ["plain", "zebra"], tokenizer, model)
    predictor.explain_method = "integrated_gradients"
    return predictor


def random_texts(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [", ".join(rng.sample(WORDS, 6)) + "." for _ in range(n)]


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_token_attributions_add_up_to_the_change_of_the_log_probability(kind):
    vocab = WordVocab.build([" ".join(WORDS)])
    sizes = {"dim": 16, "num_heads": 2} if kind == "transformer" else {"embed_dim": 16, "hidden_size": 16}
    params = resolve_params(kind, {"num_layers": 1, "dropout": 0.0, **sizes})
    torch.manual_seed(0)
    model = build_model(kind, model_config(kind, params, vocab.vocab_size, 3, 16)).eval()
    predictor = ig_predictor(kind, vocab, model, max_length=16)
    ids, baseline, extra, _ = predictor.gradient_inputs(random_texts(4))
    targets = torch.tensor([0, 1, 2, 1])
    scores, _ = token_attributions(model, model.token_embedding, ids, baseline, targets, extra, n_steps=64)
    with torch.no_grad():
        rows = torch.arange(len(targets))
        gap = (
            torch.log_softmax(model(ids, *extra), -1)[rows, targets]
            - torch.log_softmax(model(baseline, *extra), -1)[rows, targets]
        )  # fmt: skip
    assert gap.abs().min() > 1e-3  # something to explain
    assert scores.sum(axis=1) == pytest.approx(gap.double().numpy(), abs=0.02 * float(gap.abs().max()))
    # Padding equals its baseline: it gets nothing.
    lengths = extra[0]
    for row, length in enumerate(lengths.tolist()):
        assert abs(scores[row, length:]).sum() == 0


def test_integrated_gradients_rank_the_deciding_word_first():
    vocab = WordVocab.build([" ".join(WORDS)])
    predictor = ig_predictor("lstm", vocab, TriggerModel(vocab.vocab_size, vocab.encode("zebra")[0]))
    texts = ["Zebra, " + text + " zebra!" for text in random_texts(5, seed=2)]
    items = predictor.attribute(texts)
    for text, item in zip(texts, items, strict=True):
        assert item.method == "integrated_gradients" and item.label == 1
        assert item.ranked()[0] == "zebra", text
        assert set(item.scores) == set(TextWords(text).keys)  # words only: no punctuation tokens
    [explained] = predictor.explain(texts[:1], top_k=1)
    assert explained["towards"][0]["word"] == "Zebra"
    assert NeuralClassifierPredictor("lstm", {}, ["a"], vocab, nn.Linear(1, 1)).explain_method == "integrated_gradients"
    assert NeuralClassifierPredictor("transformer", {}, ["a"], vocab, nn.Linear(1, 1)).explain_method == "occlusion"
    predictor.explain_method = "shap"
    with pytest.raises(ValueError, match="explain_method must be one of"):
        predictor.attribute(texts[:1])


def test_byte_level_pieces_come_back_as_whole_words():
    corpus = [" ".join(WORDS)] * 3
    bpe = BPETokenizer.train(corpus, vocab_size=300, min_frequency=2, lowercase=True)
    params = resolve_params("transformer", {"num_layers": 1, "dim": 16, "num_heads": 2})
    torch.manual_seed(0)
    model = build_model("transformer", model_config("transformer", params, bpe.vocab_size, 2, 32)).eval()
    text = "Zebras and unexpectedly-windowed horses, river."
    assert len(bpe.encode(text)) > len(TextWords(text).keys)  # some words are split into pieces
    [item] = ig_predictor("transformer", bpe, model, max_length=32).attribute([text])
    assert set(item.scores) == set(TextWords(text).keys)
    assert any(score != 0 for score in item.scores.values())


@needs_minilm
def test_word_pieces_merge_into_whole_words_for_the_pretrained_encoder():
    predictor = tiny_pretrained_predictor(max_length=32)
    predictor.explain_method = "integrated_gradients"
    model, tokenizer = predictor.model, predictor.tokenizer
    text = "Tokenization unbelievably overcomplicates microeconomics, says Zyxwvut."
    pieces = tokenizer.tokenize(text)
    assert any(piece.startswith("##") for piece in pieces)
    [item] = predictor.attribute([text])
    assert set(item.scores) == set(TextWords(text).keys)
    # A word's score is the sum of its pieces' token scores.
    ids, baseline, extra, _ = predictor.gradient_inputs([text])
    scores, _ = token_attributions(
        model,
        predictor.embedding_layer(),
        ids,
        baseline,
        torch.tensor([item.label]),
        extra,
        predictor.ig_steps,
    )
    word_ids = tokenizer(text).word_ids()
    first_word = [i for i, w in enumerate(word_ids) if w == 0]
    assert len(first_word) > 1  # "Tokenization" is several pieces
    assert item.scores["tokenization"] == pytest.approx(
        float(scores[0, first_word].sum()), rel=1e-4, abs=1e-7
    )
