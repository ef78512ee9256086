"""File-system names for things users name freely (encoders are hf-hub ids or paths)."""

from __future__ import annotations

import re
from pathlib import Path


def encoder_slug(name: str) -> str:
    """Folder name for an encoder: registry names stay as they are, ids and paths become path-safe.

    ``hf-hub:wisdomik/QuiltNet-B-32`` -> ``hf-hub_wisdomik_QuiltNet-B-32``; ``/ckpt/plip/`` -> ``plip``.
    """
    if name.startswith(("/", "./", "../", "~")):
        name = Path(name).expanduser().name or name
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")
    if not slug:
        raise ValueError(f"encoder name {name!r} gives an empty folder name")
    return slug


# The names a config may use, without importing torch (the Snakefile checks them on every parse).
# tests/test_validation.py keeps them equal to the encoder registry and the MIL model registry.
HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
ENCODER_NAMES = (
    "quiltnet-b-32",
    "quiltnet-b-16",
    "plip",
    "conch",
    "tiny-clip",
    "uni",
    "uni2-h",
    "virchow2",
    "h-optimus-0",
    "prov-gigapath",
    "phikon-v2",
)
# Image-only encoders (no text tower; the registry's has_text_tower=False ones plus common aliases): every
# vision-language step refuses them at parse time. tests/test_validation.py keeps them in step with the registry.
IMAGE_ONLY_ENCODERS = frozenset(
    {
        "uni",
        "uni2-h",
        "virchow",
        "virchow2",
        "gigapath",
        "prov-gigapath",
        "ctranspath",
        "h-optimus-0",
        "h-optimus-1",
        "phikon",
        "phikon-v2",
        "hibou-b",
        "hibou-l",
        "resnet50",
        "hf-hub:mahmoodlab/uni",
        "hf-hub:mahmoodlab/uni2-h",
        "hf-hub:paige-ai/virchow",
        "hf-hub:paige-ai/virchow2",
        "hf-hub:prov-gigapath/prov-gigapath",
        "hf-hub:bioptimus/h-optimus-0",
        "hf-hub:owkin/phikon",
    }
)
# Encoders the pipeline trains itself (rules/vl.smk): demo-clip on the demo's caption corpus (source demo),
# '<base>-cplip' (vl.cplip), 'hlip-<base>' (HLIP tuning). Their folders are file inputs of the jobs using them.
DEMO_ENCODER = "demo-clip"
# Sources whose cohorts may use demo-clip: the synthetic ones. Its corpus comes from the demo generator's
# own seeds (data/captions_corpus.py), independent of the cohort, so the synthetic Visium demo pretrains it too.
DEMO_ENCODER_SOURCES = ("demo", "demo_visium")
TRAINED_SUFFIX = "-cplip"
TRAINED_PREFIX = "hlip-"
MODEL_NAMES = (
    "abmil",
    "transmil",
    "clam_sb",
    "clam_mb",
    "dsmil",
    "dtfd",
    "rrt",
    "mhim",
    "ibmil",
    "patchgcn",
    "hipt",
    "meanpool",
    "maxpool",
    "hivemil",
    "vilamil",
)
# Models that read the task's class descriptions through the training encoder's text tower (registry inputs
# "text" and "text_encoder") and train on the few-shot splits: they need tasks.<task>.hier_prompts and a
# vision-language training.encoder. tests/test_validation.py keeps this equal to the registry.
TEXT_MODEL_NAMES = ("hivemil", "vilamil")
