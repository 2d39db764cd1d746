"""The BentoML service ``maas``: batched /classify, /generate, /info, health and metrics.

It serves the BentoML models that ``flows/bento.py`` imports: ``maas-classifier`` (required)
and ``maas-generator`` (optional). A Bento built by ``flows.bento.build_bento`` names their
exact versions in its Bento arguments (``classifier``, ``generator``), so an older Bento never
picks up a newer model; without arguments (``bentoml serve service:MaasService`` in development)
the latest version of each in the store is served, the generator only when one exists.

Each model folder is a Predictor bundle loaded with ``load_predictor``: the service never
re-implements preprocessing. The limits (texts per request, characters, tokens, batching)
are the classifier model's ``metadata["serving"]`` over the ServingSpec defaults.

Work at import time is limited to what BentoML fixes when the class is defined: the model
references and the limits that go into the API signatures and the batching parameters.
Endpoints and error bodies are documented in docs/serving.md.
"""

import asyncio
import contextvars
import gc
import hmac
import json
import logging
import os
import secrets
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Annotated, Any

import bentoml
from _bentoml_sdk.method import APIMethod
from bentoml._internal.server.http.traffic import TimeoutMiddleware
from bentoml.exceptions import BentoMLException, NotFound
from bentoml.validators import ContentType
from pydantic import AfterValidator, BaseModel, Field, StringConstraints, ValidationError
from starlette.responses import JSONResponse

from components.config import ServingSpec
from components.predictor import ClassifierPredictor, GeneratorPredictor, Predictor, load_predictor

# The names flows/bento.py imports the models under, and the Bento arguments that pin them.
CLASSIFIER_MODEL = "maas-classifier"
GENERATOR_MODEL = "maas-generator"
NO_MODEL = "none"
TOKEN_ENV = "MAAS_API_TOKEN"
UNGUARDED_PATHS = frozenset({"/healthz", "/readyz", "/livez", "/metrics"})
MIN_TEMPERATURE = 1e-3  # lower temperatures are clamped to this (greedy in practice, no overflow)
MAX_SEED = 2**32 - 1
# A CPU classifier whose full batch takes at most this long runs on the event loop: in a worker
# thread, a model that holds the GIL (the TF-IDF pipeline tokenises in Python) only adds GIL
# hand-offs that stall request parsing (measured: about a quarter fewer requests/s at concurrency
# 32). A slower model runs in a worker thread, so the probes and request parsing never wait a whole
# batch; so does any model on a GPU, so that the event loop can parse the next requests while the
# call waits on the tokenizer (Rust) and CUDA, which release the GIL. Measured with MiniLM on an
# H200 at concurrency 32: 417 texts/s on the thread, 410 on the loop (one round each, within the
# noise), with 4.1 against 9.4 ms of server CPU a request.
INLINE_BATCH_BUDGET_S = 0.25
# A list-returning API without a declared content type makes BentoML build the response's JSON
# schema on every call to find its media type (about a third of the server's CPU per /classify
# request under load, measured with py-spy); declaring it skips that. Every list endpoint uses it.
JSON = ContentType("application/json")
# BentoML records an OpenTelemetry span per request even with no exporter configured (its default
# sample rate is 0, so nothing is ever sent), and under load those spans were kept: about 4.7 KB of
# resident memory per request, and a third of /echo's CPU. Off unless MAAS_TRACING=1, for a
# deployment that configures an exporter (docs/serving.md, "Tracing").
TRACING_ENV = "MAAS_TRACING"
TRACING_CONFIG = {} if os.environ.get(TRACING_ENV) == "1" else {"tracing": {"excluded_urls": [".*"]}}
WARMUP_TEXT = ("The quick brown fox jumps over the lazy dog near the river bank. " * 32)[:2000]

logger = logging.getLogger("bentoml.maas")  # under "bentoml": `bentoml serve` configures its handlers


def _stored_model(argument: str, name: str, required: bool) -> bentoml.Model | None:
    """The store's model for a Bento argument: a pinned tag, ``none``, or (unset) the latest."""
    pinned = getattr(bentoml.use_arguments(), argument, None)
    if pinned == NO_MODEL:
        return None
    try:
        return bentoml.models.get(pinned or f"{name}:latest")
    except NotFound:
        if pinned or required:
            raise RuntimeError(
                f"model {pinned or name} is not in the BentoML store: import it with flows.bento.import_bundle"
            ) from None
        return None


