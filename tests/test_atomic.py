"""Atomic writers leave either the complete new file or the old one, never a partial file."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from slidesnake.io.atomic import atomic_path, write_h5, write_json


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path) -> None:
    target = tmp_path / "out.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_next_write_removes_a_killed_writers_temp_file(tmp_path) -> None:
    """kill -9 skips the ``finally`` that deletes the temp file; the rerun's write cleans it up."""
    target = tmp_path / "predictions.parquet"
    (tmp_path / ".tmp-predictions.parquet.abc123").write_text("half")  # what SIGKILL leaves
    (tmp_path / ".tmp-other.parquet.def456").write_text("another output's writer")
    write_json(target, {"v": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-other.parquet.def456", "predictions.parquet"]


def test_h5_keeps_empty_shapes_and_attrs(tmp_path) -> None:
    write_h5(tmp_path / "f.h5", {"coords": np.zeros((0, 2), np.int64)}, {"encoder": "e", "mpp_source": None})
    with h5py.File(tmp_path / "f.h5") as f:
        assert f["coords"].shape == (0, 2) and f["coords"].dtype == np.int64
        assert f.attrs["encoder"] == "e" and f.attrs["mpp_source"] == ""


def test_outputs_get_the_umask_mode_not_mkstemp_0600(tmp_path) -> None:
    import os

    umask = os.umask(0o022)
    os.umask(umask)
    write_json(tmp_path / "m.json", {})
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o666 & ~umask
