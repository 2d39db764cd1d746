"""benchmarks/serve_load.py's serving bar: which ratios it checks, and on what."""

from __future__ import annotations

import pytest

from tests.benchmarks.scripts import load_benchmark


@pytest.fixture(scope="module")
def serve_load():
    return load_benchmark("serve_load")


def _served(mode: str, rounds: list[float], errors: int = 0) -> dict:
    """A served row as benchmark() reports it: the median round, with every round's rate."""
    median = sorted(rounds)[(len(rounds) - 1) // 2]
    return {
        "mode": mode,
        "concurrency": 32,
        "requests_per_s": median,
        "texts_per_s": median,
        "errors": errors,
        "rounds_requests_per_s": rounds,
    }


def _in_process(rounds: list[float]) -> dict:
    median = sorted(rounds)[(len(rounds) - 1) // 2]
    return {
        "mode": "in_process",
        "concurrency": None,
        "texts_per_s": median,
        "errors": 0,
        "rounds_texts_per_s": rounds,
    }


def test_a_model_bound_bar_pairs_each_round_with_the_in_process_run_after_it(serve_load):
    # Round by round: 30/36, 44/52, 40/60 -> 0.833, 0.846, 0.667: the median pair, 0.833, passes.
    # The median rows alone (40 served, 52 in process) would say 0.769: the in-process runs of a
    # quieter and a busier moment decide it then, not the service.
    rows = [
        _served("batched", [30.0, 44.0, 40.0]),
        _served("unbatched", [20.0, 21.0, 22.0]),
        _in_process([36.0, 52.0, 60.0]),
    ]
    checks = serve_load.targets(rows, rss_growth=0.01, kind="pretrained")
    assert checks["batched_over_in_process_at_32"] == pytest.approx(0.769, abs=1e-3)
    assert checks["batched_over_in_process_at_32_paired"] == pytest.approx(0.833, abs=1e-3)
    assert checks["batched_over_in_process_ok"] is True
    assert checks["batched_not_below_unbatched"] is True


def test_a_model_bound_bar_fails_when_the_paired_ratio_is_low(serve_load):
    rows = [_served("batched", [30.0, 31.0, 29.0]), _in_process([40.0, 41.0, 39.0])]
    checks = serve_load.targets(rows, rss_growth=0.01, kind="pretrained")
    assert checks["batched_over_in_process_at_32_paired"] == pytest.approx(0.75, abs=1e-2)
    assert checks["batched_over_in_process_ok"] is False


def test_one_in_process_run_falls_back_to_the_plain_ratio(serve_load):
    rows = [_served("batched", [40.0, 42.0, 44.0]), _in_process([50.0])]
    checks = serve_load.targets(rows, rss_growth=0.01, kind="pretrained")
    assert checks["batched_over_in_process_at_32_paired"] == checks["batched_over_in_process_at_32"] == 0.84
    assert checks["batched_over_in_process_ok"] is True


def test_the_cheap_bar_pairs_batched_with_echo_and_any_error_fails(serve_load):
    rows = [_served("batched", [700.0, 750.0, 690.0]), _served("echo", [1000.0, 1000.0, 1000.0], errors=1)]
    checks = serve_load.targets(rows, rss_growth=0.01, kind="tfidf_logreg")
    assert checks["batched_over_echo_at_32_paired"] == pytest.approx(0.7)
    assert checks["batched_over_echo_ok"] is True
    assert checks["zero_errors"] is False
    assert serve_load.targets(rows, rss_growth=0.2, kind="tfidf_logreg")["rss_growth_ok"] is False


def test_the_in_process_row_reports_cpu_time_not_wall_time(serve_load):
    # The table's CPU column compares the server's CPU per request with the model's own CPU per
    # text; wall time per text would undercount a model that computes on several threads.
    import time

    class Waiting:
        def predict_proba(self, texts):
            time.sleep(0.01)  # 10 ms of wall time a batch, next to no CPU

    result = serve_load.in_process_throughput(Waiting(), ["a"] * 4, [4], seconds=0.2)
    wall_ms_per_text = 1000 / result["texts_per_s"]
    assert wall_ms_per_text > 2
    assert result["cpu_ms_per_text"] < wall_ms_per_text / 5
