"""Memory-mapped token shards: the same ids as in-memory encoding, cached per data version and tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.text.classifier_tokenizer import encode_padded
from components.text.token_shards import TOKENS_FILE, cached_token_shards, fingerprint_file, rank_part
from components.text.word_vocab import WordVocab

TEXTS = [f"the {w} story number {i} about {w} and more {w}" for i, w in
         enumerate(["river", "market", "engine", "garden", "signal", "orbit", "canvas"] * 3)]


@pytest.fixture
def vocab(tmp_path) -> tuple[WordVocab, str]:
    tokenizer = WordVocab.build(TEXTS, min_freq=1, max_size=100)
    return tokenizer, fingerprint_file(tokenizer.save(tmp_path / "vocab.json"))


def _build(root, version, key, tokenizer, calls, name="train", texts=TEXTS, vocab_size=None):
    def batches():
        calls.append(version)
        return (texts[i : i + 4] for i in range(0, len(texts), 4))

    return cached_token_shards(root, version, key, name, batches, tokenizer.encode_batch,
                               vocab_size or tokenizer.vocab_size)


def test_rows_read_from_the_map_equal_in_memory_encoding(tmp_path, vocab):
    tokenizer, key = vocab
    shards = _build(tmp_path, "v1", key, tokenizer, [])
    assert len(shards) == len(TEXTS) and shards.tokens.dtype == np.uint16
    idx = torch.tensor([5, 0, 17, 3])
    ids, lengths = shards.batcher(max_length=6)(idx)
    expected_ids, expected_lengths = encode_padded(tokenizer, [TEXTS[i] for i in idx.tolist()], 6)
    assert torch.equal(ids, expected_ids) and torch.equal(lengths, expected_lengths)
    assert torch.equal(shards.lengths(6), encode_padded(tokenizer, TEXTS, 6)[1])
    assert [d.tolist() for d in shards.documents()] == tokenizer.encode_batch(TEXTS)
    targets = torch.arange(len(TEXTS)) * 10
    assert torch.equal(shards.batcher(6, targets)(idx)[2], targets[idx])


def test_the_same_version_and_tokenizer_reuse_the_cache_and_others_rebuild(tmp_path, vocab):
    tokenizer, key = vocab
    calls: list[str] = []
    first = _build(tmp_path, "v1", key, tokenizer, calls)
    stamp = (first.folder / TOKENS_FILE).stat().st_mtime_ns
    again = _build(tmp_path, "v1", key, tokenizer, calls)
    assert calls == ["v1"] and again.folder == first.folder
    assert (again.folder / TOKENS_FILE).stat().st_mtime_ns == stamp
    other_data = _build(tmp_path, "v2", key, tokenizer, calls, texts=TEXTS[:5])
    other_tokenizer = _build(tmp_path, "v1", "another-tokenizer", tokenizer, calls)
    assert calls == ["v1", "v2", "v1"] and len(other_data) == 5
    assert len({first.folder, other_data.folder, other_tokenizer.folder}) == 3


def test_a_corpus_is_one_stream_and_large_vocabularies_take_uint32(tmp_path, vocab):
    tokenizer, key = vocab
    corpus = " ".join(TEXTS)
    shards = _build(tmp_path, "v1", key, tokenizer, [], name="corpus", texts=[corpus], vocab_size=70_000)
    assert shards.tokens.dtype == np.uint32 and len(shards) == 1
    assert shards.stream().tolist() == tokenizer.encode(corpus)


def test_ranks_read_disjoint_parts_that_cover_every_document():
    for n, world in ((21, 2), (10, 3), (2, 4)):
        parts = [set(rank_part(n, rank, world)) for rank in range(world)]
        assert set().union(*parts) == set(range(n)) and sum(map(len, parts)) == n
    with pytest.raises(ValueError, match="rank 2 is outside a world of 2"):
        rank_part(5, 2, 2)


def test_language_model_windows_read_from_the_map_equal_those_of_the_tensor(tmp_path, vocab):
    from components.training.batches import TokenWindowBatches

    tokenizer, key = vocab
    corpus = _build(tmp_path, "v1", key, tokenizer, [], name="corpus", texts=[" ".join(TEXTS)])
    mapped = TokenWindowBatches(corpus.tokens, 8, 4, seed=3)
    in_memory = TokenWindowBatches(corpus.stream(), 8, 4, seed=3)
    for (x, y), (x_ref, y_ref) in zip(mapped.batches(1), in_memory.batches(1), strict=True):
        assert x.dtype == torch.int64 and torch.equal(x, x_ref) and torch.equal(y, y_ref)
