"""`maas pipeline --data FILE`: write configs/NAME.yaml for the user's file, never over a different one."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from flows.terminal import UsageError


def write_own_config(preset: str, data: Path, text_columns: list[str] | None, label_column: str | None,
                     test_file: Path | None, name: str | None, overwrite: bool) -> str:
    """configs/NAME.yaml for --data; refuses to replace a different file unless told to. Returns NAME."""
    import yaml

    from components.config import load_config
    from components.data.own_data import dataset_name, own_data_config
    from flows.settings import Settings

    if not text_columns or not label_column:
        raise UsageError("--data needs --text-column (one or more) and --label-column")
    settings = Settings.from_env()
    name = dataset_name(name, data)
    document = own_data_config(name=name, data=data, text_columns=text_columns, label_column=label_column,
                               project_dir=settings.project_dir, test_file=test_file, preset=preset)
    argv = " ".join(sys.argv[1:])
    text = (f"# Written by `maas {argv}`.\n# Edit it and run `maas pipeline -c {name}`; "
            f"`maas retrain -c {name}` retrains only when the file changes.\n"
            + yaml.safe_dump(document, sort_keys=False))
    target = settings.configs_dir / f"{name}.yaml"
    if target.exists() and config_body(target.read_text()) != config_body(text) and not overwrite:
        raise UsageError(f"{target} exists and says something else: pass --overwrite to replace it, "
                         f"or --name to write another config")
    staged = target.with_suffix(".yaml.tmp")
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_text(text)
    try:
        load_config(staged, presets_dir=settings.configs_dir)  # the preset and every key check out first
        os.replace(staged, target)
    finally:
        staged.unlink(missing_ok=True)
    typer.echo(f"Wrote {target} (text columns {text_columns} joined with a newline; label {label_column!r}).")
    return name


def config_body(text: str) -> str:
    """A config without its comments: rewriting the same settings with other flags is not a change."""
    return "\n".join(line for line in text.splitlines() if not line.startswith("#"))
