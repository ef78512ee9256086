"""One decorated model registry: each model class declares its name, the inputs it reads and the task
kinds it supports where it is defined (LazySlide's ``@register``), so adding a model touches one file.

The training loop loads exactly what an entry declares (features, coords, the 5x→20x hierarchy,
``text``: the task's class descriptions (the hierarchical prompt file ``tasks.<task>.hier_prompts``),
``text_encoder``: the text tower of ``training.encoder``, the encoder that made the features); the workflow builds the ``model`` wildcard constraint and the
schema enum test from :func:`names`, so a misspelt model fails before any job runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from slidesnake.errors import ConfigError
from slidesnake.tasks import KINDS

INPUTS = ("features", "coords", "hierarchy", "text", "text_encoder")
# the modules that register models on import (the vl package stays light: zero-shot and the prompt checks
# import it at parse time, so its trainable models are named one by one)
MODEL_PACKAGES = ("slidesnake.models.mil", "slidesnake.models.vl.hivemil", "slidesnake.models.vl.vilamil")


class UnknownModelError(ConfigError, KeyError):
    """A model name that is not in the registry (config key ``training.models``)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class RegistryError(TypeError):
    """A model class registered with an invalid declaration (a programming error, raised at import)."""


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its class and what it declares.

    inputs: subset of :data:`INPUTS` the loop must load for it. task_kinds: the task kinds it can
    train on. first_stage: the registered model whose same-fold checkpoint initialises this one
    (two-stage models such as MHIM and IBMIL), or None.
    """

    name: str
    cls: type
    inputs: tuple[str, ...]
    task_kinds: tuple[str, ...]
    first_stage: str | None = None

    def build(self, in_dim: int, n_outputs: int, **kwargs: Any) -> Any:
        """An instance for ``in_dim``-dimensional inputs and ``n_outputs`` outputs."""
        return self.cls(in_dim, n_outputs, **kwargs)


_REGISTRY: dict[str, ModelEntry] = {}


def register(
    name: str,
    inputs: tuple[str, ...] = ("features",),
    task_kinds: tuple[str, ...] = KINDS,
    first_stage: str | None = None,
) -> Callable[[type], type]:
    """Class decorator adding a model to the registry under ``name`` (sets ``cls.registry_entry``)."""
    unknown_inputs = sorted(set(inputs) - set(INPUTS))
    unknown_kinds = sorted(set(task_kinds) - set(KINDS))
    if not inputs or unknown_inputs:
        raise RegistryError(f"model {name!r}: inputs {unknown_inputs or '()'} are not a non-empty subset of {INPUTS}")
    if not task_kinds or unknown_kinds:
        raise RegistryError(f"model {name!r}: task kinds {unknown_kinds or '()'} are not a non-empty subset of {KINDS}")

    def decorate(cls: type) -> type:
        previous = _REGISTRY.get(name)
        if previous is not None and previous.cls.__qualname__ != cls.__qualname__:
            raise RegistryError(
                f"model name {name!r} is registered twice ({previous.cls.__qualname__}, {cls.__qualname__})"
            )
        entry = ModelEntry(name, cls, tuple(inputs), tuple(task_kinds), first_stage)
        _REGISTRY[name] = entry
        cls.registry_entry = entry
        return cls

    return decorate


def _load_all() -> None:
    for package in MODEL_PACKAGES:
        importlib.import_module(package)


def entries() -> dict[str, ModelEntry]:
    """Every registered model by name (imports the model packages first)."""
    _load_all()
    return dict(sorted(_REGISTRY.items()))


def names() -> list[str]:
    """The registered model names, sorted."""
    return list(entries())


def get(name: str) -> ModelEntry:
    """The entry of model ``name``; a clear error naming ``training.models`` and the choices otherwise."""
    registered = entries()
    if name not in registered:
        raise UnknownModelError(
            f"unknown model {name!r} (config key training.models); registered models: {', '.join(registered)}"
        )
    return registered[name]


def build(name: str, in_dim: int, n_outputs: int, **kwargs: Any) -> Any:
    """Instantiate registered model ``name``."""
    return get(name).build(in_dim, n_outputs, **kwargs)


def from_checkpoint(record: dict[str, Any], **inputs: Any) -> Any:
    """The model of a checkpoint record (io/checkpoint.py ``load_checkpoint``) with its weights, in eval mode.

    ``inputs``: constructor inputs a checkpoint cannot hold as kwargs (a vision-language model's text tower
    and prompts: ``slidesnake.train.text_inputs.text_inputs_from_checkpoint``).
    """
    model = build(record["model"], int(record["in_dim"]), int(record["n_outputs"]), **record["model_kwargs"], **inputs)
    model.load_state_dict(record["state_dict"])
    return model.eval()


def check_task_kind(name: str, kind: str) -> None:
    """Refuse a model on a task kind it does not declare, naming the config keys to change."""
    entry = get(name)
    if kind not in entry.task_kinds:
        raise ConfigError(
            f"model {name!r} (training.models) supports task kinds {list(entry.task_kinds)}, not {kind!r}; "
            "remove it from training.models or change the task"
        )
