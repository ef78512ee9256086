"""Start-up cost of the commands a pipeline job runs: `slidesnake segment --help`, `slidesnake --version`,
and the imports of the tissue job script, against `python -c pass` measured in the same run.

Each command runs in a fresh interpreter (best of --repeat); the table gives seconds, the ratio to bare
Python and whether torch was imported (tissue jobs and the CLI's help must not import it).
Target: `slidesnake segment --help` <= 0.3 s.

    python benchmarks/startup.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_S = 0.3

# What each command runs; the trailing probe says whether torch got imported (printed to stderr).
PROBE = "import atexit, sys; atexit.register(lambda: sys.stderr.write('TORCH=%d\\n' % ('torch' in sys.modules)))"
COMMANDS = {
    "python -c pass": "pass",
    "slidesnake segment --help": "import sys; sys.argv = ['slidesnake', 'segment', '--help']\n"
    "from slidesnake.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass",
    "slidesnake --version": "import sys; sys.argv = ['slidesnake', '--version']\n"
    "from slidesnake.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass",
    "tissue job imports": "import slidesnake.joblog, slidesnake.tissue.segmentation, slidesnake.tissue.stage",
    "slidesnake.cli import": "import slidesnake.cli",
}


def time_command(code: str, repeat: int) -> tuple[float, bool]:
    """Best wall time of ``python -c PROBE; code`` over ``repeat`` fresh interpreters, and torch imported?"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    best, torch = float("inf"), False
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", f"{PROBE}\n{code}"], capture_output=True, text=True, env=env, cwd=REPO
        )
        best = min(best, time.perf_counter() - start)
        if proc.returncode != 0:
            raise SystemExit(f"{code!r} failed:\n{proc.stderr}")
        torch = "TORCH=1" in proc.stderr
    return best, torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    rows = {name: time_command(code, args.repeat) for name, code in COMMANDS.items()}
    base = rows["python -c pass"][0]
    print(f"{'command':28s} {'seconds':>8s} {'x python':>9s} {'+seconds':>9s}  torch")
    for name, (seconds, torch) in rows.items():
        print(f"{name:28s} {seconds:8.3f} {seconds / base:9.2f} {seconds - base:9.3f}  {'yes' if torch else 'no'}")
    seg, seg_torch = rows["slidesnake segment --help"]
    tissue_torch = rows["tissue job imports"][1]
    ok = seg <= TARGET_S and not seg_torch and not tissue_torch
    print(
        f"segment --help: {seg:.3f} s (target <= {TARGET_S} s; {seg / base:.1f}x python start-up); "
        f"torch imported by segment --help: {seg_torch}, by the tissue job: {tissue_torch} -> {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
