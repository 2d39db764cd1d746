"""Out-of-vocabulary shares per classifier kind: known words give 0, unknown words 1, a mix its share."""

from __future__ import annotations

import pytest

from components.text.oov import split_word_share, unknown_id_share

KNOWN = "apple banana cherry apple"
UNKNOWN = "zqxv wkyjp"
TRAIN = [f"{KNOWN} banana cherry", "cherry apple banana"] * 20


def test_the_share_rules():
    assert unknown_id_share([5, 1, 7, 1], unk_id=1) == 0.5
    assert unknown_id_share([], unk_id=1) == 1.0  # nothing the model reads: wholly unknown
    # word 0 whole, word 1 in two pieces, word 2 whole but the unknown token; None: a special token
    assert split_word_share([None, 0, 1, 1, 2, None], [101, 7, 8, 9, 100, 102], unk_id=100) == pytest.approx(
        2 / 3
    )


@pytest.fixture(scope="module")
def tfidf_models() -> dict:
    from components.config import ModelSpec
    from components.data.dataset import ClassificationData
    from components.models.tfidf import train

    labels = ["a", "b"] * 20
    data = ClassificationData(TRAIN, labels, TRAIN[:4], labels[:4], TRAIN[:4], labels[:4], labels=["a", "b"])
    variants = {
        # word 1-2-grams plus a character branch, as the default model: only the word branch's words count
        "default": {"min_df": 1, "char_ngrams": [2, 3]},
        # word unigrams only (the cheap serving model): the prediction's own lookups give the shares
        "unigrams": {"min_df": 1, "char_ngrams": None, "word_ngrams": [1, 1]},
    }
    return {
        name: train(ModelSpec(name="t", kind="tfidf_logreg", params=params), data, None, lambda m, s: None)
        for name, params in variants.items()
    }


@pytest.mark.parametrize("variant", ["default", "unigrams"])
def test_tfidf_counts_words_missing_from_the_word_vocabulary(tfidf_models, variant):
    predictor = tfidf_models[variant]
    texts = [KNOWN, UNKNOWN, f"{KNOWN} {UNKNOWN}", "Apple!", "?"]
    expected = [0.0, 1.0, pytest.approx(2 / 6), 0.0, 1.0]  # lowercased as the vectoriser does; "?": no word
    assert predictor.oov_shares(texts) == expected
    # One pass for both gives the same numbers (the unigram model counts them inside its prediction).
    assert (predictor._scorer.oov_branch is not None) == (variant == "unigrams")
    items, oov = predictor.predict_with_oov(texts)
    assert oov == expected and items == predictor.predict(texts)


def _torch_predictor(cls, kind: str, tokenizer, config: dict):
    import torch.nn as nn

    return cls(kind, config, ["a", "b"], tokenizer, nn.Identity())  # the network plays no part


def test_word_vocabulary_counts_unknown_ids():
    from components.models.neural_classifier import NeuralClassifierPredictor
    from components.text.word_vocab import WordVocab

    vocab = WordVocab.build(TRAIN, min_freq=1)
    predictor = _torch_predictor(
        NeuralClassifierPredictor, "lstm", vocab, {"tokenizer": "word", "max_length": 8}
    )
    shares = predictor.oov_shares([KNOWN, UNKNOWN, f"{KNOWN} {UNKNOWN}"])
    assert shares == [0.0, 1.0, pytest.approx(2 / 6)]


def test_bpe_counts_words_it_cannot_hold_whole():
    from components.models.neural_classifier import NeuralClassifierPredictor
    from components.text.bpe import BPETokenizer

    bpe = BPETokenizer.train([" " + text for text in TRAIN], vocab_size=300, min_frequency=2)
    predictor = _torch_predictor(
        NeuralClassifierPredictor, "transformer", bpe, {"tokenizer": "bpe", "max_length": 8}
    )
    shares = predictor.oov_shares([" " + KNOWN, " " + UNKNOWN, f" {KNOWN} {UNKNOWN}"])
    assert shares == [0.0, 1.0, pytest.approx(2 / 6)]


def test_pretrained_counts_words_split_into_pieces():
    from transformers import AutoTokenizer

    from components.models.pretrained import PretrainedPredictor, default_model_folder

    try:
        folder = default_model_folder()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    predictor = _torch_predictor(PretrainedPredictor, "pretrained", tokenizer, {"max_length": 8})
    known = "the cat sat on the mat"
    shares = predictor.oov_shares([known, UNKNOWN, f"{known} {UNKNOWN}", "\u2603" * 3])
    assert shares[:3] == [0.0, 1.0, pytest.approx(2 / 8)]
    assert shares[3] == 1.0  # characters the vocabulary lacks: [UNK]
