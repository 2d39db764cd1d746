"""Fixtures of the service tests.

One session BentoML home (a temp folder, never ~/bentoml) holds a tiny TF-IDF classifier
imported with ``flows.bento.import_bundle``, a generator (the real LM bundle when
``components/models/lm_predictor.py`` exists, a fake GeneratorPredictor otherwise, stored under
its own name so the built Bento never packs it), and the Bento that ``flows.bento.build_bento``
builds from a temp copy of the project files, planted with a fake secret (``SECRET``) in
files a Bento must never carry. ``served_bento`` runs the BUILT Bento with
``bentoml serve <tag> --port <free port>`` (no ``--host``: the Bento's own default, the loopback)
and stops it at the end.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import types
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from flows.prefect_server import free_port

REPO = Path(__file__).resolve().parents[2]
SERVE_READY_TIMEOUT_S = 120
LM_PREDICTOR = REPO / "components" / "models" / "lm_predictor.py"
FAKE_GENERATOR_MODEL = "maas-test-fake-generator"
FAKES_MODULE = "maas_service_test_fakes"

TOPICS = {
    "sport": "match goal team league coach player season win cup football score stadium",
    "tech": "software chip computer internet phone data network code startup device cloud app",
    "food": "recipe chef restaurant dinner bread cheese taste kitchen menu soup flavour meal",
}


def make_texts(n_per_label: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Short synthetic texts whose words give away their label (plus shared filler words)."""
    rng = random.Random(seed)
    filler = "the a of and in on with for this that was is it".split()
    texts, labels = [], []
    for label, vocabulary in sorted(TOPICS.items()):
        words = vocabulary.split()
        for _ in range(n_per_label):
            chosen = rng.sample(words, 4) + rng.sample(filler, 4)
            rng.shuffle(chosen)
            texts.append(" ".join(chosen))
            labels.append(label)
    return texts, labels


# -- a fake generator (used only where no real LM bundle can be trained) -------------------------
def _fake_generator_class():
    from components.predictor import GeneratorPredictor

    class FakeGenerator(GeneratorPredictor):
        """Deterministic given a seed; refuses prompts with '\\x00' the way a char LM refuses unknown chars."""

        def generate(self, prompt, max_new_tokens=100, temperature=1.0, top_k=0, top_p=1.0, seed=None, stop=()):
            if "\x00" in prompt:
                raise ValueError("prompt has characters outside the vocabulary: '\\x00'")
            rng = random.Random(seed)
            return "".join(rng.choice(self.config["alphabet"]) for _ in range(max_new_tokens))

        def _save_files(self, folder: Path) -> None:
            pass

        @classmethod
        def _load(cls, folder: Path, manifest: dict[str, Any]):
            return cls(manifest["kind"], manifest["config"], manifest.get("metadata"))

    return FakeGenerator


FakeGenerator = _fake_generator_class()


# -- the BentoML home --------------------------------------------------------------------------
@pytest.fixture(scope="session")
def bentoml_home(tmp_path_factory) -> Iterator[Path]:
    """A temp BENTOML_HOME for this process (its stores switched) and for the child processes."""
    import compat

    env = pytest.MonkeyPatch()
    env.setenv("BENTOML_DO_NOT_TRACK", "True")
    env.delenv("MAAS_API_TOKEN", raising=False)
    env.delenv("MAAS_BENCHMARK_ENDPOINTS", raising=False)
    # The services of these tests (in this process and served) log their predictions here, not in the repo.
    env.setenv("MAAS_INFERENCE_LOG", str(tmp_path_factory.mktemp("inference-log")))
    env.delenv("MAAS_LOG_TEXTS", raising=False)
    with compat.use_bentoml_home(tmp_path_factory.mktemp("bentoml-home")) as home:
        yield home
    env.undo()


# -- bundles and models ------------------------------------------------------------------------
@pytest.fixture(scope="session")
def classifier_bundle(tmp_path_factory) -> Path:
    from components.config import ModelSpec
    from components.data.dataset import ClassificationData
    from components.models.tfidf import train

    train_texts, train_labels = make_texts(20, seed=1)
    val_texts, val_labels = make_texts(5, seed=2)
    data = ClassificationData(
        train_texts, train_labels, val_texts, val_labels, val_texts, val_labels, labels=sorted(TOPICS)
    )
    spec = ModelSpec(name="tiny-tfidf", kind="tfidf_logreg", params={"char_ngrams": None, "min_df": 1})
    predictor = train(spec, data, tmp_path_factory.mktemp("work"), lambda metrics, step: None)
    return predictor.save(tmp_path_factory.mktemp("classifier-bundle"))


