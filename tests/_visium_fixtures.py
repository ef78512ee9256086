"""A tiny real-format 10x Visium sample (3 in-tissue spots of 5, 4 genes) as mtx triplet and as v3 h5."""

from __future__ import annotations

import gzip
import io
import json

import h5py
import numpy as np
import scipy.io
import scipy.sparse as sp

BARCODES = ["AAAC-1", "AAAG-1", "AAAT-1"]
GENE_IDS = ["ENSG01", "ENSG02", "ENSG03", "ENSG04"]
GENE_NAMES = ["MT1", "APOA1", "ALB", "ALB"]  # duplicate symbol on purpose
# genes x spots counts, as 10x stores them
COUNTS = np.array([[1, 0, 2], [0, 0, 3], [5, 1, 0], [0, 4, 0]], dtype=np.int64)
POSITIONS = [  # barcode, in_tissue, array_row, array_col, pxl_row_in_fullres, pxl_col_in_fullres
    ("AAAA-1", 0, 0, 0, 100, 200),
    ("AAAC-1", 1, 0, 2, 110, 420),
    ("AAAG-1", 1, 1, 1, 300, 310),
    ("AAAT-1", 1, 2, 0, 505, 205),
    ("AACC-1", 0, 2, 2, 500, 430),
]
SCALEFACTORS = {"spot_diameter_fullres": 96.4, "tissue_hires_scalef": 0.15, "fiducial_diameter_fullres": 144.6,
                "tissue_lowres_scalef": 0.045}  # fmt: skip


def gz(text: str) -> bytes:
    return gzip.compress(text.encode())


def positions_csv(header: bool) -> str:
    head = "barcode,in_tissue,array_row,array_col,pxl_row_in_fullres,pxl_col_in_fullres\n" if header else ""
    return head + "".join(",".join(map(str, row)) + "\n" for row in POSITIONS)


def mtx_bytes() -> bytes:
    buf = io.BytesIO()
    scipy.io.mmwrite(buf, sp.coo_matrix(COUNTS))
    return gzip.compress(buf.getvalue())


def geo_files(prefix: str) -> dict[str, bytes]:
    """GEO-style flat, prefixed, gzipped sample files (as GSE240429 publishes them)."""
    return {
        f"{prefix}_matrix.mtx.gz": mtx_bytes(),
        f"{prefix}_barcodes.tsv.gz": gz("".join(b + "\n" for b in BARCODES)),
        f"{prefix}_features.tsv.gz": gz("".join(f"{i}\t{n}\tGene Expression\n" for i, n in zip(GENE_IDS, GENE_NAMES))),
        f"{prefix}_tissue_positions_list.csv.gz": gz(positions_csv(header=False)),
        f"{prefix}_scalefactors_json.json": json.dumps(SCALEFACTORS).encode(),
    }


def write_h5(path) -> None:
    """A Space Ranger v3 ``filtered_feature_bc_matrix.h5``."""
    csc = sp.csc_matrix(COUNTS)
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m["data"], m["indices"], m["indptr"] = csc.data, csc.indices, csc.indptr
        m["shape"] = np.array(COUNTS.shape, dtype=np.int32)
        m["barcodes"] = np.array([b.encode() for b in BARCODES])
        m["features/id"] = np.array([g.encode() for g in GENE_IDS])
        m["features/name"] = np.array([g.encode() for g in GENE_NAMES])
