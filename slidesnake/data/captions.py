"""Clinical captions for HLIP (DESIGN §3): one plain-words paragraph per case from its 12 derived clinical
fields, and the caption sets that retrieval queries with (each field alone, stage, survival bins).

The 12 fields are columns of ``clinical.parquet`` (slidesnake/data/clinical.py derives them from GDC; the
demo generator writes the same columns). Each field has one sentence template; a missing field
(null, NaN or a GDC placeholder such as "Not Reported") is left out, so a paragraph never says
"unknown". Everything is a pure function of the table: the same table gives the same captions.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from slidesnake.data.clinical import clean, collapse_stage, collapse_tnm

log = logging.getLogger(__name__)

STAGES = ("I", "II", "III", "IV")
DEFAULT_SURVIVAL_BINS = (0, 365, 730, 1825)  # days: < 1 year, 1-2 years, 2-5 years, >= 5 years
AGE_BAND_YEARS = 10


class CaptionError(ValueError):
    """A clinical table or caption setting that cannot give captions."""


def _text(value: Any) -> str | None:
    return clean(value)


def _lower(value: Any) -> str | None:
    text = clean(value)
    return text.lower() if text else None


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) or number < 0 else number


def age_band(value: Any) -> str | None:
    """Age in years -> "60 to 69 years"; None when missing."""
    years = _number(value)
    if years is None:
        return None
    low = int(years // AGE_BAND_YEARS) * AGE_BAND_YEARS
    return f"{low} to {low + AGE_BAND_YEARS - 1} years"


def _stage(value: Any) -> str | None:
    text = clean(value)
    if not text:
        return None
    stage = text.upper() if text.upper() in STAGES else collapse_stage(text)
    return f"stage {stage}" if stage else None


def _tnm(axis: str) -> Callable[[Any], str | None]:
    def fmt(value: Any) -> str | None:
        return collapse_tnm(value, axis)

    return fmt


def _grade(value: Any) -> str | None:
    text = clean(value)
    if not text or text.upper() in ("GX", "GB"):
        return None
    return text


def _days(value: Any) -> str | None:
    days = _number(value)
    return None if days is None else f"{int(round(days))} days"


@dataclass(frozen=True)
class Field:
    """One clinical field: its clinical.parquet column, how a value is written, and its sentence."""

    name: str
    column: str
    fmt: Callable[[Any], str | None]
    sentence: str  # with "{}" for the formatted value


FIELDS: tuple[Field, ...] = (
    Field("primary_diagnosis", "primary_diagnosis", _lower, "The primary diagnosis is {}."),
    Field("site", "tissue_or_organ_of_origin", _lower, "The tissue of origin is {}."),
    Field("stage", "ajcc_stage", _stage, "The tumour is {}."),
    Field("t", "ajcc_t", _tnm("t"), "The primary tumour category is {}."),
    Field("n", "ajcc_n", _tnm("n"), "The regional lymph node category is {}."),
    Field("m", "ajcc_m", _tnm("m"), "The distant metastasis category is {}."),
    Field("grade", "tumor_grade", _grade, "The tumour grade is {}."),
    Field("age", "age_years", age_band, "The patient was {} old at diagnosis."),
    Field("sex", "sex", _lower, "The patient is {}."),
    Field("race", "race", _lower, "The patient's race is {}."),
    Field("vital_status", "vital_status", _lower, "The vital status is {}."),
    Field("survival", "os_days", _days, "The overall survival time is {}."),
)
FIELD_NAMES = tuple(f.name for f in FIELDS)


def field_values(row: Mapping[str, Any]) -> dict[str, str]:
    """The formatted values of one case's present fields (missing ones absent), in FIELDS order."""
    out = {}
    for field in FIELDS:
        value = field.fmt(row.get(field.column))
        if value:
            out[field.name] = value
    return out


def field_order(fields: Sequence[str] | None = None) -> tuple[Field, ...]:
    """The caption fields in paragraph order: ``fields`` (names from FIELD_NAMES), or all 12 in FIELDS order."""
    if fields is None:
        return FIELDS
    unknown = [f for f in fields if f not in FIELD_NAMES]
    if unknown or not fields:
        raise CaptionError(f"vl.hlip.fields names unknown fields {unknown}; choose from {', '.join(FIELD_NAMES)}")
    by_name = {f.name: f for f in FIELDS}
    return tuple(by_name[f] for f in dict.fromkeys(fields))


