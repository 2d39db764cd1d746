"""The `pretrained_lm` kind on a tiny random Llama built offline: fine-tuning (full and LoRA),
bits per character, the bundle round trip and streamed generation with the KV cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from components.config import ModelSpec, TrainingSpec
from components.data.dataset import CorpusData
from components.models.pretrained_lm import (
    ADAPTER_DIR,
    GENERATION_DEFAULTS,
    PretrainedLMPredictor,
    load_pretrained,
    resolve_params,
    train,
)
from components.predictor import load_predictor
from tests.tiny_causal_lm import bbc_text, build_tiny_causal_lm

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = "The company said profits"


@pytest.fixture(scope="session")
def corpus() -> CorpusData:
    text = bbc_text(30)
    cut = int(len(text) * 0.85)
    return CorpusData(train_text=text[:cut], val_text=text[cut:])


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory, corpus) -> Path:
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"), corpus.train_text)


def make_spec(folder: Path, **params) -> ModelSpec:
    return ModelSpec(
        name="tiny-lm",
        kind="pretrained_lm",
        params={"model": str(folder), "block_size": 32, "sample_tokens": 10, **params},
        training=TrainingSpec(device="cpu", max_steps=30, batch_size=8, lr=1e-2, eval_every=15, eval_batches=2,
                              num_threads=1),
    )


def untrained(folder: Path) -> PretrainedLMPredictor:
    tokenizer, model = load_pretrained(str(folder))
    config = {"block_size": 32, "lora": None, "generation": GENERATION_DEFAULTS}
    return PretrainedLMPredictor(model, tokenizer, config)


def train_with_history(spec: ModelSpec, corpus: CorpusData, workdir: Path) -> tuple[PretrainedLMPredictor, list]:
    losses: list[float] = []
    predictor = train(spec, corpus, workdir, lambda metrics, step: losses.extend(
        [metrics["train_loss"]] if "train_loss" in metrics else []))
    return predictor, losses


@pytest.fixture(scope="module")
def full(tiny_lm, corpus, tmp_path_factory):
    return train_with_history(make_spec(tiny_lm), corpus, tmp_path_factory.mktemp("full"))


@pytest.fixture(scope="module")
def lora(tiny_lm, corpus, tmp_path_factory):
    spec = make_spec(tiny_lm, lora={"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}, keep_adapter=True)
    spec.training.lr = 5e-2  # only the small adapter trains: it takes a larger step
    return train_with_history(spec, corpus, tmp_path_factory.mktemp("lora"))


def logits(predictor: PretrainedLMPredictor, text: str) -> torch.Tensor:
    ids = torch.tensor([predictor.text.encode(text)])
    with torch.no_grad():
        return predictor.model(input_ids=ids).logits


# -- fine-tuning and bits per character ---------------------------------------------------------
@pytest.mark.parametrize("which", ["full", "lora"])
def test_fine_tuning_lowers_the_loss_and_the_bits_per_char(which, request, tiny_lm, corpus):
    predictor, losses = request.getfixturevalue(which)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.05
    before = untrained(tiny_lm).evaluate(corpus.val_text)["bits_per_char"]
    after = predictor.metadata["metrics"]["bits_per_char"]
    assert 0 < after < before
    assert predictor.metadata["training"]["steps"] == 30


def test_bits_per_char_is_the_nats_over_the_validation_characters(full, corpus):
    """Scored on the validation split, as the GPT's: the metadata is the same number evaluate() gives."""
    predictor, _ = full
    metrics = predictor.evaluate(corpus.val_text)
    assert metrics == pytest.approx(predictor.metadata["metrics"])
    assert predictor.evaluate(corpus.train_text[:5000])["bits_per_char"] != pytest.approx(metrics["bits_per_char"])


def test_lora_trains_only_the_adapter(lora, tiny_lm):
    predictor, _ = lora
    _, base = load_pretrained(str(tiny_lm))
    original = dict(base.named_parameters())
    frozen, adapters = 0, 0
    for name, param in predictor.model.named_parameters():
        if "lora_" in name:
            adapters += param.numel()
            assert param.requires_grad
            continue
        plain = name.removeprefix("base_model.model.").replace(".base_layer", "")
        assert not param.requires_grad and torch.equal(param, original[plain]), name
        frozen += 1
    assert adapters > 0 and frozen == len(original)
    assert predictor.metadata["training"]["trained_params"] == adapters


def test_the_lora_bundle_is_merged_reloads_with_the_same_outputs_and_keeps_the_adapter(lora, tmp_path):
    from transformers import AutoModelForCausalLM

    predictor, _ = lora
    before = logits(predictor, PROMPT)
    text = predictor.generate(PROMPT, max_new_tokens=20, seed=5)
    folder = predictor.save(tmp_path / "bundle")
    assert (folder / ADAPTER_DIR / "adapter_config.json").is_file()
    # A plain Hugging Face folder: the merged weights load without peft.
    plain = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    assert not any("lora_" in name for name, _ in plain.named_parameters())
    loaded = load_predictor(folder)
    assert torch.allclose(logits(loaded, PROMPT), before, atol=1e-5)
    assert loaded.generate(PROMPT, max_new_tokens=20, seed=5) == text


