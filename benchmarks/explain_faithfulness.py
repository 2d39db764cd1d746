"""Faithfulness of the explanations: deleting the top-attributed words against deleting random ones.

    python benchmarks/explain_faithfulness.py                          # quick models, 200 BBC validation texts
    python benchmarks/explain_faithfulness.py --models tfidf-logreg,lstm --texts 50 --json
    python benchmarks/explain_faithfulness.py --bundle models/champion --bundle models/lstm
    python benchmarks/explain_faithfulness.py --full                   # the config's candidates as configured
    python benchmarks/explain_faithfulness.py --method integrated_gradients --ig-steps 32

For each classifier, each validation text is explained (``Predictor.attribute``, timed: the
``ms_per_text``), then for k = 1..``--max-k`` two copies are classified: one without the k words
ranked highest (every occurrence deleted, as occlusion deletes them), one without k words drawn
at random (seeded per text) from the words the model reads. A row reports the mean drop of the
originally predicted class's probability for each (``top_drop``, ``random_drop``); per model,
the area under each deletion curve is the mean drop over k = 1..max-k. A faithful explanation's
top words matter more than random ones: the issue's bar is ``top_drop >= 2 x random_drop`` at k = 5.
A torch classifier is measured with occlusion, integrated gradients or both (``--method``, each
a row ``method``); TF-IDF always with its exact linear contributions.

Without ``--bundle`` it trains the config's classification candidates (``--config``, default
``default``) on the ingested splits (``--data``, else ``data/<dataset>``, else ingested into a
temporary folder from the config's source), shrunk by ``QUICK`` to train in seconds to a minute
on a CPU unless ``--full``. Nothing reaches MLflow, Prefect or BentoML.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from components.config import ModelSpec, load_config, resolve_config_path  # noqa: E402
from components.data.dataset import load_classification_data  # noqa: E402
from components.data.ingest import ingest_dataset  # noqa: E402
from components.explain.gradients import DEFAULT_STEPS  # noqa: E402
from components.explain.words import TextWords, WordAttribution  # noqa: E402
from components.models.torch_classifier import EXPLAIN_METHODS  # noqa: E402
from components.predictor import ClassifierPredictor, load_predictor  # noqa: E402
from components.training.candidates import train_candidate  # noqa: E402

# Per model kind, what the quick run changes (params, training): small networks, few epochs,
# MiniLM frozen with a head on cached features and 64 tokens, as occlusion pays a forward per word.
QUICK: dict[str, tuple[dict, dict]] = {
    "lstm": (
        {"embed_dim": 64, "hidden_size": 64, "num_layers": 1, "pooling": "mean", "dropout": 0.3},
        {"epochs": 4, "batch_size": 32, "max_length": 128, "early_stopping_patience": None},
    ),
    "transformer": (
        {"dim": 64, "num_layers": 1, "num_heads": 2},
        {
            "epochs": 4,
            "batch_size": 32,
            "max_length": 128,
            "warmup_steps": 20,
            "early_stopping_patience": None,
        },
    ),
    "pretrained": (
        {"train_layers": 0},
        {"epochs": 20, "batch_size": 32, "lr": 1e-3, "max_length": 64, "warmup_steps": 0},
    ),
}
EXPLAIN_BATCH = 8  # texts per attribute() call: the service's default /explain limit


def quick(spec: ModelSpec) -> ModelSpec:
    params, training = QUICK.get(spec.kind, ({}, {}))
    return spec.model_copy(
        update={"params": {**spec.params, **params}, "training": spec.training.model_copy(update=training)}
    )


def classification_data(config_name: str, data_folder: Path | None, workdir: Path):
    config = load_config(resolve_config_path(config_name, REPO / "configs"))
    task = config.classification
    if task is None:
        raise SystemExit(f"config {config.name!r} has no classification task")
    folder = data_folder or REPO / "data" / task.dataset
    if not folder.is_dir():
        print(f"# {folder} is not ingested: ingesting {task.dataset} into a temp folder", file=sys.stderr)
        spec = config.dataset(task.dataset)
        ingest_dataset(spec, workdir / "data", cache_dir=workdir / "cache", base_dir=REPO)
        folder = workdir / "data" / task.dataset
    return task, load_classification_data(folder)


def deletion_curves(
    predictor: ClassifierPredictor,
    texts: Sequence[str],
    attributions: Sequence[WordAttribution],
    max_k: int,
    seed: int,
) -> tuple[list[float], list[float]]:
    """Mean drop of the predicted class's probability for k = 1..max_k: top words, random words."""
    variants: list[str] = []
    for i, (text, item) in enumerate(zip(texts, attributions, strict=True)):
        words = TextWords(text)
        ranked = item.ranked()
        shuffled = random.Random(seed * 1_000_003 + i).sample(ranked, len(ranked))
        for k in range(1, max_k + 1):
            variants.append(words.without(frozenset(ranked[:k])))
            variants.append(words.without(frozenset(shuffled[:k])))
    proba = predictor.predict_proba(variants).reshape(len(texts), max_k, 2, -1)  # (text, k, top/random, C)
    top = [[] for _ in range(max_k)]
    rand = [[] for _ in range(max_k)]
    for i, item in enumerate(attributions):
        for k in range(max_k):
            top[k].append(item.probability - proba[i, k, 0, item.label])
            rand[k].append(item.probability - proba[i, k, 1, item.label])
    return [statistics.fmean(d) for d in top], [statistics.fmean(d) for d in rand]