CLASSIFIER = _stored_model("classifier", CLASSIFIER_MODEL, required=True)
GENERATOR = _stored_model("generator", GENERATOR_MODEL, required=False)
SERVING = ServingSpec.model_validate(CLASSIFIER.info.metadata.get("serving") or {})
# Largest body a valid request can need: every character escaped as \uXXXX, plus the JSON around it.
MAX_BODY_BYTES = 6 * max(SERVING.max_texts * SERVING.max_chars, SERVING.max_prompt_chars) + 64 * 1024


# -- request schemas -----------------------------------------------------------------------------
# Filled per request by the middleware and the validators, read back for the access log.
_REQUEST_STATS: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "maas_request", default=None
)


def _count_texts(texts: list[str]) -> list[str]:
    stats = _REQUEST_STATS.get()
    if stats is not None:
        stats["n_texts"] = len(texts)
    return texts


Text = Annotated[str, StringConstraints(min_length=1, max_length=SERVING.max_chars)]
Texts = Annotated[
    list[Text],
    Field(
        min_length=1,
        max_length=SERVING.max_texts,
        description="Texts to classify, each 1..max_chars characters",
    ),
    AfterValidator(_count_texts),
]
Prompt = Annotated[str, StringConstraints(min_length=1, max_length=SERVING.max_prompt_chars)]


class Classification(BaseModel):
    label: str = Field(description="The most probable label")
    probabilities: dict[str, float] = Field(description="Probability of every label; they sum to 1")
    model_version: str = Field(description="Registry version of the classifier that answered")


class Generation(BaseModel):
    text: str = Field(description="The continuation only (the prompt is not repeated)")
    seed: int = Field(description="The seed used: send it again to get the same text")
    model_version: str


class ModelDescription(BaseModel):
    bento_model: str
    model_name: str
    model_version: str
    data_version: str
    kind: str
    labels: list[str] = Field(
        default_factory=list, description="A classifier's labels (empty for a generator)"
    )


class ServiceInfo(BaseModel):
    service: str
    bento: str = Field(description="The Bento tag; empty when served from source")
    models: dict[str, ModelDescription] = Field(description="'classifier', and 'generator' when there is one")
    limits: dict[str, int] = Field(description="The serving limits in force (ServingSpec)")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _describe(model: bentoml.Model, predictor: Predictor) -> ModelDescription:
    labels = model.info.labels
    return ModelDescription(
        bento_model=str(model.tag),
        model_name=labels.get("model_name", model.tag.name),
        model_version=labels.get("model_version", model.tag.version or ""),
        data_version=labels.get("data_version", "unknown"),
        kind=predictor.kind,
        labels=getattr(predictor, "labels", []),
    )


async def _on_thread(thread: ThreadPoolExecutor, fn, *args):
    """Run `fn(*args)` on a model's own thread without blocking the event loop."""
    return await asyncio.get_running_loop().run_in_executor(thread, fn, *args)


def _bind_apis(service: object) -> None:
    """Bind each API method to `service` once, as an instance attribute.

    BentoML's API descriptor builds a new bound wrapper, ``inspect.signature`` included (about
    20 us here), on every attribute access, and its server looks the method up on every request,
    twice for a batched one. The descriptor defines no ``__set__``, so an instance attribute of
    the same name takes precedence: the lookups become plain reads of the same wrapper.
    """
    for name, member in vars(type(service)).items():
        if isinstance(member, APIMethod):
            service.__dict__[name] = member.__get__(service, type(service))


def _load(model: bentoml.Model, expected: type[Predictor]) -> Predictor:
    predictor = load_predictor(model.path)
    if not isinstance(predictor, expected):
        raise TypeError(f"model {model.tag} holds a {predictor.task} bundle, not {expected.task}")
    return predictor


