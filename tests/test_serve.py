"""The HTTP server: endpoints, limits and errors in-process (TestClient), micro-batching, a real server under load."""

import argparse
import asyncio
import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("fastapi", reason="serving needs fastapi: pip install fastapi uvicorn httpx")
pytest.importorskip("uvicorn", reason="serving needs uvicorn: pip install fastapi uvicorn httpx")
httpx = pytest.importorskip("httpx", reason="the tests' HTTP client: pip install httpx")

from fastapi.testclient import TestClient  # noqa: E402

from bertsent import __version__  # noqa: E402
from bertsent.config import ServeSettings  # noqa: E402
from bertsent.errors import BertsentError, InferenceError, ModelError, ServeError  # noqa: E402
from bertsent.predict import ModelDescription, Predictor  # noqa: E402
from bertsent.serve import (  # noqa: E402
    API_KEY_ENV,
    PAD_FLOOR,
    PAD_RATIO,
    MicroBatcher,
    api_key_from_env,
    background_server,
    bind_socket,
    cmd_serve,
    create_app,
    plan_batches,
    print_banner,
    settings_from_args,
    validation_message,
)

# Small limits so the limit tests send small bodies; the toy reviews are far below them.
SETTINGS = ServeSettings(max_batch_size=8, max_wait_ms=2, max_inputs=8, max_chars=400, max_body_bytes=6000)
COLD = dataclasses.replace(SETTINGS, warmup=False)  # for tests that count the model's calls
EXTRA_TEXTS = ["", "été génial 😀 — wonderful!", "terrible " * 40]  # empty, non-ASCII, truncated at max_length


@pytest.fixture(scope="module")
def texts(toy_data_dir) -> list[str]:
    return pd.read_parquet(toy_data_dir / "test.parquet").text.head(40).tolist() + EXTRA_TEXTS


@pytest.fixture(scope="module")
def predictor(trained_tiny_dir) -> Predictor:
    return Predictor(trained_tiny_dir)


@pytest.fixture(scope="module")
def reference(predictor, texts) -> dict[str, np.ndarray]:
    """Each text's probabilities from the Predictor, one text at a time (no padding with others)."""
    return {t: predictor.predict_proba([t])[0] for t in texts}


@pytest.fixture(scope="module")
def client(trained_tiny_dir):
    with TestClient(create_app(trained_tiny_dir, SETTINGS)) as c:
        yield c


def assert_matches(prediction: dict, probs: np.ndarray, id2label: dict) -> None:
    assert set(prediction) == {"label", "score"}
    assert prediction["label"] == id2label[int(probs.argmax())]
    assert prediction["score"] == pytest.approx(float(probs.max()), abs=1e-5)


# ---------------------------------------------------------------------------------------------- endpoints


def test_health_info_and_page(client, trained_tiny_dir, predictor):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    # The folder's name, not its path on the server's disk (the issue "One bad request never fails another").
    assert info["model_dir"] == trained_tiny_dir.name
    assert str(trained_tiny_dir.parent) not in client.get("/info").text
    assert info["labels"] == {str(k): v for k, v in predictor.id2label.items()}
    assert info["backend"] == predictor.backend.name == "pytorch"
    assert (info["max_length"], info["truncation"]) == (predictor.max_length, predictor.truncation) == (32, "head+tail")
    assert (info["precision"], info["threads"]) == (predictor.backend.precision, predictor.backend.threads)
    assert info["mean_layers"] is None  # no early exit: every text runs every layer
    assert info["batching"] == {"max_batch_size": 8, "max_wait_ms": 2.0, "max_batch_tokens": 16_384}
    limits = {"max_inputs": 8, "max_chars": 400, "max_body_bytes": 6000, "max_concurrent_requests": 512}
    assert info["limits"] == limits
    assert info["version"] == __version__
    assert set(info["stats"]) == {"requests", "texts", "batches", "largest_batch", "errors", "queued"}

    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for needle in ('id="review"', 'id="classify"', ">Classify<", 'fetch("predict"', 'id="bars"', 'id="error"'):
        assert needle in page.text


