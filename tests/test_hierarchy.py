"""5x→20x linking: fixed row-major slots, zero-filled missing children, dropped childless parents."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from slidesnake.hierarchy import HierarchyError, link, link_files
from slidesnake.io.atomic import write_h5

S20 = 506  # an Aperio 0.2527 µm/px slide: round(256 * 0.5 / 0.2527)
S5 = 4 * S20


def test_children_land_in_their_grid_slot_not_file_order() -> None:
    parents = np.array([[0, 0], [S5, 0], [2 * S5, S5]])
    # children listed in scrambled order; slots: (dx=1,dy=0)->1, (0,3)->12, (3,3)->15 in parent 2
    children = np.array([[S5 + 3 * S20, 3 * S20], [S20, 0], [0, 3 * S20]])
    feats = np.array([[3.0, 3.0], [1.0, 1.0], [2.0, 2.0]], dtype=np.float32)
    h = link(parents, children, feats, S20)
    assert h.parent_coords.tolist() == [[0, 0], [S5, 0]]  # the childless third parent is dropped
    assert h.parent_index.tolist() == [0, 1]
    assert np.flatnonzero(h.mask[0]).tolist() == [1, 12]
    assert np.flatnonzero(h.mask[1]).tolist() == [15]
    assert h.features[0, 1].tolist() == [1.0, 1.0] and h.features[0, 12].tolist() == [2.0, 2.0]
    assert h.features[1, 15].tolist() == [3.0, 3.0]
    assert h.coords[1, 15].tolist() == [S5 + 3 * S20, 3 * S20]
    assert not h.features[0, 0].any() and not h.mask[0, 0]  # missing child: zeros, mask False
    assert h.n_orphans == 0


def test_children_outside_kept_parents_are_counted_not_linked() -> None:
    h = link(np.array([[0, 0]]), np.array([[0, 0], [5 * S5, 0]]), np.ones((2, 3), np.float32), S20)
    assert h.mask.sum() == 1 and h.n_orphans == 1


def test_off_grid_coordinates_are_rejected() -> None:
    with pytest.raises(HierarchyError, match="aligned grid"):
        link(np.array([[0, 0]]), np.array([[7, 0]]), np.ones((1, 2), np.float32), S20)


def _features_file(path, coords, feats, size, encoder="enc"):
    write_h5(
        path,
        {"coords": np.asarray(coords), "features": np.asarray(feats, np.float32)},
        {"encoder": encoder, "patch_size_level0": size, "dim": np.asarray(feats).shape[1]},
    )


def test_link_files_writes_the_design_contract(tmp_path) -> None:
    f5, f20, out = tmp_path / "5x.h5", tmp_path / "20x.h5", tmp_path / "hier.h5"
    _features_file(f5, [[0, 0], [S5, S5]], [[9, 9], [8, 8]], S5)
    _features_file(f20, [[S5 + S20, S5]], [[1, 2]], S20)
    link_files(f5, f20, out)
    with h5py.File(out) as f:
        assert f["features"].shape == (1, 16, 2) and f["mask"].shape == (1, 16) and f["coords"].shape == (1, 16, 2)
        assert f["parent_coords"][:].tolist() == [[S5, S5]]
        assert f["parent_features"][:].tolist() == [[8.0, 8.0]]
        assert np.flatnonzero(f["mask"][0]).tolist() == [1]
        assert f.attrs["patch_size_level0_5x"] == S5


def test_link_files_refuses_mismatched_encoders_and_grids(tmp_path) -> None:
    f5, f20 = tmp_path / "5x.h5", tmp_path / "20x.h5"
    _features_file(f5, [[0, 0]], [[1, 1]], S5, encoder="a")
    _features_file(f20, [[0, 0]], [[1, 1]], S20, encoder="b")
    with pytest.raises(HierarchyError, match="different encoders"):
        link_files(f5, f20, tmp_path / "o.h5")
    _features_file(f20, [[0, 0]], [[1, 1]], S20 + 1, encoder="a")
    _features_file(f5, [[0, 0]], [[1, 1]], S5, encoder="a")
    with pytest.raises(HierarchyError, match="not 4x"):
        link_files(f5, f20, tmp_path / "o.h5")
    assert not (tmp_path / "o.h5").exists()


def test_slide_without_patches_gives_an_empty_hierarchy(tmp_path) -> None:
    f5, f20, out = tmp_path / "5x.h5", tmp_path / "20x.h5", tmp_path / "hier.h5"
    _features_file(f5, np.zeros((0, 2), np.int64), np.zeros((0, 4)), 0)
    _features_file(f20, np.zeros((0, 2), np.int64), np.zeros((0, 4)), 0)
    link_files(f5, f20, out)
    with h5py.File(out) as f:
        assert f["features"].shape == (0, 16, 4) and f["parent_coords"].shape == (0, 2)