def measure(name: str, predictor: ClassifierPredictor, texts: list[str], max_k: int, seed: int) -> dict:
    print(f"# explaining {len(texts)} texts with {name} ({predictor.kind})", file=sys.stderr, flush=True)
    predictor.attribute(texts[:1])  # warm-up: lazy state (feature names, kernels) is not the cost per text
    started = time.perf_counter()
    attributions = [
        item for start in range(0, len(texts), EXPLAIN_BATCH)
        for item in predictor.attribute(texts[start : start + EXPLAIN_BATCH])
    ]  # fmt: skip
    ms_per_text = (time.perf_counter() - started) * 1000 / len(texts)
    top, rand = deletion_curves(predictor, texts, attributions, max_k, seed)
    method = attributions[0].method
    rows = [
        {
            "model": name, "method": method, "k": k, "top_drop": round(t, 4), "random_drop": round(r, 4),
            "ms_per_text": round(ms_per_text, 2),
        }
        for k, (t, r) in enumerate(zip(top, rand, strict=True), start=1)
    ]  # fmt: skip
    at = min(5, max_k) - 1
    summary = {
        "model": name,
        "kind": predictor.kind,
        "method": method,
        "top_area": round(statistics.fmean(top), 4),
        "random_area": round(statistics.fmean(rand), 4),
        # A random deletion can raise the probability (a negative drop): then the ratio means nothing.
        "ratio_at_5": round(top[at] / rand[at], 2) if rand[at] > 0 else None,
        "bar_met": top[at] > 0 and top[at] >= 2 * rand[at],
        "ms_per_text": round(ms_per_text, 2),
    }
    print(f"# {json.dumps(summary)}", file=sys.stderr, flush=True)
    return {"rows": rows, "summary": summary}


def run(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="maas-explain-") as tmp:
        workdir = Path(tmp)
        task, data = classification_data(args.config, args.data, workdir)
        texts = list(data.val_texts[: args.texts])
        if args.bundle:
            models = [(str(path), load_predictor(path)) for path in args.bundle]
        else:
            names = args.models.split(",") if args.models else None
            known = [spec.name for spec in task.candidates]
            if names and set(names) - set(known):
                raise SystemExit(
                    f"unknown candidates {sorted(set(names) - set(known))}; the config has {known}"
                )
            models = []
            for spec in task.candidates:
                if names and spec.name not in names:
                    continue
                spec = spec if args.full else quick(spec)
                print(f"# training {spec.name} ({spec.kind})", file=sys.stderr, flush=True)
                models.append((spec.name, train_candidate(spec, data, workdir / spec.name)))
        methods = list(EXPLAIN_METHODS) if args.method == "both" else [args.method]
        results = []
        for name, predictor in models:
            if not hasattr(predictor, "explain_method"):  # TF-IDF: one exact method
                results.append(measure(name, predictor, texts, args.max_k, args.seed))
                continue
            predictor.ig_steps = args.ig_steps
            for method in methods:
                predictor.explain_method = method
                results.append(measure(name, predictor, texts, args.max_k, args.seed))
    return {
        "texts": len(texts),
        "rows": [row for result in results for row in result["rows"]],
        "models": [result["summary"] for result in results],
    }


def print_table(report: dict) -> None:
    width = max(len("model"), *(len(row["model"]) for row in report["rows"]))
    mwidth = max(len("method"), *(len(row["method"]) for row in report["rows"]))
    print(
        f"deletion curves over {report['texts']} validation texts (drop of the predicted class's probability)"
    )
    print(f"{'model':<{width}}  {'method':<{mwidth}}  {'k':>3}  {'top_drop':>9}  {'random_drop':>11}  {'ms_per_text':>11}")
    for row in report["rows"]:
        print(
            f"{row['model']:<{width}}  {row['method']:<{mwidth}}  {row['k']:>3}  {row['top_drop']:>9.4f}  {row['random_drop']:>11.4f}  "
            f"{row['ms_per_text']:>11.2f}"
        )
    for s in report["models"]:
        print(
            f"{s['model']} ({s['method']}): area top {s['top_area']} vs random {s['random_area']}, "
            f"top/random at k=5 {s['ratio_at_5']} (bar: 2, {'met' if s['bar_met'] else 'NOT met'}), "
            f"{s['ms_per_text']} ms per explanation"
        )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="default", help="a preset in configs/ or a YAML path")
    parser.add_argument("--data", type=Path, help="the ingested dataset folder (default: data/<dataset>)")
    parser.add_argument("--models", help="comma-separated candidate names to train (default: all)")
    parser.add_argument("--full", action="store_true", help="train the candidates as configured, not QUICK")
    parser.add_argument(
        "--bundle",
        type=Path,
        action="append",
        help="a Predictor bundle to measure instead of training (repeatable)",
    )
    parser.add_argument("--texts", type=int, default=200, help="validation texts explained (default 200)")
    parser.add_argument("--max-k", type=int, default=10, help="largest number of words deleted (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random deletions")
    parser.add_argument(
        "--method",
        choices=[*EXPLAIN_METHODS, "both"],
        default="both",
        help="how the torch classifiers explain (default both; TF-IDF is always exact)",
    )
    parser.add_argument(
        "--ig-steps", type=int, default=DEFAULT_STEPS, help=f"integrated gradients' steps (default {DEFAULT_STEPS})"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    if args.texts < 1 or args.max_k < 1 or args.ig_steps < 1:
        parser.error("--texts, --max-k and --ig-steps must be at least 1")
    report = run(args)
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
    return report


if __name__ == "__main__":
    main()
