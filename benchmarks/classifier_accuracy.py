"""The classification leaderboard of a config's candidates, trained here without any tracking.

    python benchmarks/classifier_accuracy.py                          # configs/default.yaml
    python benchmarks/classifier_accuracy.py --config gpu --json      # the GPU sizes, one JSON object
    python benchmarks/classifier_accuracy.py --candidates lstm,transformer --data data/bbc-news
    python benchmarks/classifier_accuracy.py --candidates lstm --seeds 42,0,1    # the seed spread
    python benchmarks/classifier_accuracy.py --dataset bbc-brief      # the real `maas pipeline` on bbc-brief

It trains each candidate through the pipeline's own entry point
(``components.training.candidates.train_candidate``) on the ingested, pinned splits (``maas
ingest`` writes them under ``data/``) and evaluates it as the pipeline does
(``components.evaluation.report.evaluate_classifier``): validation macro-F1 (which chooses)
beside test accuracy and macro-F1 (which only report), with p50 latency per text, train
seconds and the device. Nothing reaches MLflow, Prefect or BentoML, so it runs wherever the
components do (a GPU host without the serving stack, say).

With ``--seeds``, every candidate is trained once per seed (its ``training.seed`` replaced), and a
summary gives each candidate's mean, min and max over the seeds. On a few hundred validation
texts one seed can move test accuracy by a point or more (MiniLM on the H200: 0.967-0.984 over
24 runs), so a setting is chosen on its mean validation macro-F1, never on one lucky seed.

``--dataset bbc-brief`` measures the pipeline as a user meets it on a small set of short texts
(issue #18). It is built from the ingested BBC News under the data root (``data/bbc-news``, or
``--data``; ``maas ingest`` or ``dvc pull`` writes it), deterministically:

- each article becomes its title plus its first sentence: ingestion joins the title line and the
  body with a space, so the text is cut after the first ``.``, ``!`` or ``?`` (a closing quote
  kept) that is followed by whitespace or the end (``brief``); 156 characters on average;
- test: the pinned test split (425 articles), less the 3 whose brief repeats an earlier test
  article's (the same story filed twice; ingestion would refuse the file): 422 briefs;
- train: 500 articles drawn from the pinned train and validation splits together (train rows then
  validation rows, in file order), stratified by label, seed 42 (scikit-learn's
  ``train_test_split(train_size=500, stratify=..., random_state=42)``), after leaving out the
  articles whose brief repeats a test brief or an earlier one (duplicates are compared as
  ingestion compares them, ``components.data.cleaning.normalize_text``).

Both go as ``train.csv`` and ``test.csv`` (columns text, label) into a throwaway project (a copy
of this one, tests/sandbox.py) with its own MAAS_HOME, and the real ``maas pipeline --data
train.csv --test-file test.csv --text-column text --label-column label --name bbc-brief`` runs
there as a subprocess with the default candidates and budget (``--config`` picks another
preset). Then ``maas compare -c bbc-brief --json`` gives each candidate's selection score (CV
mean or validation), test accuracy, macro-F1 and train seconds, and the champion. The bar:
champion test macro-F1 >= 0.92 on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere
BRIEF_TRAIN_ROWS, BRIEF_SEED, BRIEF_BAR = 500, 42, 0.92
# The end of the first sentence: . ! or ? (and a closing quote) before whitespace or the end.
FIRST_SENTENCE = re.compile(r"^.*?[.!?][\"'\u2019]?(?=\s|$)", re.DOTALL)
# Variables of the caller's own stores: the benchmark's pipeline must use only its temp MAAS_HOME.
STORE_VARIABLES = ("MAAS_PROJECT_DIR", "MLFLOW_TRACKING_URI", "PREFECT_HOME", "PREFECT_API_URL", "BENTOML_HOME")

from components.config import ModelSpec, load_config, resolve_config_path  # noqa: E402
from components.data.dataset import ClassificationData, load_classification_data  # noqa: E402
from components.evaluation.report import evaluate_classifier  # noqa: E402
from components.training.candidates import train_candidate  # noqa: E402

COLUMNS = [
    "candidate", "seed", "val_macro_f1", "val_accuracy", "test_accuracy", "test_macro_f1", "p50_ms", "train_s",
    "device",
]  # fmt: skip
SUMMARISED = ("val_macro_f1", "test_accuracy")  # what --seeds summarises: the choice and the report


def run(
    config_name: str,
    data_folder: Path | None,
    names: list[str] | None,
    save: Path | None = None,
    seeds: list[int] | None = None,
) -> dict:
    config = load_config(resolve_config_path(config_name, REPO / "configs"))
    task = config.classification
    if task is None:
        raise SystemExit(f"config {config.name!r} has no classification task")
    data = load_classification_data(data_folder or REPO / "data" / task.dataset)
    known = [c.name for c in task.candidates]
    unknown = sorted(set(names or []) - set(known))
    if unknown:
        raise SystemExit(f"unknown candidates {unknown}; config {config.name!r} has {known}")
    rows = []
    for spec in task.candidates:
        if names and spec.name not in names:
            continue
        for seed in seeds or [spec.training.seed]:
            seeded = spec.model_copy(update={"training": spec.training.model_copy(update={"seed": seed})})
            # One seed keeps the old layout (SAVE/<candidate>); several get a folder each.
            target = None if save is None else save / (spec.name if not seeds else f"{spec.name}-seed{seed}")
            rows.append(train_and_evaluate(seeded, data, target))
            print(f"# {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    summaries = summarise(rows) if seeds else []
    # Promotion's view: the best on validation wins (with --seeds, the best mean); test only reports.
    ranked = summaries or rows
    best = max(ranked, key=lambda r: r["val_macro_f1"]) if ranked else None
    return {
        "config": config.name,
        "splits": {"train": len(data.train_texts), "val": len(data.val_texts), "test": len(data.test_texts)},
        "rows": rows,
        "summaries": summaries,
        "chosen": best["candidate"] if best else None,
    }


def train_and_evaluate(spec: ModelSpec, data: ClassificationData, save: Path | None) -> dict:
    print(f"# training {spec.name} ({spec.kind}, seed {spec.training.seed})", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="maas-accuracy-") as workdir:
        started = time.perf_counter()
        predictor = train_candidate(spec, data, workdir)
        train_s = time.perf_counter() - started
    if save is not None:
        predictor.save(save)
    report = evaluate_classifier(predictor, data)  # what the pipeline's evaluation reports
    val, test = report["val"], report["test"]
    return {
        "candidate": spec.name,
        "seed": spec.training.seed,
        "val_macro_f1": round(val["macro_f1"], 4),
        "val_accuracy": round(val["accuracy"], 4),
        "test_accuracy": round(test["accuracy"], 4),
        "test_macro_f1": round(test["macro_f1"], 4),
        "p50_ms": round(report["latency"]["latency_ms_p50"], 2),
        "train_s": round(train_s, 1),
        "device": predictor.metadata.get("device", "cpu"),  # the torch trainers record it
    }


def summarise(rows: list[dict]) -> list[dict]:
    """Per candidate, in first-seen order: the seeds, and the mean, min and max of SUMMARISED."""
    by_candidate: dict[str, list[dict]] = {}
    for row in rows:
        by_candidate.setdefault(row["candidate"], []).append(row)
    summaries = []
    for candidate, runs in by_candidate.items():
        summary: dict = {"candidate": candidate, "seeds": [r["seed"] for r in runs]}
        for metric in SUMMARISED:
            values = [r[metric] for r in runs]
            summary[metric] = round(statistics.fmean(values), 4)  # the mean: what chooses
            summary[f"{metric}_min"], summary[f"{metric}_max"] = min(values), max(values)
        summaries.append(summary)
    return summaries


def print_table(report: dict) -> None:
    cells = [[str(row[c]) for c in COLUMNS] for row in report["rows"]]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(COLUMNS)]
    print(f"config {report['config']}, splits {report['splits']}")
    print("  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    for summary in report["summaries"]:
        spread = ", ".join(
            f"{metric} {summary[metric]} ({summary[metric + '_min']}-{summary[metric + '_max']})"
            for metric in SUMMARISED
        )
        print(f"{summary['candidate']} over seeds {summary['seeds']}: mean {spread}")
    how = "the best mean validation macro-F1" if report["summaries"] else "validation"
    print(f"chosen on {how}: {report['chosen']}")


def brief(text: str) -> str:
    """The title and first sentence of an ingested BBC article (the whole text when no sentence ends)."""
    match = FIRST_SENTENCE.match(text)
    return match.group(0) if match else text


def brief_splits(data: ClassificationData, train_rows: int = BRIEF_TRAIN_ROWS,
                 seed: int = BRIEF_SEED) -> tuple[list[dict], list[dict]]:
    """bbc-brief's train rows (stratified from train+val) and test rows (the test split), no brief twice."""
    from sklearn.model_selection import train_test_split

    from components.data.cleaning import normalize_text

    seen: set[str] = set()

    def unique(texts: list[str], labels: list[str]) -> list[dict]:
        rows = []
        for text, label in zip(texts, labels, strict=True):
            short = brief(text)
            if normalize_text(short) not in seen:
                seen.add(normalize_text(short))
                rows.append({"text": short, "label": label})
        return rows

    test = unique(data.test_texts, data.test_labels)
    pool = unique(data.train_texts + data.val_texts, data.train_labels + data.val_labels)
    if train_rows > len(pool):
        raise SystemExit(f"bbc-brief wants {train_rows} training articles; train+val hold {len(pool)}")
    chosen, _ = train_test_split(list(range(len(pool))), train_size=train_rows,
                                 stratify=[r["label"] for r in pool], random_state=seed)
    return [pool[i] for i in sorted(chosen)], test


