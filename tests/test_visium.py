"""Visium folders (GEO flat mtx + headerless positions; Space Ranger h5 + headed positions) -> AnnData."""

from __future__ import annotations

import json

import anndata as ad
import cv2
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import scanpy as sc
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


def spaceranger_folder(root):
    (root / "spatial").mkdir(parents=True)
    write_h5(root / "filtered_feature_bc_matrix.h5")
    (root / "spatial" / "tissue_positions.csv").write_text(positions_csv(header=True))
    (root / "spatial" / "scalefactors_json.json").write_text(json.dumps(SCALEFACTORS))
    rng = np.random.default_rng(0)
    for name, side in (("tissue_hires_image.png", 90), ("tissue_lowres_image.png", 27)):
        cv2.imwrite(str(root / "spatial" / name), rng.integers(0, 255, (side, side, 3), dtype=np.uint8))
    return root


def test_spaceranger_h5_with_header_positions(tmp_path):
    files = find_visium_files(spaceranger_folder(tmp_path))
    assert files.matrix_h5 is not None and files.scalefactors is not None and files.hires is not None
    adata = read_visium(files, "S1")
    check(adata)
    images = adata.uns["spatial"]["S1"]["images"]
    assert images["hires"].shape == (90, 90, 3) and images["lowres"].shape == (27, 27, 3)
    # pairs (row 0, col 0 -> 2) and (row 2, col 0 -> 2), off-tissue spots included: 100 µm each
    expected = 100 / np.median([np.hypot(220, 10), np.hypot(225, 5)])
    assert adata.uns["spatial"]["S1"]["pitch_mpp"] == pytest.approx(expected)


def test_scanpy_spatial_plot_renders_our_anndata(tmp_path):
    """sc.pl.spatial finds uns["spatial"][library]["images"] and scale factors where scanpy's reader puts them."""
    matplotlib.use("Agg")
    adata = read_visium(find_visium_files(spaceranger_folder(tmp_path)), "S1")
    write_h5ad(adata, tmp_path / "S1.h5ad")
    adata = ad.read_h5ad(tmp_path / "S1.h5ad")
    for img_key in ("hires", "lowres"):
        axes = sc.pl.spatial(adata, color="ALB", img_key=img_key, show=False)
        assert axes[0].images, f"no image drawn for {img_key}"
    plt.close("all")


def test_missing_scalefactors_is_an_error_naming_the_file(tmp_path):
    root = spaceranger_folder(tmp_path)
    (root / "spatial" / "scalefactors_json.json").unlink()
    with pytest.raises(VisiumError, match="no scalefactors_json.json beside .*tissue_positions.csv"):
        read_visium(find_visium_files(root))
    (root / "spatial" / "scalefactors_json.json").write_text(json.dumps({"spot_diameter_fullres": 9.0}))
    with pytest.raises(VisiumError, match="missing scale factor"):
        read_visium(find_visium_files(root))


def test_matrix_barcodes_joined_by_name_not_row_order(tmp_path):
    root = spaceranger_folder(tmp_path)
    lines = positions_csv(header=True).splitlines()
    (root / "spatial" / "tissue_positions.csv").write_text("\n".join([lines[0], *lines[1:][::-1]]) + "\n")
    check(read_visium(find_visium_files(root)))


def test_barcode_without_position_is_an_error(tmp_path):
    write_h5(tmp_path / "filtered_feature_bc_matrix.h5")
    (tmp_path / "tissue_positions_list.csv").write_text(positions_csv(header=False).replace("AAAT-1", "ZZZZ-1"))
    with pytest.raises(VisiumError, match="1 matrix barcode"):
        read_visium(find_visium_files(tmp_path))


def test_missing_positions_names_the_folder(tmp_path):
    with pytest.raises(VisiumError, match="tissue_positions"):
        find_visium_files(tmp_path)
