"""Synthetic MIL cohorts for tests: the label depends on a few key instances in each positive bag.

Features and hierarchy h5 files follow DESIGN §2 (written with slidesnake.io.atomic.write_h5), so the
tests exercise the same readers as the pipeline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from slidesnake.io.atomic import write_h5

PATCH = 256  # level-0 size of a 20x patch on a 0.5 mpp slide


def synthetic_bag(
    rng: np.random.Generator, positive: bool, n: int, dim: int, n_key: int, signal: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(features (n, dim), coords (n, 2)) on a square 20x grid; positives get ``n_key`` adjacent key instances."""
    side = int(np.ceil(np.sqrt(n)))
    cells = np.stack(np.divmod(np.arange(side * side), side), axis=1)[:, ::-1][:n]  # (col, row) → (x, y)
    coords = (cells * PATCH).astype(np.int64)
    features = rng.normal(size=(n, dim)).astype(np.float32)
    if positive:
        start = rng.integers(0, n - n_key)
        features[start : start + n_key] += signal
    return features, coords


def hierarchy_from_flat(features: np.ndarray, coords: np.ndarray) -> dict[str, np.ndarray]:
    """Group 20x patches into 5x parents (4x4 blocks, child slot dy*4+dx) per the hierarchy contract."""
    parent = coords // (4 * PATCH)
    keys, inverse = np.unique(parent, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    n5, dim = len(keys), features.shape[1]
    out_f = np.zeros((n5, 16, dim), np.float32)
    out_c = np.zeros((n5, 16, 2), np.int64)
    mask = np.zeros((n5, 16), bool)
    slot = (coords[:, 1] // PATCH % 4) * 4 + coords[:, 0] // PATCH % 4
    out_f[inverse, slot] = features
    out_c[inverse, slot] = coords
    mask[inverse, slot] = True
    return {"features": out_f, "mask": mask, "coords": out_c, "parent_coords": (keys * 4 * PATCH).astype(np.int64)}


def write_cohort(
    root: Path,
    n_patients: int = 20,
    slides_per_patient: int = 1,
    n_instances: int = 64,
    dim: int = 32,
    n_key: int = 6,
    strength: float = 3.0,
    seed: int = 0,
    empty_slides: int = 0,
) -> tuple[pd.DataFrame, dict[str, str], dict[str, str]]:
    """Write a balanced two-class cohort; return (sheet, features paths, hierarchy paths).

    Patients alternate between class "neg" and "pos"; ``empty_slides`` extra slides have zero patches.
    """
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=dim)
    signal = (strength * signal / np.linalg.norm(signal)).astype(np.float32)
    rows, feats, hiers = [], {}, {}
    for p in range(n_patients):
        label = "pos" if p % 2 else "neg"
        for s in range(slides_per_patient):
            slide_id = f"S{p:03d}_{s}"
            features, coords = synthetic_bag(rng, label == "pos", n_instances, dim, n_key, signal)
            feats[slide_id] = _write(root, slide_id, features, coords)
            hiers[slide_id] = _write_hier(root, slide_id, features, coords)
            rows.append({"slide_id": slide_id, "case_id": f"P{p:03d}", "path": f"{slide_id}.svs", "label": label})
    for e in range(empty_slides):
        slide_id = f"EMPTY{e}"
        feats[slide_id] = _write(root, slide_id, np.zeros((0, dim), np.float32), np.zeros((0, 2), np.int64))
        hiers[slide_id] = _write_hier(root, slide_id, np.zeros((0, dim), np.float32), np.zeros((0, 2), np.int64))
        rows.append(
            {
                "slide_id": slide_id,
                "case_id": f"P{e:03d}",
                "path": f"{slide_id}.svs",
                "label": "pos" if e % 2 else "neg",
            }
        )
    return pd.DataFrame(rows).astype(str), feats, hiers


def _write(root: Path, slide_id: str, features: np.ndarray, coords: np.ndarray) -> str:
    path = root / "features" / f"{slide_id}.h5"
    write_h5(
        path,
        {"features": features, "coords": coords},
        {"encoder": "synthetic", "dim": features.shape[1], "normalized": False},
    )
    return str(path)


def _write_hier(root: Path, slide_id: str, features: np.ndarray, coords: np.ndarray) -> str:
    path = root / "hier" / f"{slide_id}.h5"
    write_h5(path, hierarchy_from_flat(features, coords), {"encoder": "synthetic", "dim": features.shape[1]})
    return str(path)