def case_caption(row: Mapping[str, Any], fields: Sequence[str] | None = None) -> str:
    """One paragraph: a sentence per present field, in paragraph order; "" when every field is missing."""
    values = field_values(row)
    return " ".join(f.sentence.format(values[f.name]) for f in field_order(fields) if f.name in values)


def clinical_captions(
    clinical: pd.DataFrame, case_ids: Sequence[str] | None = None, fields: Sequence[str] | None = None
) -> pd.DataFrame:
    """One row per case: case_id, caption, n_fields, and each formatted field (null when missing).

    ``fields`` orders (and may subset) the paragraph's sentences; the field columns keep all 12.
    ``case_ids`` (e.g. the slide sheet's) lists the cases that need a caption: one without a clinical
    record, or whose fields are all missing, is logged by name and dropped, and the cohort goes on.
    """
    if "case_id" not in clinical.columns:
        raise CaptionError("clinical table has no 'case_id' column; it must be a clinical.parquet of the pipeline")
    present = [f.column for f in FIELDS if f.column in clinical.columns]
    if not present:
        raise CaptionError(
            f"clinical table has none of the 12 caption fields ({', '.join(f.column for f in FIELDS)}); "
            "write it with the clinical rule (slidesnake/data/clinical.py)"
        )
    records = {str(r["case_id"]): r for r in clinical.drop_duplicates("case_id").to_dict("records")}
    wanted = list(dict.fromkeys(str(c) for c in case_ids)) if case_ids is not None else sorted(records)
    rows, no_record, empty = [], [], []
    for case_id in wanted:
        record = records.get(case_id)
        if record is None:
            no_record.append(case_id)
            continue
        values = field_values(record)
        if not values:
            empty.append(case_id)
            continue
        rows.append(
            {
                "case_id": case_id,
                "caption": case_caption(record, fields),
                "n_fields": len(values),
                **{name: values.get(name) for name in FIELD_NAMES},
            }
        )
    if no_record:
        log.warning("%d case(s) have no clinical record and get no caption: %s", len(no_record), ", ".join(no_record))
    if empty:
        log.warning(
            "%d case(s) have all 12 caption fields missing and get no caption: %s", len(empty), ", ".join(empty)
        )
    columns = ["case_id", "caption", "n_fields", *FIELD_NAMES]
    out = pd.DataFrame(rows, columns=columns)
    return out.astype({"case_id": str, "caption": str, "n_fields": "int64"})


# ----------------------------------------------------------------------------------- query caption sets


def field_query_captions(captions: pd.DataFrame) -> pd.DataFrame:
    """Retrieval queries, each field alone: one row per (field, value) seen in ``captions``, with the
    field's sentence as the query text; sorted, so the set is deterministic."""
    rows = []
    for field in FIELDS:
        if field.name not in captions.columns or field.name == "survival":
            continue  # survival days are near-unique per case: the survival bins query them instead
        for value in sorted(captions[field.name].dropna().unique()):
            rows.append({"field": field.name, "value": value, "caption": field.sentence.format(value)})
    return pd.DataFrame(rows, columns=["field", "value", "caption"])


def stage_captions() -> pd.DataFrame:
    """The four stage queries ("The tumour is stage I." … "stage IV"), with the stage they name."""
    stage = next(f for f in FIELDS if f.name == "stage")
    return pd.DataFrame(
        {"stage": list(STAGES), "caption": [stage.sentence.format(f"stage {s}") for s in STAGES]},
    )


def survival_bins(edges: Sequence[float] = DEFAULT_SURVIVAL_BINS) -> pd.DataFrame:
    """Survival bins from increasing edges in days (the last bin is open): low, high, representative
    days (the bin's midpoint; the open bin's lower edge x 1.5), and the query caption."""
    edges = [float(e) for e in edges]
    if len(edges) < 2 or edges[0] < 0 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise CaptionError(f"vl.hlip.survival_bins must be at least two increasing day counts >= 0, got {list(edges)}")
    rows = []
    survival = next(f for f in FIELDS if f.name == "survival")
    for i, low in enumerate(edges):
        high = edges[i + 1] if i + 1 < len(edges) else math.inf
        if math.isinf(high):
            words, days = f"more than {int(low)} days", low * 1.5
        else:
            words, days = f"between {int(low)} and {int(high)} days", (low + high) / 2
        rows.append({"bin": i, "low": low, "high": high, "days": days, "caption": survival.sentence.format(words)})
    return pd.DataFrame(rows)


