"""Masked Somatic Mutation MAFs -> ``mutations.parquet``: per case, gene-level non-silent calls and TMB.

TMB counts non-silent (protein-altering) mutations per Mb of capture, the definition behind the common
10 mut/Mb threshold. One tumour aliquot per case is used (the first barcode in sort order, i.e. the
lowest sample code, 01 = primary tumour) so cases with several aliquots are not double counted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from slidesnake.data.gdc import GdcClient, GdcError, remote_file
from slidesnake.data.transfer import TransferConfig, download_many
from slidesnake.errors import InputError

log = logging.getLogger(__name__)

NON_SILENT = frozenset(
    {
        "Frame_Shift_Del", "Frame_Shift_Ins", "In_Frame_Del", "In_Frame_Ins", "Missense_Mutation",
        "Nonsense_Mutation", "Nonstop_Mutation", "Splice_Site", "Translation_Start_Site",
    }
)  # fmt: skip
MAF_COLUMNS = ("Hugo_Symbol", "Variant_Classification", "Tumor_Sample_Barcode", "Exon_Number", "case_id")
MAF_FIELDS = ("file_id", "file_name", "md5sum", "file_size", "cases.case_id", "cases.project.project_id")
DEFAULT_GENES = ("TP53", "EGFR", "KRAS", "ALK", "STK11", "KEAP1")


class MafError(InputError):
    """A MAF lacks the columns needed to build the mutation table."""


@dataclass
class MutationParams:
    """Genes to report and the capture size (Mb) that TMB divides by (38 Mb ~ the TCGA exome target)."""

    genes: Sequence[str] = field(default_factory=lambda: list(DEFAULT_GENES))
    capture_mb: float = 38.0


def maf_filters(projects: Sequence[str]) -> dict[str, Any]:
    """GDC filter for the open-access aliquot-level masked somatic MAFs of ``projects`` (as gdc-maf-tool)."""
    return {
        "op": "and",
        "content": [
            {"op": "in", "content": {"field": "cases.project.project_id", "value": list(projects)}},
            {"op": "in", "content": {"field": "data_format", "value": ["MAF"]}},
            {"op": "in", "content": {"field": "data_type", "value": ["Masked Somatic Mutation"]}},
            {
                "op": "in",
                "content": {
                    "field": "analysis.workflow_type",
                    "value": ["Aliquot Ensemble Somatic Variant Merging and Masking"],
                },
            },
        ],
    }


def query_mafs(client: GdcClient, projects: Sequence[str]) -> list[dict[str, Any]]:
    """The MAF file hits of ``projects``."""
    if not projects:
        raise GdcError("no projects to query: set gdc.projects (or --project), e.g. TCGA-LUAD")
    return list(client.search("files", maf_filters(projects), MAF_FIELDS))


def read_maf(path: str | Path) -> pd.DataFrame:
    """Read a (gzipped) MAF, skipping ``#`` pragma lines; only the columns the table needs, as str."""
    df = pd.read_csv(path, sep="\t", comment="#", dtype=str, keep_default_na=False, low_memory=False)
    missing = [c for c in MAF_COLUMNS if c not in df.columns and c != "case_id"]
    if missing:
        raise MafError(f"{path}: missing MAF column(s) {missing}; is this a GDC Masked Somatic Mutation MAF?")
    if "case_id" not in df.columns:
        log.warning("%s: no case_id column; using the 12-character barcode prefix as case id", path)
        df["case_id"] = df["Tumor_Sample_Barcode"].str[:12]
    return df[list(MAF_COLUMNS)]


def mutation_table(maf: pd.DataFrame, params: MutationParams | None = None, cases: Iterable[str] = ()) -> pd.DataFrame:
    """Wide table, one row per case: tmb, n_nonsilent, and per gene G: ``G`` (0/1), ``G__class``, ``G__exon``.

    ``cases`` adds cases whose MAF had no rows (zero mutations), so they get 0, not a missing row.
    """
    p = params or MutationParams()
    first_aliquot = maf.groupby("case_id")["Tumor_Sample_Barcode"].transform("min")
    maf = maf[maf["Tumor_Sample_Barcode"] == first_aliquot]
    hits = maf[maf["Variant_Classification"].isin(NON_SILENT)]
    all_cases = sorted(set(maf["case_id"]) | set(cases))
    out = pd.DataFrame({"case_id": all_cases})
    counts = hits.groupby("case_id").size()
    out["n_nonsilent"] = out["case_id"].map(counts).fillna(0).astype("int64")
    out["tmb"] = out["n_nonsilent"] / float(p.capture_mb)
    for gene in p.genes:
        rows = hits[hits["Hugo_Symbol"] == gene]
        by_case = rows.groupby("case_id")
        classes = by_case["Variant_Classification"].agg(_join_unique)
        exons = by_case["Exon_Number"].agg(_join_unique)
        out[gene] = out["case_id"].isin(classes.index).astype(np.int8)
        out[f"{gene}__class"] = out["case_id"].map(classes).fillna("")
        out[f"{gene}__exon"] = out["case_id"].map(exons).fillna("")
    return out


def _join_unique(values: pd.Series) -> str:
    return ";".join(dict.fromkeys(v for v in values if v))


def fetch_mutation_table(
    client: GdcClient,
    projects: Sequence[str],
    cache_dir: str | Path,
    params: MutationParams | None = None,
    config: TransferConfig | None = None,
) -> pd.DataFrame:
    """Find, download (verified, into ``cache_dir``) and combine the projects' MAFs into the wide table."""
    hits = query_mafs(client, projects)
    remotes = [
        remote_file(
            client.api, h["file_id"], Path(cache_dir) / h["file_name"], h.get("md5sum", ""), h.get("file_size", "")
        )
        for h in hits
    ]
    download_many(remotes, config=config)
    cases = [c["case_id"] for h in hits for c in h.get("cases") or [] if c.get("case_id")]
    frames = [read_maf(r.dest) for r in tqdm(remotes, desc="read MAF", unit="file")]
    maf = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(MAF_COLUMNS))
    log.info("%d MAF file(s), %d case(s), %d variant row(s)", len(remotes), len(set(cases)), len(maf))
    return mutation_table(maf, params, cases)
