"""CLI start-up stays cheap (no torch, pandas or anndata for help and tissue jobs), `--version`, and the
`heatmaps` command on a real trained checkpoint."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from _mil_fixtures import write_cohort
from conftest import REPO
from PIL import Image

from slidesnake import __version__
from slidesnake.cli import main
from slidesnake.io.atomic import write_h5
from slidesnake.io.svs import write_svs

HEAVY = ("torch", "pandas", "anndata", "scanpy", "open_clip", "requests")


def _imported(code: str) -> set[str]:
    probe = f"import sys\n{code}\nprint('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("HEAVY="))
    return set(filter(None, line[len("HEAVY=") :].split(",")))


@pytest.mark.parametrize("command", ["segment", "patch", "gdc", "geo"])
def test_help_imports_nothing_heavy(command: str) -> None:
    code = f"from slidesnake.cli import main\ntry:\n    main([{command!r}, '--help'])\nexcept SystemExit:\n    pass"
    assert _imported(code) == set()


def test_tissue_job_does_not_import_torch_or_pandas() -> None:
    code = "import slidesnake.joblog, slidesnake.tissue.segmentation, slidesnake.tissue.stage"
    assert _imported(code) == set()


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"slidesnake {__version__}"


def test_heatmaps_command_one_slide(tmp_path, capsys) -> None:
    from slidesnake.tasks import task_from_config, task_labels
    from slidesnake.train.loop import TrainParams, train_fold
    from slidesnake.train.splits import make_splits

    torch.manual_seed(0)
    sheet, feats, _ = write_cohort(tmp_path / "cohort", n_patients=6, n_instances=16, dim=16)
    task = task_from_config("subtype", {"kind": "classification", "column": "label"})
    params = TrainParams(epochs=1, model_kwargs={"hidden": 16, "attn_dim": 8})
    train_fold(task, "abmil", feats, task_labels(task, sheet), make_splits(sheet, k=3, seed=0), 0, params,
               str(tmp_path / "model"))  # fmt: skip
    image = np.full((1536, 2048, 3), 200, np.uint8)
    slide = write_svs(tmp_path / "S1.svs", image, mpp=0.25, app_mag=40.0, downsamples=(1, 4))
    coords = np.array([(x, y) for y in range(0, 1536, 512) for x in range(0, 2048, 512)], np.int64)
    attrs = {"encoder": "synthetic", "magnification": 20.0, "patch_size": 256, "patch_size_level0": 512}
    features = np.random.default_rng(0).normal(size=(len(coords), 16)).astype(np.float32)
    write_h5(tmp_path / "S1.h5", {"features": features, "coords": coords}, attrs)
    out = tmp_path / "maps"
    argv = ["heatmaps", "--model", str(tmp_path / "model/model.pt"), "--slide", str(slide)]
    argv += ["--features", str(tmp_path / "S1.h5"), "--out-dir", str(out), "--top-k", "3", "--device", "cpu"]
    assert main(argv) == 0
    assert "12 patches scored" in capsys.readouterr().out
    assert Image.open(out / "S1.heatmap.png").size[0] > 0 and Image.open(out / "S1.top3.png").size[0] > 0
    assert main(["heatmaps", "--model", str(tmp_path / "model/model.pt"), "--out-dir", str(out)]) == 2
