"""`maas pipeline --data`: the user's file and columns checked, and the config it turns into."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from components.config import ConfigError, load_config, load_named_config
from components.data.own_data import check_columns, dataset_name, own_data_config, peek_columns

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture
def table() -> pd.DataFrame:
    return pd.DataFrame({"title": ["a", "b"], "body": ["x", "y"], "topic": ["p", "q"]})


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_columns_come_from_the_header_of_each_format(tmp_path, table, suffix):
    path = tmp_path / f"data{suffix}"
    if suffix == ".csv":
        table.to_csv(path, index=False)
    elif suffix == ".jsonl":
        path.write_text("\n" + "\n".join(json.dumps(r) for r in table.to_dict("records")))
    else:
        table.to_parquet(path)
    assert peek_columns(path) == ["title", "body", "topic"]


def test_a_missing_column_is_named_with_the_columns_present(tmp_path, table):
    path = tmp_path / "data.csv"
    table.to_csv(path, index=False)
    with pytest.raises(ConfigError, match=r"no column 'label'; the file has \['title', 'body', 'topic'\]"):
        check_columns(path, ["title"], "label")


def test_empty_missing_and_unknown_files_are_config_errors(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("\n\n")
    with pytest.raises(ConfigError, match="empty"):
        peek_columns(empty)
    with pytest.raises(FileNotFoundError, match="no such file"):
        peek_columns(tmp_path / "absent.csv")
    odd = tmp_path / "data.xlsx"
    odd.write_text("x")
    with pytest.raises(ConfigError, match=".csv, .jsonl or .parquet"):
        peek_columns(odd)


def test_names_default_to_the_file_stem_and_must_be_slugs():
    assert dataset_name(None, Path("My Reviews (2024).csv")) == "my-reviews-2024"
    assert dataset_name("reviews_v2", Path("x.csv")) == "reviews_v2"
    with pytest.raises(ConfigError, match="lower-case"):
        dataset_name("Reviews", Path("x.csv"))


def test_the_config_extends_the_preset_with_one_dataset_and_no_generation(tmp_path, table):
    project = tmp_path / "project"
    project.mkdir()
    data, holdout = project / "reviews.csv", tmp_path / "holdout.csv"
    table.to_csv(data, index=False)
    table.to_csv(holdout, index=False)
    document = own_data_config(name="reviews", data=data, text_columns=["title", "body"], label_column="topic",
                               project_dir=project, test_file=holdout, preset="smoke")
    source = document["datasets"][0]["source"]
    assert document["extends"] == "smoke"
    assert source["path"] == "reviews.csv"  # inside the project: relative, so a clone finds it
    assert source["split_files"] == {"test": str(holdout.resolve())}
    assert source["text_columns"] == ["title", "body"]

    written = tmp_path / "reviews.yaml"
    written.write_text(yaml.safe_dump(document))
    config = load_named_config(written, CONFIGS)
    assert config.generation is None
    assert [d.name for d in config.datasets] == ["reviews"]
    assert config.classification.registered_model == "reviews-classifier"
    smoke = load_config(CONFIGS / "smoke.yaml").classification.candidates
    assert config.classification.candidates == smoke
