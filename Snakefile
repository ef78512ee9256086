"""slidesnake: slides -> tissue -> patches (5x, 20x) -> features -> hierarchy -> MIL training -> evaluation."""

import os
import sys

from snakemake.utils import min_version

min_version("9.0")


# config/config.yaml is the embedded demo. It is loaded only when no --configfile is given (a profile's
# `configfile:` counts), so a real cohort starts from the schema defaults and never inherits the demo's
# choices; --config KEY=VALUE alone still overrides the demo.
if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "config", "config.yaml")


# Top-level code imports the slidesnake library from this checkout. Jobs (local, conda or cluster) find it
# through workflow/scripts/slidesnake, a link to ../../slidesnake: Snakemake puts a script's folder on sys.path.
sys.path.insert(0, workflow.basedir)

from slidesnake.config import validate_config
from slidesnake.device import visible_gpu_count

# The schema fills defaults and checks types; an error is one line naming the key and what is allowed.
# Encoder, model and task-column names are checked in rules/common.smk once the sheet is known.
validate_config(config)

# Local runs: at most one GPU job per visible GPU (each takes resources.gpu), unless --resources gpu=N says
# otherwise. CPU-only machines and cluster executors leave the resource unbounded.
if workflow.local_exec and "gpu" not in workflow.global_resources and visible_gpu_count() > 0:
    workflow.global_resources["gpu"] = visible_gpu_count()


report: "resources/report/workflow.rst"


include: "rules/common.smk"


if config["source"] == "demo":

    include: "rules/demo.smk"


if config["source"] in ("gdc", "visium"):

    include: "rules/download.smk"


include: "rules/tissue.smk"
include: "rules/features.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/vl.smk"
include: "rules/hlip.smk"
include: "rules/report.smk"
include: "rules/expression.smk"


rule all:
    default_target: True
    input:
        all_targets,
        report_targets,
        vl_targets(),
        hlip_targets(),
        curve_targets(),
