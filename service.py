"""The BentoML service ``maas``: batched /classify, /explain, /generate, /info, health and metrics (the API only).

It serves the BentoML models that ``flows/bento.py`` imports: ``maas-classifier`` (required)
and ``maas-generator`` (optional). A Bento built by ``flows.bento.build_bento`` names their
exact versions in its Bento arguments (``classifier``, ``generator``), so an older Bento never
picks up a newer model; without arguments (``bentoml serve service:MaasService`` in development)
the latest version of each in the store is served, the generator only when one exists.

Each model folder is a Predictor bundle loaded with ``load_predictor``: the service never
re-implements preprocessing. The limits (texts per request, characters, tokens, batching)
are the classifier model's ``metadata["serving"]`` over the ServingSpec defaults.

Work at import time is limited to what BentoML fixes when the class is defined: the model
references, the limits that go into the API signatures and the batching parameters, and whether
the benchmark-only endpoints exist (``MAAS_BENCHMARK_ENDPOINTS=1``). Auth, body limits and the
access log are ``components/serving/guard.py``; the inference log and the prediction metrics,
``components/monitoring/``; BentoML internals, ``compat.py``. Endpoints and
error bodies are documented in docs/serving.md.
"""

import asyncio
import gc
import logging
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Annotated

import bentoml
from bentoml.exceptions import NotFound
from bentoml.validators import ContentType
from pydantic import AfterValidator, BaseModel, Field, StringConstraints
from starlette.responses import StreamingResponse

import compat
from components.config import ServingSpec
from components.monitoring.inference_log import InferenceLog, LoggedModel, log_folder, texts_logged
from components.monitoring.metrics import generations_in_progress, prediction_metrics
from components.predictor import ClassifierPredictor, GeneratorPredictor, Predictor, load_predictor
from components.serving.batching import GenerationBatcher
from components.serving.guard import RequestGuard, count_texts, error_response
from components.serving.streaming import END, PieceFeed, sse_events
from components.serving.text_rules import require_visible, visible_pattern

# The names flows/bento.py imports the models under, and the Bento arguments that pin them.
CLASSIFIER_MODEL = "maas-classifier"
GENERATOR_MODEL = "maas-generator"
NO_MODEL = "none"
MAX_SEED = 2**32 - 1
SHUTDOWN_WAIT_S = 10  # how long shutdown waits for the decode loop to finish its step
MAX_STOPS, MAX_STOP_CHARS = 8, 64  # stop sequences per request, characters per stop sequence
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
# /classify_unbatched and /echo exist for benchmarks/serve_load.py only: not in the default API or its OpenAPI.
BENCHMARK_ENV = "MAAS_BENCHMARK_ENDPOINTS"
BENCHMARK_ENDPOINTS = os.environ.get(BENCHMARK_ENV) == "1"
# A served Bento listens on the loopback unless `--host` / BENTOML_HOST says otherwise (docs/serving.md).
DEFAULT_HOST = "127.0.0.1"
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
MAX_TEXTS_PER_REQUEST = max(SERVING.max_texts, SERVING.max_explain_texts)
MAX_BODY_BYTES = 6 * max(MAX_TEXTS_PER_REQUEST * SERVING.max_chars, SERVING.max_prompt_chars) + 64 * 1024


# -- request schemas -----------------------------------------------------------------------------
# A text or prompt must hold a visible character: whitespace, zero-width and control characters
# alone are an empty text (400). The schema's `pattern` states the same rule for clients.
VISIBLE = Field(json_schema_extra={"pattern": visible_pattern()})


def _visible_text(max_chars: int):
    """A string of 1..`max_chars` characters, at least one of them visible."""
    return Annotated[
        str, StringConstraints(min_length=1, max_length=max_chars), AfterValidator(require_visible), VISIBLE
    ]


Text = _visible_text(SERVING.max_chars)


def _texts(max_texts: int, description: str):
    """A list of 1..`max_texts` texts (each a `Text`), counted for the access log."""
    size = Field(min_length=1, max_length=max_texts, description=description)
    return Annotated[list[Text], size, AfterValidator(count_texts)]


