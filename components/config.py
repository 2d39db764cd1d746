"""Typed specs for datasets, models, training, promotion and serving.

This module is the only home of defaults: YAML presets in ``configs/`` override
them, code reads them from these objects. Nothing here touches the disk at import.
"""

from __future__ import annotations

import codecs
import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from components.models.registry import KINDS, unknown_kind_message

Task = Literal["classification", "generation"]


class _Spec(BaseModel):
    # Unknown keys are errors: a misspelt option must not be silently ignored.
    model_config = ConfigDict(extra="forbid")


class SourceSpec(_Spec):
    """Where a dataset's raw text comes from."""

    kind: Literal["package", "path", "url", "hf", "dataset"]
    # kind=package: a folder inside an installed Python package (found without importing it).
    package: str | None = None
    subdir: str | None = None
    # kind=path: a CSV/JSONL/Parquet/text file, or a folder of one sub-folder of .txt files per class.
    path: str | None = None
    # kind=url: downloaded once into MAAS_HOME's cache; sha256 is checked when given.
    url: str | None = None
    sha256: str | None = None
    # kind=hf: a Hugging Face dataset name (or a local dataset folder), needs the `hf` extra.
    hf_name: str | None = None
    hf_config: str | None = None
    hf_split: str = "train"
    # kind=dataset: the text of another (already ingested) dataset, e.g. a corpus for the LMs.
    dataset: str | None = None
    format: Literal["auto", "csv", "jsonl", "parquet", "folder", "text"] = "auto"
    text_columns: list[str] = Field(default_factory=lambda: ["text"])
    label_column: str | None = "label"
    # Optional explicit split files, e.g. {"test": "holdout.csv"}; the rest is split from the source.
    split_files: dict[str, str] = Field(default_factory=dict)
    # Text files (CSV, JSONL, text) are read as UTF-8, checked line by line. A file in another
    # encoding is named here (e.g. "cp1252") and then decoded as a whole, strictly.
    encoding: str | None = None
    # A line that is not valid UTF-8 is an error ("reject"), or only that line is repaired:
    # "replace" (U+FFFD for each bad byte) or "cp1252"; repaired lines go to the manifest.
    encoding_errors: Literal["reject", "replace", "cp1252"] = "reject"

    @model_validator(mode="after")
    def _check_required(self) -> SourceSpec:
        needed = {"package": "package", "path": "path", "url": "url", "hf": "hf_name", "dataset": "dataset"}
        field = needed[self.kind]
        if not getattr(self, field):
            raise ValueError(f"source kind '{self.kind}' needs '{field}'")
        if self.encoding is not None:
            try:
                codecs.lookup(self.encoding)
            except LookupError:
                raise ValueError(f"encoding '{self.encoding}' is not an encoding Python knows") from None
        return self


