"""A pretrained Hugging Face causal LM (kind ``pretrained_lm``), fine-tuned in full or with LoRA.

``train(spec, data, workdir, on_metrics)`` loads ``AutoModelForCausalLM`` and its tokenizer
from ``params.model`` (a local folder or a hub id), cuts the corpus's training text, tokenised
by the model's own tokenizer, into random windows of ``block_size`` tokens (the GPT's
batches), trains through the shared fit loop (float32 weights, bf16 autocast on CUDA, DDP
under torchrun) and scores the validation text in bits per character, the number the GPT
and the LSTM LM are ranked by.

Offline by default: the model must be a local folder or already in the Hugging Face cache;
``allow_download: true`` lets a hub id download on a host that can reach the hub.

``spec.params`` (unknown keys are errors), with their defaults:

- ``model`` (required): a hub id (``HuggingFaceTB/SmolLM2-135M``) or a model folder.
- ``allow_download`` (false), ``block_size`` (256, at most the model's context),
  ``eval_max_chars`` (None: the whole validation text), ``sample_tokens`` (100: the three
  fixed-seed samples kept in the metadata).
- ``lora`` (None: full fine-tuning): ``{r: 8, alpha: 16, dropout: 0.05, target_modules: null}``
  (null: peft's default modules for the architecture, e.g. q_proj and v_proj for Llama).
- ``keep_adapter`` (false): also keep the LoRA adapter as its own artifact (``adapter/``).
- ``generation``: the bundle's generation defaults ``{max_new_tokens: 100, temperature: 1.0,
  top_k: 0, top_p: 1.0, stop: []}``, written to the manifest and to ``generation_config.json``.

The bundle folder is itself a plain Hugging Face model folder (``config.json``,
``model.safetensors``, ``generation_config.json``, the tokenizer files) plus ``bundle.json``:
a LoRA adapter is *merged* into the weights when the bundle is saved (``merge_and_unload``),
so any server that loads HF folders (vLLM too) loads the bundle; with ``keep_adapter`` the
unmerged adapter is saved beside it in ``adapter/`` as well.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from components.config import ModelSpec
from components.data.dataset import CorpusData
from components.evaluation.language_model import evaluate_text
from components.models.sampling import validate_sampling
from components.predictor import DecodePlan, TokenGenerator
from components.training.callbacks import MetricsCallback, no_metrics
from components.training.device import (
    inference_context,
    model_device,
    resolve_device,
    seed_everything,
    torch_threads,
)

log = logging.getLogger(__name__)

KIND = "pretrained_lm"
ADAPTER_DIR = "adapter"
SAMPLE_SEEDS = (0, 1, 2)
# Prompt tokens decoded in front of the new ones, so that a tokenizer whose pieces depend on
# what precedes them (a leading space, a byte sequence) decodes the continuation as in one text.
DECODE_CONTEXT_TOKENS = 4
GENERATION_DEFAULTS: dict[str, Any] = {
    "max_new_tokens": 100,
    "temperature": 1.0,
    "top_k": 0,
    "top_p": 1.0,
    "stop": [],
}
LORA_DEFAULTS: dict[str, Any] = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": None}
DEFAULT_PARAMS: dict[str, Any] = {
    "model": None,
    "allow_download": False,
    "block_size": 256,
    "eval_max_chars": None,
    "sample_tokens": 100,
    "lora": None,
    "keep_adapter": False,
    "generation": GENERATION_DEFAULTS,
}


def _check_keys(given: dict[str, Any], known: dict[str, Any], where: str) -> None:
    unknown = set(given) - set(known)
    if unknown:
        raise ValueError(f"unknown {where} keys {sorted(unknown)}; known: {sorted(known)}")


def resolve_params(params: dict[str, Any]) -> dict[str, Any]:
    """`params` over the defaults, checked; unknown keys and bad values are one-line ValueErrors."""
    _check_keys(params, DEFAULT_PARAMS, "pretrained_lm params")
    resolved = {**DEFAULT_PARAMS, **params}
    if not resolved["model"]:
        raise ValueError(
            "params.model is required for pretrained_lm: a Hugging Face hub id "
            "(e.g. HuggingFaceTB/SmolLM2-135M) or a local model folder"
        )
    if resolved["block_size"] < 2:
        raise ValueError(f"params.block_size must be >= 2, got {resolved['block_size']}")
    if resolved["lora"] is not None:
        _check_keys(resolved["lora"], LORA_DEFAULTS, "params.lora")
        resolved["lora"] = {**LORA_DEFAULTS, **resolved["lora"]}
        if resolved["lora"]["r"] < 1:
            raise ValueError(f"params.lora.r must be >= 1, got {resolved['lora']['r']}")
    elif resolved["keep_adapter"]:
        raise ValueError("params.keep_adapter needs params.lora: full fine-tuning has no adapter to keep")
    _check_keys(resolved["generation"], GENERATION_DEFAULTS, "params.generation")
    generation = {**GENERATION_DEFAULTS, **resolved["generation"]}
    validate_sampling(
        generation["max_new_tokens"], generation["temperature"], generation["top_k"], generation["top_p"]
    )
    resolved["generation"] = generation
    return resolved


# -- loading -------------------------------------------------------------------------------
def load_pretrained(source: str, allow_download: bool = False) -> tuple[Any, Any]:
    """(tokenizer, causal LM in float32) from a folder or a hub id; offline unless `allow_download`.

    float32 weights whatever the checkpoint's dtype, as for the pretrained encoder: AdamW's
    small updates vanish in bf16 weights; the fit loop gets bf16 speed from autocast on CUDA.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(source).expanduser()
    if (path.is_absolute() or source.startswith(".") or source.count("/") > 1) and not path.is_dir():
        raise FileNotFoundError(f"params.model: the model folder {source} does not exist")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=not allow_download)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch.float32, local_files_only=not allow_download
        )
    except OSError as error:
        if allow_download or path.is_dir():
            raise OSError(f"cannot load the causal LM {source!r}: {str(error).splitlines()[0]}") from error
        raise FileNotFoundError(
            f"the causal LM {source!r} is not a local folder nor in the Hugging Face cache, and "
            f"downloads are off: set params.allow_download: true on a host that reaches the hub, "
            f"or download it there (`hf download {source} --local-dir DIR`) and set params.model: DIR"
        ) from error
    return tokenizer, model


