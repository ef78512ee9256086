"""Expression preprocessing and gene selection (HECLIP's recipe, with its row-misalignment defect fixed).

Sections are filtered (all-zero genes and spots dropped, each drop logged with the file and count),
restricted to the genes every section has, normalised (``normalize_total`` + ``log1p``, scanpy) per
section, and optionally batch-corrected with Harmony (harmonypy, batch = section). HVG: per section
``highly_variable_genes(n_top)`` on the normalised data, union over sections; HEG: per section top
``n_top`` genes by mean normalised expression, union. Everything is indexed by barcode and gene name,
never by row position.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

from slidesnake.io.atomic import write_csv

log = logging.getLogger(__name__)

SELECTIONS = ("hvg", "heg", "hvg+heg", "all")


class ExpressionDataError(ValueError):
    """Sections that cannot be combined (no shared genes, too few sections, no spots left)."""


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float32)


def clean_section(adata: ad.AnnData, name: str) -> ad.AnnData:
    """Drop all-zero spots and genes (and duplicated barcodes' ambiguity is an error), logging counts."""
    if not adata.obs_names.is_unique:
        raise ExpressionDataError(f"{name}: {int(adata.obs_names.duplicated().sum())} duplicated barcode(s)")
    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    zero_spots = int((totals == 0).sum())
    if zero_spots:
        log.warning("%s: dropped %d all-zero spot(s) of %d", name, zero_spots, adata.n_obs)
    adata = adata[totals > 0].copy()
    if adata.n_obs == 0:
        raise ExpressionDataError(f"{name}: every spot has zero counts")
    gene_totals = np.asarray(adata.X.sum(axis=0)).ravel()
    zero_genes = int((gene_totals == 0).sum())
    if zero_genes:
        log.info("%s: dropped %d all-zero gene(s) of %d", name, zero_genes, adata.n_vars)
    return adata[:, gene_totals > 0].copy()


def normalise(adata: ad.AnnData, target_sum: float | None = 1e4, log1p: bool = True) -> ad.AnnData:
    """normalize_total (None: skip, HEST uses log1p only) then log1p, on a copy; counts kept in layers."""
    adata = adata.copy()
    adata.layers["counts"] = adata.X.copy()
    if target_sum is not None:
        sc.pp.normalize_total(adata, target_sum=target_sum)
    if log1p:
        sc.pp.log1p(adata)
    return adata


def load_sections(paths: Mapping[str, str | os.PathLike], target_sum: float | None = 1e4) -> dict[str, ad.AnnData]:
    """Read, clean and normalise each section h5ad; restrict all to the genes they share (logged)."""
    if not paths:
        raise ExpressionDataError("no sections given")
    sections = {name: clean_section(ad.read_h5ad(path), f"{path}") for name, path in paths.items()}
    shared = None
    for a in sections.values():
        shared = a.var_names if shared is None else shared.intersection(a.var_names, sort=False)
    if shared is None or len(shared) == 0:
        raise ExpressionDataError(f"sections {list(paths)} share no gene names")
    for name, a in sections.items():
        if a.n_vars != len(shared):
            log.info("%s: %d gene(s) not in every section dropped", paths[name], a.n_vars - len(shared))
    return {name: normalise(a[:, shared].copy(), target_sum) for name, a in sections.items()}


def hvg_genes(sections: Mapping[str, ad.AnnData], n_top: int) -> list[str]:
    """Union over sections of each section's top ``n_top`` highly variable genes (normalised data)."""
    union: list[str] = []
    for a in sections.values():
        work = a.copy()
        sc.pp.highly_variable_genes(work, n_top_genes=min(n_top, work.n_vars))
        union += [g for g in work.var_names[work.var["highly_variable"].to_numpy()] if g not in union]
    return union


def heg_genes(sections: Mapping[str, ad.AnnData], n_top: int) -> list[str]:
    """Union over sections of each section's top ``n_top`` genes by mean normalised expression."""
    union: list[str] = []
    for a in sections.values():
        mean = np.asarray(a.X.mean(axis=0)).ravel()
        order = np.argsort(-mean, kind="stable")[:n_top]
        union += [g for g in a.var_names[order] if g not in union]
    return union


def select_genes(
    sections: Mapping[str, ad.AnnData],
    selection: str = "hvg",
    n_hvg: int = 1000,
    n_heg: int = 3200,
    include: Sequence[str] = (),
) -> pd.DataFrame:
    """The gene table of a fold (from its training sections): gene, hvg, heg, include, selected."""
    if selection not in SELECTIONS:
        raise ExpressionDataError(f"config key 'expression.genes' is {selection!r}; use one of {SELECTIONS}")
    genes = list(next(iter(sections.values())).var_names)
    hvg, heg = set(hvg_genes(sections, n_hvg)), set(heg_genes(sections, n_heg))
    missing = [g for g in include if g not in genes]
    if missing:
        log.warning("%d marker/include gene(s) not in every section, skipped: %s", len(missing), missing[:10])
    table = pd.DataFrame({"gene": genes})
    table["hvg"] = table["gene"].isin(hvg)
    table["heg"] = table["gene"].isin(heg)
    table["include"] = table["gene"].isin(set(include))
    chosen = {"hvg": table["hvg"], "heg": table["heg"], "hvg+heg": table["hvg"] | table["heg"]}.get(
        selection, pd.Series(True, index=table.index)
    )
    table["selected"] = chosen | table["include"]
    return table


def write_gene_table(table: pd.DataFrame, path: str | os.PathLike) -> None:
    write_csv(path, table, sep="\t")


def read_gene_list(path: str | os.PathLike) -> list[str]:
    table = pd.read_csv(path, sep="\t")
    return table.loc[table["selected"].astype(bool), "gene"].tolist()


def harmonize(sections: Mapping[str, ad.AnnData], genes: Sequence[str], seed: int = 0) -> dict[str, np.ndarray]:
    """Harmony (harmonypy) on the concatenated normalised matrices, batch = section; per section (spots, genes)."""
    import harmonypy

    names = list(sections)
    mats = [_dense(sections[n][:, list(genes)].X) for n in names]
    data = np.concatenate(mats)
    meta = pd.DataFrame({"section": np.repeat(names, [len(m) for m in mats])})
    corrected = harmonypy.run_harmony(data, meta, "section", random_state=seed).Z_corr
    corrected = np.asarray(corrected).T if np.asarray(corrected).shape[0] == len(genes) else np.asarray(corrected)
    out, start = {}, 0
    for n, m in zip(names, mats):
        out[n] = corrected[start : start + len(m)].astype(np.float32)
        start += len(m)
    return out


def expression_matrix(adata: ad.AnnData, genes: Sequence[str], barcodes: Sequence[str]) -> np.ndarray:
    """(len(barcodes), len(genes)) normalised expression, rows by barcode, columns by gene name."""
    missing = [b for b in barcodes if b not in adata.obs_names]
    if missing:
        raise ExpressionDataError(f"{len(missing)} barcode(s) with features have no expression, e.g. {missing[0]}")
    absent = [g for g in genes if g not in adata.var_names]
    if absent:
        raise ExpressionDataError(f"{len(absent)} gene(s) of the gene list are not measured, e.g. {absent[0]}")
    return _dense(adata[list(barcodes), list(genes)].X)


def section_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    return [Path(p).stem for p in paths]
