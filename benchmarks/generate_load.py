"""Generation load: time to first token and tokens/s of streamed /generate, served against in process.

    python benchmarks/generate_load.py                 # gpt and lstm_lm (and pretrained_lm when that kind
                                                       # exists: a tiny random Llama built in a temp folder)
    python benchmarks/generate_load.py --kinds gpt     # some kinds only
    python benchmarks/generate_load.py --bento maas:latest   # the generator of a Bento already built, served as it is
    python benchmarks/generate_load.py --json          # one object {"rows": [...]} instead of the table
    python benchmarks/generate_load.py --batching      # would batching concurrent prompts pay? (below)

Each kind is trained for a few steps on Tiny Shakespeare at its default size (a serving benchmark:
the model's cost per token matters, not its prose), imported with a small TF-IDF classifier into a
throw-away BentoML home, built into a Bento with flows.bento.build_bento and served by
`bentoml serve <tag>` on 127.0.0.1. Then, per round (`--rounds`, default 5) and per concurrency
(1 and 8), `--requests` streamed requests of `--max-new-tokens` (200) new tokens each, no stop string:

    served_stream   POST /generate {"stream": true} from an aiohttp client in this process
    in_process      the bundle loaded here, generating as the service does without HTTP: the batched
                    decode loop (components/serving/batching.py, up to 8 rows) feeding a PieceFeed
                    per request (components/serving/streaming.py); a kind without a batch decoder
                    runs GeneratorPredictor.stream one request at a time on one model thread

ttft: from sending the request (submitting the job) to the first text piece; tokens/s: text pieces
received over the wall time of the whole load (one piece per token; a BPE token that ends inside a
character joins the next one). Each row is the median round. The bar (issue #20), per kind: served
tokens/s at concurrency 8 >= 0.8x in process at 8 (the median over the rounds of the paired
ratios, the two loads of a round run seconds apart), and 0 errors (anything but a 200 and a
closing event). Results and method: docs/benchmarks.md.

`--batching` measures the upper bound of batching concurrent prompts, the measurement that led to
building the service's batched loop: per kind
(gpt, lstm_lm at their default sizes, random weights), 8 prompts of the same length decoded
`--max-new-tokens` tokens one after another (batch 1, the service's old way) against all 8 as one
batch of 8 through the network's own `stream` (no padding, one sampler: the best case for
batching), `--rounds` paired rounds, each on one torch thread and on the default threads. Rows:
{"kind", "threads", "sequential_tokens_per_s", "batched_tokens_per_s", "speedup"} (medians).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TextIO

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # components/, flows/ and benchmarks/ when run as a script from anywhere

from benchmarks.serve_load import CHEAP_TFIDF, bbc_articles, build, served, train_tfidf  # noqa: E402

KINDS = ("gpt", "lstm_lm", "pretrained_lm")
CONCURRENCIES = (1, 8)
BAR_CONCURRENCY, BAR_RATIO = 8, 0.8
SHAKESPEARE = REPO.parent / "shared" / "datasets" / "tinyshakespeare" / "input.txt"
TRAIN_CHARS = 200_000
PROMPTS = ("ROMEO:\n", "The king ", "First Citizen:\nWe ", "And what ", "O, ", "HAMLET:\nTo ", "Come, ", "I pray ")
# The serving limits of the benchmark's Bento: room for 200 new tokens.
SERVING = {"max_new_tokens": 256, "max_prompt_chars": 200}


def log(message: str) -> None:
    print(f"[generate_load] {message}", file=sys.stderr, flush=True)


# -- models ----------------------------------------------------------------------------------------
def corpus():
    from components.data.dataset import CorpusData

    text = SHAKESPEARE.read_text(encoding="utf-8")[:TRAIN_CHARS]
    cut = int(len(text) * 0.9)
    return CorpusData(train_text=text[:cut], val_text=text[cut:])


def available_kinds(wanted: list[str]) -> tuple[list[str], list[str]]:
    """The kinds to run, and a note per kind left out."""
    from components.models.registry import KINDS as REGISTERED

    kinds, notes = [], []
    for kind in wanted:
        if kind not in REGISTERED:
            notes.append(f"{kind}: not a registered kind in this checkout, skipped")
        elif kind == "pretrained_lm" and not (REPO / "tests" / "tiny_causal_lm.py").exists():
            notes.append("pretrained_lm: no offline tiny-model builder (tests/tiny_causal_lm.py), skipped")
        else:
            kinds.append(kind)
    return kinds, notes


def train_generator(kind: str, folder: Path, steps: int) -> Path:
    """A bundle of `kind` at its default size after `steps` training steps."""
    from components.config import ModelSpec, TrainingSpec
    from components.training.candidates import train_candidate

    data = corpus()
    params: dict[str, Any] = {"sample_tokens": 4, "eval_max_chars": 2000}
    if kind == "pretrained_lm":
        from tests.tiny_causal_lm import build_tiny_causal_lm

        model = build_tiny_causal_lm(folder / "hf", data.train_text[:50_000], context=512)
        params = {"model": str(model), "block_size": 64, "sample_tokens": 4}
    spec = ModelSpec(
        name=f"bench-{kind}".replace("_", "-"),
        kind=kind,
        params=params,
        training=TrainingSpec(device="auto", max_steps=steps, batch_size=16, eval_batches=2),
    )
    started = time.perf_counter()
    predictor = train_candidate(spec, data, folder / "work")
    log(f"{kind}: trained {steps} steps in {time.perf_counter() - started:.1f} s")
    return predictor.save(folder / "bundle")


def build_bento(kind: str, generator_bundle: Path, classifier_bundle: Path, workdir: Path) -> str:
    """Import the generator (now the store's latest) and build a Bento that pins it."""
    from flows import bento

    bento.import_bundle(generator_bundle, name=bento.GENERATOR_MODEL, labels={"model_name": f"bench-{kind}"}, metadata={})
    return build(classifier_bundle, workdir / f"build-{kind}", SERVING)


# -- the loads -------------------------------------------------------------------------------------
def request(i: int, max_new_tokens: int) -> dict[str, Any]:
    return {"prompt": PROMPTS[i % len(PROMPTS)], "max_new_tokens": max_new_tokens, "temperature": 1.0, "seed": i}


def summarise(ttfts: list[float], pieces: int, elapsed: float, errors: int) -> dict[str, Any]:
    ttfts = sorted(ttfts) or [float("nan")]
    return {
        "ttft_p50_ms": 1000 * ttfts[len(ttfts) // 2],
        "ttft_p99_ms": 1000 * ttfts[min(len(ttfts) - 1, int(len(ttfts) * 0.99))],
        "tokens_per_s": pieces / elapsed,
        "errors": errors,
    }


async def served_load(url: str, requests: int, concurrency: int, max_new_tokens: int) -> dict[str, Any]:
    import aiohttp  # a BentoML dependency; light per request, so the client steals little CPU

    ttfts: list[float] = []
    pieces = errors = sent = 0
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency), timeout=timeout) as session:

        async def worker() -> None:
            nonlocal pieces, errors, sent
            while sent < requests:
                body = {**request(sent, max_new_tokens), "stream": True}
                sent += 1
                started, first, done = time.perf_counter(), None, False
                try:
                    async with session.post(f"{url}/generate", json=body) as response:
                        if response.status != 200:
                            errors += 1
                            await response.read()
                            continue
                        async for line in response.content:
                            if not line.startswith(b"data: "):
                                continue
                            event = json.loads(line[len(b"data: ") :])
                            if "text" in event:
                                first = first or time.perf_counter()
                                pieces += 1
                            done = done or event.get("done", False)
                except (TimeoutError, aiohttp.ClientError):
                    pass
                if first is not None:
                    ttfts.append(first - started)
                errors += not done

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return summarise(ttfts, pieces, elapsed, errors)


