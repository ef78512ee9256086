"""GDC clinical records -> ``clinical.parquet``: one row per case, raw fields kept, twelve derived fields added.

Raw fields are flattened (``demographic.race``, ``diagnoses.0.ajcc_pathologic_stage``) so nothing the API
returned is lost; the derived columns are normalised (missing tokens -> null, stage collapsed to I-IV)
because they feed survival analysis and the clinical-text model.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from slidesnake.data.gdc import GdcClient, GdcError

log = logging.getLogger(__name__)

CASE_EXPAND = ("demographic", "diagnoses", "exposures", "follow_ups")
CASE_FIELDS = ("case_id", "submitter_id", "project.project_id", "primary_site", "disease_type")
DERIVED_COLUMNS = (
    "case_id", "submitter_id", "project_id", "age_years", "sex", "race", "primary_diagnosis",
    "tissue_or_organ_of_origin", "ajcc_stage", "ajcc_t", "ajcc_n", "ajcc_m", "tumor_grade",
    "vital_status", "os_days", "os_event",
)  # fmt: skip
_MISSING = frozenset(
    {"", "--", "nan", "none", "null", "not reported", "unknown", "not available", "not applicable",
     "not allowed to collect", "unknown tumor status", "'--"}
)  # fmt: skip
_STAGE = re.compile(r"^\s*stage\s+(iv|iii|ii|i)(?![iv])", re.I)
_TNM = {
    "t": re.compile(r"^\s*(T[0-4]|Tis)", re.I),
    "n": re.compile(r"^\s*(N[0-3])", re.I),
    "m": re.compile(r"^\s*(M[01])", re.I),
}
DAYS_PER_YEAR = 365.25


def fetch_cases(client: GdcClient, projects: Sequence[str]) -> list[dict[str, Any]]:
    """All cases of ``projects`` with demographic, diagnoses, exposures and follow-ups expanded."""
    if not projects:
        raise GdcError("no projects to query: set gdc.projects (or --project), e.g. TCGA-LUAD")
    filters = {"op": "in", "content": {"field": "project.project_id", "value": list(projects)}}
    return list(client.search("cases", filters, CASE_FIELDS, expand=CASE_EXPAND))


def flatten(record: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts/lists to dotted keys (lists by index: ``diagnoses.0.tumor_grade``)."""
    if isinstance(record, Mapping):
        items: Iterable[tuple[str, Any]] = ((str(k), v) for k, v in record.items())
    elif isinstance(record, list):
        items = ((str(i), v) for i, v in enumerate(record))
    else:
        return {prefix: record}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}.{key}" if prefix else key))
    return out


def clean(value: Any) -> str | None:
    """A categorical value with GDC's placeholder tokens ("Not Reported", "--", …) mapped to None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return None if text.casefold() in _MISSING else text


def collapse_stage(stage: Any) -> str | None:
    """AJCC stage string -> I, II, III or IV ("Stage IIA" -> "II"); None for X/0/missing."""
    match = _STAGE.match(clean(stage) or "")
    return match.group(1).upper() if match else None


def collapse_tnm(value: Any, axis: str) -> str | None:
    """AJCC T/N/M -> its main category ("T1c" -> "T1", "N1a" -> "N1", "Tis"); None for X/missing."""
    match = _TNM[axis].match(clean(value) or "")
    if match is None:
        return None
    text = match.group(1)
    return "Tis" if text.lower() == "tis" else text.upper()


def primary_diagnosis_record(diagnoses: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The diagnosis describing the primary disease (flagged, else classified primary, else the first)."""
    for diag in diagnoses:
        if diag.get("diagnosis_is_primary_disease") is True:
            return diag
    for diag in diagnoses:
        if str(diag.get("classification_of_tumor", "")).lower() == "primary":
            return diag
    return diagnoses[0] if diagnoses else {}


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def derive(case: Mapping[str, Any]) -> dict[str, Any]:
    """The twelve derived clinical fields (+ ids) of one GDC case record."""
    demo = case.get("demographic") or {}
    diagnoses = case.get("diagnoses") or []
    diag = primary_diagnosis_record(diagnoses)
    age_days = _number(diag.get("age_at_diagnosis"))
    age_index = _number(demo.get("age_at_index"))
    birth = _number(demo.get("days_to_birth"))
    if age_days is not None:
        age = age_days / DAYS_PER_YEAR
    elif age_index is not None:
        age = age_index
    else:
        age = -birth / DAYS_PER_YEAR if birth is not None else math.nan
    vital = clean(demo.get("vital_status") or diag.get("vital_status"))
    death = _number(demo.get("days_to_death"))
    if death is None:
        death = next((d for d in (_number(x.get("days_to_death")) for x in diagnoses) if d is not None), None)
    follow = [_number(d.get("days_to_last_follow_up")) for d in diagnoses]
    follow += [_number(f.get("days_to_follow_up")) for f in case.get("follow_ups") or []]
    follow = [f for f in follow if f is not None]
    if death is not None:
        os_days, os_event = death, 1
    else:
        os_days = max(follow) if follow else math.nan
        os_event = int(vital is not None and vital.casefold() == "dead")
    project = case.get("project") or {}
    return {
        "case_id": case.get("case_id") or case.get("id"),
        "submitter_id": case.get("submitter_id"),
        "project_id": project.get("project_id") if isinstance(project, Mapping) else None,
        "age_years": float(age),
        "sex": (clean(demo.get("sex_at_birth")) or clean(demo.get("gender")) or "").lower() or None,
        "race": clean(demo.get("race")),
        "primary_diagnosis": clean(diag.get("primary_diagnosis")),
        "tissue_or_organ_of_origin": clean(diag.get("tissue_or_organ_of_origin")),
        "ajcc_stage": collapse_stage(diag.get("ajcc_pathologic_stage")),
        "ajcc_t": collapse_tnm(diag.get("ajcc_pathologic_t"), "t"),
        "ajcc_n": collapse_tnm(diag.get("ajcc_pathologic_n"), "n"),
        "ajcc_m": collapse_tnm(diag.get("ajcc_pathologic_m"), "m"),
        "tumor_grade": clean(diag.get("tumor_grade")),
        "vital_status": vital,
        "os_days": float(os_days),
        "os_event": os_event,
    }


def clinical_table(cases: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per case: derived columns first, then every raw field flattened (parquet-safe types)."""
    rows = []
    for case in cases:
        raw = {k: v for k, v in flatten(case).items() if k not in DERIVED_COLUMNS}
        rows.append({**derive(case), **raw})
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=list(DERIVED_COLUMNS))
    df = df.drop_duplicates("case_id").sort_values("submitter_id", na_position="last").reset_index(drop=True)
    for col in df.columns[len(DERIVED_COLUMNS) :]:
        df[col] = _parquet_safe(df[col])
    df["os_event"] = df["os_event"].astype("int64")
    return df


def _parquet_safe(col: pd.Series) -> pd.Series:
    """Numbers stay numeric; mixed or text columns become str with nulls kept (pyarrow rejects mixed objects)."""
    values = col.dropna()
    if values.map(lambda v: isinstance(v, bool)).all() and len(values):
        return col.astype("boolean")
    if values.map(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)).all():
        return pd.to_numeric(col)
    return col.map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
