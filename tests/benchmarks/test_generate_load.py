"""benchmarks/generate_load.py run as users run it: the JSON rows it promises (the served run is slow)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.benchmarks.scripts import REPO

ROW_KEYS = {"kind", "mode", "concurrency", "ttft_p50_ms", "ttft_p99_ms", "tokens_per_s", "errors"}


def run(*args: str, timeout: int) -> dict:
    script = REPO / "benchmarks" / "generate_load.py"
    done = subprocess.run(
        [sys.executable, str(script), *args, "--json"], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_batching_rows_compare_one_by_one_with_a_batch_of_eight():
    report = run("--batching", "--rounds", "1", "--max-new-tokens", "3", timeout=300)
    assert {row["kind"] for row in report["rows"]} == {"gpt", "lstm_lm"}
    for row in report["rows"]:
        assert row["sequential_tokens_per_s"] > 0 and row["batched_tokens_per_s"] > 0
        assert row["speedup"] == pytest.approx(
            row["batched_tokens_per_s"] / row["sequential_tokens_per_s"], rel=0.5
        )


@pytest.mark.slow
@pytest.mark.skipif(not (REPO.parent / "shared" / "datasets" / "tinyshakespeare" / "input.txt").is_file(),
                    reason="the benchmark trains on Tiny Shakespeare from the shared datasets folder next to the repo")
def test_served_and_in_process_rows_for_a_kind():
    args = ("--kinds", "lstm_lm", "--rounds", "1", "--requests", "1", "--max-new-tokens", "5", "--train-steps", "1")
    report = run(*args, timeout=900)
    assert set(report) == {"rows"}
    rows = report["rows"]
    assert {(r["mode"], r["concurrency"]) for r in rows} == {
        (mode, c) for mode in ("served_stream", "in_process") for c in (1, 8)
    }
    for row in rows:
        assert set(row) == ROW_KEYS and row["kind"] == "lstm_lm"
        assert row["errors"] == 0 and row["tokens_per_s"] > 0 and row["ttft_p50_ms"] <= row["ttft_p99_ms"]
