"""GEO filelist parsing, sample-folder URLs, size-verified downloads and spatialLIBD layout, on a fake GEO."""

from __future__ import annotations

import argparse
import logging

import anndata as ad
import numpy as np
import pytest
from _fake_servers import FakeServer
from _visium_fixtures import geo_files

from slidesnake.data.cli import add_commands
from slidesnake.data.geo import (
    GeoError,
    parse_filelist,
    range_dir,
    sample_suppl_url,
    series_suppl_url,
    spatiallibd_remote_files,
)

S1, S2 = "GSM7697868", "GSM7697869"


def filelist(files: dict[str, bytes], wrong_size: str = "") -> bytes:
    lines = ["#Archive/File\tName\tTime\tSize\tType", "Archive\tGSE240429_RAW.tar\t01/15/2024 12:55:11\t999\tTAR"]
    for name, data in files.items():
        size = len(data) + (1 if name == wrong_size else 0)
        lines.append(f"File\t{name}\t01/14/2024 14:53:56\t{size}\tTXT")
    return ("\n".join(lines) + "\n").encode()


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_urls_and_filelist():
    assert range_dir("GSE240429") == "GSE240nnn" and range_dir("GSE12") == "GSEnnn"
    base = "https://ftp.ncbi.nlm.nih.gov/geo/series"
    assert series_suppl_url("GSE240429", base) == f"{base}/GSE240nnn/GSE240429/suppl"
    assert sample_suppl_url(S1, base) == "https://ftp.ncbi.nlm.nih.gov/geo/samples/GSM7697nnn/GSM7697868/suppl"
    files = parse_filelist(filelist({"GSM1_a.csv.gz": b"abc"}).decode())
    assert [(f.kind, f.name, f.size) for f in files] == [
        ("Archive", "GSE240429_RAW.tar", 999),
        ("File", "GSM1_a.csv.gz", 3),
    ]


@pytest.fixture
def geo():
    s1, s2 = geo_files(f"{S1}_C73A1"), geo_files(f"{S2}_C73B1")
    served = {f"/geo/samples/GSM7697nnn/{S1}/suppl/{n}": d for n, d in s1.items()}
    served |= {f"/geo/samples/GSM7697nnn/{S2}/suppl/{n}": d for n, d in s2.items()}
    served["/geo/series/GSE240nnn/GSE240429/suppl/filelist.txt"] = filelist(
        s1 | s2, wrong_size=f"{S2}_C73B1_barcodes.tsv.gz"
    )
    srv = FakeServer(files=served, content_types={k: "text/plain" for k in served}).start()
    yield srv
    srv.stop()


def test_geo_download_selected_sample_then_visium_h5ad(geo, tmp_path):
    out = tmp_path / "GSE240429"
    rc = run_cli(["geo", "download", "GSE240429", "--out", str(out), "--base-url", geo.url + "/geo/series",
                  "--samples", S1, "--retries", "0"])  # fmt: skip
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(["filelist.txt", *geo_files(f"{S1}_C73A1")])
    assert not any("GSE240429_RAW.tar" in s.path or S2 in s.path for s in geo.seen)
    rc = run_cli(["geo", "visium", str(out), "--sample", S1, "--out", str(tmp_path / "s1.h5ad")])
    adata = ad.read_h5ad(tmp_path / "s1.h5ad")
    assert rc == 0 and adata.shape == (3, 4)
    np.testing.assert_array_equal(adata.obsm["spatial"][0], [420.0, 110.0])


def test_geo_size_mismatch_fails_that_file_only(geo, tmp_path, caplog):
    out = tmp_path / "g"
    with caplog.at_level(logging.ERROR):
        rc = run_cli(["geo", "download", "GSE240429", "--out", str(out), "--base-url", geo.url + "/geo/series",
                      "--samples", S2, "--retries", "0"])  # fmt: skip
    assert rc == 1
    assert f"{S2}_C73B1_barcodes.tsv.gz: size" in caplog.text and "1 file(s) failed" in caplog.text
    assert not (out / f"{S2}_C73B1_barcodes.tsv.gz").exists()
    assert (out / f"{S2}_C73B1_matrix.mtx.gz").exists()


def test_spatiallibd_layout(tmp_path):
    remotes = spatiallibd_remote_files(["151507"], tmp_path, "https://b.example", "https://g.example/10X")
    assert [(r.url, r.dest.relative_to(tmp_path).as_posix()) for r in remotes] == [
        ("https://b.example/h5/151507_filtered_feature_bc_matrix.h5", "151507/151507_filtered_feature_bc_matrix.h5"),
        ("https://b.example/images/151507_full_image.tif", "151507/151507_full_image.tif"),
        ("https://g.example/10X/151507/tissue_positions_list.txt", "151507/151507_tissue_positions_list.txt"),
        ("https://g.example/10X/151507/scalefactors_json.json", "151507/151507_scalefactors_json.json"),
    ]
    with pytest.raises(GeoError, match="geo.samples"):
        spatiallibd_remote_files([], tmp_path)
