"""The service in this process (starlette TestClient over ``MaasService.to_asgi()``).

Its models come from the session BentoML home: the tiny TF-IDF classifier (limits: 8 texts,
500 characters, 32 new tokens, 200 prompt characters) and a generator. ``client`` is the default
service; ``bench_client`` the one defined with MAAS_BENCHMARK_ENDPOINTS=1 (/classify_unbatched, /echo).
"""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from components.predictor import load_predictor

GOOD = {"texts": ["the team scored a late goal to win the cup"]}


@pytest.fixture(scope="module")
def service(import_service, classifier_tag, generator_model):
    return import_service(
        "maas_service_full", {"classifier": classifier_tag, "generator": generator_model.tag}
    )


@pytest.fixture(scope="module")
def benchmark_service(import_service, classifier_tag, generator_model):
    return import_service(
        "maas_service_benchmark",
        {"classifier": classifier_tag, "generator": generator_model.tag},
        benchmark_endpoints=True,
    )


@pytest.fixture(scope="module")
def classifier_only(import_service, classifier_tag):
    return import_service("maas_service_classifier_only", {"classifier": classifier_tag, "generator": "none"})


def asgi_app(module):
    """A fresh ASGI app of the module's service. Prometheus metrics are off: each app would register
    them again in this process (/metrics is checked on the served Bento)."""
    module.MaasService.config["metrics"] = {"enabled": False}
    return module.MaasService.to_asgi()


