"""Language-model candidates end to end on a tiny corpus: learning, sampling, bundles."""

from __future__ import annotations

import math

import pytest
import torch

from components.config import ModelSpec, TrainingSpec
from components.data.dataset import CorpusData
from components.evaluation.language_model import evaluate_text
from components.models.lm_predictor import LanguageModelPredictor, split_params, train
from components.predictor import load_predictor
from components.text.char_tokenizer import CharTokenizer
from components.training.candidates import train_candidate

TEXT = "the quick brown fox jumps over the lazy dog.\nto be or not to be, that is the question.\n" * 30
CORPUS = CorpusData(train_text=TEXT[: int(len(TEXT) * 0.9)], val_text=TEXT[int(len(TEXT) * 0.9) :])
VOCAB = len(set(TEXT)) + 1  # + <unk>

TINY = {
    "gpt": {"block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 32, "sample_tokens": 20},
    "lstm_lm": {"block_size": 32, "n_embd": 32, "hidden_size": 64, "n_layer": 1, "sample_tokens": 20},
}


def tiny_spec(kind: str, steps: int = 150, **params) -> ModelSpec:
    training = TrainingSpec(
        device="cpu",
        seed=0,
        max_steps=steps,
        batch_size=16,
        lr=1e-2,
        min_lr=1e-3,
        warmup_steps=10,
        weight_decay=0.0,
        eval_every=50,
        eval_batches=2,
        num_threads=1,
    )
    return ModelSpec(
        name=f"tiny-{kind}".replace("_", "-"), kind=kind, params=TINY[kind] | params, training=training
    )


@pytest.fixture(scope="module", params=["gpt", "lstm_lm"])
def trained(request, tmp_path_factory) -> LanguageModelPredictor:
    workdir = tmp_path_factory.mktemp(request.param)
    return train_candidate(tiny_spec(request.param), CORPUS, workdir)


def test_learns_the_tiny_corpus(trained):
    metrics = trained.metadata["metrics"]
    assert set(metrics) == {"loss", "perplexity", "bits_per_char"}
    assert metrics["loss"] < 0.3 * math.log(VOCAB)  # far below the uniform loss
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]))
    # One character per token: bits per char is the loss in bits.
    assert metrics["bits_per_char"] == pytest.approx(metrics["loss"] / math.log(2), rel=0.02)
    assert len(trained.metadata["samples"]) == 3
    assert trained.metadata["training"]["steps"] == 150


def test_generates_the_corpus_continuation(trained):
    out = trained.generate("to be or not to", max_new_tokens=12, temperature=0.05, seed=0)
    assert out == " be, that is"


def test_temperature_zero_continues_the_corpus_greedily(trained):
    assert trained.generate("to be or not to", max_new_tokens=12, temperature=0, seed=3) == " be, that is"


def test_a_stop_sequence_ends_the_text_before_it(trained):
    full = trained.generate("to be or not to", max_new_tokens=12, temperature=0)
    assert full == " be, that is"
    assert trained.generate("to be or not to", max_new_tokens=12, temperature=0, stop=[", t"]) == " be"
    # The earliest of several stops wins; a stop that never appears changes nothing.
    assert trained.generate("to be or not to", max_new_tokens=12, temperature=0, stop=["is", "e,"]) == " b"
    assert trained.generate("to be or not to", max_new_tokens=12, temperature=0, stop=["zzz", ""]) == full


def test_stream_joins_to_generate_one_piece_per_character(trained):
    kwargs = dict(max_new_tokens=40, temperature=1.5, top_k=20, seed=11)
    pieces = list(trained.stream("to be", **kwargs))
    assert "".join(pieces) == trained.generate("to be", **kwargs)
    assert len(pieces) == 40  # one character per token: each arrives as it is sampled
    stopped = list(trained.stream("to be or not to", max_new_tokens=12, temperature=0, stop=[", t"]))
    assert "".join(stopped) == " be"


def test_stream_never_yields_part_of_a_stop_string(trained):
    # The text goes on " be, that is": ", tha" is held back as the possible start of ", thaX"
    # and released with the "t" that shows it is not; nothing is lost.
    pieces = list(trained.stream("to be or not to", max_new_tokens=12, temperature=0, stop=[", thaX"]))
    assert pieces == [" ", "b", "e", ", that", " ", "i", "s"]


