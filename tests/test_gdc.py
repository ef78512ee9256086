"""GDC search paging, slide sheet, manifests and the `gdc` CLI against a fake GDC on 127.0.0.1."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from _fake_servers import FakeServer
from _slide_fixtures import tissue_slide
from conftest import run_snakemake, write_config

from slidesnake.data.cli import add_commands
from slidesnake.data.cohorts import LabelRule
from slidesnake.data.gdc import (
    SHEET_COLUMNS,
    GdcClient,
    GdcError,
    ManifestError,
    SlideQuery,
    query_slides,
    read_download_table,
    slide_sheet,
    write_manifest,
)
from slidesnake.data.transfer import TransferConfig
from slidesnake.io.svs import write_svs

SECRET = "tok-9f8e7d6c5b4a-very-secret"


def file_hit(i: int, project: str = "TCGA-LUAD", diagnosis: str = "Adenocarcinoma, NOS") -> dict:
    name = f"TCGA-AA-{i:04d}-01Z-00-DX1.{i:08d}-AAAA-BBBB-CCCC-DDDDDDDDDDDD.svs"
    return {
        "id": f"file-{i}",
        "file_id": f"file-{i}",
        "file_name": name,
        "md5sum": hashlib.md5(name.encode()).hexdigest(),
        "file_size": 1000 + i,
        "access": "open",
        "cases": [
            {
                "case_id": f"case-{i}",
                "submitter_id": f"TCGA-AA-{i:04d}",
                "project": {"project_id": project},
                "diagnoses": [{"primary_diagnosis": diagnosis}],
            }
        ],
    }


@pytest.fixture
def gdc():
    srv = FakeServer(file_hits=[file_hit(i) for i in range(7)]).start()
    yield srv
    srv.stop()


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_query_pages_until_pagination_pages(gdc):
    hits = query_slides(GdcClient(gdc.url, page_size=3), SlideQuery(projects=["TCGA-LUAD", "TCGA-LUSC"]))
    assert [h["file_id"] for h in hits] == [f"file-{i}" for i in range(7)]
    posts = gdc.requests_for("/files")
    assert [json.loads(p.body)["from"] for p in posts] == [0, 3, 6]
    body = json.loads(posts[0].body)
    assert all(p.method == "POST" for p in posts)
    assert body["size"] == 3
    filters = {c["content"]["field"]: c["content"]["value"] for c in body["filters"]["content"]}
    assert filters == {
        "cases.project.project_id": ["TCGA-LUAD", "TCGA-LUSC"],
        "data_type": ["Slide Image"],
        "experimental_strategy": ["Diagnostic Slide"],
        "data_format": ["SVS"],
    }
    assert "cases.project.project_id" in body["fields"].split(",")


def test_slide_sheet_columns_paths_and_labels():
    hits = [file_hit(1, diagnosis="Infiltrating duct carcinoma, NOS"), file_hit(2, diagnosis="Lobular carcinoma, NOS"),
            file_hit(3, diagnosis="Mucinous adenocarcinoma"), file_hit(1)]  # fmt: skip
    rule = LabelRule("primary_diagnosis", {"infiltrating duct carcinoma, nos": "IDC", "lobular carcinoma, nos": "ILC"})
    sheet = slide_sheet(hits, "tcga_brca", rule)
    assert tuple(sheet.columns) == SHEET_COLUMNS
    assert sheet["label"].tolist() == ["IDC", "ILC"]
    first = sheet.iloc[0]
    assert first["slide_id"] == "TCGA-AA-0001-01Z-00-DX1.00000001-AAAA-BBBB-CCCC-DDDDDDDDDDDD"
    assert first["path"] == f"resources/slides/tcga_brca/{first['slide_id']}.svs"
    assert (first["case_id"], first["submitter_id"], first["file_size"]) == ("case-1", "TCGA-AA-0001", "1001")
    assert (first["source"], first["project_id"]) == ("gdc", "TCGA-LUAD")
    assert all(isinstance(v, str) for v in sheet.to_numpy().ravel())


def test_manifest_roundtrip_is_gdc_client_format(tmp_path):
    sheet = slide_sheet([file_hit(i) for i in range(3)], "c")
    write_manifest(sheet, tmp_path / "m.txt")
    lines = (tmp_path / "m.txt").read_text().splitlines()
    assert lines[0].split("\t") == ["id", "filename", "md5", "size", "state"]
    assert lines[1].split("\t") == ["file-0", sheet.file_name[0], sheet.md5[0], "1000", "released"]
    table = read_download_table(tmp_path / "m.txt")
    assert table.to_dict("list") == {
        "file_id": ["file-0", "file-1", "file-2"],
        "file_name": sheet.file_name.tolist(),
        "md5": sheet.md5.tolist(),
        "file_size": ["1000", "1001", "1002"],
    }
    (tmp_path / "bad.tsv").write_text("uuid\tname\nx\ty\n")
    with pytest.raises(ManifestError, match="column 'id'"):
        read_download_table(tmp_path / "bad.tsv")


def test_cli_query_writes_sheet_and_manifest(gdc, tmp_path):
    rc = run_cli(["gdc", "query", "--api", gdc.url, "--project", "TCGA-LUAD", "--cohort", "nsclc",
                  "--out", str(tmp_path / "slides.tsv"), "--manifest", str(tmp_path / "manifest.txt")])  # fmt: skip
    assert rc == 0
    sheet = pd.read_csv(tmp_path / "slides.tsv", sep="\t", dtype=str)
    assert len(sheet) == 7 and set(sheet["label"]) == {"TCGA-LUAD"}
    assert len((tmp_path / "manifest.txt").read_text().splitlines()) == 8


def _controlled_server(n: int) -> tuple[FakeServer, pd.DataFrame]:
    contents = {f"file-{i}": bytes([i]) * (5000 + i) for i in range(n)}
    srv = FakeServer(data={k: (f"{k}.svs", v) for k, v in contents.items()}, token=SECRET).start()
    manifest = pd.DataFrame(
        {
            "id": list(contents),
            "filename": [f"{k}.svs" for k in contents],
            "md5": [hashlib.md5(v).hexdigest() for v in contents.values()],
            "size": [len(v) for v in contents.values()],
            "state": "released",
        }
    )
    return srv, manifest


def test_cli_download_with_token_file_and_failure_summary(tmp_path, caplog):
    srv, manifest = _controlled_server(3)
    manifest.loc[len(manifest)] = ["missing-id", "missing.svs", "0" * 32, 10, "released"]
    manifest.to_csv(tmp_path / "manifest.txt", sep="\t", index=False)
    (tmp_path / "token.txt").write_text(SECRET + "\n")
    out = tmp_path / "slides"
    try:
        with caplog.at_level(logging.DEBUG):
            rc = run_cli(["gdc", "download", str(tmp_path / "manifest.txt"), "--out", str(out), "--api", srv.url,
                          "--token-file", str(tmp_path / "token.txt"), "--retries", "0", "--parallel", "2"])  # fmt: skip
        sent = [s.headers.get("X-Auth-Token") for s in srv.seen]
    finally:
        srv.stop()
    assert rc == 1
    assert sorted(p.name for p in out.iterdir()) == ["file-0.svs", "file-1.svs", "file-2.svs"]
    assert (out / "file-2.svs").read_bytes() == bytes([2]) * 5002
    assert sent == [SECRET] * 4
    assert "1 file(s) failed" in caplog.text and "missing.svs: " in caplog.text and "HTTP 404" in caplog.text
    assert SECRET not in caplog.text


def test_wrong_token_403_not_retried_and_secret_never_leaks(tmp_path, caplog, monkeypatch, capsys):
    srv, manifest = _controlled_server(2)
    srv.token = "the-right-one"
    manifest.to_csv(tmp_path / "manifest.txt", sep="\t", index=False)
    monkeypatch.setenv("MY_GDC_TOKEN", SECRET)
    try:
        with caplog.at_level(logging.DEBUG):
            rc = run_cli(["gdc", "download", str(tmp_path / "manifest.txt"), "--out", str(tmp_path / "o"),
                          "--api", srv.url, "--token-env", "MY_GDC_TOKEN"])  # fmt: skip
        n_requests = len(srv.seen)
    finally:
        srv.stop()
    assert rc == 1 and n_requests == 2  # one request per file: 403 is never retried
    assert "HTTP 403" in caplog.text and "token is invalid/expired" in caplog.text
    captured = capsys.readouterr()
    assert SECRET not in caplog.text + captured.out + captured.err
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes()


def test_missing_token_env_is_a_clear_error(tmp_path, caplog, monkeypatch):
    monkeypatch.delenv("NO_SUCH_TOKEN_VAR", raising=False)
    pd.DataFrame({"id": ["a"]}).to_csv(tmp_path / "m.txt", sep="\t", index=False)
    with caplog.at_level(logging.ERROR):
        rc = run_cli(["gdc", "download", str(tmp_path / "m.txt"), "--out", str(tmp_path), "--api", "http://127.0.0.1:9",
                      "--token-env", "NO_SUCH_TOKEN_VAR"])  # fmt: skip
    assert rc == 1 and "NO_SUCH_TOKEN_VAR" in caplog.text and "unset or empty" in caplog.text


@pytest.mark.workflow
def test_snakemake_download_rules_keep_the_token_out_of_metadata(tmp_path):
    content = b"II*\x00" + bytes(range(256)) * 40
    hit = file_hit(5)
    hit["md5sum"], hit["file_size"] = hashlib.md5(content).hexdigest(), len(content)
    srv = FakeServer(file_hits=[hit], data={"file-5": (hit["file_name"], content)}, token=SECRET).start()
    repo = Path(__file__).resolve().parents[1]
    config = {"cohort": "t", "source": "gdc", "gdc": {"api": srv.url, "projects": ["TCGA-LUAD"], "strategy":
              "Diagnostic Slide", "data_format": "SVS", "token_file": None, "token_env": "SS_TEST_GDC_TOKEN",
              "parallel": 1, "retries": 1, "timeout_s": 10, "label": {"field": "project_id", "map": {"TCGA-LUAD": "LUAD"}}}}  # fmt: skip
    (tmp_path / "config.yaml").write_text(json.dumps(config))
    (tmp_path / "Snakefile").write_text(f'configfile: "config.yaml"\ninclude: "{repo}/rules/download.smk"\n')
    slide = slide_sheet([hit], "t")["slide_id"][0]
    env = {**os.environ, "SS_TEST_GDC_TOKEN": SECRET, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1"}
    try:
        proc = subprocess.run(
            [str(Path(sys.executable).with_name("snakemake")), "-c1", "--directory", str(tmp_path),
             f"resources/slides/t/{slide}.svs"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        tokens_sent = [s.headers.get("X-Auth-Token") for s in srv.requests_for("/data/file-5")]
    finally:
        srv.stop()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / f"resources/slides/t/{slide}.svs").read_bytes() == content
    assert tokens_sent == [SECRET]
    assert SECRET not in proc.stdout + proc.stderr
    scanned = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "config.yaml"]
    assert any(".snakemake/metadata" in str(p) for p in scanned)
    assert [p for p in scanned if SECRET.encode() in p.read_bytes()] == []


@pytest.mark.workflow
def test_pipeline_runs_from_a_fake_gdc_through_features(tmp_path):
    """Query checkpoint → one capped download job per slide (one drop mid-body, resumed) → tissue →
    features → bag index, with the workflow's own Snakefile."""
    image = tissue_slide()[0]
    tissue = image[
        512:2048, 512:2560
    ]  # JPEG-hostile texture: slides of a few MB, so a drop at half leaves whole chunks
    tissue[:] = np.clip(tissue + np.random.default_rng(0).integers(-90, 90, tissue.shape), 0, 255)
    hits, data = [], {}
    for i, project in enumerate(("TCGA-LUAD", "TCGA-LUSC")):
        content = write_svs(tmp_path / f"src{i}.svs", image).read_bytes()
        hit = file_hit(i, project)
        hit["md5sum"], hit["file_size"] = hashlib.md5(content).hexdigest(), len(content)
        hits.append(hit)
        data[hit["id"]] = (hit["file_name"], content)
    srv = FakeServer(file_hits=hits, data=data, faults={"file-1": ["drop"]}).start()
    workdir = tmp_path / "run"
    workdir.mkdir()
    # a real cohort's encoders: demo-clip exists only for source: demo
    encoders = {
        "features": {"encoders": ["tiny-clip"]},
        "training": {"encoder": "tiny-clip"},
        "vl": {"zeroshot": {"prompts": []}, "cplip": {"enabled": False}},
    }
    config = write_config(workdir / "config.yaml", cohort="t", source="gdc", segmentation={"preset": "biopsy"}, **encoders, gdc={
        "api": srv.url, "projects": ["TCGA-LUAD", "TCGA-LUSC"], "retries": 2, "timeout_s": 10,
        "label": {"field": "project_id", "map": {"TCGA-LUAD": "LUAD", "TCGA-LUSC": "LUSC"}}})  # fmt: skip
    try:
        proc = run_snakemake(workdir, "results/t/features/tiny-clip/bags.tsv", "--cores", "2",
                             "--resources", "gdc_downloads=1", configfile=config)  # fmt: skip
        transfers = [(s.path, s.sent) for s in srv.seen if s.path.startswith("/data/")]
    finally:
        srv.stop()
    assert "gdc_downloads=1" in proc.stdout + proc.stderr
    sizes = {f"/data/{h['id']}": h["file_size"] for h in hits}
    assert sorted(p for p, _ in transfers) == ["/data/file-0", "/data/file-1", "/data/file-1"]
    dropped, resumed = [s for s in srv.seen if s.path == "/data/file-1"]
    assert dropped.sent == sizes["/data/file-1"] // 2 and resumed.headers["Range"] != "bytes=0-"
    assert (
        dropped.sent + resumed.sent < sizes["/data/file-1"] + TransferConfig().chunk_size
    )  # the rest, at most one chunk more
    sheet = pd.read_csv(workdir / "results/t/slides.tsv", sep="\t", dtype=str)
    bags = pd.read_csv(workdir / "results/t/features/tiny-clip/bags.tsv", sep="\t")
    assert sorted(bags["slide_id"]) == sorted(sheet["slide_id"]) and len(bags) == 2
    for slide_id, n20 in zip(bags["slide_id"], bags["n_20x"]):
        assert (workdir / f"resources/slides/t/{slide_id}.svs").read_bytes() == data[f"file-{int(slide_id[8:12])}"][1]
        with h5py.File(workdir / f"results/t/patches/20x/{slide_id}.h5") as f:
            assert n20 == len(f["coords"]) > 0


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_query_without_network_fails_at_once_saying_where_to_download(monkeypatch, tmp_path, caplog):
    sleeps = []
    monkeypatch.setattr("slidesnake.data.gdc.time.sleep", sleeps.append)
    real = socket.getaddrinfo
    monkeypatch.setattr(
        socket,
        "getaddrinfo",
        lambda host, *a, **k: (
            (_ for _ in ()).throw(socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"))
            if str(host).endswith(".invalid")
            else real(host, *a, **k)
        ),
    )
    query = SlideQuery(projects=["TCGA-LUAD"])
    for api, reason in ((f"http://127.0.0.1:{_closed_port()}", "connection refused"),
                        ("https://api.gdc.invalid", "name resolution failed")):  # fmt: skip
        with pytest.raises(GdcError) as err:
            query_slides(GdcClient(api, retries=8, backoff_base_s=1.0), query)
        assert f"{api}/files: {reason}; this node has no route to the API" in str(err.value)
        assert "login node" in str(err.value) and "--until gdc_download_slide" in str(err.value)
    assert sleeps == []  # not 9 attempts over 2.5 minutes
    # the CLI says it in one line and exits non-zero
    rc = run_cli(["gdc", "query", "--api", f"http://127.0.0.1:{_closed_port()}", "--project", "TCGA-LUAD",
                  "--cohort", "c", "--out", str(tmp_path / "s.tsv"), "--manifest", str(tmp_path / "m.txt")])  # fmt: skip
    assert rc == 1 and any("no route to the API" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "s.tsv").exists()
