"""Fixtures for flow tests: a tiny labelled dataset in a throwaway project."""

from __future__ import annotations

import numpy as np
import pandas as pd

from components.config import DatasetSpec, SourceSpec
from components.data.fingerprint import dataset_version
from components.data.ingest import ingest_dataset
from flows.settings import Settings

TOPICS = {
    "sport": "match goal team player score league coach win cup",
    "tech": "software chip computer internet phone data network code",
    "politics": "election minister party vote parliament policy government law",
}


def topic_project(project, home, rows_per_class: int = 60) -> tuple[Settings, str]:
    """Ingest a three-topic CSV into `project`; returns the settings and the dataset version."""
    rng = np.random.default_rng(0)
    rows = []
    for label, words in TOPICS.items():
        vocabulary = words.split() + "the a of and to in on it".split()
        rows += [{"text": " ".join(rng.choice(vocabulary, size=14)), "label": label} for _ in range(rows_per_class)]
    pd.DataFrame(rows).to_csv(project / "topics.csv", index=False)
    dataset = DatasetSpec(name="topics", source=SourceSpec(kind="path", path="topics.csv"), test_fraction=0.2)
    settings = Settings(project_dir=project, home=home)
    ingest_dataset(dataset, settings.data_root, cache_dir=settings.download_cache, base_dir=project)
    return settings, dataset_version(settings.data_root / "topics")
