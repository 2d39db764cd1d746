"""Config loading: presets, `extends`, unknown keys, the task list, and errors that name the file."""

from pathlib import Path

import pytest

from components.config import ConfigError, load_config, load_named_config, resolve_config_path

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
    with pytest.raises(ConfigError, match=r"bad\.yaml: serving\.max_textz: unknown key"):
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
    with pytest.raises(ConfigError, match="default"):
        resolve_config_path("nope", CONFIGS)


def test_extends_finds_a_preset_from_a_config_anywhere(tmp_path):
    """A user's YAML outside configs/ with `extends: default` resolves the project's preset."""
    own = tmp_path / "elsewhere" / "mine.yaml"
    own.parent.mkdir()
    own.write_text("extends: default\nname: mine\nserving: {max_texts: 7}\n")
    config = load_named_config(own, CONFIGS)
    assert (config.name, config.serving.max_texts) == ("mine", 7)
    assert config.classification.registered_model == load_config(CONFIGS / "default.yaml").classification.registered_model


def test_extends_of_an_unknown_preset_names_the_file_and_the_presets(tmp_path):
    own = tmp_path / "mine.yaml"
    own.write_text("extends: defualt\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml: `extends: defualt`.*'default'"):
        load_named_config(own, CONFIGS)


def test_a_missing_yaml_path_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no config file"):
        resolve_config_path(tmp_path / "absent.yaml", CONFIGS)


def test_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(path)


def test_named_tasks_name_each_configured_task_in_order():
    from components.config import PipelineConfig

    smoke = load_named_config("smoke", CONFIGS)
    assert [name for name, _ in smoke.named_tasks()] == ["classification", "generation"]
    assert [spec for _, spec in smoke.named_tasks()] == smoke.tasks()
    only_generation = PipelineConfig.model_validate(smoke.model_dump() | {"classification": None})
    assert only_generation.named_tasks() == [("generation", smoke.generation)]
