"""The `slidesnake` command: every subcommand documents itself; bad slides warn and exit 0, config errors exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from slidesnake.cli import build_parser, main
from slidesnake.errors import ComputationError, InputError
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
    assert (
        main(["segment", str(tissue_slide), "--out", str(tissue), "--qc", str(tmp_path / "qc.png"), "--param", "a_t=1"])
        == 0
    )
    assert json.loads(tissue.read_text())["status"] == "ok"
    assert (tmp_path / "qc.png").stat().st_size > 0
    geo = tmp_path / "t.geojson"
    assert main(["segment", str(tissue_slide), "--out", str(tissue), "--geojson", str(geo), "--param", "a_t=1"]) == 0
    assert len(json.loads(geo.read_text())["features"]) == 1
    assert main(["patch", str(tissue_slide), "--tissue", str(tissue), "--mag", "20", "--out", str(coords)]) == 0
    with h5py.File(coords) as f:
        xy = f["coords"][:]
    # 512-px 20x cells fully inside the 2048-px square: 4x4; four_pt also keeps the ring whose inner quarter-points touch it
    assert {(1024, 1024), (2560, 2560)} <= set(map(tuple, xy.tolist()))
    assert "patches at 20x" in capsys.readouterr().out


def test_bad_slide_records_its_status_names_the_file_and_segment_exits_nonzero(tmp_path, caplog) -> None:
    bad = tmp_path / "broken.svs"
    bad.write_text("not a slide")
    out = tmp_path / "t.json"
    # the status is still written (the pipeline's tissue job records it and goes on), but the command fails
    assert main(["segment", str(bad), "--out", str(out), "--geojson", str(tmp_path / "t.geojson")]) == 2
    assert json.loads((tmp_path / "t.geojson").read_text())["features"] == []
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


def test_splits_train_evaluate_chain(tmp_path, capsys) -> None:
    import pandas as pd
    import yaml

    from slidesnake.io.atomic import write_h5

    rng = np.random.default_rng(0)
    rows, feats = [], tmp_path / "features"
    for i in range(12):
        label = "a" if i % 2 else "b"
        x = rng.normal(size=(20, 8)).astype(np.float32) + (1.5 if label == "a" else -1.5)
        write_h5(feats / f"s{i}.h5", {"features": x, "coords": np.zeros((20, 2), np.int64)}, {"encoder": "t", "dim": 8})
        rows.append((f"s{i}", f"p{i}", f"/none/s{i}.svs", label))
    pd.DataFrame(rows, columns=["slide_id", "case_id", "path", "label"]).to_csv(
        tmp_path / "sheet.tsv", sep="\t", index=False
    )
    config = {
        "cohort": "c",
        "tasks": {"subtype": {"kind": "classification", "column": "label"}},
        "training": {"folds": 3, "epochs": 15, "patience": 15, "lr": 1e-3},
        "evaluation": {"bootstrap": 50},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    common = ["--config", str(tmp_path / "c.yaml"), "--task", "subtype", "--sheet", str(tmp_path / "sheet.tsv")]
    assert main(["splits", *common, "--out", str(tmp_path / "folds.csv")]) == 0
    folds = pd.read_csv(tmp_path / "folds.csv")
    assert len(folds) == 36 and set(folds["split"]) == {"train", "val", "test"}
    predictions = []
    for k in range(3):
        out = tmp_path / f"fold{k}"
        assert (
            main(
                [
                    "train",
                    *common,
                    "--features",
                    str(feats),
                    "--folds",
                    str(tmp_path / "folds.csv"),
                    "--fold",
                    str(k),
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        predictions.append(str(out / "predictions.parquet"))
    assert (
        main(
            [
                "evaluate",
                "--config",
                str(tmp_path / "c.yaml"),
                "--task",
                "subtype",
                *predictions,
                "--out",
                str(tmp_path / "metrics.csv"),
            ]
        )
        == 0
    )
    metrics = pd.read_csv(tmp_path / "metrics.csv").set_index("fold")
    assert metrics.loc["pooled", "auc"] >= 0.9  # features are shifted by ±1.5 per class
    assert (
        main(
            [
                "evaluate",
                "--config",
                str(tmp_path / "c.yaml"),
                "--task",
                "nosuch",
                *predictions,
                "--out",
                str(tmp_path / "m2.csv"),
            ]
        )
        == 2
    )


@pytest.mark.parametrize(
    "error, code", [(InputError("bad.h5: no 'coords'; rerun patching"), 2), (ComputationError("GPU went away"), 1)]
)
def test_slidesnake_errors_are_one_line_on_stderr_with_their_exit_code(error, code, monkeypatch, capsys) -> None:
    def fail(args):
        raise error

    monkeypatch.setattr("slidesnake.cli.cmd_encoders", fail)  # build_parser binds the command by name
    assert main(["encoders"]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(error) in err and "Traceback" not in err


def test_unknown_model_exits_two_naming_the_key(tmp_path, capsys) -> None:
    (tmp_path / "c.yaml").write_text("cohort: c\ntasks: {t: {kind: classification, column: label}}\n")
    (tmp_path / "s.tsv").write_text("slide_id\tcase_id\tpath\tlabel\ns1\tp1\tx.svs\ta\n")
    args = ["train", "--config", str(tmp_path / "c.yaml"), "--task", "t", "--sheet", str(tmp_path / "s.tsv")]
    args += ["--model", "abmill", "--features", str(tmp_path), "--folds", str(tmp_path / "f.csv"), "--fold", "0"]
    (tmp_path / "f.csv").write_text("slide_id,case_id,fold,split\ns1,p1,0,train\n")
    assert main([*args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "training.models" in err and "registered models: abmil" in err


@pytest.mark.parametrize(
    "method, missing",
    [("hlip", ["--tiles", "--captions"]), ("cplip", ["--config", "--task", "--dictionary", "--coords", "--slides"])],
)
def test_tune_names_the_inputs_its_method_needs(method, missing, tmp_path, capsys) -> None:
    args = ["tune", "--method", method, "--base", "demo-clip", "--folds", "f.csv", "--sheet", "s.tsv"]
    assert main([*args, "--out", str(tmp_path / "enc")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"--method {method} needs" in err and all(flag in err for flag in missing)
    assert not (tmp_path / "enc").exists()