class FakeModel:
    """Not a Predictor: a model served through the server's protocol (describe, prepare, predict_proba, explain).

    A text's tokens are its words (1 for "good", 2 otherwise), at most ``max_length``; a row scores
    [0.2, 0.8] when it holds a "good", else [0.9, 0.1]. It records each batch's row lengths, may wait
    on ``gate`` before answering, and cannot explain.
    """

    def __init__(self, folder, mean_layers: float | None = 1.5, gate: threading.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.gate = gate
        self.description = ModelDescription(
            model_dir=folder,
            labels={0: "neg", 1: "pos"},
            backend="fake",
            precision="bf16",
            threads=3,
            max_length=64,
            truncation="tail",
            long_text="truncate",
            stride=0,
            batch_size=8,
            mean_layers=mean_layers,
        )

    def describe(self) -> ModelDescription:
        return self.description

    def prepare(self, texts: list[str]):
        from bertsent.encoding import Encoded

        words = [text.split() or [""] for text in texts]
        ids = [np.array([1 if w == "good" else 2 for w in row][: self.description.max_length]) for row in words]
        return Encoded(ids=ids, full_lengths=np.array([len(row) for row in words])), None

    def predict_proba(self, encoded) -> np.ndarray:
        self.batches.append([len(row) for row in encoded.ids])
        if self.gate is not None:
            self.gate.wait(30)
        return np.array([[0.2, 0.8] if 1 in row else [0.9, 0.1] for row in encoded.ids])

    def explain(self, texts, method=None, targets=None):
        raise ModelError(f"{self.description.model_dir}: this fake model cannot explain")


def test_info_metrics_and_banner_read_the_model_description(tmp_path, capsys):
    """/info, the metrics and the start banner all show the model's one description, whatever serves it."""
    folder = tmp_path / "somewhere" / "fake-folder"
    app = create_app(FakeModel(folder), SETTINGS)
    with TestClient(app) as client:
        info = client.get("/info").json()
        answer = client.post("/predict", json={"inputs": ["a good film", "dull"]}).json()
        refused = client.post("/predict", json={"inputs": "good", "parameters": {"explain": True}})
        samples = scrape(client)
    assert answer == [{"label": "pos", "score": 0.8}, {"label": "neg", "score": 0.9}]
    expected = {"model_dir": "fake-folder", "labels": {"0": "neg", "1": "pos"}, "backend": "fake", "precision": "bf16"}
    expected |= {"threads": 3, "max_length": 64, "truncation": "tail", "long_text": "truncate", "mean_layers": 1.5}
    assert {key: info[key] for key in expected} == expected
    # The model's own refusal, with the folder's name and never its path.
    assert refused.status_code == 400
    assert refused.json() == {"error": "explain: fake-folder: this fake model cannot explain"}
    assert {(s.labels["model"], s.labels["backend"]) for s in samples} == {("fake-folder", "fake")}
    [model_info] = [s for s in samples if s.name == "bertsent_model_info"]
    assert (model_info.labels["precision"], model_info.labels["threads"]) == ("bf16", "3")
    print_banner(app, "http://127.0.0.1:1234")
    banner = capsys.readouterr().out
    assert banner.startswith(f"serving {folder} (fake; labels: neg, pos) at http://127.0.0.1:1234\n")
    assert "runs in bf16 on 3 threads, 64 tokens per text (tail kept; long texts: truncate)" in banner


def test_only_a_folder_or_a_served_model_is_served():
    with pytest.raises(TypeError, match="a model folder or a Predictor, not a dict"):
        create_app({"model": "m"}, SETTINGS)


def test_openapi_documents_the_api(client):
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/predict", "/health", "/info"} <= set(spec["paths"])
    post = spec["paths"]["/predict"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/PredictRequest")
    assert {"200", "413", "422", "500", "503"} <= set(post["responses"])
    schemas = spec["components"]["schemas"]
    assert schemas["PredictRequest"]["required"] == ["inputs"]
    assert set(schemas["PredictRequest"]["properties"]) == {"inputs", "parameters"}
    assert set(schemas["Prediction"]["properties"]) == {"label", "score"}
    assert "top_k" in schemas["PredictParameters"]["properties"]


def test_single_string_gives_a_list_of_one(client, reference, predictor, texts):
    response = client.post("/predict", json={"inputs": texts[0]})
    assert response.status_code == 200
    body = response.json()
    assert isinstance(body, list) and len(body) == 1
    assert_matches(body[0], reference[texts[0]], predictor.id2label)


def test_list_matches_predictor(client, reference, predictor, texts):
    for start in range(0, len(texts), SETTINGS.max_inputs):
        chunk = texts[start : start + SETTINGS.max_inputs]
        body = client.post("/predict", json={"inputs": chunk}).json()
        assert len(body) == len(chunk)
        for text, prediction in zip(chunk, body, strict=True):
            assert_matches(prediction, reference[text], predictor.id2label)


def test_top_k(client, reference, predictor, texts):
    labels = predictor.id2label
    chunk = texts[:3]
    two = client.post("/predict", json={"inputs": chunk, "parameters": {"top_k": 2}}).json()
    every = client.post("/predict", json={"inputs": chunk, "parameters": {"top_k": None}}).json()
    clamped = client.post("/predict", json={"inputs": chunk, "parameters": {"top_k": 5}}).json()
    assert two == every == clamped  # 2 labels: top 2, all, and more than there are are the same
    for text, scored in zip(chunk, two, strict=True):
        probs = reference[text]
        assert [s["label"] for s in scored] == [labels[int(i)] for i in np.argsort(-probs)]
        assert [s["score"] for s in scored] == pytest.approx(sorted(probs.tolist(), reverse=True), abs=1e-5)
        assert sum(s["score"] for s in scored) == pytest.approx(1.0, abs=1e-5)
    one = client.post("/predict", json={"inputs": chunk[0], "parameters": {"top_k": 1}}).json()
    assert len(one) == 1 and len(one[0]) == 1  # top_k given: a list per input, even of one
    assert_matches(one[0][0], reference[chunk[0]], labels)
    # No top_k (or empty parameters): one flat {"label", "score"} per input.
    flat = client.post("/predict", json={"inputs": chunk[0], "parameters": {}}).json()
    assert flat == [one[0][0]]


JSON = {"content-type": "application/json"}
BAD_REQUESTS = {
    "invalid JSON": ({"content": b'{"inputs": ', "headers": JSON}, 422, "not valid JSON"),
    "not JSON at all": ({"content": b"great movie", "headers": {"content-type": "text/plain"}}, 422, "JSON object"),
    "invalid UTF-8": ({"content": b'{"inputs": "\xff\xfe"}', "headers": JSON}, 422, "not valid JSON"),
    "absurdly nested JSON": ({"content": b"[" * 2900 + b"]" * 2900, "headers": JSON}, 422, "not valid JSON"),
    "empty body": ({"content": b"", "headers": JSON}, 422, "body is empty"),
    "JSON list body": ({"json": ["great movie"]}, 422, "JSON object"),
    "missing inputs": ({"json": {"text": "great movie"}}, 422, "missing field 'inputs'"),
    "number input": ({"json": {"inputs": 5}}, 422, "string or a list of strings, not a number"),
    "number in list": ({"json": {"inputs": ["fine", 3]}}, 422, "inputs[1] is a number"),
    "empty list": ({"json": {"inputs": []}}, 422, "empty list"),
    "top_k at top level": ({"json": {"inputs": "x", "top_k": 2}}, 422, '"parameters": {"top_k"'),
    "top_k zero": ({"json": {"inputs": "x", "parameters": {"top_k": 0}}}, 422, "parameters.top_k"),
    "top_k string": ({"json": {"inputs": "x", "parameters": {"top_k": "2"}}}, 422, "parameters.top_k"),
    # Over the limits the OpenAPI document states (maxItems, maxLength): 422, as any request it does not allow.
    "too many inputs": ({"json": {"inputs": ["x"] * 9}}, 422, "9 inputs; the limit is 8"),
    "text too long": ({"json": {"inputs": ["ok", "x" * 401]}}, 422, "inputs[1] has 401 characters"),
    "body too big": ({"json": {"inputs": "x" * 7000}}, 413, "max-body-bytes"),
    # A generator body goes out chunked, without Content-Length: the middleware counts what it reads.
    "body too big, chunked": ({"content": (b"x" * 1000 for _ in range(7)), "headers": JSON}, 413, "over 6,000 bytes"),
    # Valid JSON, but text the tokenizer cannot take: named by its index, before it reaches a batch.
    "unpaired surrogate": (
        {"content": b'{"inputs": ["fine", "ok", "good", "\\ud800 film"]}', "headers": JSON},
        422,
        "inputs[3]: not valid Unicode (unpaired surrogate U+D800 at character 0)",
    ),
    "unpaired surrogate, one string": (
        {"content": b'{"inputs": "a \\udfff"}', "headers": JSON},
        422,
        "inputs[0]: not valid Unicode (unpaired surrogate U+DFFF at character 2)",
    ),
    "unpaired surrogate in a field name": (
        {"content": b'{"inputs": "x", "parameters": {"\\udfff": 1}}', "headers": JSON},
        422,
        "parameters: not valid Unicode (unpaired surrogate in a field name)",
    ),
}


@pytest.mark.parametrize("name", BAD_REQUESTS)
def test_bad_requests_get_a_clear_error(client, name, texts, reference, predictor):
    kwargs, status, message = BAD_REQUESTS[name]
    response = client.post("/predict", **kwargs)
    assert response.status_code == status
    error = response.json()["error"]
    assert message in error and "\n" not in error
    if status == 422 and name not in ("invalid UTF-8", "absurdly nested JSON"):  # json.loads failed: no loc
        assert response.json()["detail"][0]["loc"][0] == "body"
    # The server keeps serving, correctly.
    after = client.post("/predict", json={"inputs": texts[1]})
    assert_matches(after.json()[0], reference[texts[1]], predictor.id2label)


def test_declared_content_length_over_the_limit_is_refused_unread(client):
    # The header alone decides: the app never sees the body.
    response = client.post("/predict", content=b'{"inputs": "x"}', headers=JSON | {"content-length": "999999"})
    assert response.status_code == 413
    assert response.json()["error"] == "request body is 999,999 bytes; the limit is 6,000 bytes (--max-body-bytes)"


def test_other_http_errors_are_json(client):
    assert client.get("/predict").status_code == 405
    assert client.get("/predict").json() == {"error": "Method Not Allowed"}
    assert client.get("/nowhere").json() == {"error": "Not Found"}


def test_validation_message_wording():
    errors = [
        {"type": "missing", "loc": ("body", "inputs"), "msg": "Field required"},
        {"type": "int_type", "loc": ("body", "parameters", "top_k"), "msg": "Input should be a valid integer"},
    ]
    assert validation_message(errors) == "missing field 'inputs'; parameters.top_k: Input should be a valid integer"
    assert validation_message([]) == "invalid request"


def test_the_app_warms_up_with_one_batch_of_the_largest_shape_before_serving(trained_tiny_dir, texts, reference):
    """As text-embeddings-inference does: full-length rows, as many as the row and token caps allow, run once
    in the inference thread when the app starts (not counted as a served batch); ``warmup=False`` skips it."""
    predictor = Predictor(trained_tiny_dir)
    original, shapes = predictor.predict_proba, []

    def recording(batch):
        shapes.append((len(batch), max(batch.lengths.tolist()), threading.current_thread().name))
        return original(batch)

    predictor.predict_proba = recording
    max_length = predictor.describe().max_length
    settings = dataclasses.replace(SETTINGS, max_batch_tokens=3 * max_length)  # 3 rows of 8 at full length
    with TestClient(create_app(predictor, settings)) as client:
        assert shapes == [(3, max_length, shapes[0][2])] and shapes[0][2].startswith("bertsent-inference")
        body = client.post("/predict", json={"inputs": texts[:1]}).json()
        assert client.get("/info").json()["stats"]["batches"] == 1
    assert_matches(body[0], reference[texts[0]], predictor.id2label)
    shapes.clear()
    with TestClient(create_app(predictor, dataclasses.replace(settings, warmup=False))):
        assert shapes == []


def test_inference_error_is_a_500_and_the_server_recovers(trained_tiny_dir, texts, reference):
    predictor = Predictor(trained_tiny_dir)
    original, calls = predictor.predict_proba, []

    def flaky(batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("simulated failure\nsecond line")
        return original(batch)

    predictor.predict_proba = flaky
    with TestClient(create_app(predictor, COLD)) as client:
        failed = client.post("/predict", json={"inputs": texts[:2]})
        assert failed.status_code == 500
        assert failed.json() == {"error": "inference failed: RuntimeError: simulated failure"}
        body = client.post("/predict", json={"inputs": texts[:2]}).json()
        for text, prediction in zip(texts[:2], body, strict=True):
            assert_matches(prediction, reference[text], predictor.id2label)
        stats = client.get("/info").json()["stats"]
        assert (stats["errors"], stats["batches"], stats["requests"]) == (1, 1, 2)
    assert calls == [2, 2]


def test_without_lifespan_the_api_answers_503(trained_tiny_dir, predictor):
    app = create_app(predictor, SETTINGS)
    client = TestClient(app)  # not entered: the batching worker never starts
    response = client.post("/predict", json={"inputs": "good"})
    assert response.status_code == 503 and "not running" in response.json()["error"]
    assert client.get("/health").status_code == 503
    with TestClient(app) as running:
        assert running.get("/health").json() == {"status": "ok"}
        assert app.state.batcher.running
    assert not app.state.batcher.running  # stopped on shutdown


KEY = "s3cret-Key_42"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def keyed(predictor):
    with TestClient(create_app(predictor, dataclasses.replace(SETTINGS, api_key=KEY))) as c:
        yield c


def test_api_key_guards_the_api_but_not_health_the_page_or_the_docs(keyed, monkeypatch):
    import bertsent.serve.middleware

    for path in ("/health", "/", "/docs", "/openapi.json"):  # open: the page asks for the key itself
        assert keyed.get(path).status_code == 200, path
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}):
        for response in (
            keyed.get("/info", headers=headers),
            keyed.post("/predict", json={"inputs": "x"}, headers=headers),
        ):
            assert response.status_code == 401, headers
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert "API key" in response.json()["error"] and KEY not in response.text
    assert keyed.get("/nowhere").status_code == 401  # nothing about the API without the key
    compared = []
    real = bertsent.serve.middleware.hmac.compare_digest
    monkeypatch.setattr(bertsent.serve.middleware.hmac, "compare_digest", lambda a, b: compared.append(1) or real(a, b))
    assert keyed.get("/info", headers=AUTH).json()["model_dir"]
    assert keyed.post("/predict", json={"inputs": "x"}, headers={"authorization": f"bearer {KEY}"}).status_code == 200
    assert len(compared) == 2  # constant-time comparison
    # Checked before the body is read: no key, no 413 (nor 422) either.
    big = keyed.post("/predict", content=b"{", headers=JSON | {"content-length": "999999"})
    assert big.status_code == 401
    assert keyed.post("/predict", content=b"{", headers=JSON | AUTH).status_code == 422


def test_openapi_documents_the_api_key_and_the_limits(keyed, client):
    spec = keyed.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "the server's --api-key (or $BERTSENT_API_KEY)",
    }
    for path, method in (("/predict", "post"), ("/info", "get")):
        operation = spec["paths"][path][method]
        assert operation["security"] == [{"HTTPBearer": []}] and "401" in operation["responses"]
    assert "security" not in spec["paths"]["/health"]["get"]
    assert "securitySchemes" not in client.get("/openapi.json").json().get("components", {})  # no key, no scheme
    inputs = spec["components"]["schemas"]["PredictRequest"]["properties"]["inputs"]["anyOf"]
    text, texts = sorted(inputs, key=lambda option: option["type"] == "array")
    assert text == {"type": "string", "maxLength": SETTINGS.max_chars}
    assert (texts["maxItems"], texts["minItems"], texts["items"]["maxLength"]) == (8, 1, SETTINGS.max_chars)


