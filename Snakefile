"""slidesnake: slides -> tissue -> patches (5x, 20x) -> features -> hierarchy -> MIL training -> evaluation."""

import os
import sys

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config", "config.yaml")


validate(config, "config/schema.yaml")

# Top-level code imports the slidesnake library from this checkout. Jobs (local, conda or cluster) find it
# through workflow/scripts/slidesnake, a link to ../../slidesnake: Snakemake puts a script's folder on sys.path.
sys.path.insert(0, workflow.basedir)


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


rule all:
    default_target: True
    input:
        all_targets,
        vl_targets(),
        hlip_targets(),