def context_length(config: Any) -> int | None:
    """The most positions the model was built for (None when its config does not say)."""
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def apply_lora(model: nn.Module, lora: dict[str, Any]) -> nn.Module:
    """`model` wrapped by peft with LoRA adapters; only the adapters require grad."""
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=lora["target_modules"],
    )
    return get_peft_model(model, config)


class PlainTokenizer:
    """A Hugging Face tokenizer as the LM metrics take one: encode adds no BOS/EOS, decode skips none."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        # verbose=False: a corpus is longer than the model's context on purpose (it is windowed).
        return self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))


class CausalLM(nn.Module):
    """The GPT's interface around a Hugging Face causal LM: ``forward(x, y=None) -> (logits, loss)``,
    so the fit loop, the window batches and the bits-per-char metrics take it as they take the GPT."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = self.lm(input_ids=x, use_cache=False).logits  # (B, T, V)
        if y is None:
            return logits, None
        return logits, F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))


# -- the predictor ---------------------------------------------------------------------------
class PretrainedLMPredictor(TokenGenerator):
    """A (fine-tuned) Hugging Face causal LM and its tokenizer; streams continuations with its KV cache.

    `model` is the Hugging Face model, or the peft model around it after LoRA training, until
    `save` merges the adapter in.
    """

    def __init__(
        self, model: nn.Module, tokenizer: Any, config: dict[str, Any], metadata: dict[str, Any] | None = None
    ):
        super().__init__(KIND, config, metadata)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.text = PlainTokenizer(tokenizer)
        self.max_positions = context_length(model.config)
        special = tokenizer.eos_token_id
        self._end_ids = frozenset(special if isinstance(special, list) else [special]) - {None}
        pad = tokenizer.pad_token_id
        self._banned = [pad] if pad is not None and pad not in self._end_ids else []

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    @property
    def on_accelerator(self) -> bool:
        return self.device.type != "cpu"

    def _start_ids(self) -> list[int]:
        """What an empty prompt starts from: the BOS token, else EOS (GPT-2's text boundary), else a newline."""
        for token in (self.tokenizer.bos_token_id, self.tokenizer.eos_token_id):
            if token is not None:
                return [token]
        return self.text.encode("\n") or [0]

    def _prompt_ids(self, prompt: str, max_new_tokens: int) -> tuple[list[int], int]:
        """The prompt's ids; generation also ends when the model's context is full."""
        prompt_ids = self.text.encode(prompt) or self._start_ids()
        if self.max_positions is not None:  # leave room for at least one new token
            prompt_ids = prompt_ids[-(self.max_positions - 1) :]
            max_new_tokens = min(max_new_tokens, self.max_positions - len(prompt_ids))
        return prompt_ids, max_new_tokens

    def _piece_decoder(self, prompt_ids: list[int]) -> TailText:
        return TailText(self.text, prompt_ids[-DECODE_CONTEXT_TOKENS:])

    def batch_decoder(self) -> HFBatchDecoder | None:
        """Many requests decoding together, or None for a model whose cache is not one plain
        key/value tensor pair per layer (sliding-window or recurrent layers): those decode one by one."""
        layer_types = getattr(self.model.config.get_text_config(decoder=True), "layer_types", None) or []
        if any(t != "full_attention" for t in layer_types):
            return None
        return HFBatchDecoder(self.model)

    def _pieces(self, plan: DecodePlan) -> Iterator[str]:
        """The new text, yielded as each token extends it; one forward pass of one token per step."""
        device = self.device
        tokens = torch.tensor([plan.prompt_ids], device=device)  # (1, T): the prompt, then one token a step
        cache = None  # the keys and values of every position so far
        for _ in range(plan.max_new_tokens):
            # Entered per step, not across the yield: the consumer runs between steps.
            with torch.inference_mode(), inference_context(device):
                out = self.model(input_ids=tokens, cache=cache, use_cache=True, logits_to_keep=1)
                tokens = plan.sample(out.logits[:, -1, :].float())  # (1, 1)
            cache = out.cache
            token = int(tokens.item())
            if token in plan.end_ids:
                break
            piece = plan.text.push(token, last=False)
            if piece:
                yield piece
        tail = plan.text.finish()  # the end: a tail still incomplete goes out as it decodes
        if tail:
            yield tail

    def evaluate(self, text: str, max_chars: int | None = None, batch_size: int = 8) -> dict[str, float]:
        """loss (nats per token), perplexity and bits_per_char of `text`, in windows of block_size."""
        block_size = self.config["block_size"]
        with inference_context(self.device):
            metrics = evaluate_text(CausalLM(self.model), self.text, text, block_size, batch_size, max_chars)
        return {k: metrics[k] for k in ("loss", "perplexity", "bits_per_char")}

    # -- bundle ---------------------------------------------------------------------------
    def merged(self) -> nn.Module:
        """The Hugging Face model with any LoRA adapter merged into its weights (from now on)."""
        if self.config.get("lora"):
            from peft import PeftModel

            if isinstance(self.model, PeftModel):
                self.model = self.model.merge_and_unload().eval()
        return self.model

    def _save_files(self, folder: Path) -> None:
        if self.config.get("keep_adapter") and self.config.get("lora"):
            from peft import PeftModel

            if isinstance(self.model, PeftModel):
                self.model.save_pretrained(folder / ADAPTER_DIR)
        model = self.merged()
        defaults = self.config["generation"]
        model.generation_config.update(
            do_sample=defaults["temperature"] > 0,
            temperature=defaults["temperature"] or None,
            top_k=defaults["top_k"] or None,
            top_p=defaults["top_p"],
            max_new_tokens=defaults["max_new_tokens"],
            stop_strings=list(defaults["stop"]) or None,
        )
        model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)

    @classmethod
    def _load(cls, folder: Path, manifest: dict[str, Any]) -> PretrainedLMPredictor:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
        model.to(resolve_device("auto"))
        return cls(model, tokenizer, manifest["config"], manifest.get("metadata"))


