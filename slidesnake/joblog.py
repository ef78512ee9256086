"""Logging for pipeline jobs: everything a job says goes to its Snakemake ``log:`` file."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_job_logging(log_file: str | os.PathLike | None, level: int = logging.INFO) -> None:
    """Send the root logger, Python warnings and stray stderr to ``log_file`` (stderr if None).

    Snakemake shows a failed job's log; third-party libraries print to stderr, so stderr is
    redirected too, making the log the one place to look.
    """
    handlers: list[logging.Handler]
    if log_file is None:
        handlers = [logging.StreamHandler()]
    else:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        stream = open(log_file, "a", buffering=1)  # noqa: SIM115 - lives as long as the job
        sys.stderr = stream
        handlers = [logging.StreamHandler(stream)]
    logging.basicConfig(level=level, format=_FORMAT, handlers=handlers, force=True)
    logging.captureWarnings(True)
    import slidesnake

    logging.getLogger("slidesnake").info(
        "slidesnake %s from %s", slidesnake.__version__, Path(slidesnake.__file__).parent
    )
