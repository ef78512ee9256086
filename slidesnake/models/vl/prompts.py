"""Prompt files of the vision-language models, checked against the task before any job runs.

Two formats live in ``config/prompts/``:

- class prompts (zero-shot, CONCH / MI-Zero): ``{class: {"synonyms": [...], "templates": [...]}}`` or
  ``{class: [prompt, ...]}``; every template must hold the placeholder ``CLASSNAME``;
- prompt dictionaries (CPLIP-style alignment): ``{class: {aspect: [description, ...]}}`` with aspects
  such as morphology, cytology, architecture and synonyms; a class's bag is all its descriptions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

from slidesnake.features.text import PromptsError, expand_prompt_grid

ASPECTS: tuple[str, ...] = ("morphology", "cytology", "architecture", "synonyms")


def read_prompts_json(path: str | os.PathLike) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise PromptsError(f"{path}: cannot read prompts JSON ({exc})") from exc
    if not isinstance(data, dict) or not data:
        raise PromptsError(f"{path}: expected a non-empty object mapping class names to prompts")
    return data


def check_class_prompts(path: str | os.PathLike, classes: Iterable[str] | None = None) -> list[str]:
    """Validate a class-prompts file (and its classes against the task's ``classes``); returns its classes.

    Errors name the file and the class: a class the task does not have, a task class with no prompts,
    an empty synonym or template list, a template without ``CLASSNAME``.
    """
    data = read_prompts_json(path)
    for name, entry in data.items():
        if isinstance(entry, dict):
            for key in ("synonyms", "templates"):
                if key in entry and (not isinstance(entry[key], list) or not entry[key]):
                    raise PromptsError(f"{path}: class '{name}' has an empty '{key}' list; give at least one")
            for template in entry.get("templates", []):
                if not isinstance(template, str) or "CLASSNAME" not in template:
                    raise PromptsError(
                        f"{path}: class '{name}': template {template!r} has no CLASSNAME placeholder "
                        "(write e.g. 'an H&E image of CLASSNAME.')"
                    )
        elif isinstance(entry, list) and not entry:
            raise PromptsError(f"{path}: class '{name}' has an empty prompt list")
    grid = expand_prompt_grid(data, os.fspath(path))
    _check_classes(path, grid.classes, classes)
    return grid.classes


def read_prompt_dictionary(path: str | os.PathLike, classes: Iterable[str] | None = None) -> dict[str, list[str]]:
    """A CPLIP-style prompt dictionary as ``{class: [descriptions]}`` (aspects flattened in file order)."""
    data = read_prompts_json(path)
    bags: dict[str, list[str]] = {}
    for name, entry in data.items():
        if not isinstance(entry, dict) or not entry:
            raise PromptsError(f"{path}: class '{name}' must map aspects ({', '.join(ASPECTS)}) to descriptions")
        bag = []
        for aspect, texts in entry.items():
            if not isinstance(texts, list) or not all(isinstance(t, str) and t.strip() for t in texts):
                raise PromptsError(f"{path}: class '{name}', aspect '{aspect}' must be a list of non-empty strings")
            bag.extend(texts)
        if not bag:
            raise PromptsError(f"{path}: class '{name}' has an empty description bag")
        bags[name] = bag
    _check_classes(path, list(bags), classes)
    return bags


def _check_classes(path: str | os.PathLike, found: list[str], classes: Iterable[str] | None) -> None:
    if classes is None:
        return
    wanted = list(classes)
    extra = [c for c in found if c not in wanted]
    if extra:
        raise PromptsError(f"{path}: class '{extra[0]}' is not a class of the task (classes: {wanted})")
    missing = [c for c in wanted if c not in found]
    if missing:
        raise PromptsError(f"{path}: the task's class '{missing[0]}' has no prompts; add an entry for it")