# ---------------------------------------------------------------------------------------------- /metrics


def scrape(client: TestClient, **kwargs) -> list:
    """The samples of one ``GET /metrics``, parsed by prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    response = client.get("/metrics", **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return [sample for family in text_string_to_metric_families(response.text) for sample in family.samples]


def metric(samples: list, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels`` (0 when there are none)."""
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def test_metrics_count_the_traffic(trained_tiny_dir, predictor, texts):
    app = create_app(predictor, SETTINGS)  # a fresh app: its own registry, counts from zero
    with TestClient(app) as client:
        for inputs in (texts[0], texts[1:4], [texts[4]]):  # 3 good requests, 5 texts
            assert client.post("/predict", json={"inputs": inputs}).status_code == 200
        assert client.post("/predict", json={"inputs": ["x"] * 9}).status_code == 422  # refused by the route
        assert client.post("/predict", json={"inputs": "x" * 7000}).status_code == 413  # by the body limit
        assert client.post("/predict", json={"inputs": 5}).status_code == 422
        assert client.get("/nowhere").status_code == 404
        samples = scrape(client)
        stats = client.get("/info").json()["stats"]
        assert "/metrics" not in client.get("/openapi.json").json()["paths"]  # Schemathesis leaves it alone
        openmetrics = client.get("/metrics", headers={"accept": "application/openmetrics-text"})
    # Each series is labelled with the model folder's name and the backend.
    assert {(s.labels["model"], s.labels["backend"]) for s in samples} == {(trained_tiny_dir.name, "pytorch")}
    requests = "bertsent_http_requests_total"
    assert metric(samples, requests, path="/predict", status="200") == 3
    assert metric(samples, requests, path="/predict", status="413") == 1
    assert metric(samples, requests, path="/predict", status="422") == 2
    assert metric(samples, requests, path="other", status="404") == 1  # unknown paths share one series
    assert metric(samples, requests) == 7  # the scrape counts once it is answered, in the next one
    assert metric(samples, "bertsent_http_request_duration_seconds_count", path="/predict") == 6
    assert 0 < metric(samples, "bertsent_http_request_duration_seconds_sum", path="/predict") < 60
    assert metric(samples, "bertsent_texts_scored_total") == stats["texts"] == 5
    assert metric(samples, "bertsent_batch_size_count") == stats["batches"] == 3  # one request at a time
    assert metric(samples, "bertsent_batch_size_sum") == 5
    assert metric(samples, "bertsent_batch_size_bucket", le="1.0") == 2  # the batch of 3 is over 1 and 2
    assert metric(samples, "bertsent_batch_size_bucket", le="4.0") == 3
    assert metric(samples, "bertsent_batch_errors_total") == 0 and metric(samples, "bertsent_queue_depth") == 0
    [info] = [s for s in samples if s.name == "bertsent_model_info"]
    assert info.value == 1 and (info.labels["long_text"], info.labels["max_length"]) == ("truncate", "32")
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.endswith("# EOF\n")