class TailText:
    """A request's new tokens to text pieces (a `PieceDecoder`): decoded after a few prompt tokens."""

    def __init__(self, text: PlainTokenizer, context: list[int]):
        self.tokenizer = text
        self.context = context
        self.head = text.decode(context)
        self.new_ids: list[int] = []
        self.text, self.sent = "", 0  # the continuation decoded so far; how much of it went out

    def push(self, token: int, last: bool) -> str:
        self.new_ids.append(token)
        full = self.tokenizer.decode(self.context + self.new_ids)
        self.text = (
            full[len(self.head) :] if full.startswith(self.head) else self.tokenizer.decode(self.new_ids)
        )
        # A byte-level token can end inside a multi-byte character (decoded as U+FFFD until
        # the next token completes it): that tail waits.
        ready = len(self.text.rstrip("\ufffd"))
        if ready <= self.sent:
            return ""
        piece, self.sent = self.text[self.sent : ready], ready
        return piece

    def finish(self) -> str:
        piece, self.sent = self.text[self.sent :], len(self.text)
        return piece


@dataclass(eq=False)
class HFRow:
    """One sequence of an :class:`HFBatchDecoder`."""

    length: int  # positions in its cache
    own: Any  # its prefill cache (a DynamicCache), until it moves into the batch's cache