class DatasetSpec(_Spec):
    """One dataset: a folder ``data/<name>/`` versioned by DVC."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    task: Task = "classification"
    source: SourceSpec
    seed: int = 42
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.1, ge=0, lt=0.5)
    min_chars: int = 1
    # Keep at most this many rows after cleaning (a stratified sample); None keeps all.
    max_rows: int | None = None
    # Rows cleaning drops (empty, too short, duplicate): "error" fails the ingest listing them,
    # "warn" drops them with a warning and lists them in the manifest.
    row_issues: Literal["error", "warn"] = "error"
    # Streaming ingestion (bounded memory, Parquet shards, hash split; classification only):
    # "auto" streams a source larger than stream_above_bytes, so small ones keep the in-memory
    # path and its exact output; true/false force it.
    streaming: bool | Literal["auto"] = "auto"
    stream_above_bytes: int = Field(64_000_000, ge=0)
    chunk_rows: int = Field(10_000, ge=1)
    shard_rows: int = Field(200_000, ge=1)


class TrainingSpec(_Spec):
    """Settings of the shared fit loop (torch models); the baseline reads only seed."""

    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    seed: int = 42
    epochs: int = 1
    max_steps: int | None = None
    # At least this many optimiser steps when `epochs` would give fewer (a small dataset gets more
    # epochs); `max_steps`, when set, is the count, and early stopping may still end sooner.
    min_steps: int | None = Field(None, ge=1)
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr: float | None = None
    weight_decay: float = 0.01
    beta2: float = 0.999
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    eval_every: int | None = None
    eval_batches: int | None = None
    early_stopping_patience: int | None = None
    checkpoint_every: int | None = None
    compile: bool = False
    max_length: int = 256
    num_threads: int | None = None
    # "balanced" weights each class's loss by n_rows / (n_classes * its rows): rare classes count more.
    class_weight: Literal["none", "balanced"] = "none"


class ParamRange(_Spec):
    """A numeric search range; `log` samples on a log scale."""

    low: float
    high: float
    log: bool = False
    type: Literal["float", "int"] = "float"


SearchSpace = dict[str, list[Any] | ParamRange]

# The search space a candidate gets with `search: default`, per model kind: keys are `params`
# names or `training.<field>`. Only settings that moved the validation score on small text sets.
DEFAULT_SEARCH_SPACES: dict[str, dict[str, Any]] = {
    "tfidf_logreg": {
        "C": {"low": 0.5, "high": 100.0, "log": True},
        "char_ngrams": [None, [2, 5], [1, 4]],
        "min_df": [1, 2],
    },
    "lstm": {"training.lr": {"low": 1.0e-3, "high": 1.0e-2, "log": True}, "dropout": [0.3, 0.5]},
    "transformer": {"training.lr": {"low": 3.0e-4, "high": 3.0e-3, "log": True}, "dropout": [0.1, 0.3]},
    "pretrained": {"training.lr": {"low": 2.0e-5, "high": 1.5e-4, "log": True}},
}


class SearchSpec(_Spec):
    """An in-pipeline search of one candidate's settings (Optuna TPE) within a budget.

    `space: default` takes DEFAULT_SEARCH_SPACES of the candidate's kind. The budget is
    `trials` and/or `seconds` (whichever ends first); `parallel` trials are asked at a time.
    """

    space: SearchSpace | Literal["default"] = "default"
    trials: int | None = Field(None, ge=1)
    seconds: float | None = Field(None, gt=0)
    parallel: int = Field(2, ge=1)
    pruning: bool = True  # stop a torch trial whose per-evaluation score falls behind (median rule)
    seed: int = 0

    @model_validator(mode="after")
    def _check_budget(self) -> SearchSpec:
        if self.trials is None and self.seconds is None:
            self.trials = 8
        return self

    def resolved_space(self, kind: str) -> SearchSpace:
        """The space to search for a candidate of `kind`."""
        if self.space != "default":
            return self.space
        if kind not in DEFAULT_SEARCH_SPACES:
            raise ValueError(f"no default search space for kind {kind!r} (have {sorted(DEFAULT_SEARCH_SPACES)}): "
                             "give `search: {space: {...}}`")
        return {name: ParamRange.model_validate(v) if isinstance(v, dict) else list(v)
                for name, v in DEFAULT_SEARCH_SPACES[kind].items()}


class ModelSpec(_Spec):
    """One candidate: a model kind, its hyperparameters and its training settings."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    kind: str  # a name in components.models.registry.KINDS, the one list of model kinds
    params: dict[str, Any] = Field(default_factory=dict)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    timeout_s: float | None = None
    # `search: default` (the kind's default space, default budget) or a SearchSpec: the pipeline
    # searches these settings and registers the best under this candidate's name.
    search: SearchSpec | None = None

    @field_validator("kind")
    @classmethod
    def _check_kind(cls, kind: str) -> str:
        if kind not in KINDS:
            raise ValueError(unknown_kind_message(kind))
        return kind

    @field_validator("search", mode="before")
    @classmethod
    def _search_shorthand(cls, value: Any) -> Any:
        if value == "default":
            return {"space": "default"}
        if isinstance(value, str):
            raise ValueError(f"search must be `default` or a mapping, not {value!r}")
        return value

    @model_validator(mode="after")
    def _check_search(self) -> ModelSpec:
        if self.search is not None:
            self.search.resolved_space(self.kind)
        return self


class BehaviouralChecks(_Spec):
    """Checks a challenger must pass before it may replace the champion (classification)."""

    # Perturbations whose label must not change: "case" (upper-cased text), "whitespace" (extra spaces).
    invariance: list[Literal["case", "whitespace"]] = Field(default_factory=lambda: ["case", "whitespace"])
    invariance_sample: int = 100  # validation texts perturbed
    min_invariance: float = 0.95  # share of them whose predicted label must stay the same
    # label -> texts that must get that label.
    must_pass: dict[str, list[str]] = Field(default_factory=dict)