def test_full_bundle_round_trip_gives_the_same_logits_text_and_defaults(full, tmp_path):
    predictor, _ = full
    folder = predictor.save(tmp_path / "bundle")
    loaded = load_predictor(folder)
    assert isinstance(loaded, PretrainedLMPredictor) and not (folder / ADAPTER_DIR).exists()
    assert torch.allclose(logits(loaded, PROMPT), logits(predictor, PROMPT), atol=1e-6)
    assert loaded.generate(PROMPT, max_new_tokens=25, seed=3) == predictor.generate(PROMPT, max_new_tokens=25, seed=3)
    assert loaded.config["generation"] == GENERATION_DEFAULTS
    assert loaded.metadata["metrics"] == predictor.metadata["metrics"]
    assert loaded.model.generation_config.max_new_tokens == GENERATION_DEFAULTS["max_new_tokens"]


# -- generation ---------------------------------------------------------------------------
def test_seeds_and_greedy_decoding(full):
    predictor, _ = full
    same = [predictor.generate(PROMPT, max_new_tokens=30, seed=7) for _ in range(2)]
    assert same[0] == same[1] and same[0]
    assert predictor.generate(PROMPT, max_new_tokens=30, seed=8) != same[0]
    greedy = {predictor.generate(PROMPT, max_new_tokens=30, temperature=0, seed=s) for s in (1, 2)}
    assert len(greedy) == 1
    assert predictor.generate("", max_new_tokens=10, seed=0)  # an empty prompt starts at the text boundary


def test_stream_pieces_join_to_the_generated_text_with_no_split_character(full):
    predictor, _ = full
    for seed in range(4):
        pieces = list(predictor.stream("Shares rose by £", max_new_tokens=40, seed=seed, top_k=50, top_p=0.9))
        assert "".join(pieces) == predictor.generate("Shares rose by £", max_new_tokens=40, seed=seed, top_k=50,
                                                     top_p=0.9)
        assert all(piece for piece in pieces)
        # A piece ends inside a multi-byte character only where the generation itself ends.
        assert not any(piece.endswith("\ufffd") for piece in pieces[:-1])


def test_max_new_tokens_bounds_the_forward_passes(full):
    predictor, _ = full
    calls = []
    hook = predictor.model.register_forward_hook(lambda *args: calls.append(1))
    try:
        predictor.generate(PROMPT, max_new_tokens=7, temperature=0)
    finally:
        hook.remove()
    assert 1 <= len(calls) <= 7


def test_a_stop_string_ends_the_text_before_it(full):
    predictor, _ = full
    text = predictor.generate(PROMPT, max_new_tokens=40, seed=11)
    stop = text[10:12]
    cut = text.find(stop)
    pieces = list(predictor.stream(PROMPT, max_new_tokens=40, seed=11, stop=["never-there", stop]))
    assert "".join(pieces) == text[:cut]
    assert stop not in "".join(pieces)


def test_closing_the_stream_stops_computing(full):
    predictor, _ = full
    calls = []
    hook = predictor.model.register_forward_hook(lambda *args: calls.append(1))
    try:
        stream = predictor.stream(PROMPT, max_new_tokens=60, seed=0)
        next(stream)
        started = len(calls)
        stream.close()
        assert list(stream) == []
    finally:
        hook.remove()
    assert started < 10 and len(calls) == started


def test_bad_sampling_parameters_raise_before_any_piece(full):
    predictor, _ = full
    with pytest.raises(ValueError, match="top_p"):
        predictor.stream(PROMPT, top_p=0)


# -- loading and params -------------------------------------------------------------------
def test_a_missing_model_folder_is_one_clear_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="model folder .*missing-model does not exist") as info:
        load_pretrained(str(tmp_path / "missing-model"))
    assert "\n" not in str(info.value)


def test_a_hub_id_not_in_the_cache_says_how_to_allow_the_download():
    with pytest.raises(FileNotFoundError, match="allow_download: true") as info:
        load_pretrained("maas-tests-nobody/no-such-model")
    assert "'maas-tests-nobody/no-such-model'" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({}, "params.model is required"),
        ({"model": "m", "lr": 1}, r"unknown pretrained_lm params keys \['lr'\]"),
        ({"model": "m", "lora": {"rank": 4}}, r"unknown params.lora keys \['rank'\]"),
        ({"model": "m", "keep_adapter": True}, "keep_adapter needs params.lora"),
        ({"model": "m", "generation": {"temperature": -1}}, "temperature"),
    ],
)
def test_bad_params_are_named(params, says):
    with pytest.raises(ValueError, match=says):
        resolve_params(params)


def test_the_spec_defaults_fill_in(tiny_lm):
    resolved = resolve_params({"model": str(tiny_lm), "lora": {"r": 4}})
    assert resolved["lora"] == {"r": 4, "alpha": 16, "dropout": 0.05, "target_modules": None}
    assert resolved["generation"] == GENERATION_DEFAULTS and resolved["allow_download"] is False
