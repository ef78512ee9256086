"""The shipped cohort configs load, and their label rules label fixture records as intended."""

from __future__ import annotations

from pathlib import Path

import pytest

from slidesnake.data.cohorts import CohortConfigError, LabelRule, load_cohort
from slidesnake.data.gdc import flatten_file_hit

COHORTS = Path(__file__).resolve().parents[1] / "config" / "cohorts"


def rule(name: str) -> LabelRule:
    return LabelRule.from_config(load_cohort(COHORTS / f"{name}.yaml")["gdc"]["label"])


def record(project: str, diagnosis: str | None = None) -> dict:
    hit = {"file_id": "f", "file_name": "x.svs",
           "cases": [{"project": {"project_id": project}, "diagnoses": [{"primary_diagnosis": diagnosis}]}]}  # fmt: skip
    return flatten_file_hit(hit)


def test_nsclc_labels_by_project():
    r = rule("tcga_nsclc")
    assert [r.label(record(p)) for p in ("TCGA-LUAD", "TCGA-LUSC", "TCGA-BRCA")] == ["LUAD", "LUSC", None]


def test_brca_labels_by_primary_diagnosis():
    r = rule("tcga_brca")
    got = [r.label(record("TCGA-BRCA", d)) for d in
           ("Infiltrating duct carcinoma, NOS", "Lobular carcinoma, NOS", "Infiltrating duct and lobule carcinoma", None)]  # fmt: skip
    assert got == ["IDC", "ILC", None, None]


def test_rcc_labels_three_projects():
    r = rule("tcga_rcc")
    assert [r.label(record(p)) for p in ("TCGA-KIRC", "TCGA-KIRP", "TCGA-KICH")] == ["CCRCC", "PRCC", "CHRCC"]


@pytest.mark.parametrize("name", ["visium_liver", "spatiallibd_dlpfc"])
def test_visium_cohorts_have_geo_sections(name):
    cfg = load_cohort(COHORTS / f"{name}.yaml")
    assert cfg["source"] == "visium" and cfg["geo"]["samples"] and cfg["geo"]["layout"] in ("geo", "spatiallibd")


def test_bad_label_rule_names_the_key(tmp_path):
    (tmp_path / "c.yaml").write_text("cohort: x\nsource: gdc\ngdc:\n  label: {field: project_id}\n")
    with pytest.raises(CohortConfigError, match="gdc.label"):
        load_cohort(tmp_path / "c.yaml")