@pytest.fixture(scope="session")
def classifier_tag(bentoml_home, classifier_bundle) -> str:
    from flows import bento

    labels = {"model_name": "maas-bbc", "model_version": "7", "data_version": "md5:abc123.dir"}
    serving = {"max_texts": 8, "max_chars": 500, "max_new_tokens": 32, "max_prompt_chars": 200}
    return bento.import_bundle(
        classifier_bundle, name=bento.CLASSIFIER_MODEL, labels=labels, metadata={"serving": serving}
    )


def _real_generator_bundle(folder: Path) -> Path | None:
    """A tiny trained LM bundle from the real trainer, or None when it is not written yet."""
    if not LM_PREDICTOR.exists():
        return None
    from components.config import ModelSpec, TrainingSpec
    from components.data.dataset import CorpusData
    from components.training.candidates import train_candidate

    text = " ".join(make_texts(30, seed=3)[0]) + "\n"
    spec = ModelSpec(
        name="tiny-gpt",
        kind="gpt",
        params={
            "block_size": 16,
            "n_layer": 1,
            "n_head": 2,
            "n_embd": 16,
            "sample_tokens": 4,
            "eval_max_chars": 200,
        },
        training=TrainingSpec(device="cpu", max_steps=3, batch_size=4, eval_batches=1),
    )
    try:
        predictor = train_candidate(spec, CorpusData(train_text=text, val_text=text[:500]), folder / "work")
    except (TypeError, ValueError) as exc:  # the LM's parameters changed: say so, use the fake
        warnings.warn(f"real LM bundle unavailable ({exc}); the generator tests use a fake", stacklevel=1)
        return None
    return predictor.save(folder / "bundle")


@dataclass(frozen=True)
class GeneratorModel:
    tag: str
    real: bool  # a real LM bundle (servable by the built Bento), not the in-process fake


@pytest.fixture(scope="session")
def generator_model(bentoml_home, tmp_path_factory) -> GeneratorModel:
    from flows import bento

    labels = {"model_name": "maas-shakespeare", "model_version": "3", "data_version": "md5:def456.dir"}
    folder = tmp_path_factory.mktemp("generator")
    bundle = _real_generator_bundle(folder)
    if bundle is not None:
        tag = bento.import_bundle(bundle, name=bento.GENERATOR_MODEL, labels=labels, metadata={})
        return GeneratorModel(tag, real=True)
    # The fake kind is registered in this process only (under a module name no other test uses);
    # it is stored under its own model name, so the built Bento never packs it.
    fakes = types.ModuleType(FAKES_MODULE)
    fakes.FakeGenerator = FakeGenerator
    sys.modules[FAKES_MODULE] = fakes
    from components.models.registry import KINDS, ModelKind

    fake = f"{FAKES_MODULE}:FakeGenerator"
    KINDS["fake_lm"] = ModelKind("fake_lm", "generation", trainer=fake, predictor=fake, needs_torch=False)
    bundle = FakeGenerator("fake_lm", {"alphabet": "abcdefgh "}).save(folder / "bundle")
    return GeneratorModel(
        bento.import_bundle(bundle, name=FAKE_GENERATOR_MODEL, labels=labels, metadata={}), real=False
    )


