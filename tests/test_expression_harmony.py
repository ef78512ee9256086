"""Optional Harmony batch correction by section (expression.harmony): a section offset is removed, the
biology under it is kept, and a fold's training targets and its measured truth are the corrected values."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from slidesnake.models.expression.data import harmonize, normalise


def _sections(n_spots=300, n_genes=40, shifted=range(10), factor=4.0, seed=0):
    """Three sections with the same two spot kinds (program genes 20-29 up in kind 1); section 'C' has
    ``factor`` x the counts of the ``shifted`` genes (a section-wide offset of log(factor) after log1p)."""
    rng = np.random.default_rng(seed)
    out, kinds = {}, {}
    for name in ("A", "B", "C"):
        kind = rng.random(n_spots) < 0.5
        rate = np.full((n_spots, n_genes), 20.0)
        rate[np.ix_(kind, np.arange(20, 30))] *= 6.0
        if name == "C":
            rate[:, list(shifted)] *= factor
        counts = rng.poisson(rate * rng.lognormal(0, 0.1, (n_spots, 1))).astype(np.float32)
        adata = ad.AnnData(sp.csr_matrix(counts), var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))
        adata.obs_names = [f"{name}-{i}" for i in range(n_spots)]
        out[name], kinds[name] = normalise(adata), kind
    return out, kinds


def _offset(values: dict[str, np.ndarray], genes) -> float:
    """Mean over ``genes`` of section C's mean minus the mean of sections A and B."""
    genes = list(genes)
    ref = np.concatenate([values["A"][:, genes], values["B"][:, genes]]).mean(axis=0)
    return float((values["C"][:, genes].mean(axis=0) - ref).mean())


def test_harmony_removes_a_section_offset_and_keeps_the_biology():
    sections, kinds = _sections()
    genes = list(next(iter(sections.values())).var_names)
    before = {n: np.asarray(a.X.toarray() if sp.issparse(a.X) else a.X) for n, a in sections.items()}
    after = harmonize(sections, genes, seed=0)
    assert {n: m.shape for n, m in after.items()} == {n: m.shape for n, m in before.items()}
    shift = _offset(before, range(10))
    assert shift > 0.8  # log(4) ~ 1.39, less what normalize_total takes: the offset is there before
    assert abs(_offset(after, range(10))) < 0.2 * shift  # and mostly gone after
    # normalize_total pushed C's other genes down (library composition): Harmony removes that too
    assert _offset(before, range(30, 40)) < -0.3 and abs(_offset(after, range(30, 40))) < 0.1
    for name in after:  # the spot-kind program survives in every section (C included)
        program = after[name][:, 20:30].mean(axis=1)
        assert program[kinds[name]].mean() - program[~kinds[name]].mean() > 0.8
        r = np.corrcoef(program, kinds[name])[0, 1]
        assert r > 0.9, (name, r)


def test_harmony_output_is_in_spot_order_of_each_section():
    """The corrected rows are the section's own spots, in its order: shuffle one section, same rows move."""
    sections, _ = _sections(n_spots=120)
    genes = list(next(iter(sections.values())).var_names)
    order = np.random.default_rng(1).permutation(120)
    shuffled = dict(sections, B=sections["B"][order].copy())
    a, b = harmonize(sections, genes, seed=0), harmonize(shuffled, genes, seed=0)
    raw_b = np.asarray(sections["B"].X.toarray())
    # each corrected spot stays closest to its own uncorrected profile (a row mix-up would break this)
    nearest = np.argmin(((b["B"][:, None, :] - raw_b[order][None, :, :]) ** 2).sum(-1), axis=1)
    assert (nearest == np.arange(120)).mean() > 0.95
    np.testing.assert_allclose(b["B"], a["B"][order], atol=0.15)
