"""The `slidesnake` command: every subcommand documents itself; bad slides warn and exit 0, config errors exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from slidesnake.cli import build_parser, main
from slidesnake.io.svs import write_svs

COMMANDS = ["demo", "segment", "patch", "extract", "encoders", "link", "splits", "train", "evaluate"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--help"])
    assert exit_.value.code == 0
    assert command in capsys.readouterr().out


def test_console_script_entry_point_runs() -> None:
    proc = subprocess.run([sys.executable, "-m", "slidesnake.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "segment" in proc.stdout


@pytest.fixture(scope="module")
def tissue_slide(tmp_path_factory):
    """A 40x SVS with one 3 mm² purple square of 'tissue' on glass."""
    img = np.full((4096, 4096, 3), 242, np.uint8)
    img[1024:3072, 1024:3072] = (150, 60, 160)
    return write_svs(tmp_path_factory.mktemp("cli") / "slide.svs", img, mpp=0.25, app_mag=40)


def test_segment_then_patch_on_a_good_slide(tissue_slide, tmp_path, capsys) -> None:
    tissue, coords = tmp_path / "t.json", tmp_path / "c.h5"
    assert main(["segment", str(tissue_slide), "--out", str(tissue), "--qc", str(tmp_path / "qc.png"), "--param", "a_t=1"]) == 0
    assert json.loads(tissue.read_text())["status"] == "ok"
    assert (tmp_path / "qc.png").stat().st_size > 0
    assert main(["patch", str(tissue_slide), "--tissue", str(tissue), "--mag", "20", "--out", str(coords)]) == 0
    with h5py.File(coords) as f:
        xy = f["coords"][:]
    # 512-px 20x cells fully inside the 2048-px square: 4x4; four_pt also keeps the ring whose inner quarter-points touch it
    assert {(1024, 1024), (2560, 2560)} <= set(map(tuple, xy.tolist()))
    assert "patches at 20x" in capsys.readouterr().out


def test_bad_slide_warns_names_file_and_exits_zero(tmp_path, caplog) -> None:
    bad = tmp_path / "broken.svs"
    bad.write_text("not a slide")
    out = tmp_path / "t.json"
    assert main(["segment", str(bad), "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["status"].startswith("unreadable")
    assert any("broken.svs" in r.getMessage() and "unreadable" in r.getMessage() for r in caplog.records)
    assert main(["patch", str(bad), "--tissue", str(out), "--mag", "5", "--out", str(tmp_path / "c.h5")]) == 0
    with h5py.File(tmp_path / "c.h5") as f:
        assert f["coords"].shape == (0, 2)


def test_configuration_errors_exit_two(tissue_slide, tmp_path) -> None:
    assert main(["segment", str(tissue_slide), "--out", str(tmp_path / "t.json"), "--preset", "nosuch"]) == 2
    assert main(["segment", str(tissue_slide), "--out", str(tmp_path / "t.json"), "--param", "colour=3"]) == 2
    assert not (tmp_path / "t.json").exists()
