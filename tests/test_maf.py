"""MAF reading (gzip, # pragmas) and the wide mutation table with TMB, on a hand-made MAF."""

from __future__ import annotations

import gzip
import hashlib

import numpy as np
import pandas as pd
import pytest
from _fake_servers import FakeServer

from slidesnake.data.gdc import GdcClient
from slidesnake.data.maf import MafError, MutationParams, fetch_mutation_table, mutation_table, read_maf

HEADER = ["Hugo_Symbol", "Entrez_Gene_Id", "Variant_Classification", "Tumor_Sample_Barcode", "Exon_Number", "case_id"]
ROWS = [
    ["TP53", "7157", "Missense_Mutation", "TCGA-AA-0001-01A-11D-A001-08", "7/11", "c1"],
    ["TP53", "7157", "Nonsense_Mutation", "TCGA-AA-0001-01A-11D-A001-08", "5/11", "c1"],
    ["KRAS", "3845", "Silent", "TCGA-AA-0001-01A-11D-A001-08", "2/6", "c1"],
    ["EGFR", "1956", "In_Frame_Del", "TCGA-AA-0001-01A-11D-A001-08", "19/28", "c1"],
    ["KRAS", "3845", "Missense_Mutation", "TCGA-AA-0002-01A-11D-A002-08", "2/6", "c2"],
    ["TTN", "7273", "Intron", "TCGA-AA-0002-01A-11D-A002-08", "", "c2"],
    # a second (metastasis) aliquot of c2 must not be counted
    ["TP53", "7157", "Missense_Mutation", "TCGA-AA-0002-06A-11D-A003-08", "8/11", "c2"],
]


def maf_bytes(rows=ROWS) -> bytes:
    text = "#version gdc-1.0.0\n#filedate 20200315\n" + "\t".join(HEADER) + "\n"
    text += "".join("\t".join(r) + "\n" for r in rows)
    return gzip.compress(text.encode())


def test_read_maf_skips_pragmas_and_gunzips(tmp_path):
    (tmp_path / "a.maf.gz").write_bytes(maf_bytes())
    maf = read_maf(tmp_path / "a.maf.gz")
    assert len(maf) == 7 and maf["Hugo_Symbol"].tolist()[:2] == ["TP53", "TP53"]
    (tmp_path / "b.maf.gz").write_bytes(gzip.compress(b"#x\nHugo_Symbol\tcase_id\nTP53\tc\n"))
    with pytest.raises(MafError, match="Variant_Classification"):
        read_maf(tmp_path / "b.maf.gz")


def test_mutation_table_counts_classes_exons_and_tmb(tmp_path):
    (tmp_path / "a.maf.gz").write_bytes(maf_bytes())
    table = mutation_table(read_maf(tmp_path / "a.maf.gz"), MutationParams(["TP53", "KRAS", "EGFR", "ALK"], 2.0),
                           cases=["c3"])  # fmt: skip
    t = table.set_index("case_id")
    assert t.index.tolist() == ["c1", "c2", "c3"]
    assert t["n_nonsilent"].tolist() == [3, 1, 0]
    assert t["tmb"].tolist() == [1.5, 0.5, 0.0]
    assert t["TP53"].tolist() == [1, 0, 0] and t["TP53"].dtype == np.int8
    assert t.loc["c1", "TP53__class"] == "Missense_Mutation;Nonsense_Mutation"
    assert t.loc["c1", "TP53__exon"] == "7/11;5/11"
    assert t["KRAS"].tolist() == [0, 1, 0] and t.loc["c1", "KRAS__class"] == ""  # silent is not a hit
    assert t.loc["c1", "EGFR__exon"] == "19/28" and t["ALK"].sum() == 0
    assert list(table.columns[:3]) == ["case_id", "n_nonsilent", "tmb"]


def test_fetch_mutation_table_downloads_verified_mafs(tmp_path):
    content = maf_bytes()
    hit = {"file_id": "maf-1", "file_name": "x.wxs.aliquot_ensemble_masked.maf.gz", "md5sum":
           hashlib.md5(content).hexdigest(), "file_size": len(content), "cases": [{"case_id": "c1"}, {"case_id": "c9"}]}  # fmt: skip
    srv = FakeServer(file_hits=[hit], data={"maf-1": (hit["file_name"], content)}).start()
    try:
        table = fetch_mutation_table(GdcClient(srv.url), ["TCGA-LUAD"], tmp_path / "cache", MutationParams(["TP53"]))
    finally:
        srv.stop()
    assert (tmp_path / "cache" / hit["file_name"]).read_bytes() == content
    assert table["case_id"].tolist() == ["c1", "c2", "c9"]
    assert table["TP53"].tolist() == [1, 0, 0]
    assert table["tmb"].tolist() == pytest.approx([3 / 38.0, 1 / 38.0, 0.0])
    assert isinstance(table, pd.DataFrame)
