"""Cohort label rules: map a raw GDC field (project id, primary diagnosis) to a task label.

Each cohort config carries ``gdc.label: {field, map}``; records whose value is not in the map get no
label and are left out of the slide sheet (e.g. BRCA slides that are neither IDC nor ILC).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from slidesnake.errors import ConfigError


class CohortConfigError(ConfigError):
    """A cohort YAML or its label rule is malformed."""


@dataclass(frozen=True)
class LabelRule:
    """``field`` names a flat record key (``project_id``, ``primary_diagnosis``); ``map`` raw value -> label."""

    field: str = "project_id"
    map: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None, where: str = "gdc.label") -> LabelRule | None:
        """Build the rule from a ``{field, map}`` config section; None when the section is absent."""
        if not cfg:
            return None
        if "field" not in cfg or not isinstance(cfg.get("map"), Mapping) or not cfg["map"]:
            raise CohortConfigError(f"{where} needs 'field' (e.g. project_id) and a non-empty 'map' of value: label")
        return cls(str(cfg["field"]), {str(k).casefold(): str(v) for k, v in cfg["map"].items()})

    def label(self, record: Mapping[str, Any]) -> str | None:
        """The label for a record, matching the raw value case-insensitively; None if unmapped."""
        value = record.get(self.field)
        if value is None:
            return None
        return self.map.get(str(value).strip().casefold())


def load_cohort(path: str | Path) -> dict[str, Any]:
    """Read a cohort YAML and check the keys the download stage relies on."""
    path = Path(path)
    cfg = yaml.safe_load(path.read_text())
    if not isinstance(cfg, dict) or "cohort" not in cfg or "source" not in cfg:
        raise CohortConfigError(f"{path}: a cohort config needs top-level 'cohort' and 'source' keys")
    section = {"gdc": "gdc", "visium": "geo"}.get(cfg["source"])
    if section is None or section not in cfg:
        raise CohortConfigError(f"{path}: source {cfg['source']!r} needs a '{section or 'gdc/geo'}' section")
    if section == "gdc":
        LabelRule.from_config(cfg["gdc"].get("label"), where=f"{path}: gdc.label")
    return cfg
