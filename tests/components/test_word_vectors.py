"""PPMI-SVD word vectors from the training texts, and the embedding they initialise."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from components.models.lstm import LSTMClassifier, LSTMConfig
from components.models.neural_classifier import init_embedding_from_ids
from components.text.word_vectors import cooccurrence, ppmi, ppmi_svd_vectors
from components.text.word_vocab import WordVocab

TOPICS = {
    "sport": "goal match team player score league coach striker".split(),
    "money": "shares market profit bank stocks investors price trade".split(),
}
FILLER = "the a of and to in is was".split()


def corpus(n: int = 200, seed: int = 0) -> list[str]:
    """Texts on one topic each: a topic's words share contexts, the two topics never meet."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        words = TOPICS[rng.choice(sorted(TOPICS))]
        texts.append(
            " ".join(rng.choice(words) if rng.random() < 0.6 else rng.choice(FILLER) for _ in range(20))
        )
    return texts


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_cooccurrence_counts_pairs_within_the_window_both_ways():
    counts = cooccurrence([[1, 2, 3]], vocab_size=4, window=1).toarray()
    expected = np.zeros((4, 4))
    expected[1, 2] = expected[2, 1] = expected[2, 3] = expected[3, 2] = 1
    np.testing.assert_array_equal(counts, expected)
    assert cooccurrence([[1, 2, 3]], vocab_size=4, window=2).toarray()[1, 3] == 1


def test_ppmi_keeps_only_pairs_seen_more_often_than_chance():
    # 1 and 2 always together, 3 and 4 always together: those pairs are positive, the rest absent.
    counts = cooccurrence([[1, 2]] * 5 + [[3, 4]] * 5, vocab_size=5, window=1)
    matrix = ppmi(counts).toarray()
    assert matrix[1, 2] > 0 and matrix[3, 4] > 0
    assert matrix[1, 3] == 0 and matrix[2, 4] == 0
    assert (matrix >= 0).all()


def test_words_sharing_contexts_get_close_vectors():
    texts = corpus()
    vocab = WordVocab.build(texts, min_freq=1, max_size=100)
    ids = vocab.encode_batch(texts)
    vectors = ppmi_svd_vectors(ids, vocab.vocab_size, dim=8, window=2)
    assert vectors.shape == (vocab.vocab_size, 8)
    row = {word: vectors[vocab.encode(word)[0]] for words in TOPICS.values() for word in words}
    same = np.mean([cosine(row["goal"], row[w]) for w in TOPICS["sport"] if w != "goal"])
    other = np.mean([cosine(row["goal"], row[w]) for w in TOPICS["money"]])
    assert same > 0.5 and other < 0.2
    again = ppmi_svd_vectors(ids, vocab.vocab_size, dim=8, window=2)
    np.testing.assert_array_equal(vectors, again)  # seeded: the same run gives the same vectors


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="below the vocabulary size"):
        ppmi_svd_vectors([[1, 2, 3]], vocab_size=4, dim=4)
    with pytest.raises(ValueError, match="no co-occurring tokens"):
        ppmi_svd_vectors([[1], [2]], vocab_size=10, dim=2)


def test_the_embedding_starts_from_the_vectors_at_its_own_scale():
    texts = corpus()
    vocab = WordVocab.build(texts, min_freq=1, max_size=100)
    torch.manual_seed(0)
    model = LSTMClassifier(LSTMConfig(vocab_size=vocab.vocab_size, num_classes=2, embed_dim=8, hidden_size=8))
    embedding = model.token_embedding
    scale = float(embedding.weight.detach().std())
    init_embedding_from_ids(embedding, vocab.encode_batch(texts), seed=0)

    weight = embedding.weight.detach().numpy()
    assert float(np.abs(weight[embedding.padding_idx]).max()) == 0.0
    assert float(weight.std()) == pytest.approx(scale, rel=0.05)
    expected = ppmi_svd_vectors(vocab.encode_batch(texts), vocab.vocab_size, 8, window=5, seed=0) * scale
    expected[embedding.padding_idx] = 0
    np.testing.assert_allclose(weight, expected, rtol=1e-5, atol=1e-6)


def test_a_vocabulary_smaller_than_the_embedding_fills_what_it_can():
    """A small dataset (here 10 words) with the default 128-wide LSTM embedding: no error, the SVD
    fills vocab_size - 1 dimensions and the others keep the layer's random start."""
    texts = corpus()
    vocab = WordVocab.build(texts, min_freq=1, max_size=100)
    dim = vocab.vocab_size + 5
    torch.manual_seed(0)
    model = LSTMClassifier(LSTMConfig(vocab_size=vocab.vocab_size, num_classes=2, embed_dim=dim, hidden_size=8))
    before = model.token_embedding.weight.detach().clone()
    init_embedding_from_ids(model.token_embedding, vocab.encode_batch(texts), seed=0)

    weight = model.token_embedding.weight.detach()
    rank = vocab.vocab_size - 1
    rows = [i for i in range(vocab.vocab_size) if i != model.token_embedding.padding_idx]
    assert torch.equal(weight[rows, rank:], before[rows, rank:])
    assert not torch.equal(weight[rows, :rank], before[rows, :rank])
