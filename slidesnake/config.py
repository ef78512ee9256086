"""Load a pipeline config outside Snakemake (for the CLI) with the workflow's own schema and defaults."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "config" / "schema.yaml"


class ConfigError(ValueError):
    """A config key with a wrong name, type or value; the message names the key path."""


def _with_defaults(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(key, sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def validate_config(config: dict[str, Any], schema_path: str | os.PathLike = SCHEMA_PATH) -> dict[str, Any]:
    """Validate in place, filling defaults as Snakemake's ``validate(..., set_default=True)`` does."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = _with_defaults(jsonschema.validators.validator_for(schema))(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        from slidesnake.validation import schema_error_line

        raise ConfigError(schema_error_line(errors[0]))
    return config


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML config file and validate it against config/schema.yaml."""
    try:
        config = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    try:
        return validate_config(config)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