def _write_csv(rows: list[dict], path: Path) -> None:
    import pandas as pd

    pd.DataFrame(rows, columns=["text", "label"]).to_csv(path, index=False)


def run_brief(config_name: str, data_folder: Path | None, train_rows: int = BRIEF_TRAIN_ROWS,
              keep: Path | None = None) -> dict:
    """Build bbc-brief, run `maas pipeline` on it in a throwaway project, return its leaderboard."""
    from tests.sandbox import make_project

    source = data_folder or REPO / "data" / "bbc-news"
    if not source.is_dir():
        raise SystemExit(f"{source} holds no ingested BBC News: run `maas ingest` (or `dvc pull`) first, or give --data")
    train, test = brief_splits(load_classification_data(source), train_rows)
    root = Path(tempfile.mkdtemp(prefix="maas-bbc-brief-")) if keep is None else keep
    try:
        project = make_project(root / "project")
        preset = config_name
        if Path(config_name).suffix in {".yaml", ".yml"}:  # a preset file of one's own goes beside the others
            shutil.copy(config_name, project / "configs" / Path(config_name).name)
            preset = Path(config_name).stem
        _write_csv(train, project / "train.csv")
        _write_csv(test, project / "test.csv")
        env = {k: v for k, v in os.environ.items() if k not in STORE_VARIABLES} | {"MAAS_HOME": str(root / "home")}
        maas = str(Path(sys.executable).parent / "maas")
        started = time.perf_counter()
        _maas(maas, ["pipeline", "--config", preset, "--data", "train.csv", "--test-file", "test.csv",
                     "--text-column", "text", "--label-column", "label", "--name", "bbc-brief"], project, env)
        pipeline_s = time.perf_counter() - started
        rows = json.loads(_maas(maas, ["compare", "-c", "bbc-brief", "--json"], project, env))
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
    candidates = [_brief_row(r) for r in rows if r["task"] == "classification"]
    champion = next((r for r in candidates if "champion" in (r["alias"] or "")), None)
    return {
        "dataset": "bbc-brief",
        "config": preset,
        "splits": {"train": len(train), "test": len(test)},
        "mean_chars": round(statistics.fmean(len(r["text"]) for r in train + test), 1),
        "pipeline_s": round(pipeline_s, 1),
        "rows": candidates,
        "champion": champion["candidate"] if champion else None,
        "champion_test_macro_f1": champion["test_macro_f1"] if champion else None,
        "bar": BRIEF_BAR,
        "passed": bool(champion and champion["test_macro_f1"] >= BRIEF_BAR),
    }