@pytest.fixture(scope="module")
def client(service) -> Iterator[TestClient]:
    with TestClient(asgi_app(service), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def bench_client(benchmark_service) -> Iterator[TestClient]:
    with TestClient(asgi_app(benchmark_service), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def access_log() -> Iterator[list[dict]]:
    records: list[dict] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(json.loads(record.getMessage()))

    handler = Collect()
    logging.getLogger("maas.access").addHandler(handler)
    yield records
    logging.getLogger("maas.access").removeHandler(handler)


def assert_good_request_works(client: TestClient) -> None:
    response = client.post("/classify", json=GOOD)
    assert response.status_code == 200, response.text
    assert response.json()[0]["label"] == "sport"


def test_model_names_match_the_adapter(service):
    from flows import bento

    assert (service.CLASSIFIER_MODEL, service.GENERATOR_MODEL) == (
        bento.CLASSIFIER_MODEL,
        bento.GENERATOR_MODEL,
    )
    assert service.NO_MODEL == bento.NO_MODEL


def test_classify_equals_the_bundle(client, classifier_bundle, sample_texts):
    expected = load_predictor(classifier_bundle).predict(sample_texts[:8])
    response = client.post("/classify", json={"texts": sample_texts[:8]})
    assert response.status_code == 200, response.text
    items = response.json()
    assert [item["label"] for item in items] == [item["label"] for item in expected]
    for item, want in zip(items, expected, strict=True):
        assert item["model_version"] == "7"
        assert item["probabilities"] == pytest.approx(want["probabilities"], abs=1e-12)
        assert sum(item["probabilities"].values()) == pytest.approx(1.0)


BENCHMARK_PATHS = ("/classify_unbatched", "/echo")


def test_unbatched_and_echo(bench_client, sample_texts):
    texts = sample_texts[:3]
    batched = bench_client.post("/classify", json={"texts": texts}).json()
    unbatched = bench_client.post("/classify_unbatched", json={"texts": texts})
    assert unbatched.status_code == 200
    assert unbatched.json() == batched
    echo = bench_client.post("/echo", json={"texts": texts})
    assert echo.status_code == 200 and echo.json() == texts
    paths = bench_client.get("/docs.json").json()["paths"]
    assert all(path in paths for path in BENCHMARK_PATHS)


def test_benchmark_endpoints_are_off_by_default(client, sample_texts):
    paths = client.get("/docs.json").json()["paths"]
    assert "/classify" in paths and "/generate" in paths
    assert not any(path in paths for path in BENCHMARK_PATHS), list(paths)
    for path in BENCHMARK_PATHS:
        assert client.post(path, json={"texts": sample_texts[:1]}).status_code == 404, path


def test_a_served_bento_binds_the_loopback_by_default(service):
    # `bentoml serve` binds 0.0.0.0 unless the service config (or --host) says otherwise.
    assert service.MaasService.config["http"]["host"] == "127.0.0.1"


def test_limits_come_from_the_model_metadata(service):
    assert (service.SERVING.max_texts, service.SERVING.max_chars) == (8, 500)
    assert service.SERVING.max_batch_size == 64  # a default: not in the imported metadata


too_long = "x" * 501
BAD_CLASSIFY = {
    "no texts": ({"json": {"texts": []}}, 400, "at least 1 item"),
    "too many texts": ({"json": {"texts": ["a"] * 9}}, 400, "at most 8 items"),
    "text too long": ({"json": {"texts": ["ok", too_long]}}, 400, "at most 500 characters"),
    "empty string": ({"json": {"texts": [""]}}, 400, "at least 1 character"),
    "whitespace only": ({"json": {"texts": ["ok", " \t\n\u00a0\u3000"]}}, 400, "text is empty"),
    "zero-width only": ({"json": {"texts": ["\u200b\u200c\u200d\u2060\ufeff"]}}, 400, "text is empty after"),
    "NUL only": ({"json": {"texts": ["\x00\x00"]}}, 400, "text is empty after removing"),
    "control and format only": ({"json": {"texts": ["\x1b\x7f\u0085\u200e \x00"]}}, 400, "text is empty"),
    "non-string item": ({"json": {"texts": ["ok", 3]}}, 400, "valid string"),
    "null item": ({"json": {"texts": [None]}}, 400, "valid string"),
    "texts not a list": ({"json": {"texts": "one text"}}, 400, "valid array"),
    "missing field": ({"json": {"text": ["typo"]}}, 400, "Field required"),
    "top-level list": ({"json": ["a"]}, 400, "Input should be an object"),
    "malformed JSON": ({"content": b'{"texts": ["a"'}, 400, "Invalid JSON"),
    "non-UTF-8 bytes": ({"content": b'{"texts": ["\xff\xfe"]}'}, 400, "Invalid JSON"),
    "lone surrogate": ({"content": b'{"texts": ["\\ud800"]}'}, 400, "Invalid JSON"),
    "empty body": ({"content": b""}, 400, "Field required"),
    "wrong content type": (
        {"content": b"texts=a", "headers": {"content-type": "text/plain"}},
        415,
        "application/json",
    ),
    "form content type": ({"data": {"texts": "a"}}, 415, "application/json"),
    "bad content length": ({"content": b"{}", "headers": {"content-length": "abc"}}, 400, "Content-Length"),
}


@pytest.mark.parametrize(
    "request_kwargs, status, message", list(BAD_CLASSIFY.values()), ids=list(BAD_CLASSIFY)
)
@pytest.mark.parametrize("endpoint", ["/classify", "/classify_unbatched"])
def test_bad_classify_input_is_a_4xx_and_the_service_keeps_working(
    client, bench_client, endpoint, request_kwargs, status, message
):
    if endpoint in BENCHMARK_PATHS:
        client = bench_client
    response = client.post(endpoint, **request_kwargs)
    assert response.status_code == status, response.text
    assert message in response.text
    assert_good_request_works(client)


def test_an_empty_text_error_names_its_position(client):
    response = client.post("/classify", json={"texts": ["a goal", "\u200b ", "chip"]})
    assert response.status_code == 400
    [error] = response.json()["detail"]
    assert error["loc"] == ["texts", 1]
    assert "whitespace, zero-width and control characters" in error["msg"]


def test_texts_with_something_visible_are_classified(client):
    texts = ["\u200bgoal\u200b", " \x00 cup \ufeff", "é", "\u00a0漢"]
    response = client.post("/classify", json={"texts": texts})
    assert response.status_code == 200, response.text
    assert len(response.json()) == len(texts)


def test_the_openapi_schema_states_the_visible_text_rule(client, service):
    from components.serving.text_rules import visible_pattern

    schemas = client.get("/docs.json").json()["components"]["schemas"]
    patterns = json.dumps(schemas).count(json.dumps(visible_pattern()))
    assert patterns >= 2  # /classify's texts and /generate's prompt


def test_over_large_bodies_are_refused_before_parsing(client, service):
    limit = service.MAX_BODY_BYTES
    response = client.post("/classify", content=b"x" * (limit + 1))
    assert response.status_code == 413 and "over" in response.json()["error"]

    def chunks():  # no Content-Length: the body is counted as it arrives
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536

    response = client.post("/classify", content=chunks())
    assert response.status_code == 413
    assert_good_request_works(client)


BAD_GENERATE = {
    "negative temperature": ({"temperature": -1}, "greater than or equal to 0"),
    "top_k negative": ({"top_k": -1}, "greater than or equal to 0"),
    "top_p 0": ({"top_p": 0}, "greater than 0"),
    "top_p above 1": ({"top_p": 1.5}, "less than or equal to 1"),
    "max_new_tokens 0": ({"max_new_tokens": 0}, "greater than or equal to 1"),
    "max_new_tokens over the cap": ({"max_new_tokens": 33}, "less than or equal to 32"),
    "negative seed": ({"seed": -1}, "greater than or equal to 0"),
    "huge seed": ({"seed": 2**64}, "less than or equal to"),
    "float seed": ({"seed": 1.5}, "valid integer"),
    "string temperature": ({"temperature": "hot"}, "valid number"),
    "empty prompt": ({"prompt": ""}, "at least 1 character"),
    "whitespace prompt": ({"prompt": " \n\t "}, "text is empty after removing"),
    "zero-width prompt": ({"prompt": "\u200b\ufeff"}, "text is empty after removing"),
    "NUL prompt": ({"prompt": "\x00"}, "text is empty after removing"),
    "prompt too long": ({"prompt": "a" * 201}, "at most 200 characters"),
}


@pytest.mark.parametrize("override, message", list(BAD_GENERATE.values()), ids=list(BAD_GENERATE))
def test_bad_generate_input_is_a_400(client, override, message):
    response = client.post("/generate", json={"prompt": "the team", "max_new_tokens": 5, **override})
    assert response.status_code == 400, response.text
    assert message in response.text
    assert client.post("/generate", json={"prompt": "the team", "max_new_tokens": 3}).status_code == 200


def test_generate_missing_prompt_is_a_400(client):
    response = client.post("/generate", json={"max_new_tokens": 3})
    assert response.status_code == 400 and "prompt" in response.text


def test_generate_is_deterministic_for_a_seed(client):
    request = {
        "prompt": "the team",
        "max_new_tokens": 12,
        "temperature": 0.8,
        "top_k": 5,
        "top_p": 0.9,
        "seed": 42,
    }
    first = client.post("/generate", json=request)
    assert first.status_code == 200, first.text
    assert first.json() == client.post("/generate", json=request).json()
    assert first.json()["seed"] == 42 and first.json()["model_version"] == "3"
    assert isinstance(first.json()["text"], str) and first.json()["text"]
    others = {client.post("/generate", json={**request, "seed": seed}).json()["text"] for seed in range(5)}
    assert len(others) > 1


def test_generate_without_seed_reports_the_seed_it_used(client):
    first = client.post("/generate", json={"prompt": "the team", "max_new_tokens": 6}).json()
    again = client.post(
        "/generate", json={"prompt": "the team", "max_new_tokens": 6, "seed": first["seed"]}
    ).json()
    assert again["text"] == first["text"]


def test_a_model_refusing_the_prompt_is_a_400(client, generator_model, monkeypatch):
    import bentoml

    predictor_class = type(load_predictor(bentoml.models.get(generator_model.tag).path))

    def refuse(self, prompt, *args, **kwargs):
        raise ValueError("prompt has characters outside the vocabulary: '\\x00'")

    # Requests reach the model through `plan` (the batched decode loop), streamed or not.
    monkeypatch.setattr(predictor_class, "plan", refuse)
    response = client.post("/generate", json={"prompt": "bad \x00 prompt", "max_new_tokens": 3})
    assert response.status_code == 400 and "outside the vocabulary" in response.json()["error"]
    monkeypatch.undo()
    assert client.post("/generate", json={"prompt": "the team", "max_new_tokens": 3}).status_code == 200


def test_generate_without_a_generator(classifier_only):
    with TestClient(asgi_app(classifier_only)) as client:
        response = client.post("/generate", json={"prompt": "hello"})
        assert response.status_code == 404
        assert response.json() == {"error": "no generation model in this Bento"}
        info = client.post("/info").json()
        assert list(info["models"]) == ["classifier"]
        assert_good_request_works(client)


def test_info_names_models_and_versions(client, classifier_tag, generator_model):
    info = client.post("/info")
    assert info.status_code == 200
    body = info.json()
    assert (body["service"], body["bento"]) == ("maas", "")  # served from source, not from a Bento
    assert body["models"]["classifier"] == {
        "bento_model": classifier_tag,
        "model_name": "maas-bbc",
        "model_version": "7",
        "data_version": "md5-abc123.dir",  # sanitised by import_bundle
        "kind": "tfidf_logreg",
        "labels": ["food", "sport", "tech"],
    }
    generator = body["models"]["generator"]
    assert generator["bento_model"] == generator_model.tag
    assert (generator["model_name"], generator["model_version"]) == ("maas-shakespeare", "3")
    assert body["limits"]["max_texts"] == 8


def test_probes_answer(client):
    for path in ("/healthz", "/livez", "/readyz"):
        assert client.get(path).status_code == 200


def test_bearer_token_auth(service, monkeypatch, access_log):
    secret = "s3cret-token-value"
    monkeypatch.setenv("MAAS_API_TOKEN", secret)
    with TestClient(asgi_app(service)) as client:
        assert client.post("/classify", json=GOOD).status_code == 401
        wrong = client.post("/classify", json=GOOD, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        assert (
            client.post("/classify", json=GOOD, headers={"Authorization": f"Basic {secret}"}).status_code
            == 401
        )
        assert client.post("/info").status_code == 401
        ok = client.post("/classify", json=GOOD, headers={"Authorization": f"Bearer {secret}"})
        assert ok.status_code == 200
        lower = client.post("/classify", json=GOOD, headers={"authorization": f"bearer {secret}"})
        assert lower.status_code == 200
        for path in ("/healthz", "/livez", "/readyz"):
            assert client.get(path).status_code == 200
    assert access_log and all(secret not in json.dumps(line) for line in access_log)


def test_auth_is_off_without_the_variable(client):
    assert (
        client.post("/classify", json=GOOD, headers={"Authorization": "Bearer anything"}).status_code == 200
    )


def test_one_json_log_line_per_request(client, access_log):
    secret_text = "a very private sentence about the cup final"
    client.post("/classify", json={"texts": [secret_text, "chip"]})
    client.post("/classify", json={"texts": []})
    client.get("/healthz")
    assert [(line["endpoint"], line["n_texts"], line["status"]) for line in access_log] == [
        ("/classify", 2, 200),
        ("/classify", None, 400),
    ]
    assert all(line["latency_ms"] >= 0 and line["method"] == "POST" for line in access_log)
    assert secret_text not in json.dumps(access_log)


def _live_spans() -> int:
    from opentelemetry.sdk.trace import Span

    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, Span))


def test_no_request_spans_are_kept_without_tracing(client, sample_texts):
    # BentoML records a span per request even with no exporter; they piled up under load (RSS +17 %
    # over 12,000 requests). Without MAAS_TRACING=1 the service traces nothing.
    before = _live_spans()
    for _ in range(30):
        assert client.post("/classify", json={"texts": sample_texts[:1]}).status_code == 200
    assert _live_spans() - before < 5


def _armed_timers() -> int:
    import asyncio

    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, asyncio.TimerHandle) and not obj.cancelled())