class NoGauge:
    def inc(self) -> None:
        pass

    def dec(self) -> None:
        pass


async def in_process_load(predictor, requests: int, concurrency: int, max_new_tokens: int) -> dict[str, Any]:
    """The service's own path without HTTP: the batched loop (or one model thread), a PieceFeed per request."""
    from components.config import ServingSpec
    from components.serving.batching import GenerationBatcher
    from components.serving.streaming import END, PieceFeed

    loop = asyncio.get_running_loop()
    ttfts: list[float] = []
    pieces = errors = sent = 0
    decoder = predictor.batch_decoder()
    batcher = None if decoder is None else GenerationBatcher(decoder, ServingSpec().max_generation_batch).start()
    with ThreadPoolExecutor(1, thread_name_prefix="bench-generate") as thread:

        async def worker() -> None:
            nonlocal pieces, errors, sent
            while sent < requests:
                body = request(sent, max_new_tokens)
                sent += 1
                started, first = time.perf_counter(), None
                feed = PieceFeed(loop, NoGauge())
                prompt = body.pop("prompt")
                if batcher is not None:
                    batcher.submit(predictor.plan(prompt, **body), feed)
                else:
                    thread.submit(feed.produce, partial(predictor.stream, prompt, **body))
                while (item := await feed.get()) is not END:
                    if isinstance(item, BaseException):
                        errors += 1
                        continue
                    first = first or time.perf_counter()
                    pieces += 1
                if first is not None:
                    ttfts.append(first - started)

        started = time.perf_counter()
        try:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        finally:
            if batcher is not None:
                batcher.stop(timeout=60)
        elapsed = time.perf_counter() - started
    return summarise(ttfts, pieces, elapsed, errors)


