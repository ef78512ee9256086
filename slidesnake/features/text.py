"""Text embeddings of class prompts, for zero-shot and vision-language MIL models.

A prompts JSON maps each class either to its prompt strings, or to ``synonyms`` × ``templates``
(CONCH/MI-Zero style: every template's ``CLASSNAME`` — or ``{}`` — is replaced by every synonym).
Embeddings are computed once per encoder and prompt set and stored with their class index, so models
can pool them (e.g. the renormalised class mean of the zero-shot protocol) without a text tower.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np
import torch

from slidesnake.device import inference_context, select_device
from slidesnake.errors import InputError
from slidesnake.features.encoders import load_encoder
from slidesnake.io.atomic import write_h5

log = logging.getLogger(__name__)

TEXT_BATCH = 256  # prompts per forward pass; prompt sets are small, this bounds memory for big ones


class PromptsError(InputError):
    """A prompts JSON is malformed; the message names the file and the class."""


def expand_prompts(prompts: dict[str, Any], source: str = "<prompts>") -> tuple[list[str], list[int], list[str]]:
    """Flatten ``{class: [prompts]}`` or ``{class: {synonyms, templates}}`` into (prompts, class_index, classes).

    Classes keep the JSON's order, which fixes the class index every downstream model uses.
    """
    grid = expand_prompt_grid(prompts, source)
    return grid.texts, grid.class_index, grid.classes


@dataclass(frozen=True)
class PromptGrid:
    """Every prompt with its class, synonym and template index (MI-Zero samples prompt sets from these).

    A flat ``{class: [prompts]}`` entry is one synonym per prompt with a single template (index 0).
    """

    texts: list[str]
    class_index: list[int]
    synonym_index: list[int]
    template_index: list[int]
    classes: list[str]


def expand_prompt_grid(prompts: dict[str, Any], source: str = "<prompts>") -> PromptGrid:
    """:func:`expand_prompts` keeping each prompt's synonym and template index."""
    if not isinstance(prompts, dict) or not prompts:
        raise PromptsError(f"{source}: expected a non-empty object mapping class names to prompts")
    texts: list[str] = []
    index: list[int] = []
    synonym_index: list[int] = []
    template_index: list[int] = []
    classes = list(prompts)
    for k, name in enumerate(classes):
        entry = prompts[name]
        if isinstance(entry, dict):
            synonyms = entry.get("synonyms") or entry.get("classnames") or [name]
            templates = entry.get("templates") or ["CLASSNAME."]
            pairs = [(i, j) for i in range(len(synonyms)) for j in range(len(templates))]
            try:
                expanded = [_fill(templates[j], synonyms[i]) for i, j in pairs]
            except PromptsError as exc:
                raise PromptsError(f"{source}: class '{name}': {exc}") from exc
        elif isinstance(entry, list):
            expanded = entry
            pairs = [(i, 0) for i in range(len(entry))]
        else:
            raise PromptsError(f"{source}: class '{name}' must map to a list of prompts or {{synonyms, templates}}")
        if not expanded or not all(isinstance(p, str) and p.strip() for p in expanded):
            raise PromptsError(f"{source}: class '{name}' has no prompts or an empty/non-string prompt")
        texts.extend(expanded)
        index.extend([k] * len(expanded))
        synonym_index.extend(i for i, _ in pairs)
        template_index.extend(j for _, j in pairs)
    return PromptGrid(texts, index, synonym_index, template_index, classes)


def embed_prompts(
    encoder_name: str, prompts_json: str | os.PathLike, out_h5: str | os.PathLike, device: str = "auto"
) -> None:
    """Embed every prompt of ``prompts_json`` with the encoder's text tower into ``out_h5``.

    Output: ``embeddings`` (T,D) float32 L2-normalised, ``class_index`` (T,) int64, ``prompts`` (T,)
    strings, ``synonym_index`` / ``template_index`` (T,) int64 (for prompt-set sampling); attrs ``classes`` (JSON list), ``encoder``, ``dim``, ``logit_scale``.
    """
    try:
        with open(prompts_json, encoding="utf-8") as fh:
            prompts = json.load(fh)
    except (OSError, ValueError) as exc:
        raise PromptsError(f"{prompts_json}: cannot read prompts JSON ({exc})") from exc
    grid = expand_prompt_grid(prompts, os.fspath(prompts_json))
    texts, index, classes = grid.texts, grid.class_index, grid.classes
    torch_device = select_device(device)
    encoder = load_encoder(encoder_name, torch_device)
    with inference_context(torch_device):
        chunks = [
            encoder.encode_text(texts[i : i + TEXT_BATCH]).float().cpu() for i in range(0, len(texts), TEXT_BATCH)
        ]
    embeddings = torch.nn.functional.normalize(torch.cat(chunks), dim=-1).numpy().astype(np.float32)
    write_h5(
        out_h5,
        {
            "embeddings": embeddings,
            "class_index": np.asarray(index, dtype=np.int64),
            "prompts": np.array(texts, dtype=h5py.string_dtype("utf-8")),
            "synonym_index": np.asarray(grid.synonym_index, dtype=np.int64),
            "template_index": np.asarray(grid.template_index, dtype=np.int64),
        },
        {
            "classes": json.dumps(classes),
            "encoder": encoder.spec.name,
            "dim": encoder.spec.dim,
            "logit_scale": encoder.logit_scale,
        },
    )
    log.info("%s: %d prompts for %d classes with %s", out_h5, len(texts), len(classes), encoder.spec.name)


def _fill(template: str, synonym: str) -> str:
    if "CLASSNAME" in template:
        return template.replace("CLASSNAME", synonym)
    if "{}" in template:
        return template.replace("{}", synonym)
    raise PromptsError(f"template {template!r} has no CLASSNAME or {{}} placeholder for the class name")