class SweepSpec(_Spec):
    """A hyperparameter search over one candidate: keys are `params` names or `training.<field>`."""

    method: Literal["grid", "random", "optuna"] = "random"
    trials: int = Field(8, ge=1)
    parallel: int = Field(2, ge=1)
    seed: int = 0
    space: SearchSpace


class SelectionSpec(_Spec):
    """How candidates are scored for choosing: the validation split, or k-fold CV on small data."""

    # Below this many training rows, stratified k-fold CV on train+val replaces the validation
    # split (one small split is a noisy judge); 0 turns CV off.
    cv_below_rows: int = Field(5000, ge=0)
    folds: int = Field(5, ge=2)
    seed: int = 42


class EnsembleSpec(_Spec):
    """The ensemble candidate: soft voting over the task's trained classifiers (flows/ensemble.py)."""

    enabled: bool = True
    min_members: int = Field(2, ge=2)  # fewer trained classification candidates: no ensemble


class SizeRule(_Spec):
    """Which candidates a dataset's size admits (components/models/size_rule.py applies it)."""

    # Above this many training rows the in-memory kinds are skipped, at or below it the
    # streaming kinds; null turns the rule off (every candidate trains).
    streaming_above_rows: int | None = Field(200_000, ge=0)
    in_memory_kinds: list[str] = Field(default_factory=lambda: ["tfidf_logreg"])
    streaming_kinds: list[str] = Field(default_factory=lambda: ["hashing_sgd"])
    # kind -> the fewest training rows it trains on. Networks trained from scratch learn little
    # from a few hundred texts, and cross-validation there costs six trainings each.
    min_rows: dict[str, int] = Field(default_factory=lambda: {"lstm": 1000, "transformer": 1000})


class TaskSpec(_Spec):
    """The candidates trained on one dataset and the registered model they compete for."""

    dataset: str
    registered_model: str
    candidates: list[ModelSpec]
    # The validation metric that picks the winner; "higher" or "lower" is better.
    metric: str = "macro_f1"
    greater_is_better: bool = True
    # A challenger must beat the champion by more than this on `metric`.
    margin: float = 0.0
    checks: BehaviouralChecks = Field(default_factory=BehaviouralChecks)
    # candidate name -> its search space, for `maas sweep`.
    sweeps: dict[str, SweepSpec] = Field(default_factory=dict)
    ensemble: EnsembleSpec = Field(default_factory=EnsembleSpec)
    selection: SelectionSpec = Field(default_factory=SelectionSpec)
    size_rule: SizeRule = Field(default_factory=SizeRule)


class ServingSpec(_Spec):
    """The service's limits; each must be positive (a zero limit would refuse every request)."""

    max_batch_size: int = Field(64, gt=0)
    # The longest a text may wait for its batch before BentoML sheds it with a 503: keep it well
    # above one full batch's time (MiniLM on 2 CPU cores: about 1 s for 32 texts).
    max_latency_ms: int = Field(10_000, gt=0)
    max_texts: int = Field(64, gt=0)
    max_chars: int = Field(20_000, gt=0)
    max_new_tokens: int = Field(256, gt=0)
    max_prompt_chars: int = Field(2_000, gt=0)
    # /explain runs one model call per word of each text (occlusion), so it takes fewer texts.
    max_explain_texts: int = Field(8, gt=0)
    max_explain_top_k: int = Field(50, gt=0)
    # Generation requests decoded together by the service's batched loop: bounds its memory
    # (one KV cache or recurrent state per row) and each step's time.
    max_generation_batch: int = Field(8, gt=0)


class MonitoringSpec(_Spec):
    """`maas monitor`: how served traffic is compared with the champion's validation data."""

    window: int = Field(200, ge=2)  # newest logged records of the champion compared per run
    # One family-wise level for all the signals together (Holm): in-distribution traffic alarms
    # in about this share of runs.
    alpha: float = Field(0.01, gt=0, lt=1)
    # The embedding test's permutations: its p-value cannot fall below 1 / (permutations + 1),
    # so this must stay well above (number of signals) / alpha for it to alarm on its own.
    permutations: int = Field(2000, ge=100)
    reference_size: int = Field(1000, gt=0)  # validation texts the reference uses at most
    min_texts: int = Field(20, ge=2)  # logged texts needed for the embedding test
    embedding_max_tokens: int = Field(64, gt=0)  # MiniLM truncation: the cost grows with it
    seed: int = 0


