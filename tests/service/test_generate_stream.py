"""Streaming /generate: server-sent events in process (content, errors) and from a real `bentoml serve` (timing, disconnects)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from starlette.testclient import TestClient

from components.serving.streaming import END, PieceFeed, sse_events
from tests.service.conftest import REPO, make_texts, serve

# A GPT of the default width (a real per-token cost, so that timings mean something), trained for
# two steps: a serving test needs its speed, not its prose.
GPT_PARAMS = {"block_size": 64, "n_layer": 4, "n_head": 4, "n_embd": 128, "sample_tokens": 4, "eval_max_chars": 200}
LIMITS = {"max_texts": 8, "max_chars": 500, "max_new_tokens": 2000, "max_prompt_chars": 200}
REQUEST = {"prompt": "the team", "max_new_tokens": 40, "temperature": 0.9, "top_k": 20, "seed": 5}


def events(body: str) -> list[dict]:
    """The JSON payloads of a server-sent event stream."""
    return [json.loads(line[len("data: ") :]) for line in body.splitlines() if line.startswith("data: ")]


def joined(payloads: list[dict]) -> str:
    return "".join(p["text"] for p in payloads if "text" in p)


@pytest.fixture(scope="module")
def stream_models(bentoml_home, classifier_bundle, tmp_path_factory) -> dict[str, str]:
    """Tags of a classifier whose limits allow long generations and of a default-width GPT."""
    from components.config import ModelSpec, TrainingSpec
    from components.data.dataset import CorpusData
    from components.training.candidates import train_candidate
    from flows import bento

    text = " ".join(make_texts(30, seed=3)[0]) + "\n"
    spec = ModelSpec(
        name="stream-gpt",
        kind="gpt",
        params=GPT_PARAMS,
        training=TrainingSpec(device="cpu", max_steps=2, batch_size=4, eval_batches=1),
    )
    folder = tmp_path_factory.mktemp("stream-gpt")
    bundle = train_candidate(spec, CorpusData(train_text=text, val_text=text[:500]), folder / "work").save(
        folder / "bundle"
    )
    labels = {"model_name": "stream-test", "model_version": "1", "data_version": "md5:0.dir"}
    return {
        "classifier": bento.import_bundle(
            classifier_bundle, name="maas-test-stream-classifier", labels=labels, metadata={"serving": LIMITS}
        ),
        "generator": bento.import_bundle(bundle, name="maas-test-stream-generator", labels=labels, metadata={}),
    }


@pytest.fixture(scope="module")
def client(import_service, stream_models) -> Iterator[TestClient]:
    module = import_service("maas_service_stream", stream_models)
    module.MaasService.config["metrics"] = {"enabled": False}  # BentoML's own: once per process
    with TestClient(module.MaasService.to_asgi(), raise_server_exceptions=False) as test_client:
        yield test_client


# -- in process: what the stream says ------------------------------------------------------------
def test_streamed_pieces_join_to_the_json_text(client):
    plain = client.post("/generate", json=REQUEST)
    assert plain.status_code == 200, plain.text
    assert set(plain.json()) == {"text", "seed", "model_version"}  # the JSON contract is unchanged
    streamed = client.post("/generate", json={**REQUEST, "stream": True})
    assert streamed.status_code == 200
    assert streamed.headers["content-type"].startswith("text/event-stream")
    payloads = events(streamed.text)
    assert len(payloads) > 2  # several pieces, then the closing event
    assert joined(payloads) == plain.json()["text"]
    assert payloads[-1] == {"done": True, "seed": 5, "model_version": "1"}


def test_a_stop_string_ends_the_stream(client):
    text = client.post("/generate", json=REQUEST).json()["text"]
    stop = text[10:12]
    streamed = events(client.post("/generate", json={**REQUEST, "stream": True, "stop": [stop]}).text)
    assert joined(streamed) == text[: text.find(stop)]
    assert streamed[-1]["done"] is True


@pytest.mark.parametrize(
    "override, message",
    [
        ({"temperature": -1}, "temperature"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"stop": ["x" * 65]}, "stop"),
        ({"stream": "sometimes"}, "stream"),
    ],
)
def test_bad_streaming_requests_are_a_400_before_any_event(client, override, message):
    response = client.post("/generate", json={**REQUEST, "stream": True, **override})
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert message in response.text


def test_a_prompt_the_model_refuses_is_a_400_not_a_stream(client, stream_models, monkeypatch):
    import bentoml

    from components.predictor import load_predictor

    predictor_class = type(load_predictor(bentoml.models.get(stream_models["generator"]).path))

    def refuse(self, prompt, **kwargs):  # as a kind refuses a prompt: when it is tokenised
        raise ValueError("prompt has characters outside the vocabulary: '\\x00'")

    # The batched loop takes requests through `plan`; a kind without a batch decoder through `stream`.
    monkeypatch.setattr(predictor_class, "plan", refuse)
    monkeypatch.setattr(predictor_class, "stream", refuse)
    response = client.post("/generate", json={**REQUEST, "stream": True})
    assert response.status_code == 400 and "outside the vocabulary" in response.json()["error"]
    monkeypatch.undo()
    assert client.post("/generate", json={**REQUEST, "stream": True}).status_code == 200


# -- the feed on its own: a consumer that leaves stops the producer --------------------------------
class Count:
    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        self.value += 1

    def dec(self) -> None:
        self.value -= 1


def test_a_closed_event_stream_stops_the_model_thread():
    produced: list[int] = []
    running = Count()

    def endless() -> Iterator[str]:
        for i in range(10_000):
            produced.append(i)
            time.sleep(0.002)
            yield "x"

    async def consume_two_then_leave() -> None:
        feed = PieceFeed(asyncio.get_running_loop(), running)
        worker = threading.Thread(target=feed.produce, args=(endless,))
        worker.start()
        stream = sse_events(feed, await feed.get(), {}, logging.getLogger(__name__))
        assert await stream.__anext__() == 'data: {"text": "x"}\n\n'
        await stream.__anext__()
        await stream.aclose()  # what a client disconnect does to the response's body iterator
        await asyncio.to_thread(worker.join, 5)
        assert not worker.is_alive()
        while (await feed.get()) is not END:  # drain what was produced before the cancel
            pass

    asyncio.run(consume_two_then_leave())
    assert running.value == 0
    assert len(produced) <= 10  # stopped within a few tokens, not after 10,000


# -- a real server: time to first event, and disconnects ---------------------------------------------
@pytest.fixture(scope="module")
def server(bentoml_home, stream_models, tmp_path_factory) -> Iterator:
    args = ["--working-dir", str(REPO)]
    for name, tag in stream_models.items():
        args += ["--arg", f"{name}={tag}"]
    log = tmp_path_factory.mktemp("stream-serve") / "serve.log"
    with serve("service:MaasService", bentoml_home, log, extra_args=args) as running:
        yield running


def in_progress(url: str) -> float:
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    match = re.search(r"^maas_generations_in_progress(?:\{[^}]*\})? (\S+)$", metrics, re.M)
    assert match, "maas_generations_in_progress is not on /metrics"
    return float(match.group(1))


@pytest.mark.slow
def test_the_first_event_comes_early_and_the_text_matches(server):
    request = {**REQUEST, "max_new_tokens": 200}
    plain = httpx.post(f"{server.url}/generate", json=request, timeout=60).json()["text"]
    started = time.perf_counter()
    first_at, body = None, []
    with httpx.stream("POST", f"{server.url}/generate", json={**request, "stream": True}, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and first_at is None:
                first_at = time.perf_counter() - started
            body.append(line)
    total = time.perf_counter() - started
    assert first_at < 0.3 * total, (first_at, total)
    assert joined(events("\n".join(body))) == plain


@pytest.mark.slow
def test_a_client_that_leaves_mid_stream_leaves_no_generation_running(server):
    request = {**REQUEST, "max_new_tokens": 2000, "stream": True}  # tens of seconds if left running
    with httpx.stream("POST", f"{server.url}/generate", json=request, timeout=60) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        assert in_progress(server.url) == 1
    # The connection is closed: the server notices at its next token and stops.
    deadline = time.monotonic() + 5
    while in_progress(server.url) != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert in_progress(server.url) == 0
    assert httpx.post(f"{server.url}/generate", json={**REQUEST, "max_new_tokens": 3}, timeout=30).status_code == 200


@pytest.mark.slow
def test_a_request_is_answered_while_a_long_stream_runs(server):
    """Generations decode together: a short request does not wait for a long stream to end
    (one at a time, it would wait for all 2,000 tokens)."""
    long = {**REQUEST, "max_new_tokens": 2000, "stream": True}
    with httpx.stream("POST", f"{server.url}/generate", json=long, timeout=60) as response:
        lines = response.iter_lines()  # held: a closed line iterator closes the connection
        assert next(line for line in lines if line.startswith("data: "))
        short = httpx.post(f"{server.url}/generate", json={**REQUEST, "max_new_tokens": 5}, timeout=60)
        assert short.status_code == 200 and short.json()["text"]
        assert in_progress(server.url) == 1  # the long stream is still running
    deadline = time.monotonic() + 5
    while in_progress(server.url) != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert in_progress(server.url) == 0


# -- every stream ends with exactly one closing event -----------------------------------------------
class Breaks:
    """A batch decoder whose steps fail after `after` steps (an error mid-stream)."""

    def __init__(self, decoder, after: int):
        self.decoder, self.after = decoder, after

    def prefill(self, prompt_ids):
        return self.decoder.prefill(prompt_ids)

    def step(self, rows, last_ids):
        if self.after == 0:
            raise RuntimeError("the model failed (simulated)")
        self.after -= 1
        return self.decoder.step(rows, last_ids)


def tiny_gpt():
    import torch

    from components.models.gpt import GPT, GPTConfig
    from components.models.lm_predictor import LanguageModelPredictor
    from components.text.char_tokenizer import CharTokenizer

    tokenizer = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz .\n")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16))
    return LanguageModelPredictor("gpt", model, tokenizer, "char")


def served_events(decoder, plan) -> list[dict]:
    """The events a client reads for `plan`, through the batched loop, the feed and sse_events."""
    from components.serving.batching import GenerationBatcher

    batcher = GenerationBatcher(decoder).start("test-stream-ends")
    running = Count()

    async def read() -> list[str]:
        feed = PieceFeed(asyncio.get_running_loop(), running)
        batcher.submit(plan, feed)
        return [event async for event in sse_events(feed, await feed.get(), {"seed": 1}, logging.getLogger(__name__))]

    try:
        body = asyncio.run(read())
    finally:
        batcher.stop(timeout=10)
    assert running.value == 0
    return events("".join(body))


@pytest.mark.parametrize(
    "case",
    ["plain", "max_new_tokens 1", "stop at the very start", "stop later", "error mid-stream", "error at once"],
)
def test_every_stream_ends_with_exactly_one_done_or_error(case):
    predictor = tiny_gpt()
    text = predictor.generate("the ", max_new_tokens=12, temperature=0)
    sampling = {"max_new_tokens": 12, "temperature": 0}
    decoder = predictor.batch_decoder()
    if case == "max_new_tokens 1":
        sampling["max_new_tokens"] = 1
    elif case == "stop at the very start":
        sampling["stop"] = [text[:1]]
    elif case == "stop later":
        sampling["stop"] = [text[5:7]]
    elif case.startswith("error"):
        decoder = Breaks(decoder, after=3 if case == "error mid-stream" else 0)
    payloads = served_events(decoder, predictor.plan("the ", **sampling))
    closing = [p for p in payloads if "done" in p or "error" in p]
    assert len(closing) == 1 and payloads[-1] is closing[0], payloads
    assert all(set(p) == {"text"} and p["text"] for p in payloads[:-1]), payloads  # no empty pieces
    if case.startswith("error"):
        assert "error" in payloads[-1]
    else:
        assert payloads[-1] == {"done": True, "seed": 1}
        assert joined(payloads) == predictor.generate("the ", **sampling)


def test_shutdown_stops_the_decode_loop_and_the_model_threads(import_service, stream_models):
    module = import_service("maas_service_stream_shutdown", stream_models)
    module.MaasService.config["metrics"] = {"enabled": False}
    before = set(threading.enumerate())
    with TestClient(module.MaasService.to_asgi(), raise_server_exceptions=False) as test_client:
        assert test_client.post("/generate", json=REQUEST).status_code == 200
        assert test_client.post("/classify", json={"texts": ["a short text"]}).status_code == 200
        started = {t for t in set(threading.enumerate()) - before if t.name.startswith("maas-")}
    assert any(t.name == "maas-generate-batch" for t in started), started
    assert [t.name for t in started if t.is_alive()] == []