Texts = _texts(
    SERVING.max_texts, "Texts to classify, each 1..max_chars characters, not all whitespace or invisible"
)
# /explain takes the same texts as /classify, fewer of them: occlusion costs a model call per word.
ExplainTexts = _texts(SERVING.max_explain_texts, "Texts to explain, at most max_explain_texts, each as for /classify")
Prompt = _visible_text(SERVING.max_prompt_chars)


class Classification(BaseModel):
    label: str = Field(description="The most probable label")
    probabilities: dict[str, float] = Field(description="Probability of every label; they sum to 1")
    model_version: str = Field(description="Registry version of the classifier that answered")


class WordScore(BaseModel):
    word: str = Field(description="A word of the text, as written (all its occurrences count as one)")
    score: float = Field(description="Positive: pushed towards the label; negative: away from it")


class Explanation(BaseModel):
    label: str = Field(description="The most probable label, as /classify returns it")
    probability: float = Field(description="Its probability")
    method: str = Field(
        description="'linear': exact logit contributions (TF-IDF); "
        "'occlusion': the drop of the label's probability when the word is deleted"
    )
    towards: list[WordScore] = Field(description="The top_k words that pushed towards the label, strongest first")
    against: list[WordScore] = Field(description="The top_k words that pushed away from it, strongest first")
    model_version: str


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


def _load(model: bentoml.Model, expected: type[Predictor]) -> Predictor:
    predictor = load_predictor(model.path)
    if not isinstance(predictor, expected):
        raise TypeError(f"model {model.tag} holds a {predictor.task} bundle, not {expected.task}")
    return predictor


# BentoML's request timeout leaves a timer armed per request for the whole timeout (compat.py).
compat.patch_timeout_middleware()


