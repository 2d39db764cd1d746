"""The model-kind registry: the one list every other place asks; its entries resolve, its flags are true."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch.nn as nn
from pydantic import ValidationError

from components.config import ModelSpec
from components.models.registry import KINDS, model_kind
from components.predictor import BundleError, ClassifierPredictor, GeneratorPredictor, load_predictor

ROOT = Path(__file__).resolve().parents[2]


def test_an_unknown_kind_is_an_error_that_lists_the_known_kinds():
    with pytest.raises(ValidationError, match="unknown model kind 'cnn'; the known kinds are tfidf_logreg, lstm") as info:
        ModelSpec(name="x", kind="cnn")
    assert all(name in str(info.value) for name in KINDS)
    with pytest.raises(ValueError, match="unknown model kind 'cnn'"):
        model_kind("cnn")


def test_every_kind_is_a_valid_model_spec_kind():
    for name in KINDS:
        assert ModelSpec(name="x", kind=name).kind == name


@pytest.mark.parametrize("name", list(KINDS))
def test_every_registered_kind_resolves_its_trainer_predictor_and_network(name):
    kind = KINDS[name]
    assert kind.name == name and kind.task in ("classification", "generation")
    assert callable(kind.trainer_function())
    predictor = kind.predictor_class()
    assert issubclass(predictor, GeneratorPredictor if kind.is_language_model else ClassifierPredictor)
    config, network = kind.config_class(), kind.network_class()
    assert (config is None) == (network is None)  # a network is built as network(config)
    if config is not None:
        assert dataclasses.is_dataclass(config) and issubclass(network, nn.Module)
        assert kind.needs_torch


def test_load_predictor_refuses_an_unknown_kind(tmp_path):
    (tmp_path / "bundle.json").write_text(json.dumps({"format": 1, "kind": "cnn"}))
    with pytest.raises(BundleError, match="unknown model kind 'cnn'; the known kinds are tfidf_logreg"):
        load_predictor(tmp_path)


def test_kinds_without_torch_train_and_load_without_importing_it():
    """The config, the registry, the entry points and a torch-free kind's code import no torch."""
    probe = (
        "import sys\n"
        "from components.config import load_config\n"
        "import components.predictor, components.training.candidates\n"
        "from components.models.registry import KINDS\n"
        "free = [k for k in KINDS.values() if not k.needs_torch]\n"
        "for kind in free:\n"
        "    kind.trainer_function(), kind.predictor_class()\n"
        "print(','.join(sorted(k.name for k in free)), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    names, torch_imported = out.stdout.split()
    assert {"tfidf_logreg", "hashing_sgd"} <= set(names.split(",")) and torch_imported == "False"


@pytest.mark.parametrize("name", [name for name, kind in KINDS.items() if kind.needs_torch])
def test_kinds_that_say_they_need_torch_do(name):
    module = sys.modules[KINDS[name].predictor_class().__module__]
    assert any(getattr(value, "__name__", "").startswith("torch") for value in vars(module).values())
