"""Recovery after kill -9: the small demo (config/cohorts/demo_small.yaml) is killed (SIGKILL to snakemake
and every job, one process group) while a job of each stage runs — segmentation, extraction, training,
evaluation, report assets — and rerun after each kill (`--unlock` first when Snakemake's lock is stale).
The last rerun must finish; every h5 and parquet must open with the counts of its inputs, and the metrics
must equal an uninterrupted run's. For each kill the test records what caught the interrupted job:
Snakemake's metadata (`.snakemake/incomplete` markers, rerun as "incomplete output files") or our atomic
writes (only a `.tmp-*` file beside the output, never a partial output)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import REPO, SNAKEMAKE, run_snakemake

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

CONFIG = REPO / "config" / "cohorts" / "demo_small.yaml"
COHORT = "demo_small"
# stage -> the log folder or file a running job of it creates first
MOMENTS = {
    "segmentation": "tissue",
    "extraction": "features",
    "training": "train",
    "evaluation": "evaluate",
    "report": "report_heatmaps",  # report_qc runs as soon as QC exists; report_heatmaps after training
}


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


def _cmd(workdir: Path, *args: str) -> list[str]:
    return [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--configfile", str(CONFIG), *args]


def _started(workdir: Path, marker: str, before: set[Path]) -> bool:
    logs = workdir / "results" / "logs" / COHORT / marker
    if marker.endswith(".log"):
        return logs.exists() and logs not in before
    return logs.is_dir() and any(p not in before for p in logs.rglob("*.log"))


def _logs(workdir: Path) -> set[Path]:
    root = workdir / "results" / "logs" / COHORT
    return set(root.rglob("*.log")) if root.exists() else set()


def kill_during(workdir: Path, marker: str, log: Path, timeout: float = 900) -> bool:
    """Run the workflow (output to ``log``) and SIGKILL its whole process group once a job of ``marker``
    runs; False when the run ended before such a job started (nothing left to kill)."""
    before = _logs(workdir)
    with open(log, "w") as out:
        proc = subprocess.Popen(_cmd(workdir, "--cores", "2", "--rerun-incomplete"), cwd=workdir, env=_env(),
                                start_new_session=True, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if _started(workdir, marker, before):
            time.sleep(0.5)  # let the job get into its writes
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"no {marker} job started within {timeout} s")


def rerun(workdir: Path) -> dict:
    """Rerun to completion; ``--unlock`` first when the lock of the killed run is stale."""
    found = {"stale_lock": False}
    proc = subprocess.run(_cmd(workdir, "--cores", "2", "--rerun-incomplete"), cwd=workdir, env=_env(),
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0 and "LockException" in proc.stdout + proc.stderr:
        found["stale_lock"] = True
        run_snakemake(workdir, "--unlock", configfile=CONFIG)
        proc = subprocess.run(_cmd(workdir, "--cores", "2", "--rerun-incomplete"), cwd=workdir, env=_env(),
                              capture_output=True, text=True)  # fmt: skip
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-6000:]
    found["incomplete_rerun"] = "Incomplete output files" in text or "incomplete" in text.lower()
    return found


def evidence(workdir: Path) -> dict:
    """What the kill left: Snakemake's incomplete markers and our atomic writers' temp files."""
    incomplete = workdir / ".snakemake" / "incomplete"
    markers = [p for p in incomplete.rglob("*") if p.is_file()] if incomplete.exists() else []
    temps = [p for p in (workdir / "results").rglob(".tmp-*")]
    locks = workdir / ".snakemake" / "locks"
    stale = locks.exists() and any(locks.iterdir())
    return {"incomplete_markers": len(markers), "atomic_temp_files": len(temps), "stale_lock": stale}


def check_outputs(workdir: Path) -> None:
    """Every h5 and parquet opens; features have one row per patch; the bag index lists every slide."""
    results = workdir / "results" / COHORT
    for h5 in results.rglob("*.h5"):
        with h5py.File(h5, "r") as f:
            assert len(f.keys()) > 0, h5
    for parquet in results.rglob("*.parquet"):
        pq.read_table(parquet)
    sheet = pd.read_csv(results / "slides.tsv", sep="\t", dtype=str)
    for slide in sheet["slide_id"]:
        for mag in (5, 20):
            with (
                h5py.File(results / f"patches/{mag}x/{slide}.h5") as c,
                h5py.File(results / f"features/tiny-clip/{mag}x/{slide}.h5") as feats,
            ):
                assert len(feats["features"]) == len(feats["coords"]) == len(c["coords"]), (slide, mag)
    assert len(pd.read_parquet(results / "qc.parquet")) == len(sheet)
    assert not list((workdir / "results").rglob(".tmp-*")), "temp files left behind"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> pd.DataFrame:
    workdir = tmp_path_factory.mktemp("uninterrupted")
    run_snakemake(workdir, "--cores", "2", configfile=CONFIG)
    return pd.read_csv(workdir / f"results/{COHORT}/eval/subtype/abmil/tiny-clip/metrics.csv")


def test_kill_9_at_five_moments_then_rerun(reference: pd.DataFrame, tmp_path: Path, capsys) -> None:
    workdir = tmp_path / "run"
    workdir.mkdir()
    found, moments = {}, list(MOMENTS.items())
    for i, (moment, marker) in enumerate(moments):
        log = tmp_path / f"run{i}.log"
        killed = kill_during(workdir, marker, log)
        found[moment] = {"killed": killed, **evidence(workdir)}
        if found[moment]["stale_lock"]:  # the documented recovery step: the killed run's lock is stale
            run_snakemake(workdir, "--unlock", configfile=CONFIG)
    final = rerun(workdir)
    # what the run after each kill said about the killed jobs' outputs (Snakemake's metadata)
    logs = [tmp_path / f"run{i}.log" for i in range(1, len(moments))]
    for (moment, _), text in zip(moments, [p.read_text() for p in logs] + [""]):
        found[moment]["rerun_saw_incomplete"] = "ncomplete" in text
    found["report"]["rerun_saw_incomplete"] = final["incomplete_rerun"]
    with capsys.disabled():
        for moment, facts in found.items():
            print(f"\nkill -9 during {moment}: {facts}", file=sys.stderr)
    assert all(facts["killed"] for facts in found.values()), found
    assert all(facts["atomic_temp_files"] == 0 or facts["incomplete_markers"] > 0 for facts in found.values())
    check_outputs(workdir)
    metrics = pd.read_csv(workdir / f"results/{COHORT}/eval/subtype/abmil/tiny-clip/metrics.csv")
    pd.testing.assert_frame_equal(metrics, reference)
