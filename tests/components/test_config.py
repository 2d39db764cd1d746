from pathlib import Path

import pytest
from pydantic import ValidationError

from components.config import load_config, resolve_config_path

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_presets_load():
    for name in ("default", "smoke"):
        config = load_config(resolve_config_path(name, CONFIGS))
        assert config.classification is not None
        assert config.classification.dataset in {d.name for d in config.datasets}


def test_smoke_shrinks_default_without_copying_it():
    default = load_config(CONFIGS / "default.yaml")
    smoke = load_config(CONFIGS / "smoke.yaml")
    assert smoke.datasets[0].max_rows is not None and default.datasets[0].max_rows is None
    # inherited, not repeated: the registered model name comes from default.yaml
    assert smoke.classification.registered_model == default.classification.registered_model


def test_unknown_key_is_an_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text((CONFIGS / "default.yaml").read_text() + "\nserving: {max_textz: 3}\n")
    with pytest.raises(ValidationError, match="max_textz"):
        load_config(path)


def test_disabled_candidate_is_dropped(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("extends: default\nclassification:\n  candidates:\n    tfidf-logreg: {enabled: false}\n"
                    "    other: {kind: tfidf_logreg}\n")
    (tmp_path / "default.yaml").write_text((CONFIGS / "default.yaml").read_text())
    config = load_config(path)
    names = [c.name for c in config.classification.candidates]
    assert "tfidf-logreg" not in names and names[-1] == "other"


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(FileNotFoundError, match="default"):
        resolve_config_path("nope", CONFIGS)