def median_row(kind: str, mode: str, concurrency: int, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {"kind": kind, "mode": mode, "concurrency": concurrency}
    for key in ("ttft_p50_ms", "ttft_p99_ms", "tokens_per_s"):
        row[key] = round(statistics.median(r[key] for r in rounds), 2)
    row["errors"] = sum(r["errors"] for r in rounds)
    return row


def measure(kind: str, url: str, predictor, args: argparse.Namespace) -> dict[str, Any]:
    """Both modes at every concurrency, `args.rounds` times, interleaved; rows of medians + the bar."""
    asyncio.run(served_load(url, 2, 1, 8))  # warm-up: first-request costs are not the load's
    asyncio.run(in_process_load(predictor, 2, 1, 8))
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for round_ in range(args.rounds):
        for concurrency in CONCURRENCIES:
            n = max(args.requests, concurrency)
            served_result = asyncio.run(served_load(url, n, concurrency, args.max_new_tokens))
            local_result = asyncio.run(in_process_load(predictor, n, concurrency, args.max_new_tokens))
            results.setdefault(("served_stream", concurrency), []).append(served_result)
            results.setdefault(("in_process", concurrency), []).append(local_result)
            log(
                f"{kind} round {round_ + 1} c={concurrency}: served {served_result['tokens_per_s']:.0f} "
                f"tokens/s, in process {local_result['tokens_per_s']:.0f}"
            )
    rows = [median_row(kind, mode, c, r) for (mode, c), r in results.items()]
    ratios = [
        s["tokens_per_s"] / p["tokens_per_s"]
        for s, p in zip(results[("served_stream", BAR_CONCURRENCY)], results[("in_process", BAR_CONCURRENCY)])
    ]
    ratio = statistics.median(ratios)
    return {
        "kind": kind,
        "rows": rows,
        "served_over_in_process_at_8": round(ratio, 3),
        "ratios": [round(r, 3) for r in ratios],
        "targets_met": ratio >= BAR_RATIO and all(row["errors"] == 0 for row in rows),
    }


# -- batching: the upper bound ------------------------------------------------------------------------
def decode_seconds(model, batch: int, prompt_len: int, tokens: int) -> float:
    import torch

    idx = torch.randint(0, model.config.vocab_size, (batch, prompt_len), generator=torch.Generator().manual_seed(0))
    started = time.perf_counter()
    with torch.inference_mode():
        for _ in model.stream(idx, tokens):
            pass
    return time.perf_counter() - started


def batching_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    from components.models.gpt import GPT, GPTConfig
    from components.models.lstm_lm import LSTMLanguageModel, LSTMLMConfig

    models = {"gpt": GPT(GPTConfig()).eval(), "lstm_lm": LSTMLanguageModel(LSTMLMConfig()).eval()}
    default_threads = torch.get_num_threads()
    rows = []
    for kind, model in models.items():
        for threads in sorted({1, default_threads}):
            torch.set_num_threads(threads)
            decode_seconds(model, 8, 16, 8)  # warm-up
            pairs = []
            for _ in range(args.rounds):
                one_by_one = 8 * decode_seconds(model, 1, 16, args.max_new_tokens)
                pairs.append((one_by_one, decode_seconds(model, 8, 16, args.max_new_tokens)))
            tokens = 8 * args.max_new_tokens
            sequential = statistics.median(tokens / a for a, _ in pairs)
            batched = statistics.median(tokens / b for _, b in pairs)
            speedup = statistics.median(a / b for a, b in pairs)
            rows.append(
                {
                    "kind": kind,
                    "threads": threads,
                    "sequential_tokens_per_s": round(sequential, 1),
                    "batched_tokens_per_s": round(batched, 1),
                    "speedup": round(speedup, 2),
                }
            )
            log(f"{kind} on {threads} thread(s): batch of 8 = {speedup:.2f}x the one-by-one tokens/s")
    torch.set_num_threads(default_threads)
    return rows


# -- main ------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--bento", help="serve this Bento as it is and benchmark its generator")
    parser.add_argument("--requests", type=int, default=8, help="requests per load (at least the concurrency)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--batching", action="store_true", help="measure what batching prompts would gain")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return parser.parse_args(argv)


def benchmark_bento(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    import bentoml
    import httpx

    from components.predictor import load_predictor

    with served(args.bento, workdir / "serve.log", str(workdir / "inference")) as (url, _):
        info = httpx.post(f"{url}/info", json={}, timeout=30).json()
        generator = info["models"].get("generator")
        if generator is None:
            raise SystemExit(f"{args.bento} serves no generator")
        predictor = load_predictor(bentoml.models.get(generator["bento_model"]).path)
        return [measure(predictor.kind, url, predictor, args)]


def benchmark_kinds(args: argparse.Namespace, kinds: list[str], workdir: Path) -> list[dict[str, Any]]:
    import compat
    from components.predictor import load_predictor

    results = []
    with compat.use_bentoml_home(workdir / "bentoml"):
        texts, labels = bbc_articles()
        classifier = train_tfidf(texts[::5], labels[::5], workdir / "classifier", CHEAP_TFIDF)  # every class
        for kind in kinds:
            bundle = train_generator(kind, workdir / kind, args.train_steps)
            tag = build_bento(kind, bundle, classifier, workdir)
            predictor = load_predictor(bundle)
            with served(tag, workdir / f"serve-{kind}.log", str(workdir / "inference")) as (url, _):
                results.append(measure(kind, url, predictor, args))
    return results


def print_table(report: dict[str, Any]) -> None:
    header = f"{'kind':<14}{'mode':<15}{'conc':>5}{'ttft p50 ms':>13}{'ttft p99 ms':>13}{'tokens/s':>10}{'errors':>8}"
    print(header)
    print("-" * len(header))
    for row in report["rows"]:
        print(
            f"{row['kind']:<14}{row['mode']:<15}{row['concurrency']:>5}{row['ttft_p50_ms']:>13.1f}"
            f"{row['ttft_p99_ms']:>13.1f}{row['tokens_per_s']:>10.1f}{row['errors']:>8}"
        )
    print_verdicts(report, sys.stdout)


def print_verdicts(report: dict[str, Any], out: TextIO) -> None:
    for kind in report["kinds"]:
        print(
            f"{kind['kind']}: served / in process tokens/s at concurrency 8 = {kind['served_over_in_process_at_8']} "
            f"(rounds {kind['ratios']}; bar >= {BAR_RATIO}, 0 errors): "
            f"{'met' if kind['targets_met'] else 'NOT met'}",
            file=out,
        )
    for note in report["notes"]:
        print(f"note: {note}", file=out)
    print(f"load average at the end {report['load_average']} on {report['cpu_count']} CPUs", file=out)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    if args.batching:
        rows = batching_rows(args)
        print(json.dumps({"rows": rows}) if args.json else "\n".join(json.dumps(row) for row in rows))
        return {"rows": rows}
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="maas-generate-load-") as tmp:
        if args.bento:
            kinds = benchmark_bento(args, Path(tmp))
        else:
            wanted, notes = available_kinds(args.kinds)
            kinds = benchmark_kinds(args, wanted, Path(tmp))
    report = {
        "rows": [row for kind in kinds for row in kind.pop("rows")],
        "kinds": kinds,
        "all_targets_met": all(kind["targets_met"] for kind in kinds),
        "notes": notes,
        "load_average": os.getloadavg(),
        "cpu_count": os.cpu_count(),
    }
    if args.json:  # the rows only, as issue #20 asks; the verdicts go to stderr
        print(json.dumps({"rows": report["rows"]}))
        print_verdicts(report, sys.stderr)
    else:
        print_table(report)
    return report


if __name__ == "__main__":
    main()
