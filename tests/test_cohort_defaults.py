"""Real cohorts start from the schema defaults: the demo's choices (config/config.yaml) never leak in.

Each cohort config is dry-run through Snakemake (its whole DAG is planned); the config the workflow ends
up with must equal the cohort file filled with schema defaults, key for key.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from slidesnake.config import validate_config

COHORTS = sorted((REPO / "config" / "cohorts").glob("*.yaml"))

# Plans the DAG of one config with Snakemake's API (a dry run) and prints the workflow's config as JSON.
EFFECTIVE = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.enums import Quietness
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings
files = [Path(p) for p in sys.argv[2:]]
with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
    wf = api.workflow(resource_settings=ResourceSettings(cores=1), config_settings=ConfigSettings(configfiles=files),
                      snakefile=Path(sys.argv[1]), workdir=Path.cwd())
    wf.dag().execute_workflow(executor="dryrun")
    print("CONFIG=" + json.dumps(wf._workflow.config))
"""


def effective_config(workdir: Path, *configfiles: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", EFFECTIVE, str(REPO / "Snakefile"), *map(str, configfiles)],
        cwd=workdir,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("CONFIG="))
    return json.loads(line[len("CONFIG=") :])


@pytest.mark.parametrize("path", COHORTS, ids=lambda p: p.stem)
def test_cohort_gets_schema_defaults_where_silent(path: Path, tmp_path: Path) -> None:
    expected = validate_config(yaml.safe_load(path.read_text()))
    assert effective_config(tmp_path, path) == expected


def test_tcga_does_not_inherit_demo_choices(tmp_path: Path) -> None:
    """The figures of issue 11: before, tcga_brca ran with the demo's threads 1, 40 epochs, demo prompts."""
    demo = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert demo["features"]["threads"] == 1 and demo["training"]["epochs"] == 40  # the demo's own choices
    config = effective_config(tmp_path, REPO / "config" / "cohorts" / "tcga_brca.yaml")
    assert config["features"]["threads"] == 4 and config["features"]["num_workers"] == "auto"
    assert config["training"]["epochs"] == 50 and config["training"]["patience"] == 10
    assert config["features"]["prompts"] == []


def test_demo_is_the_default_without_a_configfile(tmp_path: Path) -> None:
    expected = validate_config(yaml.safe_load((REPO / "config" / "config.yaml").read_text()))
    assert effective_config(tmp_path) == expected