def test_request_timeout_timers_end_with_their_requests(client, sample_texts):
    # BentoML's TimeoutMiddleware left every request's timeout timer armed for the whole
    # traffic timeout (60 s): under load the handles and their futures piled up on the event loop.
    before = _armed_timers()
    for _ in range(30):
        assert client.post("/classify", json={"texts": sample_texts[:1]}).status_code == 200
    assert _armed_timers() - before < 5


@pytest.mark.parametrize("on_accelerator", [False, True])
def test_a_model_on_a_gpu_runs_in_the_worker_thread(service, monkeypatch, on_accelerator, sample_texts):
    # The tiny TF-IDF classifier is cheap, so on the CPU its batches run on the event loop; the same
    # model on a GPU goes to the worker thread (its waits are outside the GIL: the loop parses meanwhile).
    import asyncio
    import threading

    predictor_class = type(load_predictor(service.CLASSIFIER.path))
    monkeypatch.setattr(predictor_class, "on_accelerator", property(lambda self: on_accelerator))
    instance = service.MaasService.inner()
    threads = []
    predict = instance._predict
    monkeypatch.setattr(
        instance, "_predict", lambda texts: threads.append(threading.current_thread().name) or predict(texts)
    )

    async def classify():
        return await instance._classify(sample_texts[:2]), threading.current_thread().name

    results, loop_thread = asyncio.run(classify())
    assert [r.label for r in results] == [r["label"] for r in instance.classifier.predict(sample_texts[:2])]
    assert threads[0].startswith("maas-classify") == on_accelerator
    assert (threads[0] == loop_thread) != on_accelerator