# -- middleware ----------------------------------------------------------------------------------
class RequestGuard:
    """Pure ASGI middleware in front of every API: auth, body limits, JSON only, one log line.

    * ``MAAS_API_TOKEN`` set: every path except the probes and /metrics needs
      ``Authorization: Bearer <token>`` (401 otherwise; compared in constant time).
    * POST bodies: only JSON (415 otherwise); more than `max_body_bytes` gives 413 before
      anything is parsed.
    * One JSON line per request on the ``maas.access`` logger: endpoint, method, n_texts,
      latency_ms, status. Never the texts or the token; the probes are not logged.
    """

    def __init__(self, app, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes
        token = os.environ.get(TOKEN_ENV, "")
        self._token = token.encode() if token else None
        self._log = _access_logger()
        _quiet_client_errors()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope["path"]
        stats: dict[str, Any] = {"status": 500, "n_texts": None}
        reset = _REQUEST_STATS.set(stats)

        async def send_recording(message):
            if message["type"] == "http.response.start":
                stats["status"] = message["status"]
            await send(message)

        try:
            rejection = self._check_headers(scope)
            if rejection is None and scope["method"] == "POST":
                receive, rejection = await self._read_body(receive)
            if rejection is not None:
                await rejection(scope, receive, send_recording)
            else:
                await self.app(scope, receive, send_recording)
        finally:
            _REQUEST_STATS.reset(reset)
            if path not in UNGUARDED_PATHS:
                self._log.info(
                    json.dumps(
                        {
                            "endpoint": path,
                            "method": scope["method"],
                            "n_texts": stats["n_texts"],
                            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
                            "status": stats["status"],
                        }
                    )
                )

    def _check_headers(self, scope) -> JSONResponse | None:
        headers = dict(scope["headers"])
        if self._token is not None and scope["path"] not in UNGUARDED_PATHS:
            scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self._token):
                response = _error(401, "missing or invalid bearer token")
                response.headers["WWW-Authenticate"] = "Bearer"
                return response
        if scope["method"] == "POST":
            media_type = headers.get(b"content-type", b"application/json").split(b";")[0].strip().lower()
            if media_type != b"application/json":
                return _error(
                    415,
                    f"send JSON with Content-Type: application/json (got {media_type.decode('latin-1')!r})",
                )
            length = headers.get(b"content-length", b"0")
            if not length.isdigit():
                return _error(400, "invalid Content-Length header")
            if int(length) > self.max_body_bytes:
                return _error(413, f"request body over {self.max_body_bytes} bytes")
        return None

    async def _read_body(self, receive):
        """Read the whole body (also when chunked) up to the limit, then replay it to the app."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return receive, None  # client went away: let the app see the disconnect
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return receive, _error(413, f"request body over {self.max_body_bytes} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay, None


class _ClientErrorFilter(logging.Filter):
    """Drop BentoML's ERROR traceback for a rejected input (a 4xx is the client's mistake, already
    in the access log); real server errors keep theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, ValidationError):
            return False
        return not (isinstance(error, BentoMLException) and error.error_code < 500)


def _quiet_client_errors() -> None:
    bentoml_http_log = logging.getLogger("bentoml._internal.server.http_app")
    if not any(isinstance(f, _ClientErrorFilter) for f in bentoml_http_log.filters):
        bentoml_http_log.addFilter(_ClientErrorFilter())


def _access_logger() -> logging.Logger:
    log = logging.getLogger("maas.access")
    log.setLevel(logging.INFO)
    if not log.handlers:  # bare JSON lines on stdout; BentoML's log format would wrap them
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.propagate = False
    return log


# -- BentoML's request timeout, without its timer outliving the request -----------------------------
async def _timeout_call(self: TimeoutMiddleware, scope, receive, send) -> None:
    """BentoML's TimeoutMiddleware.__call__ (1.4.40), the same behaviour, but the timer is cancelled
    when the request ends. BentoML leaves each request's `loop.call_later(traffic.timeout, ...)` armed
    for the whole timeout: under load (about 1,000 req/s here, timeout 60 s) tens of thousands of
    timer handles and their futures pile up on the event loop, and the server's resident memory grew
    by about 0.5 KB per request until they expired (tracemalloc: the largest growth, from traffic.py).
    """
    if scope["type"] not in ("http", "websocket"):
        await self.app(scope, receive, send)
        return
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

    async def _send(message) -> None:
        if not waiter.done():
            waiter.set_result(None)
        await send(message)

    handled = asyncio.ensure_future(self.app(scope, receive, _send))
    try:
        await waiter
    except TimeoutError:
        if handled.cancel():
            await _error(504, f"Not able to process the request in {self.timeout} seconds")(
                scope, receive, send
            )
    else:
        await handled
    finally:
        timer.cancel()


TimeoutMiddleware.__call__ = _timeout_call