def _maas(maas: str, args: list[str], cwd: Path, env: dict[str, str]) -> str:
    print(f"# maas {' '.join(args)}", file=sys.stderr, flush=True)
    done = subprocess.run([maas, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"`maas {' '.join(args)}` failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return done.stdout


def _brief_row(row: dict) -> dict:
    """One leaderboard row as this benchmark reports it."""
    def rounded(value):
        return None if value is None else round(value, 4)

    return {
        "candidate": row["candidate"], "alias": row["alias"] or "",
        "selection_macro_f1": rounded(row["val"].get("macro_f1")),
        "test_accuracy": rounded(row["test"].get("accuracy")), "test_macro_f1": rounded(row["test"].get("macro_f1")),
        "train_s": None if row["train_s"] is None else round(row["train_s"], 1),
    }


BRIEF_COLUMNS = ["candidate", "alias", "selection_macro_f1", "test_accuracy", "test_macro_f1", "train_s"]


def print_brief_table(report: dict) -> None:
    cells = [[str(row[c]) for c in BRIEF_COLUMNS] for row in report["rows"]]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(BRIEF_COLUMNS)]
    print(f"bbc-brief ({report['splits']['train']} train, {report['splits']['test']} test articles, "
          f"{report['mean_chars']} characters on average), preset {report['config']}, "
          f"`maas pipeline` {report['pipeline_s']} s")
    print("  ".join(c.ljust(w) for c, w in zip(BRIEF_COLUMNS, widths, strict=True)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    verdict = "meets" if report["passed"] else "misses"
    print(f"champion {report['champion']}: test macro-F1 {report['champion_test_macro_f1']} "
          f"({verdict} the bar {report['bar']})")


def seed_list(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be comma-separated integers, got {text!r}") from None
    if len(set(seeds)) != len(seeds) or any(seed < 0 for seed in seeds):
        raise argparse.ArgumentTypeError(f"seeds must be distinct and non-negative, got {text!r}")
    return seeds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="default", help="a preset in configs/ or a YAML path")
    parser.add_argument("--data", type=Path, help="the ingested dataset folder (default: data/<dataset>)")
    parser.add_argument("--candidates", help="comma-separated candidate names (default: all)")
    parser.add_argument(
        "--save", type=Path, help="also save each bundle to SAVE/<candidate> (to serve or inspect)"
    )
    parser.add_argument(
        "--seeds",
        type=seed_list,
        help="comma-separated seeds: train every candidate once per seed and summarise (mean, min, max)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--dataset", choices=["bbc-news", "bbc-brief"], default="bbc-news",
                        help="bbc-brief: build it and run `maas pipeline` on it (see the module docstring)")
    parser.add_argument("--keep", type=Path, help="bbc-brief: run in this folder and keep it (project, MAAS_HOME)")
    parser.add_argument("--train-rows", type=int, default=BRIEF_TRAIN_ROWS, help=argparse.SUPPRESS)  # tests
    args = parser.parse_args(argv)
    if args.dataset == "bbc-brief":
        report = run_brief(args.config, args.data, args.train_rows, keep=args.keep)
        if args.json:
            print(json.dumps(report))
        else:
            print_brief_table(report)
        return report
    names = [n.strip() for n in args.candidates.split(",")] if args.candidates else None
    report = run(args.config, args.data, names, args.save, args.seeds)
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
    return report


if __name__ == "__main__":
    main()
