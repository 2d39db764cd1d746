"""The `pretrained_lm` kind on a tiny random Llama built offline: fine-tuning (full and LoRA),
bits per character, the bundle round trip and streamed generation with the KV cache."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

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
        training=TrainingSpec(
            device="cpu", max_steps=30, batch_size=8, lr=1e-2, eval_every=15, eval_batches=2, num_threads=1
        ),
    )


def untrained(folder: Path) -> PretrainedLMPredictor:
    tokenizer, model = load_pretrained(str(folder))
    config = {"block_size": 32, "lora": None, "generation": GENERATION_DEFAULTS}
    return PretrainedLMPredictor(model, tokenizer, config)


def train_with_history(
    spec: ModelSpec, corpus: CorpusData, workdir: Path
) -> tuple[PretrainedLMPredictor, list]:
    losses: list[float] = []
    predictor = train(
        spec,
        corpus,
        workdir,
        lambda metrics, step: losses.extend([metrics["train_loss"]] if "train_loss" in metrics else []),
    )
    return predictor, losses


@pytest.fixture(scope="module")
def full(tiny_lm, corpus, tmp_path_factory):
    return train_with_history(make_spec(tiny_lm), corpus, tmp_path_factory.mktemp("full"))


@pytest.fixture(scope="module")
def lora(tiny_lm, corpus, tmp_path_factory):
    spec = make_spec(
        tiny_lm, lora={"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}, keep_adapter=True
    )
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
    assert predictor.evaluate(corpus.train_text[:5000])["bits_per_char"] != pytest.approx(
        metrics["bits_per_char"]
    )


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
    assert loaded.generate(PROMPT, max_new_tokens=25, seed=3) == predictor.generate(
        PROMPT, max_new_tokens=25, seed=3
    )
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
        assert "".join(pieces) == predictor.generate(
            "Shares rose by £", max_new_tokens=40, seed=seed, top_k=50, top_p=0.9
        )
        assert all(piece for piece in pieces)
        # A piece ends inside a multi-byte character only where the generation itself ends.
        assert not any(piece.endswith("\ufffd") for piece in pieces[:-1])


@contextlib.contextmanager
def forward_passes(model: torch.nn.Module) -> Iterator[list[int]]:
    """A list that grows by one at each forward pass of `model` inside the block."""
    calls: list[int] = []
    hook = model.register_forward_hook(lambda *args: calls.append(1))
    try:
        yield calls
    finally:
        hook.remove()


class ScriptedLM(torch.nn.Module):
    """A stand-in causal LM that puts all the probability on the next id of `script`, one per
    forward pass, with a step counter as its cache (what the predictor's loop passes back)."""

    def __init__(self, script: list[int], vocab_size: int):
        super().__init__()
        self.script, self.vocab_size = script, vocab_size
        self.config = SimpleNamespace(max_position_embeddings=128)
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the predictor a device

    def forward(self, input_ids, cache=None, use_cache=True, logits_to_keep=1):
        step = 0 if cache is None else cache + 1
        logits = torch.full((1, 1, self.vocab_size), -1e4)
        logits[0, 0, self.script[step]] = 0.0
        return SimpleNamespace(logits=logits, cache=step)


def test_a_character_split_across_tokens_streams_whole_and_the_end_of_text_token_stops(tiny_lm):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    # '£' is the bytes C2 A3, which the byte-level alphabet spells 'Â' and '£': two tokens.
    script = tokenizer.convert_tokens_to_ids(["a", "Â", "£", "b", tokenizer.eos_token, "c"])
    model = ScriptedLM(script, len(tokenizer))
    predictor = PretrainedLMPredictor(
        model, tokenizer, {"block_size": 32, "lora": None, "generation": GENERATION_DEFAULTS}
    )
    assert list(predictor.stream("x", max_new_tokens=10, temperature=0)) == ["a", "£", "b"]


def test_max_new_tokens_bounds_the_forward_passes(full):
    predictor, _ = full
    with forward_passes(predictor.model) as calls:
        predictor.generate(PROMPT, max_new_tokens=7, temperature=0)
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
    with forward_passes(predictor.model) as calls:
        stream = predictor.stream(PROMPT, max_new_tokens=60, seed=0)
        next(stream)
        started = len(calls)
        stream.close()
        assert list(stream) == []
    assert started < 10 and len(calls) == started


def test_bad_sampling_parameters_raise_before_any_piece(full):
    predictor, _ = full
    with pytest.raises(ValueError, match="top_p"):
        predictor.stream(PROMPT, top_p=0)


@pytest.mark.slow
def test_two_gloo_processes_fine_tune_it_and_rank_zero_saves_the_bundle(tiny_lm, corpus, tmp_path):
    import json
    import os

    from components.training import distributed

    data = tmp_path / "corpus"
    data.mkdir()
    (data / "train.txt").write_text(corpus.train_text, encoding="utf-8")
    (data / "val.txt").write_text(corpus.val_text, encoding="utf-8")
    (data / "manifest.json").write_text(json.dumps({"task": "generation"}))
    spec = make_spec(tiny_lm, lora={"r": 4, "target_modules": "all-linear"})
    spec.training.max_steps = 6
    (tmp_path / "spec.json").write_text(spec.model_dump_json())
    distributed.launch(
        2,
        [
            "--spec",
            str(tmp_path / "spec.json"),
            "--data",
            str(data),
            "--workdir",
            str(tmp_path / "work"),
            "--out",
            str(tmp_path / "bundle"),
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    predictor = load_predictor(tmp_path / "bundle")
    assert predictor.metadata["training"]["world_size"] == 2
    assert predictor.metadata["training"]["steps"] == 6
    assert predictor.generate(PROMPT, max_new_tokens=5, seed=0)


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


def test_the_llm_preset_names_a_hub_model_whose_params_resolve():
    from components.config import load_config

    config = load_config(Path(__file__).resolve().parents[2] / "configs" / "llm.yaml")
    [candidate] = [c for c in config.generation.candidates if c.kind == "pretrained_lm"]
    params = resolve_params(candidate.params)
    assert params["allow_download"] is True and params["lora"]["r"] > 0 and "/" in params["model"]
    assert {c.kind for c in config.generation.candidates} >= {"gpt", "pretrained_lm"}