class HFBatchDecoder:
    """Decode steps for many sequences of a Hugging Face causal LM at once, continuously batched.

    A prompt is prefilled alone. The rows then share one ``DynamicCache`` whose keys and values
    are right-aligned and padded on the left, built through the public constructor whenever the
    set of rows changes; each step passes an ``attention_mask`` over the pads and each row's own
    ``position_ids`` (neither when no row is padded: then a lone row computes exactly as `stream`).
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self._members: list[HFRow] = []
        self._cache: Any = None
        self._mask: torch.Tensor | None = None  # (B, cached positions), None when nothing is padded

    def prefill(self, prompt_ids: list[int]) -> tuple[HFRow, torch.Tensor]:
        device = model_device(self.model)
        with torch.inference_mode(), inference_context(device):
            out = self.model(
                input_ids=torch.tensor([prompt_ids], device=device), use_cache=True, logits_to_keep=1
            )
        return HFRow(len(prompt_ids), out.cache), out.logits[:, -1, :]  # (1, V)

    def step(self, rows: Sequence[HFRow], last_ids: Sequence[int]) -> torch.Tensor:
        device = model_device(self.model)
        with torch.inference_mode(), inference_context(device):
            if self._cache is None or list(map(id, rows)) != list(map(id, self._members)):
                self._rebuild(list(rows))
            kwargs: dict[str, Any] = {}
            if self._mask is not None:
                self._mask = torch.cat([self._mask, self._mask.new_ones((len(rows), 1))], dim=1)
                kwargs["attention_mask"] = self._mask  # (B, past + 1)
                kwargs["position_ids"] = torch.tensor([[row.length] for row in rows], device=device)  # (B, 1)
            idx = torch.tensor([[token] for token in last_ids], device=device)  # (B, 1)
            out = self.model(input_ids=idx, cache=self._cache, use_cache=True, logits_to_keep=1, **kwargs)
            self._cache = out.cache
            for row in rows:
                row.length += 1
            return out.logits[:, -1, :]  # (B, V)

    def _rebuild(self, rows: list[HFRow]) -> None:
        """One cache for `rows`: each row's keys and values right-aligned, zeros in the pads."""
        where = {id(row): b for b, row in enumerate(self._members)}
        width = max(row.length for row in rows)
        layers = []
        for layer in range(len(next(iter(r.own for r in rows if r.own is not None), self._cache).layers)):
            merged = []
            for name in ("keys", "values"):
                parts = []
                for row in rows:
                    if row.own is not None:
                        cached = getattr(row.own.layers[layer], name)  # (1, heads, T, hd)
                        tensor = cached[:, :, -row.length :]
                    else:
                        b = where[id(row)]
                        tensor = getattr(self._cache.layers[layer], name)[b : b + 1, :, -row.length :]
                    pad = width - row.length
                    if pad:
                        tensor = torch.cat(
                            [tensor.new_zeros((*tensor.shape[:2], pad, tensor.shape[3])), tensor], dim=2
                        )
                    parts.append(tensor)
                merged.append(torch.cat(parts, dim=0))  # (B, heads, width, hd)
            layers.append(tuple(merged))
        from transformers import DynamicCache

        staying = {id(row) for row in rows}
        for b, row in enumerate(self._members):  # a row that sits out a step keeps its cache, to join again
            if id(row) not in staying:
                row.own = DynamicCache(
                    ddp_cache_data=[
                        (layer.keys[b : b + 1, :, -row.length :], layer.values[b : b + 1, :, -row.length :])
                        for layer in self._cache.layers
                    ]
                )
        self._cache = DynamicCache(ddp_cache_data=layers)
        self._mask = None
        if any(row.length < width for row in rows):
            self._mask = torch.tensor(
                [[0] * (width - row.length) + [1] * row.length for row in rows],
                device=model_device(self.model),
            )
        for row in rows:
            row.own = None
        self._members = rows