def test_a_request_over_the_timeout_still_gets_a_504(service):
    import asyncio

    from starlette.responses import PlainTextResponse

    import compat

    async def slow_app(scope, receive, send):
        await asyncio.sleep(5)
        await PlainTextResponse("late")(scope, receive, send)

    # `service` applied compat's patch: the patched middleware must still time out.
    response = TestClient(compat.timeout_middleware(slow_app, timeout=0.05)).get("/")  # no lifespan events
    assert response.status_code == 504
    assert "0.05 seconds" in response.json()["error"]


def test_generate_at_temperature_zero_is_greedy_whatever_the_seed(client):
    texts = {
        client.post("/generate", json={"prompt": "the team", "max_new_tokens": 8, "temperature": 0, "seed": seed})
        .json()["text"]
        for seed in range(4)
    }
    assert len(texts) == 1 and next(iter(texts))


def test_generate_stops_before_a_stop_sequence(client):
    request = {"prompt": "the team", "max_new_tokens": 30, "temperature": 0}
    first = client.post("/generate", json=request)
    assert first.status_code == 200, first.text
    full = first.json()["text"]
    stop = full[5:8]
    stopped = client.post("/generate", json={**request, "stop": [stop]})
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["text"] == full[: full.index(stop)]
    too_many = client.post("/generate", json={**request, "stop": ["x"] * 9})
    assert too_many.status_code == 400