def test_metrics_count_failed_batches(trained_tiny_dir, texts):
    predictor = Predictor(trained_tiny_dir)

    def broken(batch):
        raise RuntimeError("simulated failure")

    predictor.predict_proba = broken
    with TestClient(create_app(predictor, COLD)) as client:
        assert client.post("/predict", json={"inputs": texts[:2]}).status_code == 500
        samples = scrape(client)
    assert metric(samples, "bertsent_batch_errors_total") == 1
    assert metric(samples, "bertsent_http_requests_total", path="/predict", status="500") == 1
    assert metric(samples, "bertsent_texts_scored_total") == metric(samples, "bertsent_batch_size_count") == 0


def test_metrics_need_the_api_key_when_one_is_set(keyed):
    """/metrics repeats /info's counters and names the model, so it is guarded like /info (Prometheus
    sends the key with ``authorization: {credentials: KEY}`` in its scrape config)."""
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = keyed.get("/metrics", headers=headers)
        assert response.status_code == 401 and "API key" in response.json()["error"]
    samples = scrape(keyed, headers=AUTH)
    assert metric(samples, "bertsent_http_requests_total", path="/metrics", status="401") >= 2  # counted too


# ---------------------------------------------------------------------------------------------- micro-batching


class RecordingModel:
    """A fake model: records each batch; the row of text t is [len(t), 1]; optionally slow or gated."""

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None) -> None:
        self.batches: list[list[str]] = []
        self.threads: set[str] = set()
        self.delay, self.gate = delay, gate

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.batches.append(list(texts))
        self.threads.add(threading.current_thread().name)
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.delay)
        return np.array([[len(t), 1.0] for t in texts])


def test_batches_are_capped_and_rows_go_back_to_their_request():
    model = RecordingModel()
    requests = [[f"t{i}" + "x" * i] for i in range(10)] + [["a", "bb", "ccc", "dddd", "eeeee", "ffffff"]]

    async def scenario():
        batcher = MicroBatcher(model, max_batch_size=4, max_wait_ms=50)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(r) for r in requests))
        await batcher.stop()
        return results, batcher.stats

    results, stats = asyncio.run(scenario())
    for request, rows in zip(requests, results, strict=True):
        assert rows[:, 0].tolist() == [len(t) for t in request]
    sizes = [len(b) for b in model.batches]
    assert max(sizes) == 4 and sum(sizes) == 16 and len(sizes) == 4  # 16 texts, batches of at most 4
    assert (stats.requests, stats.texts, stats.batches, stats.largest_batch) == (11, 16, 4, 4)
    assert len(model.threads) == 1 and model.threads.pop().startswith("bertsent-inference")


def test_max_wait_gathers_texts_arriving_shortly_after_the_first():
    model = RecordingModel()

    async def scenario(wait_ms: float):
        batcher = MicroBatcher(model, max_batch_size=32, max_wait_ms=wait_ms)
        batcher.start()

        async def later(text):
            await asyncio.sleep(0.03)
            return await batcher.submit([text])

        await asyncio.gather(batcher.submit(["first"]), later("second"))
        await batcher.stop()

    asyncio.run(scenario(300))  # the second arrives 30 ms after the first: same batch
    assert model.batches == [["first", "second"]]
    model.batches.clear()
    asyncio.run(scenario(0))  # no waiting: two batches
    assert model.batches == [["first"], ["second"]]


def test_inference_never_blocks_the_event_loop():
    model = RecordingModel(delay=0.4)

    async def scenario():
        batcher = MicroBatcher(model, max_batch_size=8, max_wait_ms=0)
        batcher.start()
        ticks = 0
        request = asyncio.create_task(batcher.submit(["slow"]))
        while not request.done():  # the loop keeps running while the model works in its thread
            await asyncio.sleep(0.01)
            ticks += 1
        await batcher.stop()
        return ticks, request.result()

    ticks, rows = asyncio.run(scenario())
    assert rows.tolist() == [[4.0, 1.0]]
    assert ticks >= 10  # a blocked loop would tick once or twice in 0.4 s


