"""Synthetic Visium sections: real Space Ranger formats (scanpy reads them), both positions layouts,
55 µm spots on a 100 µm pitch, expression a known function of morphology; the reader and spot tiles."""

from __future__ import annotations

import json

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

from slidesnake.data.demo_visium import (
    DemoVisiumConfig,
    DemoVisiumError,
    demo_truth,
    section_ids,
    simulate_counts,
    write_section,
)
from slidesnake.data.visium import find_visium_files, read_visium, write_h5ad
from slidesnake.tissue.spots import (
    SpotsError,
    barcodes_of_features,
    read_spot_coords,
    write_spot_coords,
    write_spot_tiles,
)

CFG = DemoVisiumConfig(n_sections=2, size_um=1200.0, n_genes=30, n_noise=4)


@pytest.fixture(scope="module")
def sections(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_visium")
    out = {}
    for s in section_ids(CFG):
        write_section(CFG, s, root / s)
        adata = read_visium(find_visium_files(root / s), s)
        write_h5ad(adata, root / f"{s}.h5ad")
        out[s] = (root / s, root / f"{s}.h5ad")
    return out


def test_space_ranger_formats_read_by_scanpy(sections):
    (first, _), (second, _) = sections.values()
    assert (first / "outs" / "spatial" / "tissue_positions.csv").exists()  # Space Ranger >= 2, header
    assert (second / "outs" / "spatial" / "tissue_positions_list.csv").exists()  # older, no header
    ref = sc.read_10x_h5(first / "outs" / "filtered_feature_bc_matrix.h5")
    ours = read_visium(find_visium_files(first), "x")
    assert ref.obs_names.tolist() == ours.obs_names.tolist() and ref.var_names.tolist() == ours.var_names.tolist()
    np.testing.assert_array_equal(ref.X.toarray(), ours.X.toarray())
    scale = json.loads((first / "outs" / "spatial" / "scalefactors_json.json").read_text())
    assert scale["spot_diameter_fullres"] == pytest.approx(65 / CFG.mpp)  # Space Ranger's 65 µm convention
    for which in ("hires", "lowres"):
        img = ours.uns["spatial"]["x"]["images"][which]
        assert img.shape[0] == round(scale[f"tissue_{which}_scalef"] * CFG.size_um / CFG.mpp)


def test_spot_pitch_and_diameter(sections):
    adata = ad.read_h5ad(next(iter(sections.values()))[1])
    assert adata.uns["spatial"][next(iter(adata.uns["spatial"]))]["pitch_mpp"] == pytest.approx(CFG.mpp, rel=0.01)


def test_expression_follows_morphology_and_noise_does_not():
    rng = np.random.default_rng(0)
    dens = rng.dirichlet([1, 1, 1], size=4000)
    counts = simulate_counts(CFG, section_ids(CFG)[0], dens).astype(float)
    share = counts / counts.sum(axis=1, keepdims=True)
    genes = demo_truth_table()
    solid_gene = genes.index[0]  # the solid marker
    assert np.corrcoef(dens[:, 0], share[:, 0])[0, 1] > 0.5, solid_gene
    noise = np.where(genes["kind"] == "noise")[0]
    for j in noise:
        assert max(abs(np.corrcoef(dens[:, k], share[:, j])[0, 1]) for k in range(3)) < 0.1
    lib = counts.sum(axis=1)
    assert lib.std() / lib.mean() > 0.2  # library-size variation


def demo_truth_table():
    from slidesnake.data.demo_visium import gene_table

    return gene_table(CFG).set_index("gene")


def test_truth_is_joined_by_barcode(sections):
    folder, h5ad = next(iter(sections.values()))
    spots, genes = demo_truth(folder)
    adata = ad.read_h5ad(h5ad)
    assert set(spots.index) == set(adata.obs_names) and list(genes.index) == list(adata.var_names)


def test_spot_tiles_are_centred_and_fixed_size(sections, tmp_path):
    folder, h5ad = next(iter(sections.values()))
    image = find_visium_files(folder).image
    counts = write_spot_coords(h5ad, image, tmp_path / "spots.h5", tile_um=112, target_mpp=0.5)
    coords, barcodes, attrs = read_spot_coords(tmp_path / "spots.h5")
    assert counts["ok"] == len(coords) > 20 and attrs["patch_size"] == 224 and attrs["patch_size_level0"] == 224
    adata = ad.read_h5ad(h5ad)
    xy = pd.DataFrame(adata.obsm["spatial"], index=adata.obs_names).loc[barcodes].to_numpy()
    np.testing.assert_allclose(coords + 112, xy, atol=1)  # top-left + half a tile = the spot centre
    # 56 µm at 1 µm/px: a coarser read keeps the physical size
    write_spot_coords(h5ad, image, tmp_path / "s2.h5", tile_um=56, target_mpp=1.0)
    _, _, a2 = read_spot_coords(tmp_path / "s2.h5")
    assert a2["patch_size"] == 56 and a2["patch_size_level0"] == 112
    n = write_spot_tiles(image, tmp_path / "s2.h5", tmp_path / "tiles.h5")
    with h5py.File(tmp_path / "tiles.h5") as f:
        assert f["tiles"].shape == (n, 56, 56, 3) and f["tiles"].dtype == np.uint8


def test_features_join_spots_by_corner_not_row_order(sections, tmp_path):
    folder, h5ad = next(iter(sections.values()))
    write_spot_coords(h5ad, find_visium_files(folder).image, tmp_path / "spots.h5")
    coords, barcodes, _ = read_spot_coords(tmp_path / "spots.h5")
    order = np.arange(len(coords))[::-1]
    with h5py.File(tmp_path / "feats.h5", "w") as f:
        f["coords"] = coords[order]
        f["features"] = order[:, None].astype(np.float32)
    feats, codes = barcodes_of_features(tmp_path / "feats.h5", tmp_path / "spots.h5")
    assert codes == [barcodes[i] for i in order] and feats[0, 0] == order[0]


def test_off_image_spots_reported_and_wrong_image_is_an_error(sections, tmp_path):
    (f1, h1), (f2, _) = sections.values()
    adata = ad.read_h5ad(h1)
    adata.obsm["spatial"] = adata.obsm["spatial"].copy()
    adata.obsm["spatial"][0] = [-500, -500]  # one spot off the image: dropped, reported
    counts = write_spot_coords(adata, find_visium_files(f1).image, tmp_path / "a.h5")
    assert counts["off_image"] == 1
    with h5py.File(tmp_path / "a.h5") as f:
        assert f["dropped_reason"][()].tolist() == [b"off_image"]
    shifted = ad.read_h5ad(h1)
    shifted.obsm["spatial"] = shifted.obsm["spatial"] * 3  # positions of a larger image
    with pytest.raises(SpotsError, match="off the .* image"):
        write_spot_coords(shifted, find_visium_files(f1).image, tmp_path / "b.h5")


def test_image_not_in_the_positions_pixel_space_is_an_error(sections, tmp_path):
    from slidesnake.data.demo_visium import render_section
    from slidesnake.io.svs import write_tiff

    folder, h5ad = next(iter(sections.values()))
    image, _ = render_section(CFG, section_ids(CFG)[0])
    write_tiff(tmp_path / "wrong_mpp.tif", image, mpp=0.25)  # same pixels, claims twice the resolution
    with pytest.raises(SpotsError, match="does not match the positions' pixel space"):
        write_spot_coords(h5ad, tmp_path / "wrong_mpp.tif", tmp_path / "x.h5")
    write_tiff(tmp_path / "cropped.tif", image[: len(image) // 2], mpp=0.5)  # not the full image
    with pytest.raises(SpotsError, match="not the full-resolution image"):
        write_spot_coords(h5ad, tmp_path / "cropped.tif", tmp_path / "y.h5")


def test_bad_demo_config_names_the_key():
    with pytest.raises(DemoVisiumError, match="demo_visium.n_sections"):
        section_ids(DemoVisiumConfig(n_sections=1))


def test_fold_needs_two_sections_and_logs_zero_drops(sections, tmp_path, caplog):
    from slidesnake.models.expression.data import ExpressionDataError
    from slidesnake.models.expression.fold import Section, fold_genes, load_fold

    (f1, h1), (f2, h2) = sections.values()
    with pytest.raises(ExpressionDataError, match="at least 2 sections"):
        fold_genes({"a": str(h1)}, "a", "hvg", 10, 10)
    adata = ad.read_h5ad(h1)
    x = adata.X.toarray()
    x[0, :] = 0  # an all-zero spot
    adata.X = sp.csr_matrix(x)
    write_h5ad(adata, tmp_path / "zero.h5ad")
    spots = []
    for name, (folder, h5ad) in zip(("A", "B"), ((f1, tmp_path / "zero.h5ad"), (f2, h2))):
        write_spot_coords(h5ad, find_visium_files(folder).image, tmp_path / f"{name}.h5")
        spots.append(Section(name, str(h5ad), str(tmp_path / f"{name}.h5")))
    genes = fold_genes({s.name: s.h5ad for s in spots}, "B", "all", 10, 10)
    with caplog.at_level("WARNING"):
        data = load_fold(spots, "B", genes.loc[genes.selected, "gene"].tolist())
    assert "zero.h5ad: dropped 1 all-zero spot(s)" in caplog.text
    assert "1 spot(s) with a tile have no expression" in caplog.text
    assert len(data.train_y) == adata.n_obs - 1


def test_cli_chain_and_tuned_tower_from_tiles(sections, tmp_path, capsys):
    """spots -> features -> genes -> train (frozen heads, ridge, and a tiny-clip tower tuned on tile
    files) -> predict a section with model.pt -> metrics, all through the CLI."""
    from slidesnake.cli import main
    from slidesnake.features.extract import extract_features

    specs = []
    for name, (_folder, h5ad) in sections.items():
        spots, tiles, feats = tmp_path / f"{name}_spots.h5", tmp_path / f"{name}_tiles.h5", tmp_path / f"{name}_f.h5"
        assert main(["spots", str(h5ad), "--out", str(spots), "--tiles", str(tiles)]) == 0
        extract_features(str(tmp_path / f"{name}_spots.image.tif"), spots, ["tiny-clip"], [feats], num_workers=0)
        specs += ["--section", f"{name}={h5ad},{spots},{feats},{tiles}"]
    test = list(sections)[1]
    genes = tmp_path / "genes.tsv"
    assert (
        main(
            ["expression", "genes", *specs, "--held-out", test, "--genes", "hvg", "--n-hvg", "10", "--out", str(genes)]
        )
        == 0
    )
    for model, extra in (("ridge", []), ("heclip", []), ("heclip", ["--tune", "last_blocks"])):
        out = tmp_path / f"{model}{'_'.join(extra)}"
        args = ["expression", "train", *specs, "--held-out", test, "--model", model, "--genes", str(genes),
                "--out", str(out), "--epochs", "2", "--batch-size", "16", "--top-k", "5", *extra]  # fmt: skip
        assert main(args) == 0
        pred = ad.read_h5ad(out / "predictions.h5ad")
        measured = ad.read_h5ad(out / "measured.h5ad")
        assert pred.obs_names.tolist() == measured.obs_names.tolist() and pred.n_vars == measured.n_vars > 0
        assert main(["expression", "metrics", "--predicted", str(out / "predictions.h5ad"), "--measured",
                     str(out / "measured.h5ad"), "--out", str(out / "m.csv")]) == 0  # fmt: skip
        assert "HVG-10" in set(pd.read_csv(out / "m.csv")["metric"])
    # each saved model predicts the held-out section again from its files (ridge and frozen heads from the
    # spot features, the tuned tower from the tile file): the same spots get the same answer as in training
    by_features = ["--features", str(tmp_path / f"{test}_f.h5"), "--spots", str(tmp_path / f"{test}_spots.h5")]
    for folder, inputs in (("ridge", by_features), ("heclip", by_features),
                           ("heclip--tune_last_blocks", ["--tiles", str(tmp_path / f"{test}_tiles.h5")])):  # fmt: skip
        again = tmp_path / f"again_{folder}.h5ad"
        assert main(["expression", "predict", "--model", str(tmp_path / folder / "model.pt"), *inputs,
                     "--out", str(again)]) == 0  # fmt: skip
        first = ad.read_h5ad(tmp_path / folder / "predictions.h5ad")
        second = ad.read_h5ad(again)
        assert set(second.obs_names) == set(first.obs_names) and second.var_names.tolist() == first.var_names.tolist()
        np.testing.assert_allclose(second[first.obs_names].X, first.X, rtol=1e-4, atol=1e-4)
    # the tuned tower comes from the bundle: the same heads on the base encoder's untuned weights differ
    import torch

    from slidesnake.features.encoders import load_encoder

    bundle = torch.load(tmp_path / "heclip--tune_last_blocks" / "model.pt", weights_only=False)
    base = {f"tower.{k}": v for k, v in load_encoder("tiny-clip").state_dict().items()}
    assert base.keys() <= bundle["state_dict"].keys()
    torch.save({**bundle, "state_dict": {**bundle["state_dict"], **base}}, tmp_path / "untuned.pt")
    assert main(["expression", "predict", "--model", str(tmp_path / "untuned.pt"), "--tiles",
                 str(tmp_path / f"{test}_tiles.h5"), "--out", str(tmp_path / "untuned.h5ad")]) == 0  # fmt: skip
    tuned = ad.read_h5ad(tmp_path / "again_heclip--tune_last_blocks.h5ad")
    assert not np.allclose(ad.read_h5ad(tmp_path / "untuned.h5ad")[tuned.obs_names].X, tuned.X, atol=1e-3)
    capsys.readouterr()
    assert main(["expression", "predict", "--model", str(tmp_path / "heclip--tune_last_blocks" / "model.pt"),
                 *by_features, "--out", str(tmp_path / "x.h5ad")]) != 0  # fmt: skip
    assert "image tower was tuned (last_blocks); pass --tiles" in capsys.readouterr().err


def test_gzipped_strip_tiff_as_geo_ships_it_becomes_a_pyramid(tmp_path):
    """GSE240429 publishes full-resolution images as ``*.tiff.gz`` (one strip, no pyramid): converted once,
    tagged with the positions' µm/px, and read like any slide."""
    import gzip

    import tifffile

    from slidesnake.io.slide import slide_info
    from slidesnake.tissue.spots import readable_image

    image = np.random.default_rng(0).integers(0, 255, (700, 900, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "GSM1_GEX_C73_A1_Merged.tiff", image)  # untiled, no resolution
    (tmp_path / "GSM1_GEX_C73_A1_Merged.tiff.gz").write_bytes(
        gzip.compress((tmp_path / "GSM1_GEX_C73_A1_Merged.tiff").read_bytes())
    )
    out = readable_image(tmp_path / "GSM1_GEX_C73_A1_Merged.tiff.gz", tmp_path / "img" / "GSM1.tif", mpp=0.304)
    info = slide_info(out)
    assert (info.width, info.height) == (900, 700) and info.mpp == pytest.approx(0.304, rel=1e-3)
    # a slide OpenSlide already reads is linked, not copied
    linked = readable_image(out, tmp_path / "img" / "again.tif", mpp=0.304)
    assert linked.is_symlink()