# -- training ----------------------------------------------------------------------------------
def train(
    spec: ModelSpec,
    data: CorpusData,
    workdir: Path,
    on_metrics: MetricsCallback = no_metrics,
) -> PretrainedLMPredictor:
    """Fine-tune the causal LM; the whole job (fit, scoring, samples) runs on training.num_threads."""
    with torch_threads(spec.training.num_threads):
        return _train(spec, data, Path(workdir), on_metrics)


def _train(
    spec: ModelSpec, data: CorpusData, workdir: Path, on_metrics: MetricsCallback
) -> PretrainedLMPredictor:
    from components.models.lm_predictor import check_token_counts, fit_language_model

    params = resolve_params(spec.params)
    t = spec.training
    log.info("loading the causal LM %s", params["model"])
    tokenizer, lm = load_pretrained(params["model"], params["allow_download"])
    block_size = min(params["block_size"], context_length(lm.config) or params["block_size"])
    text = PlainTokenizer(tokenizer)
    train_ids = torch.tensor(text.encode(data.train_text), dtype=torch.long)
    val_ids = torch.tensor(text.encode(data.val_text), dtype=torch.long)
    check_token_counts(train_ids, val_ids, block_size)

    seed_everything(t.seed)  # the LoRA matrices start the same on every rank and every run
    if params["lora"]:
        lm = apply_lora(lm, params["lora"])
    model = CausalLM(lm)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info(
        "%s: %.1fM parameters, %.2fM trained (%s)",
        params["model"],
        total / 1e6,
        trainable / 1e6,
        "LoRA" if params["lora"] else "full fine-tuning",
    )

    result = fit_language_model(
        model,
        (train_ids, val_ids),
        data.val_text,
        text,
        block_size,
        t,
        params["eval_max_chars"],
        workdir,
        on_metrics,
        extra={"kind": KIND, "model": params["model"], "lora": params["lora"]},
    )

    config = {
        "base_model": params["model"],
        "block_size": block_size,
        "lora": params["lora"],
        "keep_adapter": params["keep_adapter"],
        "generation": params["generation"],
    }
    predictor = PretrainedLMPredictor(lm, tokenizer, config)
    metrics = predictor.evaluate(data.val_text, max_chars=params["eval_max_chars"], batch_size=t.batch_size)
    log.info("validation: loss %.4f, perplexity %.2f, %.4f bits/char", *metrics.values())
    samples = [
        predictor.generate("", max_new_tokens=params["sample_tokens"], seed=seed) for seed in SAMPLE_SEEDS
    ]
    predictor.metadata = {
        "metrics": metrics,
        "eval_max_chars": params["eval_max_chars"],
        "samples": samples,
        "training": {
            "steps": result.steps,
            "best_step": result.best_step,
            "train_time_s": result.train_time_s,
            "wall_time_s": result.wall_time_s,
            "tokens_per_s": result.samples_per_s * block_size,
            "tokens_seen": result.steps * t.batch_size * t.grad_accum * block_size,
            "device": result.device,
            "world_size": result.world_size,
            "params": total,
            "trained_params": trainable,
            "vocab_size": len(tokenizer),
        },
    }
    if not all(math.isfinite(v) for v in metrics.values()):
        raise FloatingPointError(f"non-finite validation metrics: {metrics}")
    return predictor
