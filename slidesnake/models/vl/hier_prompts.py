"""Hierarchical (5x coarse / 20x fine) class descriptions for HiVE-MIL and ViLa-MIL (DESIGN §3).

File layout: ``{class: {"coarse": [{term, explanation}] × 4, "fine": [[{term, explanation}] × 3] × 4}}``.
Fine group k belongs to coarse description k by its position in the nesting, so a fine description cannot
drift from its parent (the seed's flat 16-entry dict pairs them by index arithmetic, and one of its files
has two groups swapped).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

N_COARSE = 4
N_FINE_PER_COARSE = 3


class HierPromptError(ValueError):
    """A hierarchical prompt file breaks the layout; the message names the file, the class and the fix."""


@dataclass(frozen=True)
class HierPrompts:
    """Validated descriptions. ``coarse[c]`` has N_COARSE texts; ``fine[c][k]`` the N_FINE_PER_COARSE of coarse k."""

    classes: tuple[str, ...]
    coarse: tuple[tuple[str, ...], ...]
    fine: tuple[tuple[tuple[str, ...], ...], ...]
    source: str = "<dict>"

    def coarse_texts(self) -> list[str]:
        """All coarse texts, class-major: index c * N_COARSE + k."""
        return [t for per_class in self.coarse for t in per_class]

    def fine_texts(self) -> list[str]:
        """All fine texts, class-major then coarse parent: index (c * N_COARSE + k) * N_FINE_PER_COARSE + j."""
        return [t for per_class in self.fine for group in per_class for t in group]

    @property
    def n_classes(self) -> int:
        return len(self.classes)


def prompt_text(entry: dict) -> str:
    """One description as the prompt suffix: ``"{term} : {explanation}"`` (the seed's format)."""
    return f"{entry['term'].strip()} : {entry['explanation'].strip()}"


def parse_hier_prompts(data: dict, classes: list[str] | None = None, source: str = "<dict>") -> HierPrompts:
    """Validate ``data`` (counts, non-empty strings, every class of the task) and return it in task order.

    ``classes`` is the task's class list; the prompts are returned in that order and a class missing from
    the file is an error. Without ``classes`` the file's own order is used.
    """
    if not isinstance(data, dict) or not data:
        raise HierPromptError(
            f"{source}: expected a JSON object {{class: {{coarse, fine}}}}, got {type(data).__name__}"
        )
    if classes is None:
        classes = list(data)
    missing = [c for c in classes if c not in data]
    if missing:
        raise HierPromptError(
            f"{source}: no descriptions for class(es) {missing} of the task (file has {sorted(data)}); "
            "add an entry per class or fix the task's class names"
        )
    coarse_all, fine_all = [], []
    for name in classes:
        coarse_all.append(tuple(_entries(data[name], "coarse", N_COARSE, source, name)))
        fine = data[name].get("fine") if isinstance(data[name], dict) else None
        if not isinstance(fine, list) or len(fine) != N_COARSE:
            got = len(fine) if isinstance(fine, list) else type(fine).__name__
            raise HierPromptError(
                f"{source}: class {name!r}: 'fine' must be a list of {N_COARSE} groups (one per coarse "
                f"description, in the same order), got {got}"
            )
        groups = []
        for k, group in enumerate(fine):
            groups.append(tuple(_entries({"g": group}, "g", N_FINE_PER_COARSE, source, name, f"fine[{k}]")))
        fine_all.append(tuple(groups))
    return HierPrompts(tuple(classes), tuple(coarse_all), tuple(fine_all), source)


def load_hier_prompts(path: str | os.PathLike, classes: list[str] | None = None) -> HierPrompts:
    """Read and validate a hierarchical prompt JSON file (see :func:`parse_hier_prompts`)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise HierPromptError(f"{path}: hierarchical prompt file not found") from exc
    except json.JSONDecodeError as exc:
        raise HierPromptError(f"{path}: not valid JSON ({exc})") from exc
    return parse_hier_prompts(data, classes, str(path))


def _entries(block: object, key: str, count: int, source: str, name: str, label: str | None = None) -> list[str]:
    label = label or key
    items = block.get(key) if isinstance(block, dict) else None
    if not isinstance(items, list) or len(items) != count:
        got = len(items) if isinstance(items, list) else type(items).__name__
        raise HierPromptError(
            f"{source}: class {name!r}: {label!r} must hold {count} {{term, explanation}} entries, got {got}"
        )
    texts = []
    for i, entry in enumerate(items):
        ok = isinstance(entry, dict) and all(
            isinstance(entry.get(f), str) and entry[f].strip() for f in ("term", "explanation")
        )
        if not ok:
            raise HierPromptError(
                f"{source}: class {name!r}: {label}[{i}] must be an object with non-empty 'term' and "
                f"'explanation' strings, got {entry!r}"
            )
        texts.append(prompt_text(entry))
    return texts
