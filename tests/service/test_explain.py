"""POST /explain in this process: the shape of an explanation, and its own, lower limits.

The tiny TF-IDF classifier of conftest.py is imported under a model name of its own with
/explain limits below /classify's (3 texts, top_k up to 5), so each limit shows as its own.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from components.predictor import load_predictor
from tests.service.conftest import TOPICS
from tests.service.test_service import asgi_app

EXPLAIN_MODEL = "maas-test-explain-classifier"
LIMITS = {"max_texts": 8, "max_chars": 500, "max_explain_texts": 3, "max_explain_top_k": 5}
SPORT = "the coach said the team would win the cup"


@pytest.fixture(scope="module")
def explain_client(import_service, bentoml_home, classifier_bundle) -> Iterator[TestClient]:
    from flows import bento

    labels = {"model_name": "maas-bbc", "model_version": "9", "data_version": "md5:abc123.dir"}
    tag = bento.import_bundle(
        classifier_bundle, name=EXPLAIN_MODEL, labels=labels, metadata={"serving": LIMITS}
    )
    module = import_service("maas_service_explain", {"classifier": tag, "generator": "none"})
    with TestClient(asgi_app(module), raise_server_exceptions=False) as client:
        yield client


def test_explain_returns_the_bundles_explanation_per_text(explain_client, classifier_bundle):
    texts = [SPORT, "a new chip for the phone and the cloud app"]
    response = explain_client.post("/explain", json={"texts": texts, "top_k": 2})
    assert response.status_code == 200, response.text
    items = response.json()
    expected = load_predictor(classifier_bundle).explain(texts, top_k=2)
    assert [item["label"] for item in items] == ["sport", "tech"]
    for item, want in zip(items, expected, strict=True):
        assert item.pop("model_version") == "9"
        assert item["towards"] == want["towards"] and item["against"] == want["against"]
        assert item["method"] == "linear" and item["probability"] == pytest.approx(want["probability"])
        assert len(item["towards"]) == 2 and all(word["score"] > 0 for word in item["towards"])
    assert items[0]["towards"][0]["word"] in TOPICS["sport"].split()


def test_top_k_defaults_to_the_limit_when_the_limit_is_below_ten(explain_client):
    response = explain_client.post("/explain", json={"texts": [SPORT]})
    assert response.status_code == 200, response.text
    [item] = response.json()
    assert 0 < len(item["towards"]) <= LIMITS["max_explain_top_k"]


BAD_EXPLAIN = {
    "empty text": ({"texts": ["ok", " \u200b "]}, "text is empty"),
    "no texts": ({"texts": []}, "at least 1 item"),
    "more texts than /explain takes": ({"texts": [SPORT] * 4}, "at most 3 items"),
    "text too long": ({"texts": ["x" * 501]}, "at most 500 characters"),
    "top_k zero": ({"texts": [SPORT], "top_k": 0}, "greater than or equal to 1"),
    "top_k above its limit": ({"texts": [SPORT], "top_k": 6}, "less than or equal to 5"),
    "top_k not a number": ({"texts": [SPORT], "top_k": "ten"}, "valid integer"),
}


@pytest.mark.parametrize("body, message", list(BAD_EXPLAIN.values()), ids=list(BAD_EXPLAIN))
def test_bad_explain_input_is_a_400_and_the_service_keeps_working(explain_client, body, message):
    response = explain_client.post("/explain", json=body)
    assert response.status_code == 400, response.text
    assert message in response.text
    assert explain_client.post("/explain", json={"texts": [SPORT]}).status_code == 200


def test_the_explain_limit_is_its_own(explain_client):
    # Four texts are too many to explain here, not to classify.
    assert explain_client.post("/classify", json={"texts": [SPORT] * 4}).status_code == 200
    info = explain_client.post("/info").json()
    assert (info["limits"]["max_explain_texts"], info["limits"]["max_texts"]) == (3, 8)
