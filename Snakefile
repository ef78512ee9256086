"""slidesnake: slides -> tissue -> patches (5x, 20x) -> features -> hierarchy -> MIL training -> evaluation."""

import os
import sys

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config", "config.yaml")


validate(config, "config/schema.yaml")

# Every job (local, conda or cluster) imports the slidesnake library from this checkout.
sys.path.insert(0, workflow.basedir)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (workflow.basedir, os.environ.get("PYTHONPATH")) if p)


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
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets,
