"""The slide sheet: the one table that says which slides a cohort has and where they are.

The Snakefile reads it once per parse (every cluster job re-parses), so loading is one
``pandas.read_csv`` with string dtypes plus vectorised checks — no per-row Python.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from slidesnake.errors import InputError

REQUIRED_COLUMNS = ("slide_id", "case_id", "path")
SLIDE_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_SLIDE_ID_RE = re.compile(rf"^{SLIDE_ID_PATTERN}$")


class SheetError(InputError):
    """A slide sheet that cannot drive the pipeline; the message names the file and the rows."""


def read_sheet(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a slide sheet TSV (DESIGN §2); all columns are strings."""
    path = Path(path)
    if not path.exists():
        raise SheetError(f"slide sheet {path} does not exist (config key 'sheet')")
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    return validate_sheet(df, str(path))


def validate_sheet(df: pd.DataFrame, origin: str = "<sheet>") -> pd.DataFrame:
    """Check required columns, unique and path-safe slide ids, and non-empty case ids."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise SheetError(f"slide sheet {origin} lacks column(s) {missing}; it has {list(df.columns)}")
    bad_ids = df.loc[~df["slide_id"].str.match(_SLIDE_ID_RE), "slide_id"]
    if len(bad_ids):
        raise SheetError(
            f"slide sheet {origin}: slide_id must match {SLIDE_ID_PATTERN} (they become file names); "
            f"bad: {bad_ids.head(5).tolist()}"
        )
    dupes = df.loc[df["slide_id"].duplicated(), "slide_id"]
    if len(dupes):
        raise SheetError(f"slide sheet {origin}: duplicated slide_id {dupes.head(5).tolist()}")
    empty_case = df.loc[df["case_id"].str.len() == 0, "slide_id"]
    if len(empty_case):
        raise SheetError(f"slide sheet {origin}: empty case_id for slides {empty_case.head(5).tolist()}")
    return df.reset_index(drop=True)
