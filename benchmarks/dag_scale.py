"""How long Snakemake takes to plan a 10,000-slide cohort (`snakemake -n`): target well under 60 s.

Writes a slide sheet whose paths are symbolic links to one small real SVS (a dry run needs the
inputs to exist, not to differ), then times the dry run of the whole pipeline and prints the
seconds, the job count and the seconds per thousand jobs.

    python benchmarks/dag_scale.py [--slides 10000] [--workdir benchmarks/results/dag_scale]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from slidesnake.io.svs import write_svs  # noqa: E402


def build_cohort(workdir: Path, n_slides: int, models: list[str] | None = None) -> Path:
    """Sheet + symlinked slides + config for an n-slide cohort of 2 slides per patient, 2 classes."""
    slides = workdir / "slides"
    slides.mkdir(parents=True, exist_ok=True)
    source = slides / "_source.svs"
    if not source.exists():
        write_svs(source, np.full((1024, 1024, 3), 240, np.uint8))
    ids = [f"S{i:05d}" for i in range(n_slides)]
    for slide_id in ids:
        link = slides / f"{slide_id}.svs"
        if not link.is_symlink():
            link.symlink_to(source)
    sheet = pd.DataFrame(
        {
            "slide_id": ids,
            "case_id": [f"P{i // 2:05d}" for i in range(n_slides)],
            "path": [str(slides / f"{s}.svs") for s in ids],
            "label": [("a", "b")[(i // 2) % 2] for i in range(n_slides)],
        }
    )
    sheet.to_csv(workdir / "slides.tsv", sep="\t", index=False)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update(cohort="scale", source="sheet", sheet=str(workdir / "slides.tsv"))
    if models:
        config["training"]["models"] = models
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return workdir / "config.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=10_000)
    parser.add_argument("--workdir", type=Path, default=REPO / "benchmarks" / "results" / "dag_scale")
    parser.add_argument(
        "--models", nargs="*", help="MIL models to plan (default: the config's); e.g. all 13 for a comparison"
    )
    args = parser.parse_args()
    config = build_cohort(args.workdir, args.slides, args.models)
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(args.workdir),
        "--configfile",
        str(config),
        "-n",
        "--quiet",
        "rules",
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"dry run failed:\n{proc.stderr[-3000:]}")
    total = re.search(r"^total\s+(\d+)", proc.stdout + proc.stderr, re.M)
    jobs = int(total.group(1)) if total else -1
    print(f"slides: {args.slides}, models: {args.models or 'config default'}")
    print(f"jobs planned: {jobs}")
    print(f"snakemake -n seconds: {seconds:.1f} (target < 60)")
    print(f"seconds per 1000 jobs: {1000 * seconds / max(jobs, 1):.2f}")


if __name__ == "__main__":
    main()
