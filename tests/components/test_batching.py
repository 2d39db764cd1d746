"""The batched decode loop (components/serving/batching.py) on tiny GPT, LSTM LM and Hugging Face models: same texts as `stream`, rows joining and leaving."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
import torch

from components.models.gpt import GPT, GPTConfig
from components.models.lm_predictor import LanguageModelPredictor
from components.models.lstm_lm import LSTMLanguageModel, LSTMLMConfig
from components.serving.batching import GenerationBatcher
from components.serving.streaming import END, PieceFeed
from components.text.char_tokenizer import CharTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ALPHABET = "abcdefghijklmnopqrstuvwxyz ,.\n"
# Prompts of different lengths (the GPT's window is 16: the long one slides at once, the others later).
REQUESTS = [
    ("the cat", {"max_new_tokens": 40, "temperature": 0.0, "seed": 1}),
    ("a", {"max_new_tokens": 30, "temperature": 1.0, "seed": 3}),
    ("hello there friend, how are", {"max_new_tokens": 25, "temperature": 0.8, "top_k": 5, "seed": 7}),
    ("no", {"max_new_tokens": 12, "temperature": 1.2, "top_p": 0.9, "seed": 11}),
]


class Sink:
    """Records what the loop sends; `cancel_after` pieces, it cancels (a client that leaves)."""

    def __init__(self, cancel_after: int | None = None):
        self.pieces: list[str] = []
        self.cancel_after = cancel_after
        self.cancelled = False
        self.opened = 0
        self.closes: list[BaseException | None] = []
        self.closed = threading.Event()

    def open(self) -> None:
        self.opened += 1

    def put(self, piece: str) -> None:
        self.pieces.append(piece)
        if self.cancel_after is not None and len(self.pieces) >= self.cancel_after:
            self.cancelled = True

    def close(self, error: BaseException | None = None) -> None:
        self.closes.append(error)
        self.closed.set()

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def wait(sinks: list[Sink], timeout: float = 60) -> None:
    for sink in sinks:
        assert sink.closed.wait(timeout), "the loop did not finish a request"


@pytest.fixture
def running() -> Iterator:
    """`running(predictor_or_decoder, max_rows)`: a started batcher, stopped after the test."""
    started: list[GenerationBatcher] = []

    def start(decoder, max_rows: int = 8) -> GenerationBatcher:
        started.append(GenerationBatcher(decoder, max_rows).start("test-generate"))
        return started[-1]

    yield start
    for batcher in started:
        batcher.stop(timeout=10)


def char_lm(kind: str) -> LanguageModelPredictor:
    tokenizer = CharTokenizer.from_text(ALPHABET)
    torch.manual_seed(0)
    if kind == "gpt":
        model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=32))
    else:
        model = LSTMLanguageModel(
            LSTMLMConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_embd=16, hidden_size=32)
        )
    return LanguageModelPredictor(kind, model, tokenizer, "char")


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    from components.models.pretrained_lm import GENERATION_DEFAULTS, PretrainedLMPredictor, load_pretrained
    from tests.tiny_causal_lm import bbc_text, build_tiny_causal_lm

    folder = build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"), bbc_text(10), context=64)
    tokenizer, model = load_pretrained(str(folder))
    return PretrainedLMPredictor(
        model, tokenizer, {"block_size": 32, "lora": None, "generation": GENERATION_DEFAULTS}
    )


@pytest.fixture(params=["gpt", "lstm_lm", "pretrained_lm"])
def predictor(request):
    if request.param == "pretrained_lm":
        return request.getfixturevalue("tiny_hf")
    return char_lm(request.param)


def hf_requests() -> list[tuple[str, dict]]:
    # The tiny model's context is 64 tokens: the long prompt leaves room for a few new ones only.
    prompts = ["The company said", "Shares", "Profits rose at the firm as the market for its goods grew", "A"]
    return [(p, kw) for p, (_, kw) in zip(prompts, REQUESTS, strict=True)]


def requests_for(predictor) -> list[tuple[str, dict]]:
    return hf_requests() if predictor.kind == "pretrained_lm" else REQUESTS


# -- the contract: a request alone gives what `stream` gives ------------------------------------------
def test_a_request_alone_gives_the_pieces_of_stream(predictor, running):
    batcher = running(predictor.batch_decoder())
    for prompt, sampling in requests_for(predictor):
        sink = Sink()
        batcher.submit(predictor.plan(prompt, **sampling), sink)
        wait([sink])
        assert sink.pieces == list(predictor.stream(prompt, **sampling)), (prompt, sampling)
        assert sink.closes == [None] and sink.opened == 1


def test_requests_together_give_their_texts_alone(predictor, running):
    """Greedy texts are the same alone and in a batch of other prompts; on these small models the
    seeded samples are too (batched arithmetic may differ in the last bits, not here)."""
    requests = requests_for(predictor)
    alone = [predictor.generate(prompt, **sampling) for prompt, sampling in requests]
    greedy_alone = predictor.generate(requests[1][0], max_new_tokens=20, temperature=0)
    batcher = running(predictor.batch_decoder())
    sinks = [Sink() for _ in range(len(requests) + 1)]
    for (prompt, sampling), sink in zip(requests, sinks, strict=False):
        batcher.submit(predictor.plan(prompt, **sampling), sink)
    batcher.submit(predictor.plan(requests[1][0], max_new_tokens=20, temperature=0), sinks[-1])
    wait(sinks)
    assert sinks[-1].text == greedy_alone
    assert [sink.text for sink in sinks[:-1]] == alone


def test_rows_admitted_mid_flight_finish_with_their_texts(predictor, running):
    requests = requests_for(predictor)
    first_prompt = requests[0][0]
    batcher = running(predictor.batch_decoder())
    first = Sink()
    batcher.submit(predictor.plan(first_prompt, max_new_tokens=30, temperature=0), first)
    while not first.pieces and not first.closed.is_set():  # the first row is running
        first.closed.wait(0.001)
    later = [Sink() for _ in requests[1:]]
    for (prompt, sampling), sink in zip(requests[1:], later, strict=True):
        batcher.submit(predictor.plan(prompt, **{**sampling, "temperature": 0}), sink)
    wait([first, *later])
    assert first.text == predictor.generate(first_prompt, max_new_tokens=30, temperature=0)
    for (prompt, sampling), sink in zip(requests[1:], later, strict=True):
        assert sink.text == predictor.generate(prompt, **{**sampling, "temperature": 0})


# -- per-row limits, cancellation, failures ----------------------------------------------------------
def test_each_row_keeps_its_max_new_tokens_and_stop_strings(running):
    predictor = char_lm("gpt")
    text = predictor.generate("the cat", max_new_tokens=30, temperature=0)
    stop = text[10:12]  # a string the greedy text produces
    requests = [
        ("the cat", {"max_new_tokens": 30, "temperature": 0, "stop": [stop]}),
        ("the cat", {"max_new_tokens": 3, "temperature": 0}),
        ("the cat", {"max_new_tokens": 30, "temperature": 0, "stop": [text[:2]]}),  # stops at once
        ("a", {"max_new_tokens": 1, "temperature": 1.0, "seed": 4}),
    ]
    batcher = running(predictor.batch_decoder())
    sinks = [Sink() for _ in requests]
    for (prompt, sampling), sink in zip(requests, sinks, strict=True):
        batcher.submit(predictor.plan(prompt, **sampling), sink)
    wait(sinks)
    assert sinks[0].text == text[: text.index(stop)] and stop not in sinks[0].text
    assert sinks[1].text == text[:3]
    assert sinks[2].pieces == [] and sinks[2].closes == [None]
    assert sinks[3].text == predictor.generate("a", max_new_tokens=1, temperature=1.0, seed=4)
    assert all(len(sink.closes) == 1 for sink in sinks)


def test_a_cancelled_row_leaves_and_the_others_go_on(running):
    predictor = char_lm("lstm_lm")
    batcher = running(predictor.batch_decoder())
    leaving, staying = Sink(cancel_after=3), Sink()
    batcher.submit(predictor.plan("the cat", max_new_tokens=200, temperature=0), leaving)
    batcher.submit(predictor.plan("a", max_new_tokens=60, temperature=0.7, seed=2), staying)
    wait([leaving, staying])
    assert len(leaving.pieces) == 3  # dropped before the next step
    assert leaving.closes == [None]
    assert staying.text == predictor.generate("a", max_new_tokens=60, temperature=0.7, seed=2)


def test_a_request_cancelled_while_waiting_never_runs(running):
    predictor = char_lm("gpt")
    batcher = running(predictor.batch_decoder())
    gone = Sink()
    gone.cancelled = True
    batcher.submit(predictor.plan("the cat", max_new_tokens=10), gone)
    wait([gone])
    assert gone.opened == 0 and gone.pieces == [] and gone.closes == [None]


class FailingSteps:
    """A decoder whose `fail` next steps raise; it counts the rows of each step."""

    def __init__(self, decoder, fail: int = 0):
        self.decoder = decoder
        self.fail = fail
        self.batch_sizes: list[int] = []

    def prefill(self, prompt_ids):
        return self.decoder.prefill(prompt_ids)

    def step(self, rows, last_ids):
        self.batch_sizes.append(len(rows))
        if self.fail:
            self.fail -= 1
            raise RuntimeError("out of memory (simulated)")
        return self.decoder.step(rows, last_ids)


def test_a_failed_step_fails_its_rows_and_the_loop_goes_on(running):
    predictor = char_lm("gpt")
    decoder = FailingSteps(predictor.batch_decoder(), fail=1)
    batcher = running(decoder)
    failed = [Sink(), Sink()]
    for sink in failed:
        batcher.submit(predictor.plan("the cat", max_new_tokens=10, temperature=0), sink)
    wait(failed)
    assert all(isinstance(sink.closes[0], RuntimeError) and len(sink.closes) == 1 for sink in failed)
    after = Sink()
    batcher.submit(predictor.plan("the cat", max_new_tokens=10, temperature=0), after)
    wait([after])
    assert after.closes == [None]
    assert after.text == predictor.generate("the cat", max_new_tokens=10, temperature=0)


def test_a_failed_prefill_fails_that_request_only(running):
    predictor = char_lm("lstm_lm")
    batcher = running(predictor.batch_decoder())
    plan = predictor.plan("the cat", max_new_tokens=5)
    plan.prompt_ids = [10_000]  # an id outside the embedding
    bad, good = Sink(), Sink()
    batcher.submit(plan, bad)
    batcher.submit(predictor.plan("a", max_new_tokens=5, temperature=0), good)
    wait([bad, good])
    assert isinstance(bad.closes[0], IndexError)
    assert good.text == predictor.generate("a", max_new_tokens=5, temperature=0)


def test_no_more_rows_than_max_rows_decode_together(running):
    predictor = char_lm("gpt")
    decoder = FailingSteps(predictor.batch_decoder())
    batcher = running(decoder, max_rows=2)
    sinks = [Sink() for _ in range(5)]
    for i, sink in enumerate(sinks):
        batcher.submit(predictor.plan("the cat"[: i + 1], max_new_tokens=8, temperature=0), sink)
    wait(sinks)
    assert max(decoder.batch_sizes) == 2
    assert [sink.text for sink in sinks] == [
        predictor.generate("the cat"[: i + 1], max_new_tokens=8, temperature=0) for i in range(5)
    ]


# -- with the service's feed: the gauge and the event loop ---------------------------------------------
class Count:
    def __init__(self) -> None:
        self.value = 0
        self.most = 0

    def inc(self) -> None:
        self.value += 1
        self.most = max(self.most, self.value)

    def dec(self) -> None:
        self.value -= 1


def test_feeds_count_running_generations_and_a_gone_client_stops_its_row(running):
    predictor = char_lm("gpt")
    batcher = running(predictor.batch_decoder())
    gauge = Count()

    async def clients() -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        kept, left = PieceFeed(loop, gauge), PieceFeed(loop, gauge)
        batcher.submit(predictor.plan("the cat", max_new_tokens=5000, temperature=0), left)
        batcher.submit(predictor.plan("a", max_new_tokens=30, temperature=0), kept)
        await left.get()
        left.cancel()  # what sse_events does when the client disconnects
        pieces = []
        while (item := await kept.get()) is not END:
            pieces.append(item)
        received = 0
        while (await left.get()) is not END:
            received += 1
        return "".join(pieces), received

    text, received = asyncio.run(clients())
    assert text == predictor.generate("a", max_new_tokens=30, temperature=0)
    assert received < 100  # stopped within a step or two of the cancel, not after 5,000 tokens
    assert gauge.value == 0 and gauge.most == 2


def test_a_batched_step_gives_each_row_the_logits_it_has_alone(predictor):
    """Left padding, masks and per-row positions: rows of different lengths stepped together get
    the logits each gets stepped alone (to float tolerance), over steps where rows join and leave."""
    prompts = [ids for ids in (predictor.plan(p).prompt_ids for p, _ in requests_for(predictor))]
    batched, alone = predictor.batch_decoder(), predictor.batch_decoder()
    rows = [batched.prefill(ids)[0] for ids in prompts[:3]]
    singles = [alone.prefill(ids)[0] for ids in prompts[:3]]
    for step in range(6):
        if step == 2:  # one row joins, another leaves
            rows, singles = (
                rows[1:] + [batched.prefill(prompts[3])[0]],
                singles[1:] + [alone.prefill(prompts[3])[0]],
            )
        tokens = [(7 * step + 3 * i) % 20 + 1 for i in range(len(rows))]
        together = batched.step(rows, tokens)
        for i, single in enumerate(singles):
            one = alone.step([single], [tokens[i]])
            torch.testing.assert_close(together[i : i + 1], one, atol=1e-5, rtol=1e-4)
