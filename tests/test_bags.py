"""The bag index: one row per slide with its files, counts and slide path; mixed dimensions refused."""

from __future__ import annotations

import numpy as np
import pytest

from slidesnake.features.bags import BagIndexError, read_bag_index, write_bag_index
from slidesnake.io.atomic import write_h5


def _features(path, n: int, dim: int, slide: str) -> str:
    write_h5(
        path,
        {"features": np.zeros((n, dim), np.float32), "coords": np.zeros((n, 2), np.int64)},
        {"encoder": "tiny-clip", "dim": dim, "slide": slide},
    )
    return str(path)


def test_index_round_trip(tmp_path):
    (tmp_path / "5x").mkdir()
    (tmp_path / "20x").mkdir()
    f5 = [_features(tmp_path / "5x" / f"{s}.h5", n, 8, f"slides/{s}.svs") for s, n in (("B", 2), ("A", 0))]
    f20 = [_features(tmp_path / "20x" / f"{s}.h5", n, 8, f"slides/{s}.svs") for s, n in (("B", 32), ("A", 0))]
    hier = [str(tmp_path / "hier" / f"{s}.h5") for s in ("B", "A")]
    out = tmp_path / "bags.tsv"

    table = write_bag_index({20: f20, 5: f5}, hier, out)

    assert table["slide_id"].tolist() == ["A", "B"]
    assert table[["n_5x", "n_20x"]].to_numpy().tolist() == [[0, 0], [2, 32]]
    index = read_bag_index(out)
    assert index.features(20) == {"A": f20[1], "B": f20[0]}
    assert index.features(5)["B"] == f5[0]
    assert index.hierarchy() == {"A": hier[1], "B": hier[0]}
    assert index.slides() == {"A": "slides/A.svs", "B": "slides/B.svs"}
    with pytest.raises(BagIndexError, match="no 10x features"):
        index.features(10)


def test_one_magnification_has_no_hierarchy(tmp_path):
    paths = [_features(tmp_path / f"{s}.h5", 4, 8, "") for s in ("A", "B")]
    write_bag_index({20: paths}, [], tmp_path / "bags.tsv")
    index = read_bag_index(tmp_path / "bags.tsv")
    assert index.hierarchy() == {}
    assert index.slides() == {}  # no recorded slide path: heatmaps skip such slides by name
    assert sorted(index.features(20)) == ["A", "B"]


def test_mixed_dimensions_name_the_files(tmp_path):
    paths = [_features(tmp_path / "A.h5", 4, 8, ""), _features(tmp_path / "B.h5", 4, 16, "")]
    with pytest.raises(BagIndexError, match=r"D=8 in .*A\.h5.*D=16 in .*B\.h5"):
        write_bag_index({20: paths}, [], tmp_path / "bags.tsv")
    assert not (tmp_path / "bags.tsv").exists()


def test_file_without_features_dataset(tmp_path):
    write_h5(tmp_path / "A.h5", {"coords": np.zeros((1, 2), np.int64)})
    with pytest.raises(BagIndexError, match=r"A\.h5 has no 'features' dataset"):
        write_bag_index({20: [str(tmp_path / "A.h5")]}, [], tmp_path / "bags.tsv")