def test_stop_fails_waiting_requests_instead_of_hanging():
    gate = threading.Event()
    model = RecordingModel(gate=gate)

    async def scenario():
        batcher = MicroBatcher(model, max_batch_size=1, max_wait_ms=0)
        batcher.start()
        running = asyncio.create_task(batcher.submit(["in the model"]))
        queued = asyncio.create_task(batcher.submit(["still queued"]))
        while not model.batches:
            await asyncio.sleep(0.005)
        await batcher.stop()
        gate.set()
        outcomes = await asyncio.gather(running, queued, return_exceptions=True)
        with pytest.raises(ServeError, match="not running"):
            await batcher.submit(["after stop"])
        return outcomes

    outcomes = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert all(isinstance(o, ServeError) and "shutting down" in str(o) for o in outcomes)
    assert model.batches == [["in the model"]]


def test_a_failing_request_fails_alone():
    """The model raises on any batch holding "bad": the batch is split by request until only its request fails."""
    model = RecordingModel()

    def fragile(texts):
        if "bad" in texts:
            model.batches.append(list(texts))
            raise ValueError("cannot take this text")
        return model(texts)

    requests = [["a"], ["b", "bad"], ["cc"], ["ddd", "e"]]

    async def scenario():
        batcher = MicroBatcher(fragile, max_batch_size=16, max_wait_ms=200)
        batcher.start()
        outcomes = await asyncio.gather(*(batcher.submit(r) for r in requests), return_exceptions=True)
        await batcher.stop()
        return outcomes, batcher.stats

    outcomes, stats = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert isinstance(outcomes[1], InferenceError) and "ValueError: cannot take this text" in str(outcomes[1])
    for i in (0, 2, 3):
        assert outcomes[i][:, 0].tolist() == [len(t) for t in requests[i]]
    # All at once; then the first two requests apart from the last two; then request 0 apart from request 1.
    assert model.batches == [
        ["a", "b", "bad", "cc", "ddd", "e"],
        ["a", "b", "bad"],
        ["a"],
        ["b", "bad"],
        ["cc", "ddd", "e"],
    ]
    assert (stats.errors, stats.batches, stats.texts) == (3, 2, 4)


def test_stop_with_drain_answers_what_is_queued():
    model = RecordingModel(delay=0.05)

    async def scenario():
        batcher = MicroBatcher(model, max_batch_size=1, max_wait_ms=0)
        batcher.start()
        requests = [asyncio.create_task(batcher.submit([f"text {i}"])) for i in range(5)]
        while not model.batches:
            await asyncio.sleep(0.005)
        await batcher.stop(drain=10)  # refuses new texts at once, answers the queued ones
        with pytest.raises(ServeError, match="not running"):
            await batcher.submit(["too late"])
        return await asyncio.gather(*requests)

    rows = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert [r[0, 0] for r in rows] == [6.0] * 5
    assert len(model.batches) == 5


# ---------------------------------------------------------------------------------------------- token batching


def test_batches_are_capped_by_padded_tokens_and_ordered_by_length():
    """Rows of one round: sorted by length, cut at max_batch_size rows and max_batch_tokens padded tokens
    (rows x the longest), shortest batches first; each row's answer goes back to its own request."""
    model = RecordingModel()
    tokens = [3, 40, 5, 40, 1, 12, 7, 40, 2, 9]
    texts = ["t" * (i + 1) for i in range(len(tokens))]  # distinct lengths: RecordingModel's rows say which text
    length_of = dict(zip(texts, tokens, strict=True))

    async def scenario():
        batcher = MicroBatcher(model, max_batch_size=4, max_wait_ms=50, max_batch_tokens=64)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit([t], [n]) for t, n in zip(texts, tokens, strict=True)))
        await batcher.stop()
        return results, batcher.stats

    results, stats = asyncio.run(asyncio.wait_for(scenario(), 10))
    for text, rows in zip(texts, results, strict=True):
        assert rows[:, 0].tolist() == [len(text)]
    batches = [[length_of[t] for t in batch] for batch in model.batches]
    assert batches == [[1, 2, 3, 5], [7, 9, 12], [40], [40], [40]]
    for batch in batches:
        assert len(batch) <= 4 and len(batch) * max(batch) <= 64 and batch == sorted(batch)
    assert (stats.requests, stats.texts, stats.batches, stats.largest_batch) == (10, 10, 5, 4)


def test_a_long_row_holds_the_others_back_by_its_own_batch_only():
    """A long row that arrives first is run after the short rows that came with it, in a batch of its own:
    the short ones are neither padded to it nor kept waiting for it."""
    model = RecordingModel()

    async def scenario():
        batcher = MicroBatcher(model, max_batch_size=8, max_wait_ms=20, max_batch_tokens=64)
        batcher.start()
        long = asyncio.create_task(batcher.submit(["long review"], [40]))
        await asyncio.sleep(0)  # the long one is queued first
        short = [asyncio.create_task(batcher.submit([f"s{i}"], [2])) for i in range(6)]
        results = await asyncio.gather(long, *short)
        await batcher.stop()
        return results

    results = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert model.batches == [[f"s{i}" for i in range(6)], ["long review"]]
    assert [r[0, 0] for r in results] == [11.0] + [2.0] * 6


def test_a_full_length_row_is_never_batched_with_one_liners_the_token_cap_would_allow():
    """32 rows x 256 tokens is within the default token cap, but a 256-token review beside one-liners would pad
    them all to 256: rows more than PAD_RATIO times a batch's shortest start a batch of their own."""
    lengths = [20, 22, 25, 256, 24, 240, 30, 12]
    batches = plan_batches(lengths, max_rows=32, max_tokens=16_384, length=lambda n: n)
    assert batches == [[12, 20, 22, 24, 25, 30], [240, 256]]
    for batch in batches:
        assert max(batch) <= PAD_RATIO * max(batch[0], PAD_FLOOR)
    assert plan_batches([1, 3, 9, 30, 40], 8, 1_000, lambda n: n) == [[1, 3, 9, 30], [40]]  # floor: 2 x 16 tokens


def test_the_server_batches_encoded_rows_by_tokens(trained_tiny_dir, texts, reference):
    """Through the app, on the tiny model: the texts reach the model tokenized, each batch within the token
    cap and ordered by length; the answers are the Predictor's own, and /metrics counts the padded tokens."""
    served = Predictor(trained_tiny_dir)
    original, seen = served.predict_proba, []

    def recording(batch):
        seen.append(batch.lengths.tolist())
        return original(batch)

    served.predict_proba = recording
    cap = 64  # two full-length rows at max_length 32
    settings = dataclasses.replace(COLD, max_batch_tokens=cap)
    inputs = [texts[0], EXTRA_TEXTS[2], texts[1], "", EXTRA_TEXTS[2], texts[2], "ok", texts[3]]
    with TestClient(create_app(served, settings)) as client:
        body = client.post("/predict", json={"inputs": inputs}).json()
        samples = scrape(client)
    for text, prediction in zip(inputs, body, strict=True):
        assert_matches(prediction, reference[text] if text in reference else original([text])[0], served.id2label)
    assert sum(len(batch) for batch in seen) == len(inputs) and len(seen) > 1
    for batch in seen:
        assert batch == sorted(batch) and len(batch) * max(batch) <= cap
    assert [max(b) for b in seen] == sorted(max(b) for b in seen)  # shortest batches first
    assert metric(samples, "bertsent_batch_tokens_sum") == sum(len(b) * max(b) for b in seen)
    assert metric(samples, "bertsent_texts_scored_total") == len(inputs)


