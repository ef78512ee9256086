"""Parse-time checks of a pipeline config that the schema cannot express, each a one-line error.

The schema checks types and key names; this module turns its errors into one line that names the key
and the allowed keys (not a schema dump), and checks the names a user types freely — encoders, models,
task columns — so a misspelling stops ``snakemake -n`` instead of a job hours later. Torch-free: the
Snakefile runs it on every parse, including once per cluster job.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from slidesnake.naming import (
    DEMO_ENCODER,
    DEMO_ENCODER_SOURCES,
    ENCODER_NAMES,
    HF_HUB_PREFIX,
    IMAGE_ONLY_ENCODERS,
    LOCAL_DIR_PREFIX,
    MODEL_NAMES,
    TEXT_MODEL_NAMES,
    TRAINED_PREFIX,
    TRAINED_SUFFIX,
)


class ConfigNameError(ValueError):
    """A config value names an encoder, model, key or column that does not exist; the message says which."""


def _suggest(word: str, allowed: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(allowed), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def schema_error_line(error: Any) -> str:
    """One line for a jsonschema ``ValidationError``: the full key path, what is wrong and what is allowed."""
    path = [str(p) for p in error.absolute_path]
    if error.validator == "additionalProperties" and error.validator_value is False:
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        where = ".".join(path)
        parts = []
        for key in unknown:
            full = f"{where}.{key}" if where else key
            parts.append(f"unknown config key '{full}'{_suggest(key, allowed)}")
        scope = f"under '{where}'" if where else "at the top level"
        return f"{'; '.join(parts)}; allowed keys {scope}: {', '.join(allowed)}"
    key = ".".join(path) or "<top level>"
    if error.validator == "enum":
        return f"config key '{key}' is {error.instance!r}; allowed values: {', '.join(map(str, error.validator_value))}"
    if error.validator == "required":
        return f"config {('key ' + repr(key)) if path else 'file'}: {error.message}"
    return f"config key '{key}': {error.message}"


def check_encoder(name: str, key: str = "features.encoders") -> None:
    """A registry name, an ``hf-hub:org/repo`` id, an open_clip ``MODEL:PRETRAINED`` pair, or an existing path."""
    text = name.strip()
    if text.lower() in ENCODER_NAMES or text.startswith(HF_HUB_PREFIX):
        return
    if text == DEMO_ENCODER or text.endswith(TRAINED_SUFFIX) or text.startswith(TRAINED_PREFIX):
        return  # trained by the pipeline (rules/vl.smk); its rule checks its own settings
    if text.startswith(LOCAL_DIR_PREFIX):
        text = text[len(LOCAL_DIR_PREFIX) :]
    if Path(text).expanduser().exists():
        return
    arch, sep, pretrained = text.partition(":")
    if sep and arch and pretrained and os.sep not in arch:
        return  # open_clip MODEL:PRETRAINED (or conch:/path): checked by open_clip when loaded
    raise ConfigNameError(
        f"config key '{key}': encoder '{name}' is not a registry name{_suggest(text.lower(), ENCODER_NAMES)}, "
        f"an 'hf-hub:org/repo' id, an open_clip 'MODEL:PRETRAINED' pair or an existing path; "
        f"registry names: {', '.join(ENCODER_NAMES)}"
    )


def check_model(name: str, key: str = "training.models") -> None:
    if name not in MODEL_NAMES:
        raise ConfigNameError(
            f"config key '{key}': model '{name}' is not a MIL model{_suggest(name, MODEL_NAMES)}; "
            f"allowed values: {', '.join(MODEL_NAMES)}"
        )


def task_columns(task: Mapping[str, Any]) -> list[str]:
    """The table columns a task config names (its label column, or survival time and event)."""
    if task.get("kind") == "survival":
        return [task.get("time", "os_days"), task.get("event", "os_event")]
    if task.get("kind") == "classification" and task.get("column"):
        return [task["column"]]
    return []


def check_task_columns(name: str, task: Mapping[str, Any], columns: Iterable[str] | None, table: str) -> None:
    """Each column the task names is in ``columns`` (the table's columns; None: not known at parse time)."""
    if columns is None:
        return
    known = sorted(set(columns) - {"slide_id", "case_id", "path"})
    for column in task_columns(task):
        if column not in known:
            field = (
                "column" if task.get("kind") != "survival" else ("time" if column == task_columns(task)[0] else "event")
            )
            raise ConfigNameError(
                f"config key 'tasks.{name}.{field}': column '{column}' is not in {table}"
                f"{_suggest(column, known)}; its columns: {', '.join(known)}"
            )


def parquet_columns(path: str | os.PathLike) -> list[str] | None:
    """A parquet file's column names from its footer (no data read), or None when it does not exist yet."""
    if not os.path.exists(path):
        return None
    import pyarrow.parquet as pq

    return list(pq.read_schema(path).names)


def check_names(
    config: Mapping[str, Any],
    sheet_columns: Iterable[str] | None = None,
    table_columns: Mapping[str, tuple[str, Iterable[str] | None]] | None = None,
) -> None:
    """Encoders, models and task columns of a validated config. ``table_columns`` maps a task source
    (``clinical``, ``mutations``) to (its file, its columns or None when not known at parse time)."""
    for name in config["features"]["encoders"]:
        check_encoder(name)
        if name == DEMO_ENCODER and config.get("source") not in DEMO_ENCODER_SOURCES:
            raise ConfigNameError(
                f"config key 'features.encoders': '{DEMO_ENCODER}' is pretrained on the demo's synthetic caption "
                f"corpus and exists only for the synthetic sources ({', '.join(DEMO_ENCODER_SOURCES)}), not "
                f"source: {config.get('source')}; use a registry encoder (e.g. quiltnet-b-32) here"
            )
    check_encoder(config["training"]["encoder"], "training.encoder")
    for name in config["training"]["models"]:
        check_model(name)
    for name in config["training"].get("fewshot", {}).get("models", []):
        check_model(name, "training.fewshot.models")
    for name in curve_models(config):
        check_model(name, "training.fewshot.curve.models")
    for key in ("lr_by_model", "accumulate_by_model"):
        for name in config["training"].get(key, {}):
            check_model(name, f"training.{key}")
    tables = dict(table_columns or {})
    tables.setdefault("sheet", ("the slide sheet", sheet_columns))
    for task_name, task in config.get("tasks", {}).items():
        label, columns = tables.get(task.get("source", "sheet"), (None, None))
        check_task_columns(task_name, task, columns, label)


def hier_prompt_path(value: str, basedir: str | os.PathLike) -> Path:
    """The file ``tasks.<task>.hier_prompts`` names: a prompt file of ``config/prompts`` by name
    (``demo_hier``), or a path to a JSON file (relative to the working directory)."""
    if value.endswith(".json") or "/" in value or os.sep in value:
        return Path(value).expanduser()
    return Path(basedir) / "config" / "prompts" / f"{value}.json"


def curve_models(config: Mapping[str, Any]) -> list[str]:
    """The models of the few-shot curve (``training.fewshot.curve``); none when it lists no N."""
    curve = config["training"].get("fewshot", {}).get("curve", {})
    return list(curve.get("models", [])) if curve.get("shots") else []


def check_text_models(
    config: Mapping[str, Any], task_classes: Callable[[str], list[str] | None], basedir: str | os.PathLike
) -> None:
    """HiVE-MIL / ViLa-MIL in ``training.models`` need a training encoder with a text tower, classification
    tasks, and per task a valid hierarchical prompt file holding every class (``task_classes(task)``: the
    task's classes when known at parse time, else None: the file's structure is checked, its classes at
    training time)."""
    from slidesnake.models.vl.hier_prompts import HierPromptError, load_hier_prompts  # json only, no torch

    models = [m for m in config["training"]["models"] if m in TEXT_MODEL_NAMES]
    models += [m for m in curve_models(config) if m in TEXT_MODEL_NAMES and m not in models]
    if not models:
        return
    listed = "training.models" if set(models) & set(config["training"]["models"]) else "training.fewshot.curve.models"
    encoder = config["training"]["encoder"]
    if encoder.strip().lower() in IMAGE_ONLY_ENCODERS:
        raise ConfigNameError(
            f"config key 'training.encoder' is '{encoder}', an image-only encoder (no text tower), but "
            f"{listed} lists {models}, which read class descriptions through the text tower of "
            "training.encoder; choose a vision-language encoder (e.g. quiltnet-b-32, conch, plip) or remove them"
        )
    for name, task in config.get("tasks", {}).items():
        if task["kind"] != "classification":
            raise ConfigNameError(
                f"config key 'tasks.{name}.kind' is '{task['kind']}', but {listed} lists {models}, which "
                "classify slides only; remove them from training.models or the task"
            )
        value = task.get("hier_prompts")
        if not value:
            raise ConfigNameError(
                f"config key 'tasks.{name}.hier_prompts' is not set, but {listed} lists {models}, which "
                "need hierarchical class descriptions: name a file of config/prompts (e.g. demo_hier) or a JSON path"
            )
        try:
            load_hier_prompts(hier_prompt_path(value, basedir), task_classes(name))
        except HierPromptError as exc:
            raise ConfigNameError(f"config key 'tasks.{name}.hier_prompts': {exc}") from exc