def survival_bin_of(days: Any, bins: pd.DataFrame) -> int | None:
    """Index of the bin holding ``days`` (None when missing)."""
    value = _number(days)
    if value is None:
        return None
    hits = bins.index[(bins["low"] <= value) & (value < bins["high"])]
    return int(bins.loc[hits[0], "bin"]) if len(hits) else 0


def case_sentences(
    captions: pd.DataFrame, survival_edges: Sequence[float] = DEFAULT_SURVIVAL_BINS
) -> dict[str, list[str]]:
    """Each case's present fields as single sentences, worded exactly as the retrieval queries are
    (:func:`field_query_captions`, :func:`stage_captions`; survival as its bin's caption from
    :func:`survival_bins`, not the exact days): the sentence views that HLIP tuning samples.

    ``captions`` is the table of :func:`clinical_captions` (one column per formatted field).
    """
    bins = survival_bins(survival_edges)
    out: dict[str, list[str]] = {}
    for row in captions.to_dict("records"):
        sentences = []
        for field in FIELDS:
            value = clean(row.get(field.name))
            if not value:
                continue
            if field.name == "survival":  # formatted by _days as "<n> days"
                b = survival_bin_of(value.split()[0], bins)
                if b is not None:
                    sentences.append(str(bins["caption"].iloc[b]))
            else:
                sentences.append(field.sentence.format(value))
        out[str(row["case_id"])] = sentences
    return out


# -------------------------------------------------------------------------------- tokenizer context


def count_overlong(texts: Sequence[str], tokenizer: Any, context_length: int | None = None) -> int:
    """How many of ``texts`` exceed the tokenizer's context (start/end tokens included).

    Works with open_clip tokenizers (``encode`` + ``context_length``) and Hugging Face tokenizers
    (``__call__`` with ``model_max_length``); ``context_length`` overrides what the tokenizer says.
    """
    if hasattr(tokenizer, "bpe") and hasattr(tokenizer, "context_length"):  # open_clip SimpleTokenizer
        limit = context_length or int(tokenizer.context_length)
        lengths = [len(tokenizer.encode(t)) + 2 for t in texts]
    elif hasattr(tokenizer, "tokenizer") and hasattr(tokenizer, "context_length"):  # open_clip HFTokenizer
        limit = context_length or int(tokenizer.context_length)
        lengths = [len(ids) for ids in tokenizer.tokenizer(list(texts))["input_ids"]]
    else:
        limit = context_length or int(tokenizer.model_max_length)
        lengths = [len(ids) for ids in tokenizer(list(texts))["input_ids"]]
    return sum(n > limit for n in lengths)


def log_truncation(texts: Sequence[str], tokenizer: Any, what: str, context_length: int | None = None) -> int:
    """Log (warning) how many ``texts`` the tokenizer will truncate to its context; returns the count."""
    n = count_overlong(texts, tokenizer, context_length)
    if n:
        log.warning("%d of %d %s are longer than the text tower's context and are truncated to it", n, len(texts), what)
    return n


def write_clinical_captions(
    clinical_parquet: str, out_parquet: str, sheet_tsv: str | None = None, fields: Sequence[str] | None = None
) -> pd.DataFrame:
    """Captions of the sheet's cases (or every case of the table) -> parquet, atomically."""
    from slidesnake.io.atomic import write_parquet
    from slidesnake.sheet import read_sheet

    case_ids = list(read_sheet(sheet_tsv)["case_id"]) if sheet_tsv else None
    captions = clinical_captions(pd.read_parquet(clinical_parquet), case_ids, fields)
    write_parquet(out_parquet, captions)
    log.info(
        "%d clinical captions (median %d fields) -> %s",
        len(captions),
        captions["n_fields"].median() if len(captions) else 0,
        out_parquet,
    )
    return captions