def count_forward_calls(predictor: LanguageModelPredictor) -> list[int]:
    """A list whose length is the number of model steps run since (one output head call each)."""
    calls: list[int] = []
    predictor.model.lm_head.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_closing_the_stream_stops_computing(trained):
    calls = count_forward_calls(trained)
    stream = trained.stream("the ", max_new_tokens=100, temperature=1.0, seed=0)
    assert calls == []  # nothing runs before the first piece is asked for
    for _ in range(3):
        next(stream)
    stream.close()
    assert len(calls) == 3  # one step per piece taken, none after


def test_a_stop_string_computes_no_further_token(trained):
    calls = count_forward_calls(trained)
    assert trained.generate("to be or not to", max_new_tokens=12, temperature=0, stop=[", t"]) == " be"
    assert len(calls) == len(" be, t")


def test_bad_parameters_raise_when_the_stream_is_asked_for(trained):
    with pytest.raises(ValueError, match="temperature"):
        trained.stream("the", temperature=-1)  # not iterated: the error comes before any piece


def test_same_seed_same_text_different_seed_differs(trained):
    kwargs = dict(max_new_tokens=60, temperature=2.0)
    a = trained.generate("the ", seed=7, **kwargs)
    assert a == trained.generate("the ", seed=7, **kwargs)
    assert a != trained.generate("the ", seed=8, **kwargs)


def test_unknown_characters_empty_and_long_prompts(trained):
    assert isinstance(trained.generate("thé 🙂 qu\x00ick", max_new_tokens=5, seed=0), str)
    assert len(trained.generate("", max_new_tokens=5, seed=0)) == 5
    assert len(trained.generate("the lazy dog " * 50, max_new_tokens=5, seed=0)) == 5  # > block_size


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(temperature=-0.5), "temperature"),
        (dict(top_k=-2), "top_k"),
        (dict(top_p=0.0), "top_p"),
    ],
)
def test_invalid_sampling_parameters(trained, kwargs, name):
    with pytest.raises(ValueError, match=name):
        trained.generate("the", **kwargs)


def test_bundle_round_trip(trained, tmp_path):
    folder = trained.save(tmp_path / "bundle")
    loaded = load_predictor(folder)
    assert isinstance(loaded, LanguageModelPredictor)
    assert loaded.kind == trained.kind and loaded.config == trained.config
    assert loaded.metadata["metrics"] == trained.metadata["metrics"]
    kwargs = dict(max_new_tokens=40, temperature=0.9, top_k=10, top_p=0.95, seed=3)
    assert loaded.generate("to be", **kwargs) == trained.generate("to be", **kwargs)


def test_bpe_tokenizer_and_bits_per_char(tmp_path):
    spec = tiny_spec("gpt", steps=60, tokenizer="bpe", bpe_vocab_size=300, bpe_min_frequency=2)
    predictor = train(spec, CORPUS, tmp_path)
    assert predictor.config["tokenizer"] == "bpe"
    metrics = predictor.metadata["metrics"]
    assert all(math.isfinite(v) for v in metrics.values())
    # Several characters per token: bits per char is well below the loss in bits per token.
    assert metrics["bits_per_char"] < 0.8 * metrics["loss"] / math.log(2)
    loaded = load_predictor(predictor.save(tmp_path / "bundle"))
    assert loaded.generate("to be", max_new_tokens=8, seed=1) == predictor.generate(
        "to be", max_new_tokens=8, seed=1
    )


def test_training_again_in_the_same_workdir_resumes(tmp_path):
    spec = tiny_spec("lstm_lm", steps=20)
    first = train(spec, CORPUS, tmp_path)
    second = train(spec, CORPUS, tmp_path)  # the finished checkpoint: no new steps
    assert second.metadata["metrics"] == first.metadata["metrics"]


def test_unknown_params_are_errors():
    with pytest.raises(ValueError, match="n_hidden"):
        split_params("lstm_lm", {"n_hidden": 3})
    with pytest.raises(ValueError, match="tokenizer"):
        split_params("gpt", {"tokenizer": "word"})
    options, model = split_params("gpt", {"n_layer": 2, "tokenizer": "bpe"})
    assert options.tokenizer == "bpe" and model == {"n_layer": 2}


def test_evaluate_text_is_deterministic_and_scores_every_token():
    from components.models.gpt import GPT, GPTConfig

    tok = CharTokenizer.from_text(TEXT)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=1, n_embd=8))
    text = TEXT[:101]
    a = evaluate_text(model, tok, text, block_size=16, batch_size=3)
    assert a == evaluate_text(model, tok, text, block_size=16, batch_size=5)
    assert a["tokens"] == 100 and a["chars"] == 100
    # An untrained model is close to uniform.
    assert a["loss"] == pytest.approx(math.log(tok.vocab_size), rel=0.1)
