"""The text side of vision-language bag models (registry inputs ``text`` and ``text_encoder``).

HiVE-MIL and ViLa-MIL take the frozen text tower of the encoder that made the features
(``training.encoder``) and the task's hierarchical class descriptions (``tasks.<task>.hier_prompts``).
Neither is a constructor kwarg that a checkpoint can hold as such, so model.pt records where the
tower came from and the validated descriptions themselves; :func:`text_inputs_from_checkpoint` rebuilds
the same inputs for heatmaps without the prompt file.
"""

from __future__ import annotations

from typing import Any

from slidesnake.errors import ConfigError
from slidesnake.features.encoders import ImageOnlyEncoderError, load_encoder, require_text_tower
from slidesnake.models.registry import ModelEntry
from slidesnake.models.vl.hier_prompts import HierPromptError, HierPrompts, load_hier_prompts
from slidesnake.models.vl.prompt_learner import text_tower

TEXT_INPUTS = ("text", "text_encoder")


class TextInputError(ConfigError):
    """A vision-language model without a usable text tower or class descriptions; names the config key."""


def needs_text(entry: ModelEntry) -> bool:
    """Whether the model reads the task's class descriptions through a text tower."""
    return bool(set(TEXT_INPUTS) & set(entry.inputs))


def text_inputs(
    entry: ModelEntry, text_encoder: str | None, hier_prompts: str | None, classes: list[str], task_name: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(constructor kwargs ``text_tower``/``prompts``, the record model.pt keeps) for ``entry``; empty for MIL models.

    ``text_encoder`` is what ``load_encoder`` is given for ``training.encoder`` (a name, or a pipeline-trained
    encoder's folder); ``hier_prompts`` the task's prompt file, validated against the task's ``classes``.
    """
    if not needs_text(entry):
        return {}, {}
    if not text_encoder:
        raise TextInputError(f"model {entry.name!r} needs the text tower of training.encoder; none was given")
    if not hier_prompts:
        raise TextInputError(
            f"model {entry.name!r} (training.models) needs hierarchical class descriptions: set "
            f"tasks.{task_name}.hier_prompts to a prompt file (e.g. config/prompts/demo_hier.json)"
        )
    try:
        prompts = load_hier_prompts(hier_prompts, classes)
    except HierPromptError as exc:
        raise TextInputError(f"{exc} (config key tasks.{task_name}.hier_prompts)") from exc
    tower = _tower(entry.name, text_encoder)
    record = {
        "text_encoder": str(text_encoder),
        "hier_prompts": {
            "source": prompts.source,
            "classes": list(prompts.classes),
            "coarse": [list(c) for c in prompts.coarse],
            "fine": [[list(g) for g in per_class] for per_class in prompts.fine],
        },
    }
    return {"text_tower": tower, "prompts": prompts}, record


def text_inputs_from_checkpoint(record: dict[str, Any]) -> dict[str, Any]:
    """The ``text_tower``/``prompts`` kwargs of a vision-language model.pt (nothing for a MIL model's)."""
    if "text_encoder" not in record:
        return {}
    p = record["hier_prompts"]
    prompts = HierPrompts(
        tuple(p["classes"]),
        tuple(tuple(c) for c in p["coarse"]),
        tuple(tuple(tuple(g) for g in per_class) for per_class in p["fine"]),
        p["source"],
    )
    return {"text_tower": _tower(record["model"], record["text_encoder"]), "prompts": prompts}


def _tower(model_name: str, text_encoder: str):
    """The frozen text tower of ``text_encoder``; a clear error naming the encoder and training.encoder otherwise."""
    fix = (
        f"model {model_name!r} reads class descriptions through the text tower of training.encoder; "
        "set training.encoder to a vision-language encoder (demo-clip, quiltnet-b-32, plip, conch, an open_clip "
        "folder) or remove the model from training.models"
    )
    try:
        require_text_tower(text_encoder, f"model {model_name!r}")
        encoder = load_encoder(text_encoder)
        require_text_tower(encoder, f"model {model_name!r}")
        return text_tower(encoder)
    except ImageOnlyEncoderError as exc:
        raise TextInputError(f"{exc} ({fix})") from exc
    except ValueError as exc:  # text_tower: a family without a tower HiVE-MIL/ViLa-MIL can use
        raise TextInputError(f"encoder {text_encoder!r}: {exc} ({fix})") from exc