class PipelineConfig(_Spec):
    name: str = "default"
    datasets: list[DatasetSpec]
    classification: TaskSpec | None = None
    generation: TaskSpec | None = None
    serving: ServingSpec = Field(default_factory=ServingSpec)
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec)

    @model_validator(mode="after")
    def _check_datasets(self) -> PipelineConfig:
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"dataset names must be unique: {names}")
        for task in self.tasks():
            if task.dataset not in names:
                raise ValueError(f"task dataset '{task.dataset}' is not among datasets {names}")
        return self

    def tasks(self) -> list[TaskSpec]:
        return [task for _, task in self.named_tasks()]

    def named_tasks(self) -> list[tuple[Task, TaskSpec]]:
        """(task name, spec) of each configured task: classification first, then generation."""
        return [(name, task) for name, task in (("classification", self.classification),
                                               ("generation", self.generation)) if task is not None]

    def dataset(self, name: str) -> DatasetSpec:
        for d in self.datasets:
            if d.name == name:
                return d
        raise KeyError(f"no dataset named '{name}' (have {[d.name for d in self.datasets]})")


def _deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class ConfigError(ValueError):
    """A config that cannot be used, said in terms of its file, key and rule."""


def _read_yaml(path: Path, presets_dir: Path | None, seen: tuple[Path, ...] = ()) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}".replace("\n", " ")) from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    parent = data.pop("extends", None)
    if parent:
        # A config can shrink or grow a preset instead of copying it (see configs/smoke.yaml).
        parent_path = _extended_path(path, str(parent), presets_dir)
        if parent_path in seen:
            raise ConfigError(f"{path}: `extends: {parent}` makes a cycle")
        data = _deep_merge(_read_yaml(parent_path, presets_dir, (*seen, path.resolve())), data)
    return data


def _extended_path(path: Path, parent: str, presets_dir: Path | None) -> Path:
    """`extends:` names a YAML path (relative to the config) or a preset: beside it, else in configs/."""
    if parent.endswith((".yaml", ".yml")):
        return (path.parent / parent).resolve()
    for folder in (path.parent, presets_dir):
        if folder is not None and (Path(folder) / f"{parent}.yaml").is_file():
            return (Path(folder) / f"{parent}.yaml").resolve()
    available = sorted(p.stem for p in Path(presets_dir).glob("*.yaml")) if presets_dir else []
    raise ConfigError(f"{path}: `extends: {parent}` is neither a YAML file nor a preset (presets: {available})")


def resolve_config_path(name_or_path: str | Path, configs_dir: Path) -> Path:
    """A preset name ("default", "smoke", "gpu") or a path to a YAML file."""
    candidate = Path(name_or_path)
    if candidate.suffix in {".yaml", ".yml"}:
        if candidate.is_file():
            return candidate
        raise ConfigError(f"no config file {candidate}")
    preset = configs_dir / f"{name_or_path}.yaml"
    if preset.exists():
        return preset
    available = sorted(p.stem for p in configs_dir.glob("*.yaml"))
    raise ConfigError(f"no config '{name_or_path}': give a YAML path or one of {available}")


def load_config(path: str | Path, overrides: dict | None = None, presets_dir: Path | None = None) -> PipelineConfig:
    """Read a pipeline config; `candidates` of a task may be given as a mapping by name for merging.

    `presets_dir` (the project's configs/) is where `extends: NAME` is looked up when no
    NAME.yaml lies beside the config itself.
    """
    path = Path(path)
    data = _read_yaml(path, presets_dir)
    if overrides:
        data = _deep_merge(data, overrides)
    for task in ("classification", "generation"):
        section = data.get(task)
        if section and isinstance(section.get("candidates"), dict):
            # Mappings merge cleanly across presets; `enabled: false` drops an inherited candidate.
            section["candidates"] = [
                {"name": name, **{k: v for k, v in (body or {}).items() if k != "enabled"}}
                for name, body in section["candidates"].items()
                if (body or {}).get("enabled", True)
            ]
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"{path}: " + "; ".join(_describe_problem(p) for p in error.errors())) from error


def load_named_config(name_or_path: str | Path, configs_dir: Path) -> PipelineConfig:
    """A preset name or a YAML path, loaded with `extends:` resolved against `configs_dir`."""
    return load_config(resolve_config_path(name_or_path, configs_dir), presets_dir=configs_dir)


def _describe_problem(problem: dict) -> str:
    where = ".".join(str(part) for part in problem["loc"]) or "(top level)"
    if problem["type"] == "extra_forbidden":
        return f"{where}: unknown key"
    return f"{where}: {problem['msg']}"
