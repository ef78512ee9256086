"""The cluster path on a real SLURM: a single-node cluster on 127.0.0.1 (.ci/slurm_setup.sh: Debian's
slurm-wlm and munge, partitions "cpu" and "gpu", the latter CPU-only with count-only GPUs) runs the small
demo with `snakemake --profile` built from profiles/slurm, unchanged except for sizes that fit one small
node. Checks: the run completes, SLURM ran the jobs (sacct from the job-completion log), the GPU rules'
jobs asked for a GPU (--gpus in the sbatch call) on the GPU partition key, and the metrics equal a local
run's. Skips, saying why, where SLURM cannot be started (not root, no apt, daemons fail)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, SNAKEMAKE, run_snakemake

pytestmark = [pytest.mark.workflow, pytest.mark.slurm, pytest.mark.slow]

CONFIG = REPO / "config" / "cohorts" / "demo_small.yaml"
METRICS = "results/demo_small/eval/subtype/abmil/tiny-clip/metrics.csv"
GPU_RULES = {"features", "embed_prompts", "train", "heatmaps"}


@pytest.fixture(scope="module")
def slurm() -> str:
    if shutil.which("bash") is None or os.geteuid() != 0:
        pytest.skip("SLURM test needs root to install and start slurm-wlm/munge")
    proc = subprocess.run(["bash", str(REPO / ".ci/slurm_setup.sh")], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.skip(f"SLURM could not be started: {(proc.stdout + proc.stderr).strip()[-500:]}")
    return proc.stdout


def slurm_test_profile(tmp_path: Path) -> Path:
    """The test profile: profiles/slurm with sizes for one 2-core node; account/partitions from the env."""
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    for res in profile["set-resources"].values():
        res["mem_mb"] = min(res.get("mem_mb", 1500), 1500)
        res["runtime"] = min(res.get("runtime", 20), 20)
        if "cpus_per_task" in res:
            res["cpus_per_task"] = 1
    profile["set-threads"] = {rule: 1 for rule in profile["set-threads"]}
    profile.update({"cores": 2, "jobs": 4, "latency-wait": 5, "resources": ["gdc_downloads=4", "mem_mb=3000"]})
    profile.update({"slurm-no-account": True, "slurm-status-command": "squeue", "group-components": {"slide": 3}})
    profile["slurm-init-seconds-before-status-checks"] = 2
    profile["slurm-keep-successful-logs"] = True  # the test reads which rule each SLURM job id ran
    assert profile["set-resources"]["features"]["gpu"] == 1 and "slurm_partition" in profile["set-resources"]["train"]
    folder = tmp_path / "profile"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(profile))
    return folder


def _sacct_ids() -> set[str]:
    out = subprocess.run(["sacct", "-c", "-n", "-P", "-o", "jobid,partition,state"], capture_output=True, text=True)
    return {line.split("|")[0] for line in out.stdout.splitlines() if line.strip()}


def test_demo_small_through_slurm(slurm: str, tmp_path: Path) -> None:
    profile = slurm_test_profile(tmp_path)
    before = _sacct_ids()
    workdir = tmp_path / "slurm"
    workdir.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "SLIDESNAKE_SLURM_PARTITION": "cpu",
           "SLIDESNAKE_SLURM_GPU_PARTITION": "gpu"}  # fmt: skip
    cmd = [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--profile", str(profile),
           "--configfile", str(CONFIG)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=1200)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-6000:]
    submitted = dict(re.findall(r"Job (\S+) has been submitted with SLURM jobid (\d+)", text))
    assert len(submitted) >= 10, text[-3000:]
    rows = subprocess.run(["sacct", "-c", "-n", "-P", "-o", "jobid,jobname,partition,state"], capture_output=True,
                          text=True).stdout.splitlines()  # fmt: skip
    ours = {r.split("|")[0]: r.split("|") for r in rows if r.split("|")[0] not in before}
    assert set(submitted.values()) <= set(ours), (submitted, rows[-20:])
    assert all(ours[j][3] == "COMPLETED" for j in submitted.values()), [ours[j] for j in submitted.values()]
    # GPU rules asked for a GPU (--gpus=1 -> TresPerJob gres:gpu:1) on the GPU partition key; CPU rules did not
    logs = sorted((workdir / ".snakemake/slurm_logs").glob("rule_*/*/*.log"))
    rule_of = {p.stem: p.parent.parent.name.removeprefix("rule_") for p in logs}
    gpu_jobs = [j for j, rule in rule_of.items() if rule in GPU_RULES]
    assert {rule_of[j] for j in gpu_jobs} >= {"features", "train", "embed_prompts"}, rule_of
    for job, rule in rule_of.items():
        shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
        asked_gpu = "gres:gpu:1" in shown or "gres/gpu=1" in shown
        assert asked_gpu == (rule in GPU_RULES), (rule, shown)
        assert ours[job][2] == ("gpu" if rule in GPU_RULES else "cpu"), (rule, ours[job])
    local = tmp_path / "local"
    local.mkdir()
    run_snakemake(local, "--cores", "2", configfile=CONFIG)
    pd.testing.assert_frame_equal(pd.read_csv(workdir / METRICS), pd.read_csv(local / METRICS))
