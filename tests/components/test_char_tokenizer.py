"""Character tokenizer: round trip, unknown characters, determinism, save/load."""

from __future__ import annotations

import pytest

from components.text.char_tokenizer import UNK_ID, CharTokenizer


def test_round_trip_and_sorted_vocabulary():
    tok = CharTokenizer.from_text("hello world\n")
    assert tok.chars == sorted(set("hello world\n"))
    assert tok.vocab_size == len(set("hello world\n")) + 1
    assert tok.decode(tok.encode("hello\nworld")) == "hello\nworld"
    assert UNK_ID not in tok.encode("hello")


def test_unknown_characters_map_to_unk_and_decode_to_nothing():
    tok = CharTokenizer.from_text("abc")
    ids = tok.encode("a🙂z\tb")
    assert ids == [tok.encode("a")[0], UNK_ID, UNK_ID, UNK_ID, tok.encode("b")[0]]
    assert tok.decode(ids) == "ab"
    assert tok.encode("") == []


def test_same_text_same_vocabulary():
    assert CharTokenizer.from_text("zyx").chars == CharTokenizer.from_text("xzy").chars


def test_save_and_load(tmp_path):
    tok = CharTokenizer.from_text("Ünïcödé text\n")
    path = tok.save(tmp_path / "tokenizer.json")
    loaded = CharTokenizer.load(path)
    assert loaded.chars == tok.chars
    assert loaded.encode("text Ü") == tok.encode("text Ü")


def test_invalid_vocabulary():
    with pytest.raises(ValueError, match="one character"):
        CharTokenizer(["ab"])
    with pytest.raises(ValueError, match="duplicate"):
        CharTokenizer(["a", "a"])
