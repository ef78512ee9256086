"""Derived clinical fields and the one-row-per-case table, on hand-made GDC case records."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from _fake_servers import FakeServer

from slidesnake.data.clinical import (
    DERIVED_COLUMNS,
    clinical_table,
    collapse_stage,
    collapse_tnm,
    fetch_cases,
)
from slidesnake.data.gdc import GdcClient
from slidesnake.io.atomic import write_parquet

OLD_SHAPE = {  # pre-2025 record: gender, days_to_death in demographic
    "case_id": "c1",
    "submitter_id": "TCGA-AA-0001",
    "project": {"project_id": "TCGA-LUAD"},
    "demographic": {"race": "white", "gender": "male", "vital_status": "Dead", "age_at_index": 74,
                    "days_to_birth": -27352, "days_to_death": 164},
    "diagnoses": [{"ajcc_pathologic_stage": "Stage IIA", "age_at_diagnosis": 27352, "primary_diagnosis":
                   "Adenocarcinoma, NOS", "tissue_or_organ_of_origin": "Upper lobe, lung", "ajcc_pathologic_t": "T1c",
                   "ajcc_pathologic_n": "N1a", "ajcc_pathologic_m": "M0", "tumor_grade": "Not Reported",
                   "days_to_last_follow_up": None}],
}  # fmt: skip
NEW_SHAPE = {  # 2025+ record: sex_at_birth, follow-up in follow_ups, two diagnoses (primary flagged second)
    "case_id": "c2",
    "submitter_id": "TCGA-AA-0002",
    "project": {"project_id": "TCGA-LUSC"},
    "demographic": {"race": "Not Reported", "sex_at_birth": "female", "vital_status": "Alive",
                    "days_to_birth": -21915},
    "diagnoses": [
        {"ajcc_pathologic_stage": "Stage IV", "diagnosis_is_primary_disease": False, "days_to_last_follow_up": 50},
        {"ajcc_pathologic_stage": "Stage IIIB", "diagnosis_is_primary_disease": True, "ajcc_pathologic_t": "TX",
         "ajcc_pathologic_n": "N2", "ajcc_pathologic_m": "MX", "tumor_grade": "G2", "days_to_last_follow_up": 400,
         "primary_diagnosis": "Squamous cell carcinoma, NOS"},
    ],
    "follow_ups": [{"days_to_follow_up": 900}, {"days_to_follow_up": None}],
    "exposures": [{"pack_years_smoked": 40.5}],
}  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "stage"),
    [("Stage IIA", "II"), ("Stage IV", "IV"), ("Stage IIIC", "III"), ("Stage I", "I"), ("STAGE IB", "I"),
     ("Stage X", None), ("Not Reported", None), ("--", None), (None, None), ("Stage 0", None)],
)  # fmt: skip
def test_collapse_stage(raw, stage):
    assert collapse_stage(raw) == stage


def test_collapse_tnm():
    assert [collapse_tnm(v, "t") for v in ("T1c", "t4b", "Tis", "TX", None)] == ["T1", "T4", "Tis", None, None]
    assert [collapse_tnm(v, "n") for v in ("N1a", "N0 (i+)", "NX")] == ["N1", "N0", None]
    assert [collapse_tnm(v, "m") for v in ("M0", "M1b", "MX")] == ["M0", "M1", None]


def test_clinical_table_derived_fields_both_schemas(tmp_path):
    df = clinical_table([NEW_SHAPE, OLD_SHAPE])
    assert tuple(df.columns[: len(DERIVED_COLUMNS)]) == DERIVED_COLUMNS
    old, new = df.set_index("case_id").loc["c1"], df.set_index("case_id").loc["c2"]
    assert old["age_years"] == pytest.approx(27352 / 365.25)
    assert (old["sex"], old["race"], old["ajcc_stage"], old["ajcc_t"], old["ajcc_n"], old["ajcc_m"]) == (
        "male", "white", "II", "T1", "N1", "M0")  # fmt: skip
    assert old["tumor_grade"] is None and old["vital_status"] == "Dead"
    assert (old["os_days"], old["os_event"]) == (164.0, 1)
    assert new["age_years"] == pytest.approx(21915 / 365.25)
    assert (new["sex"], new["race"], new["ajcc_stage"], new["ajcc_t"], new["ajcc_n"]) == (
        "female", None, "III", None, "N2")  # fmt: skip
    assert new["primary_diagnosis"] == "Squamous cell carcinoma, NOS" and new["tumor_grade"] == "G2"
    assert (new["os_days"], new["os_event"]) == (900.0, 0)
    # raw fields kept, flattened
    assert new["diagnoses.0.ajcc_pathologic_stage"] == "Stage IV" and new["exposures.0.pack_years_smoked"] == 40.5
    assert old["demographic.gender"] == "male" and math.isnan(new["demographic.days_to_death"])
    write_parquet(tmp_path / "clinical.parquet", df)
    back = pd.read_parquet(tmp_path / "clinical.parquet")
    assert back["os_event"].dtype == "int64" and back["os_days"].tolist() == [164.0, 900.0]


def test_fetch_cases_pages_with_expand():
    srv = FakeServer(case_hits=[OLD_SHAPE, NEW_SHAPE, {**OLD_SHAPE, "case_id": "c3"}]).start()
    try:
        cases = fetch_cases(GdcClient(srv.url, page_size=2), ["TCGA-LUAD"])
        bodies = [r.body for r in srv.requests_for("/cases")]
    finally:
        srv.stop()
    assert [c["case_id"] for c in cases] == ["c1", "c2", "c3"] and len(bodies) == 2
    assert b'"expand": "demographic,diagnoses,exposures,follow_ups"' in bodies[0]
    assert len(clinical_table(cases)) == 3