def test_a_token_cap_below_the_max_length_is_a_settings_error(trained_tiny_dir):
    from bertsent.errors import SettingsError

    with pytest.raises(SettingsError, match=r"max_batch_tokens \(16\) is below the model's max_length \(32\)"):
        create_app(trained_tiny_dir, dataclasses.replace(SETTINGS, max_batch_tokens=16))


# ---------------------------------------------------------------------------------------------- back-pressure


def test_past_max_concurrent_requests_the_answer_is_429_at_once(tmp_path):
    """Two requests held (the model gated), the third is refused at once: 429, Retry-After, a JSON error;
    /metrics counts the refusal; the held ones are answered once the model goes on."""
    gate = threading.Event()
    model = FakeModel(tmp_path / "fake", gate=gate)
    app = create_app(model, dataclasses.replace(COLD, max_concurrent_requests=2, max_wait_ms=0))  # gated: no warm-up
    with background_server(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        with ThreadPoolExecutor(2) as pool:
            held = [pool.submit(httpx.post, f"{url}/predict", json={"inputs": f"good {i}"}, timeout=30) for i in (1, 2)]
            deadline = time.monotonic() + 20
            while metric(scrape(http), "bertsent_requests_in_flight") < 2:
                assert time.monotonic() < deadline, "the two requests were never held"
                time.sleep(0.02)
            started = time.monotonic()
            refused = http.post("/predict", json={"inputs": "good"})
            waited = time.monotonic() - started
            assert http.get("/health").json() == {"status": "ok"}  # only /predict is limited
            gate.set()
            answers = [f.result() for f in held]
        samples = scrape(http)
        spec = http.get("/openapi.json").json()
    assert refused.status_code == 429 and waited < 5
    assert refused.headers["retry-after"] == "1" and refused.headers["content-type"] == "application/json"
    assert refused.json() == {
        "error": "the server is at its limit of 2 requests at once (--max-concurrent-requests); retry after 1 s"
    }
    assert [a.status_code for a in answers] == [200, 200]
    assert all(a.json() == [{"label": "pos", "score": 0.8}] for a in answers)
    assert metric(samples, "bertsent_requests_refused_total") == 1
    assert metric(samples, "bertsent_http_requests_total", path="/predict", status="429") == 1
    assert metric(samples, "bertsent_requests_in_flight") == 0
    documented = spec["paths"]["/predict"]["post"]["responses"]["429"]
    assert "Retry-After" in documented["headers"] and documented["content"]["application/json"]["schema"]


def test_batching_and_back_pressure_flags():
    ns = parse(["serve", "--model", "m", "--max-batch-tokens", "512", "--max-concurrent-requests", "3"])
    settings = settings_from_args(ns)
    assert (settings.max_batch_tokens, settings.max_concurrent_requests) == (512, 3)
    defaults = settings_from_args(parse(["serve", "--model", "m"]))
    assert (defaults.max_batch_tokens, defaults.max_concurrent_requests) == (16_384, 512)


# ---------------------------------------------------------------------------------------------- settings and CLI


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_batch_size", 0),
        ("max_inputs", -1),
        ("max_chars", 2.5),
        ("max_body_bytes", True),
        ("max_wait_ms", -1),
        ("max_wait_ms", float("nan")),
        ("port", 70000),
        ("host", ""),
        ("threads", 0),
        ("api_key", ""),
        ("api_key", "two words"),
        ("api_key", "clé"),
        ("graceful_timeout", -1),
        ("graceful_timeout", float("inf")),
        ("max_batch_tokens", 0),
        ("max_concurrent_requests", 0),
        ("max_concurrent_requests", 1.5),
    ],
)
def test_settings_validate_themselves(field, value):
    with pytest.raises(ValueError, match=field):
        ServeSettings(**{field: value})


def parse(argv: list[str]) -> argparse.Namespace:
    from bertsent.cli import add_command

    parser = argparse.ArgumentParser(prog="bertsent")
    add_command(parser.add_subparsers(dest="command", required=True), "serve")
    return parser.parse_args(argv)


def test_cli_options_map_to_settings():
    argv = "serve --model m --port 0 --max-batch-size 4 --max-wait-ms 1.5 --max-inputs 3 --max-chars 10"
    ns = parse([*argv.split(), "--max-body-bytes", "100", "--threads", "1"])
    assert ns.func is cmd_serve and ns.model == "m"
    expected = {"max_batch_size": 4, "max_wait_ms": 1.5, "max_inputs": 3, "max_chars": 10, "max_body_bytes": 100}
    assert settings_from_args(ns) == ServeSettings(host="127.0.0.1", port=0, threads=1, **expected)
    assert settings_from_args(parse(["serve", "--model", "m"])) == ServeSettings()  # defaults match the dataclass


def test_cli_errors_are_one_line(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ServeError, match=f"cannot listen on 127.0.0.1:{port}"):
            bind_socket("127.0.0.1", port)
        with pytest.raises(ServeError, match="cannot listen"):
            cmd_serve(parse(["serve", "--model", str(tmp_path), "--port", str(port)]))
    with pytest.raises(ModelError, match="not a model folder"):
        cmd_serve(parse(["serve", "--model", str(tmp_path), "--port", "0"]))
    with pytest.raises(ValueError, match="max_inputs"):
        cmd_serve(parse(["serve", "--model", str(tmp_path), "--max-inputs", "0"]))
    assert issubclass(ServeError, BertsentError)


def test_api_key_and_graceful_timeout_flags_and_the_environment_variable():
    ns = parse(["serve", "--model", "m", "--api-key", KEY, "--graceful-timeout", "2.5"])
    settings = settings_from_args(ns)
    assert (settings.api_key, settings.graceful_timeout) == (KEY, 2.5)
    assert KEY not in repr(settings)  # never printed with the settings
    defaults = settings_from_args(parse(["serve", "--model", "m"]))
    assert api_key_from_env(defaults, {API_KEY_ENV: KEY}).api_key == KEY
    assert api_key_from_env(settings, {API_KEY_ENV: "other"}).api_key == KEY  # the flag wins
    assert api_key_from_env(defaults, {}).api_key is None
    with pytest.raises(BertsentError, match="BERTSENT_API_KEY is set but empty"):
        api_key_from_env(defaults, {API_KEY_ENV: ""})
    with pytest.raises(BertsentError, match="BERTSENT_API_KEY: api_key must be") as raised:
        api_key_from_env(defaults, {API_KEY_ENV: "my secret"})
    assert "my secret" not in str(raised.value)


