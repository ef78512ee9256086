"""Visium folders (GEO flat mtx + headerless positions; Space Ranger h5 + headed positions) -> AnnData."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from _visium_fixtures import COUNTS, SCALEFACTORS, geo_files, positions_csv, write_h5

from slidesnake.data.visium import VisiumError, find_visium_files, read_visium, write_h5ad

EXPECTED_XY = np.array([[420.0, 110.0], [310.0, 300.0], [205.0, 505.0]])


def check(adata: ad.AnnData) -> None:
    assert adata.shape == (3, 4)
    assert adata.obs_names.tolist() == ["AAAC-1", "AAAG-1", "AAAT-1"]
    assert adata.var_names.tolist() == ["MT1", "APOA1", "ALB", "ALB-1"]
    assert adata.var["gene_ids"].tolist() == ["ENSG01", "ENSG02", "ENSG03", "ENSG04"]
    np.testing.assert_array_equal(adata.X.toarray(), COUNTS.T)
    np.testing.assert_array_equal(adata.obsm["spatial"], EXPECTED_XY)
    assert adata.obs["array_row"].tolist() == [0, 1, 2] and adata.obs["in_tissue"].tolist() == [1, 1, 1]


def test_geo_flat_mtx_layout(tmp_path):
    for name, data in geo_files("GSM1_C73A1").items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "GSM1_GEX_C73_A1_Merged.tiff.gz").write_bytes(b"img")
    (tmp_path / "GSM2_C73B1_tissue_positions_list.csv.gz").write_bytes(b"")  # another sample: must be ignored
    files = find_visium_files(tmp_path, "GSM1")
    adata = read_visium(files, "GSM1")
    check(adata)
    assert adata.uns["spatial"]["GSM1"]["scalefactors"] == SCALEFACTORS
    assert adata.uns["spatial"]["GSM1"]["metadata"]["source_image_path"].endswith("GSM1_GEX_C73_A1_Merged.tiff.gz")
    write_h5ad(adata, tmp_path / "out" / "GSM1.h5ad")
    check(ad.read_h5ad(tmp_path / "out" / "GSM1.h5ad"))


def test_spaceranger_h5_with_header_positions(tmp_path):
    (tmp_path / "spatial").mkdir()
    write_h5(tmp_path / "filtered_feature_bc_matrix.h5")
    (tmp_path / "spatial" / "tissue_positions.csv").write_text(positions_csv(header=True))
    files = find_visium_files(tmp_path)
    assert files.matrix_h5 is not None and files.scalefactors is None
    check(read_visium(files))


def test_barcode_without_position_is_an_error(tmp_path):
    write_h5(tmp_path / "filtered_feature_bc_matrix.h5")
    (tmp_path / "tissue_positions_list.csv").write_text(positions_csv(header=False).replace("AAAT-1", "ZZZZ-1"))
    with pytest.raises(VisiumError, match="1 matrix barcode"):
        read_visium(find_visium_files(tmp_path))


def test_missing_positions_names_the_folder(tmp_path):
    with pytest.raises(VisiumError, match="tissue_positions"):
        find_visium_files(tmp_path)