# -- the service ---------------------------------------------------------------------------------
@bentoml.service(
    name="maas",
    resources={"cpu": "2"},
    traffic={"timeout": 60},
    workers=1,
    **TRACING_CONFIG,
    # RequestGuard writes the structured access log; BentoML's text access log would double it.
    logging={"access": {"enabled": False}},
)
class MaasService:
    classifier_model = bentoml.models.BentoModel(CLASSIFIER.tag)
    generator_model = bentoml.models.BentoModel(GENERATOR.tag) if GENERATOR is not None else None

    def __init__(self) -> None:
        self.classifier: ClassifierPredictor = _load(self.classifier_model, ClassifierPredictor)
        self.classifier_info = _describe(self.classifier_model, self.classifier)
        self.generator: GeneratorPredictor | None = None
        self.generator_info: ModelDescription | None = None
        if self.generator_model is not None:
            self.generator = _load(self.generator_model, GeneratorPredictor)
            self.generator_info = _describe(self.generator_model, self.generator)
        context = bentoml.server_context  # names the Bento when served from one
        self.bento_tag = f"{context.bento_name}:{context.bento_version}" if context.bento_name else ""
        # One model call at a time per model (they are CPU/GPU-bound), generation apart from
        # classification, each always on the same thread: with a pool, successive batches landed on
        # different threads, each with its own malloc arena, and MiniLM's resident memory kept growing (+11 %).
        self._classify_thread = ThreadPoolExecutor(1, thread_name_prefix="maas-classify")
        self._generate_thread = ThreadPoolExecutor(1, thread_name_prefix="maas-generate")
        _bind_apis(self)
        cheap = self._batch_seconds() <= INLINE_BATCH_BUDGET_S
        self._classify_inline = cheap and not self.classifier.on_accelerator
        # The models and their warm-up are loaded for good: move them out of the cyclic garbage
        # collector's view, or every collection re-walks them while requests wait (GC time per
        # request fell by about three quarters with the TF-IDF model, measured under load).
        gc.collect()
        gc.freeze()
        logger.info(
            "serving %s%s; classification batches run %s",
            self.classifier_info.bento_model,
            f" and {self.generator_info.bento_model}" if self.generator_info else " (no generator)",
            "on the event loop" if self._classify_inline else "in a worker thread",
        )

    def _batch_seconds(self, sample: int = 8) -> float:
        """Warm the classifier up (before /readyz answers) and estimate a full batch's time."""
        self.classifier.predict([WARMUP_TEXT])
        started = time.perf_counter()
        self.classifier.predict([WARMUP_TEXT] * sample)
        return (time.perf_counter() - started) / sample * SERVING.max_batch_size

    def _predict(self, texts: list[str]) -> list[Classification]:
        version = self.classifier_info.model_version
        return [Classification(**item, model_version=version) for item in self.classifier.predict(texts)]

    async def _classify(self, texts: list[str]) -> list[Classification]:
        if self._classify_inline:
            return self._predict(texts)
        return await _on_thread(self._classify_thread, self._predict, texts)

    @bentoml.api(batchable=True, max_batch_size=SERVING.max_batch_size, max_latency_ms=SERVING.max_latency_ms)
    async def classify(self, texts: Texts) -> Annotated[list[Classification], JSON]:
        """Label and probabilities per text. Requests are merged into batches (adaptive batching)."""
        return await self._classify(texts)

    @bentoml.api
    async def classify_unbatched(self, texts: Texts) -> Annotated[list[Classification], JSON]:
        """Same as /classify, one model call per request (the benchmark's baseline)."""
        return await self._classify(texts)

    @bentoml.api
    async def echo(self, texts: Texts) -> Annotated[list[str], JSON]:
        """Returns the texts: the framework's own ceiling for the load benchmark."""
        return texts

    @bentoml.api
    async def generate(
        self,
        prompt: Prompt,
        max_new_tokens: Annotated[int, Field(ge=1, le=SERVING.max_new_tokens)] = min(
            100, SERVING.max_new_tokens
        ),
        temperature: Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)] = 1.0,
        top_k: Annotated[int, Field(ge=0, le=1_000_000, description="0 disables top-k")] = 0,
        top_p: Annotated[
            float, Field(gt=0, le=1, allow_inf_nan=False, description="1 disables nucleus")
        ] = 1.0,
        seed: Annotated[int, Field(ge=0, le=MAX_SEED, description="Same seed, same text")] | None = None,
    ) -> Generation:
        """Continue `prompt` with the generation model (404 when this Bento has none)."""
        if self.generator is None:
            return _error(404, "no generation model in this Bento")
        seed = secrets.randbelow(MAX_SEED + 1) if seed is None else seed
        run = partial(
            self.generator.generate,
            prompt,
            max_new_tokens=max_new_tokens,
            temperature=max(temperature, MIN_TEMPERATURE),
            top_k=top_k,
            top_p=top_p,
            seed=seed,
        )
        try:
            text = await _on_thread(self._generate_thread, run)
        except ValueError as exc:  # the model's own refusal, e.g. characters outside its vocabulary
            return _error(400, str(exc))
        return Generation(text=text, seed=seed, model_version=self.generator_info.model_version)

    @bentoml.api
    async def info(self) -> ServiceInfo:
        """The models served, their registry and data versions, and the limits."""
        models = {"classifier": self.classifier_info}
        if self.generator_info is not None:
            models["generator"] = self.generator_info
        return ServiceInfo(
            service="maas",
            bento=self.bento_tag,
            models=models,
            limits=SERVING.model_dump(),
        )


MaasService.add_asgi_middleware(RequestGuard, max_body_bytes=MAX_BODY_BYTES)
