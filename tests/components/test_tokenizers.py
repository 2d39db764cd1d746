"""Word vocabulary and byte-level BPE: fitting, special ids, truncation, round trips."""

from __future__ import annotations

import json

import pytest

from components.text.bpe import BPETokenizer
from components.text.word_vocab import PAD_ID, UNK_ID, WordVocab

TRAIN = [
    "The match ended with a late goal.",
    "A late goal won the match for the home team!",
    "The new phone has a faster chip.",
    "The chip in the phone runs the new software.",
]


def test_word_vocab_frequency_order_and_specials():
    vocab = WordVocab.build(TRAIN, min_freq=2)
    assert vocab.tokens[:2] == ["<pad>", "<unk>"]
    assert vocab.tokens[2] == "the"  # most frequent first
    assert "software" not in vocab.tokens  # seen once < min_freq
    assert vocab.encode("The GOAL software") == [
        vocab.tokens.index("the"),
        vocab.tokens.index("goal"),
        UNK_ID,
    ]
    assert PAD_ID not in vocab.encode("the the the")


def test_word_vocab_max_size_truncation_and_case():
    vocab = WordVocab.build(TRAIN, max_size=5)
    assert vocab.vocab_size == 5
    assert len(vocab.encode(" ".join(["the"] * 50), max_length=7)) == 7
    cased = WordVocab.build(["Apple apple"], lowercase=False)
    assert {"Apple", "apple"} <= set(cased.tokens)
    assert WordVocab.build(["Apple apple"]).tokens == ["<pad>", "<unk>", "apple"]


def test_word_vocab_save_load_round_trip(tmp_path):
    vocab = WordVocab.build(TRAIN, min_freq=1, lowercase=True)
    path = vocab.save(tmp_path / "vocab.json")
    assert json.loads(path.read_text())["type"] == "word"
    loaded = WordVocab.load(path)
    assert loaded.tokens == vocab.tokens and loaded.lowercase
    text = "The late goal won. The new chip runs!"
    assert loaded.encode(text) == vocab.encode(text)
    assert loaded.decode(loaded.encode(text)) == "the late goal won . the new chip runs !"


def test_word_vocab_rejects_a_foreign_file(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"type": "char", "chars": []}))
    with pytest.raises(ValueError, match="not a word vocabulary"):
        WordVocab.load(tmp_path / "x.json")


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train(TRAIN * 5, vocab_size=300, min_frequency=2)


def test_bpe_special_ids_and_vocab_size(bpe):
    assert bpe.token_to_id("<pad>") == 0 and bpe.token_to_id("<unk>") == 1
    assert 258 < bpe.vocab_size <= 300
    assert len(bpe.encode("the match")) < len("the match")  # merges were learnt


@pytest.mark.parametrize(
    "text",
    ["The match ended.", "  spaces,\ttabs\nand newlines\n\n", "Ünïcödé — emoji 🎉 and 漢字", ""],
)
def test_bpe_decode_inverts_encode_exactly(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


def test_bpe_save_load_truncation_and_batches(bpe, tmp_path):
    loaded = BPETokenizer.load(bpe.save(tmp_path / "tokenizer.json"))
    text = "The home team won the match with a late goal."
    assert loaded.encode(text) == bpe.encode(text)
    assert loaded.vocab_size == bpe.vocab_size
    assert len(loaded.encode(text, max_length=3)) == 3
    assert loaded.encode_batch([text, "chip"], max_length=3) == [bpe.encode(text)[:3], bpe.encode("chip")]


def test_bpe_extra_special_tokens_and_minimum_size():
    tok = BPETokenizer.train(TRAIN, vocab_size=270, special_tokens=["<eos>"])
    assert tok.token_to_id("<eos>") == 2
    with pytest.raises(ValueError, match="at least"):
        BPETokenizer.train(TRAIN, vocab_size=100)