CLI = """
import argparse, sys
from bertsent.cli import add_command
parser = argparse.ArgumentParser(prog="bertsent")
add_command(parser.add_subparsers(dest="command", required=True), "serve")
ns = parser.parse_args(sys.argv[1:])
sys.exit(ns.func(ns))
"""


def test_serve_command_runs_and_stops_on_ctrl_c(trained_tiny_dir):
    env = os.environ | {"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    argv = [sys.executable, "-c", CLI, "serve", "--model", str(trained_tiny_dir), "--port", "0"]
    # One pipe for both streams (uvicorn logs to stderr), read by the same buffered reader throughout.
    # A job started in the background (nohup, some CI runners) inherits SIGINT ignored; the server
    # under test must get the default, as a terminal gives it, or Ctrl-C cannot be tested.
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        first = ""
        while not first.startswith("serving "):  # "serving DIR (pytorch; labels: ...) at http://127.0.0.1:PORT"
            line = proc.stdout.readline()  # (library warnings may come first)
            assert line, f"the command ended before serving: {first}"
            first = line if line.startswith("serving ") else first + line
        assert first.startswith(
            f"serving {trained_tiny_dir} (pytorch; labels: negative, positive) at http://127.0.0.1:"
        )
        url = first.split(" at ")[-1].strip()
        deadline = time.monotonic() + 30
        while True:  # uvicorn starts right after the banner
            try:
                health = httpx.get(f"{url}/health", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.1)
        assert health.json() == {"status": "ok"}
        assert httpx.post(f"{url}/predict", json={"inputs": ["good", "bad"]}, timeout=10).status_code == 200
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        out = first + proc.stdout.read()
    finally:
        proc.kill()
        proc.stdout.close()
    assert proc.returncode == 0, out
    assert "micro-batching: up to 32 texts, waiting at most 5 ms" in out
    assert f"web page: {url}/   API docs: {url}/docs" in out
    assert "Application shutdown complete" in out
    assert "served 1 requests (2 texts) in 1 batches; 0 failed batches" in out


# The CLI with inference slowed down, so that requests are still queued when the signal comes.
SLOW_CLI = (
    """
import time
from bertsent.predict import Predictor
predict_proba = Predictor.predict_proba
def slow(self, texts, *args, **kwargs):
    time.sleep(0.3)
    return predict_proba(self, texts, *args, **kwargs)
Predictor.predict_proba = slow
"""
    + CLI
)


def test_sigterm_answers_the_accepted_requests_then_exits_0(trained_tiny_dir):
    """SIGTERM (docker stop, Kubernetes): the requests already accepted are answered, then a clean exit.

    The key comes from the environment variable, and is never printed.
    """
    n = 6
    env = os.environ | {"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", API_KEY_ENV: KEY}
    argv = [sys.executable, "-c", SLOW_CLI, "serve", "--model", str(trained_tiny_dir), "--port", "0"]
    argv += ["--max-batch-size", "1", "--max-wait-ms", "0"]  # one text per batch: n x 0.3 s of work queued
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        out = ""
        while "serving " not in out:
            line = proc.stdout.readline()
            assert line, f"the command ended before serving: {out}"
            out += line
        url = out.split(" at ")[-1].strip()
        deadline = time.monotonic() + 30
        while True:
            try:
                assert httpx.get(f"{url}/health", timeout=5).json() == {"status": "ok"}  # open: no key
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.1)
        assert httpx.get(f"{url}/info", timeout=5).status_code == 401
        with ThreadPoolExecutor(n) as pool:
            futures = [
                pool.submit(httpx.post, f"{url}/predict", json={"inputs": f"review {i}"}, headers=AUTH, timeout=60)
                for i in range(n)
            ]
            while httpx.get(f"{url}/info", headers=AUTH, timeout=5).json()["stats"]["requests"] < n:
                time.sleep(0.02)  # every request accepted (queued in the batcher) before the signal
            proc.send_signal(signal.SIGTERM)
            responses = [f.result() for f in futures]
        proc.wait(timeout=60)
        out += proc.stdout.read()
    finally:
        proc.kill()
        proc.stdout.close()
    assert [r.status_code for r in responses] == [200] * n, [r.text for r in responses]
    assert proc.returncode == 0, out
    assert "API key: required on /predict, /info and /metrics" in out and "the key from $BERTSENT_API_KEY" in out
    assert KEY not in out
    assert "Application shutdown complete" in out
    assert f"served {n} requests ({n} texts) in {n} batches; 0 failed batches" in out


# ---------------------------------------------------------------------------------------------- real server


def test_real_server_under_concurrent_load_batches_and_stays_exact(trained_tiny_dir, texts, reference, predictor):
    app = create_app(trained_tiny_dir, ServeSettings(max_batch_size=16, max_wait_ms=10))
    n_threads, n_requests = 8, 10
    rng = np.random.default_rng(0)
    plans = [
        [[texts[i] for i in rng.choice(len(texts), size=rng.integers(1, 4), replace=False)] for _ in range(n_requests)]
        for _ in range(n_threads)
    ]
    start = threading.Barrier(n_threads)

    def client_thread(url: str, plan: list[list[str]]) -> list[tuple[list[str], int, object]]:
        answers = []
        with httpx.Client(base_url=url, timeout=30) as http:
            start.wait(timeout=30)
            for request in plan:
                # Alternate the two input shapes: a lone string, and a list.
                inputs = request[0] if len(request) == 1 and len(answers) % 2 else request
                response = http.post("/predict", json={"inputs": inputs})
                answers.append((request, response.status_code, response.json()))
        return answers

    began = time.monotonic()
    with background_server(app) as url:
        assert url.startswith("http://127.0.0.1:")
        before = httpx.get(f"{url}/info").json()["stats"]
        with ThreadPoolExecutor(n_threads) as pool:
            results = [a for answers in pool.map(client_thread, [url] * n_threads, plans) for a in answers]
        after = httpx.get(f"{url}/info").json()["stats"]
    assert time.monotonic() - began < 60

    assert len(results) == n_threads * n_requests
    for request, status, body in results:
        assert status == 200, body
        assert len(body) == len(request)
        for text, prediction in zip(request, body, strict=True):
            assert_matches(prediction, reference[text], predictor.id2label)
    requests = after["requests"] - before["requests"]
    batches = after["batches"] - before["batches"]
    assert requests == n_threads * n_requests
    assert after["texts"] - before["texts"] == sum(len(r) for plan in plans for r in plan)
    assert batches < requests and after["largest_batch"] > 3  # requests were merged into batches
    assert after["errors"] == 0 and after["queued"] == 0