# -- the service in this process ---------------------------------------------------------------
def _import_service(module_name: str, args: dict[str, str], *, benchmark_endpoints: bool = False):
    """Import service.py afresh as `module_name` with these Bento arguments (and, when asked,
    the benchmark-only endpoints, which the service defines only under MAAS_BENCHMARK_ENDPOINTS=1)."""
    import compat

    env = pytest.MonkeyPatch()
    if benchmark_endpoints:
        env.setenv("MAAS_BENCHMARK_ENDPOINTS", "1")
    try:
        with compat.bento_arguments(args):
            spec = importlib.util.spec_from_file_location(module_name, REPO / "service.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
    finally:
        env.undo()
    return module


@pytest.fixture(scope="session")
def import_service(bentoml_home):
    """`import_service(module_name, args, benchmark_endpoints=False)`: service.py imported under its
    own name with these arguments."""
    return _import_service


@pytest.fixture(scope="session")
def sample_texts() -> list[str]:
    texts, _ = make_texts(4, seed=9)
    return texts + ["an unrelated sentence", "é ü 漢字 🙂", "x" * 500]


# -- the built Bento, served -------------------------------------------------------------------
PROJECT_FILES = ("service.py", "compat.py", "bentofile.yaml", "components", "configs")
# Planted in the copied project where user data and secrets live (a config with a signed URL,
# data, logs, an env file): the built Bento must carry none of it.
SECRET = "FAKE-SECRET-123"
SECRET_FILES = {
    "configs/user-data.yaml": f"dataset:\n  source: url\n  url: https://x.example/data.csv?sig={SECRET}\n",
    "configs/datasets/private.yaml": f"url: https://x.example/more.csv?sig={SECRET}\n",
    "data/raw.csv": f"text,label\n{SECRET},x\n",
    "logs/run.log": f"token={SECRET}\n",
    ".env": f"MAAS_API_TOKEN={SECRET}\n",
    # A MAAS_HOME inside the project (its default) holds logs and BentoML's own build folders.
    ".maas/logs/run.log": f"token={SECRET}\n",
}


def _copy_project(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            shutil.copy2(source, folder / name)
    return folder


@pytest.fixture(scope="session")
def copy_project():
    """`copy_project(folder)`: the files a Bento build needs, copied into `folder` (returned)."""
    return _copy_project


@pytest.fixture(scope="session")
def built_bento(bentoml_home, classifier_tag, generator_model, tmp_path_factory) -> str:
    """`build_bento` on a temp copy of the project files (the repo gets no build litter)."""
    from flows import bento

    project = _copy_project(tmp_path_factory.mktemp("project"))
    for name, text in SECRET_FILES.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)
    labels = {
        "classifier_model": "maas-bbc",
        "classifier_version": "7",
        "classifier_data_version": "md5:abc123.dir",
    }
    return bento.build_bento(project, labels=labels)


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def serve(
    target: str,
    home: Path,
    log: Path,
    env: dict[str, str] | None = None,
    host: str | None = "127.0.0.1",
    extra_args: Sequence[str] = (),
) -> Iterator[Server]:
    """`bentoml serve target [extra_args]` on <host>:<free port> (`host` None: no --host, the
    Bento's default); waits for /readyz; stops the process group."""
    port = free_port()
    command = [sys.executable, "-m", "bentoml", "serve", target, "--port", str(port), *extra_args]
    if host is not None:
        command += ["--host", host]
    child_env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True", **(env or {})}
    if host is None:
        child_env.pop("BENTOML_HOST", None)  # the Bento's own default, not the caller's shell
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command,
            cwd=log.parent,
            env=child_env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(f"http://127.0.0.1:{port}", process, log)
    try:
        wait_ready(server)
        yield server
    finally:
        stop(process)


def wait_ready(server: Server, timeout_s: float = SERVE_READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {server.process.returncode}:\n{server.output()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise TimeoutError(f"{server.url} not ready after {timeout_s} s:\n{server.output()}")


def stop(process: subprocess.Popen, timeout_s: float = 20) -> None:
    """SIGTERM the server's own process group (it was started in a new session), then SIGKILL."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout_s)


@pytest.fixture(scope="session")
def newer_classifier_tag(bentoml_home, built_bento, classifier_bundle) -> str:
    """A newer maas-classifier imported after the build: the built Bento must not serve it."""
    from flows import bento

    labels = {"model_name": "maas-bbc", "model_version": "8", "data_version": "md5:fff.dir"}
    return bento.import_bundle(classifier_bundle, name=bento.CLASSIFIER_MODEL, labels=labels, metadata={})


@pytest.fixture(scope="session")
def served_bento(bentoml_home, built_bento, newer_classifier_tag, tmp_path_factory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("serve") / "bentoml-serve.log"
    with serve(built_bento, bentoml_home, log, host=None) as server:
        yield server
