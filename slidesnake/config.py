"""Load a pipeline config outside Snakemake (for the CLI) with the workflow's own schema and defaults.

The schema ships inside the package (``slidesnake/schema.yaml``, read with importlib.resources), so a
non-editable install validates configs exactly as the Snakefile does.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from slidesnake.errors import ConfigError

SCHEMA_PATH = resources.files("slidesnake") / "schema.yaml"


def _with_defaults(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(key, sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def validate_config(config: dict[str, Any], schema_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Validate in place, filling defaults as Snakemake's ``validate(..., set_default=True)`` does."""
    text = SCHEMA_PATH.read_text() if schema_path is None else Path(schema_path).read_text()
    schema = yaml.safe_load(text)
    validator = _with_defaults(jsonschema.validators.validator_for(schema))(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        from slidesnake.validation import schema_error_line

        raise ConfigError(schema_error_line(errors[0]))
    return config


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML config file and validate it against the packaged schema (slidesnake/schema.yaml)."""
    try:
        config = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    try:
        return validate_config(config)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