def test_a_folder_is_served_with_the_inference_settings_given(trained_tiny_dir):
    from bertsent.config import InferenceSettings
    from bertsent.errors import SettingsError

    inference = InferenceSettings(max_length=16, long_text="chunk", stride=4, batch_size=3)
    long_text = "awful plot, the worst " * 8 + "a great and moving film " * 8  # under max_chars
    app = create_app(trained_tiny_dir, SETTINGS, inference)
    served = app.state.predictor
    assert (served.long_text, served.max_length) == ("chunk", 16)
    assert served.batch_size == SETTINGS.max_batch_size  # the server's batch size wins
    expected = Predictor(trained_tiny_dir, inference).predict_proba([long_text])[0]
    assert not np.allclose(expected, Predictor(trained_tiny_dir).predict_proba([long_text])[0], atol=1e-4)
    with TestClient(app) as client:
        assert client.get("/info").json()["max_length"] == 16
        [prediction] = client.post("/predict", json={"inputs": [long_text]}).json()
    assert_matches(prediction, expected, served.id2label)
    threads = ServeSettings(threads=1)
    assert create_app(trained_tiny_dir, threads, inference).state.predictor.settings.threads == 1
    with pytest.raises(SettingsError, match="a Predictor already has its own"):
        create_app(served, SETTINGS, inference)


def test_a_long_review_is_scored_whole_with_long_text_chunk(trained_tiny_dir):
    """``bertsent serve --long-text chunk``: a review over the model's window gets the score of all its
    windows (the Predictor's own), not of its first ``max_length`` tokens; /info and /metrics say so."""
    from bertsent.argparsing import settings as from_flags
    from bertsent.config import InferenceSettings

    flags = ["--long-text", "chunk", "--max-length", "16", "--stride", "4"]
    ns = parse(["serve", "--model", str(trained_tiny_dir), *flags])
    review = "a great and moving film, " * 6 + "but the plot was awful and the ending the worst " * 4
    assert len(review) <= SETTINGS.max_chars
    chunked = Predictor(trained_tiny_dir, long_text="chunk", max_length=16, stride=4)
    _, windows = chunked.prepare([review])
    assert len(windows) > 5  # far longer than one window
    expected = chunked.predict_proba([review])[0]
    truncated = Predictor(trained_tiny_dir, max_length=16).predict_proba([review])[0]
    assert not np.allclose(expected, truncated, atol=1e-3)

    app = create_app(ns.model, SETTINGS, from_flags(ns, InferenceSettings))  # as cmd_serve builds it
    with TestClient(app) as client:
        info = client.get("/info").json()
        [ranked] = client.post("/predict", json={"inputs": review, "parameters": {"top_k": None}}).json()
        samples = scrape(client)
    assert (info["long_text"], info["stride"], info["max_length"]) == ("chunk", 4, 16)
    scores = {s["label"]: s["score"] for s in ranked}
    labels = app.state.predictor.id2label
    assert [scores[labels[i]] for i in range(len(labels))] == pytest.approx(expected.tolist(), abs=1e-5)
    [model_info] = [s for s in samples if s.name == "bertsent_model_info"]
    assert (model_info.labels["long_text"], model_info.labels["max_length"]) == ("chunk", "16")
    assert metric(samples, "bertsent_texts_scored_total") == 1  # texts, not windows


POISON = "a text this model cannot take"


def test_one_bad_request_never_fails_another(trained_tiny_dir, texts, reference, predictor):
    """Concurrent clients beside bad ones: text that is not Unicode (422 at the door) and a text the
    model raises on (500 for its own request only); every good request is answered, exactly."""
    served = Predictor(trained_tiny_dir)
    original, shared = served.predict_proba, []
    poison = served.encode([POISON]).ids[0].tolist()  # the server hands the model encoded rows

    def poisoned(batch) -> np.ndarray:
        if any(row.tolist() == poison for row in batch.ids):
            shared.append(len(batch))
            raise ValueError("poisoned text")
        return original(batch)

    served.predict_proba = poisoned
    app = create_app(served, ServeSettings(max_batch_size=64, max_wait_ms=50, warmup=False))
    n_good, n_requests = 10, 5
    start = threading.Barrier(n_good + 2)

    def client_thread(url: str, kind: str, k: int) -> list[tuple[list[str], int, object]]:
        answers = []
        with httpx.Client(base_url=url, timeout=30) as http:
            start.wait(timeout=30)
            for i in range(n_requests):
                good = [texts[(k * n_requests + i) % len(texts)]]
                if kind == "surrogate":
                    body = b'{"inputs": ["fine", "\\ud800 film"]}'
                    response = http.post("/predict", content=body, headers=JSON)
                else:
                    response = http.post("/predict", json={"inputs": [*good, POISON] if kind == "poison" else good})
                answers.append((kind, good, response.status_code, response.json()))
        return answers

    with background_server(app) as url:
        kinds = ["good"] * n_good + ["surrogate", "poison"]
        with ThreadPoolExecutor(len(kinds)) as pool:
            plans = pool.map(client_thread, [url] * len(kinds), kinds, range(len(kinds)))
            results = [answer for answers in plans for answer in answers]
        stats = httpx.get(f"{url}/info").json()["stats"]

    assert len(results) == len(kinds) * n_requests
    for kind, good, status, body in results:
        if kind == "good":
            assert status == 200, body
            assert_matches(body[0], reference[good[0]], predictor.id2label)
        elif kind == "surrogate":
            assert status == 422
            assert body["error"] == "inputs[1]: not valid Unicode (unpaired surrogate U+D800 at character 0)"
        else:
            assert (status, body) == (500, {"error": "inference failed: ValueError: poisoned text"})
    assert max(shared) > 2  # the poison shared batches with other requests' texts, which were run again apart
    assert stats["errors"] == len(shared) and stats["queued"] == 0


def test_responses_match_the_openapi_document(trained_tiny_dir, tmp_path):
    """Schemathesis, every check with its default settings (no configuration file, as a new user runs it),
    against a live server with an API key: a few hundred generated requests (valid and invalid), and every
    response must be what /openapi.json documents."""
    pytest.importorskip("schemathesis", reason="pip install 'schemathesis>=4.3' (in the dev extra)")
    # Limits under which any request the document allows fits in the body limit (12 bytes per escaped character).
    settings = ServeSettings(max_inputs=8, max_chars=200, max_body_bytes=50_000, max_wait_ms=1, api_key=KEY)
    command = [sys.executable, "-m", "schemathesis.cli", "--no-color", "run"]
    command += ["--checks", "all", "--max-examples", "300", "--seed", "1", "--generation-database", "none"]
    command += ["--header", f"Authorization: Bearer {KEY}", "--request-timeout", "30"]
    with background_server(create_app(trained_tiny_dir, settings)) as url:
        # cwd: Schemathesis keeps a cache in the working directory.
        run = subprocess.run(
            [*command, f"{url}/openapi.json"], cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-6000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", report)
    assert counts and int(counts[1]) >= 200 and counts[1] == counts[2], report[-3000:]