# -- the service ---------------------------------------------------------------------------------
@bentoml.service(
    name="maas",
    resources={"cpu": "2"},
    traffic={"timeout": 60},
    workers=1,
    http={"host": DEFAULT_HOST},
    **TRACING_CONFIG,
    # RequestGuard writes the structured access log; BentoML's text access log would double it.
    logging={"access": {"enabled": False}},
    # OpenMP's idle threads spin by default. Here they took the cores the event loop and the
    # clients needed, and under CPU contention the streamed tiny Llama served 0.5x the tokens/s of
    # in-process generation (docs/benchmarks.md). An OMP_WAIT_POLICY set by the operator is kept.
    envs=[{"name": "OMP_WAIT_POLICY", "value": "PASSIVE"}],
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
        self._generations = generations_in_progress()  # maas_generations_in_progress on /metrics
        # Concurrent generations decode together on one loop thread (components/serving/batching.py);
        # a kind without a batch decoder runs one request at a time on _generate_thread.
        decoder = self.generator.batch_decoder() if self.generator is not None else None
        self._batcher = (
            GenerationBatcher(decoder, SERVING.max_generation_batch).start("maas-generate-batch")
            if decoder is not None
            else None
        )
        # Explanations get a thread of their own: occlusion runs for seconds on a slow model, and
        # /classify batches must not queue behind it.
        self._explain_thread = ThreadPoolExecutor(1, thread_name_prefix="maas-explain")
        cheap = self._batch_seconds() <= INLINE_BATCH_BUDGET_S
        self._classify_inline = cheap and not self.classifier.on_accelerator
        self.metrics = prediction_metrics()
        self.inference_log = self._open_inference_log()
        info = self.classifier_info
        self._logged_model = LoggedModel(info.model_name, info.model_version, info.data_version)
        self._oov_known = True  # False once the model kind says it has no OOV share
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

    def _open_inference_log(self) -> InferenceLog | None:
        """The inference log (components/monitoring/inference_log.py), or None when MAAS_INFERENCE_LOG=off."""
        folder = log_folder(os.environ)
        if folder is None:
            logger.info("inference log off")
            return None
        log_texts = texts_logged(os.environ)
        logger.info("inference log: %s (%s)", folder, "with the texts" if log_texts else "without the texts")
        return InferenceLog(folder, log_texts=log_texts, on_drop=self.metrics.dropped.inc)

    @bentoml.on_shutdown
    def stop_model_threads(self) -> None:
        """End the decode loop (generations still running close unfinished) and the model threads,
        so the worker exits with no model work left behind."""
        if self._batcher is not None:
            self._batcher.stop(timeout=SHUTDOWN_WAIT_S)
        for pool in (self._classify_thread, self._generate_thread, self._explain_thread):
            pool.shutdown(wait=True, cancel_futures=True)

    @bentoml.on_shutdown
    def close_inference_log(self) -> None:
        """Write the log's queued records before the worker exits."""
        if self.inference_log is not None:
            self.inference_log.close()

    def _observe(
        self, endpoint: str, texts: list[str], items: list[dict], oov: list[float] | None = None
    ) -> None:
        """Metrics (classify only) and the inference log of a batch's items (`predict`'s or
        `explain`'s); never fails the request."""
        try:
            labels = [item["label"] for item in items]
            confidences = [
                item["probability"] if "probability" in item else item["probabilities"][item["label"]]
                for item in items
            ]
            if endpoint == "classify":
                self.metrics.observe(endpoint, labels, confidences)
            if self.inference_log is not None:
                if oov is None and self._oov_known:
                    oov = self._oov_shares(texts)
                self.inference_log.add_batch(endpoint, self._logged_model, texts, labels, confidences, oov)
        except Exception as exc:  # noqa: BLE001  (monitoring must not cost a prediction)
            logger.warning("monitoring of a %s batch failed: %s", endpoint, exc)

    def _oov_shares(self, texts: list[str]) -> list[float] | None:
        try:
            return self.classifier.oov_shares(texts)
        except NotImplementedError as exc:
            self._no_oov(exc)
            return None

    def _no_oov(self, reason: NotImplementedError) -> None:
        logger.warning("the inference log records no OOV share: %s", reason)
        self._oov_known = False

    def _predict(self, texts: list[str]) -> list[Classification]:
        version = self.classifier_info.model_version
        items, oov = None, None
        if self.inference_log is not None and self._oov_known:
            try:  # one pass for both where the kind can (TF-IDF reads each word once for the two)
                items, oov = self.classifier.predict_with_oov(texts)
            except NotImplementedError as exc:  # raised before the model runs (ClassifierPredictor)
                self._no_oov(exc)
        if items is None:
            items = self.classifier.predict(texts)
        self._observe("classify", texts, items, oov)
        return [Classification(**item, model_version=version) for item in items]

    async def _classify(self, texts: list[str]) -> list[Classification]:
        if self._classify_inline:
            return self._predict(texts)
        return await _on_thread(self._classify_thread, self._predict, texts)

    @bentoml.api(batchable=True, max_batch_size=SERVING.max_batch_size, max_latency_ms=SERVING.max_latency_ms)
    async def classify(self, texts: Texts) -> Annotated[list[Classification], JSON]:
        """Label and probabilities per text. Requests are merged into batches (adaptive batching)."""
        return await self._classify(texts)

    def _explain(self, texts: list[str], top_k: int) -> list[Explanation]:
        version = self.classifier_info.model_version
        items = self.classifier.explain(texts, top_k)
        self._observe("explain", texts, items)
        return [Explanation(**item, model_version=version) for item in items]

    @bentoml.api
    async def explain(
        self,
        texts: ExplainTexts,
        top_k: Annotated[int, Field(ge=1, le=SERVING.max_explain_top_k)] = min(10, SERVING.max_explain_top_k),
    ) -> Annotated[list[Explanation], JSON]:
        """Why each label: the words that pushed the classifier towards it and away. Not batched;
        on a thread of their own, as occlusion makes one model call per word read."""
        try:
            return await _on_thread(self._explain_thread, self._explain, texts, top_k)
        except NotImplementedError as exc:  # a model kind without an explanation method
            return error_response(501, str(exc))

    if BENCHMARK_ENDPOINTS:

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
        temperature: Annotated[
            float, Field(ge=0, le=100, allow_inf_nan=False, description="0: greedy (the most likely token)")
        ] = 1.0,
        top_k: Annotated[int, Field(ge=0, le=1_000_000, description="0 disables top-k")] = 0,
        top_p: Annotated[
            float, Field(gt=0, le=1, allow_inf_nan=False, description="1 disables nucleus")
        ] = 1.0,
        seed: Annotated[int, Field(ge=0, le=MAX_SEED, description="Same seed, same text")] | None = None,
        stop: Annotated[
            list[Annotated[str, StringConstraints(min_length=1, max_length=MAX_STOP_CHARS)]],
            Field(max_length=MAX_STOPS, description="The text ends before the first of these it produces"),
        ] = [],  # noqa: B006  (pydantic copies defaults; BentoML needs a plain default here)
        stream: Annotated[
            bool, Field(description="true: server-sent events, one per piece of text as it is produced")
        ] = False,
    ) -> Generation:
        """Continue `prompt` with the generation model (404 when this Bento has none); with
        `stream`, the text comes as server-sent events (docs/serving.md)."""
        if self.generator is None:
            return error_response(404, "no generation model in this Bento")
        seed = secrets.randbelow(MAX_SEED + 1) if seed is None else seed
        sampling = dict(
            max_new_tokens=max_new_tokens,
            temperature=temperature,  # the sampler floors tiny ones (components/models/sampling.py)
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            stop=stop,
        )
        if stream:
            return await self._stream(prompt, sampling)
        try:
            if self._batcher is None:
                text = await _on_thread(self._generate_thread, self._generate, prompt, sampling)
            else:
                text = await self._batched_text(prompt, sampling)
        except ValueError as exc:  # the model's own refusal, e.g. characters outside its vocabulary
            return error_response(400, str(exc))
        return Generation(text=text, seed=seed, model_version=self.generator_info.model_version)

    def _generate(self, prompt: str, sampling: dict) -> str:
        self._generations.inc()
        try:
            return self.generator.generate(prompt, **sampling)
        finally:
            self._generations.dec()

    def _start_generation(self, prompt: str, sampling: dict) -> PieceFeed:
        """A feed the generation's pieces arrive on: queued for the batched loop (the request is
        validated and tokenised here, so a refusal raises ValueError now), or the kind's own stream
        run on the generation thread."""
        feed = PieceFeed(asyncio.get_running_loop(), self._generations)
        if self._batcher is not None:
            self._batcher.submit(self.generator.plan(prompt, **sampling), feed)
        else:
            self._generate_thread.submit(feed.produce, partial(self.generator.stream, prompt, **sampling))
        return feed

    async def _batched_text(self, prompt: str, sampling: dict) -> str:
        feed = self._start_generation(prompt, sampling)
        pieces = []
        try:
            while (item := await feed.get()) is not END:
                if isinstance(item, BaseException):
                    raise item
                pieces.append(item)
        finally:  # also when the client leaves: the loop drops the request at its next step
            feed.cancel()
        return "".join(pieces)

    async def _stream(self, prompt: str, sampling: dict) -> StreamingResponse:
        """Server-sent events as the model thread produces pieces (docs/serving.md, "Streaming").

        The first piece is awaited before the response starts, so a request the model refuses
        still gets a 400 and not a 200 with an error inside the stream."""
        try:
            feed = self._start_generation(prompt, sampling)
        except ValueError as exc:  # the model's own refusal, e.g. characters outside its vocabulary
            return error_response(400, str(exc))
        try:
            first = await feed.get()
        except BaseException:  # the client left before the first piece
            feed.cancel()
            raise
        if isinstance(first, ValueError):
            feed.cancel()
            return error_response(400, str(first))
        final = {"seed": sampling["seed"], "model_version": self.generator_info.model_version}
        # BentoML streams only from an API that is itself a generator, which would fix one media
        # type for /generate; a Starlette StreamingResponse lets the same route answer JSON too.
        return StreamingResponse(
            sse_events(feed, first, final, logger),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

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
