"""GEO series supplementary files and the spatialLIBD DLPFC bucket: list, then download with transfer.py.

GEO publishes no checksums: ``suppl/filelist.txt`` gives sizes, so files are verified by size. The
"File" rows of filelist.txt are the members of the series' RAW tar, served one by one from the sample
folders (``geo/samples/GSM7697nnn/GSM7697868/suppl/``), which lets us fetch only the samples we need.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from slidesnake.data.transfer import DownloadResult, RemoteFile, TransferConfig, download, download_many
from slidesnake.errors import InputError

log = logging.getLogger(__name__)

GEO_SERIES_URL = "https://ftp.ncbi.nlm.nih.gov/geo/series"
SPATIALLIBD_BUCKET = "https://spatial-dlpfc.s3.us-east-2.amazonaws.com"
SPATIALLIBD_POSITIONS = "https://raw.githubusercontent.com/LieberInstitute/HumanPilot/master/10X"
_GSM = re.compile(r"^(GSM\d+)_")


class GeoError(InputError):
    """A GEO listing is missing or malformed, or the selection matched no file."""


@dataclass(frozen=True)
class GeoFile:
    """One row of ``filelist.txt``: kind is "Archive" (the RAW tar) or "File" (one of its members)."""

    name: str
    size: int | None
    kind: str


def range_dir(accession: str) -> str:
    """GEO's thousand-block folder: GSE240429 -> GSE240nnn, GSM7697868 -> GSM7697nnn, GSE12 -> GSEnnn."""
    return re.sub(r"\d{1,3}$", "nnn", accession)


def series_suppl_url(series: str, base_url: str = GEO_SERIES_URL) -> str:
    """The series' ``suppl/`` folder URL."""
    return f"{base_url.rstrip('/')}/{range_dir(series)}/{series}/suppl"


def sample_suppl_url(sample: str, base_url: str = GEO_SERIES_URL) -> str:
    """A sample's ``suppl/`` folder URL (``…/geo/samples/…``, the sibling of ``…/geo/series``)."""
    root = re.sub(r"/series/?$", "", base_url.rstrip("/"))
    return f"{root}/samples/{range_dir(sample)}/{sample}/suppl"


def parse_filelist(text: str) -> list[GeoFile]:
    """Parse ``filelist.txt`` (tab-separated ``#Archive/File Name Time Size Type``)."""
    files = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) < 4:
            raise GeoError(f"filelist.txt line has {len(parts)} fields, expected 5: {line!r}")
        size = parts[3].strip()
        files.append(GeoFile(name=parts[1].strip(), size=int(size) if size.isdigit() else None, kind=parts[0].strip()))
    return files


def list_series(
    series: str, out_dir: str | Path, base_url: str = GEO_SERIES_URL, config: TransferConfig | None = None
) -> list[GeoFile]:
    """Fetch (resumable, retried) and parse the series' ``filelist.txt``; it is kept in ``out_dir``."""
    dest = Path(out_dir) / "filelist.txt"
    download(RemoteFile(f"{series_suppl_url(series, base_url)}/filelist.txt", dest), config=config)
    files = parse_filelist(dest.read_text())
    if not files:
        raise GeoError(f"{dest}: empty listing for {series}; check the accession and --base-url")
    return files


def series_remote_files(
    series: str,
    files: Sequence[GeoFile],
    out_dir: str | Path,
    base_url: str = GEO_SERIES_URL,
    samples: Sequence[str] = (),
    pattern: str | None = None,
) -> list[RemoteFile]:
    """Per-sample member files of the listing (filtered by GSM ids and a name regex), sizes attached.

    Files without a GSM prefix come from the series folder. The RAW tar itself is fetched only when
    the listing has no member rows.
    """
    members = [f for f in files if f.kind == "File"] or files
    out = Path(out_dir)
    remotes = []
    for f in members:
        gsm = _GSM.match(f.name)
        if samples and (gsm is None or gsm.group(1) not in samples):
            continue
        if pattern and not re.search(pattern, f.name):
            continue
        folder = sample_suppl_url(gsm.group(1), base_url) if gsm else series_suppl_url(series, base_url)
        remotes.append(RemoteFile(f"{folder}/{f.name}", out / f.name, md5=None, size=f.size))
    if not remotes:
        raise GeoError(f"{series}: no file matched samples={list(samples)} pattern={pattern!r}")
    return remotes


def spatiallibd_remote_files(
    samples: Sequence[str],
    out_dir: str | Path,
    bucket_url: str = SPATIALLIBD_BUCKET,
    positions_url: str = SPATIALLIBD_POSITIONS,
    full_image: bool = True,
) -> list[RemoteFile]:
    """The DLPFC files of each sample: filtered h5 and full image (bucket), positions and scalefactors (git)."""
    if not samples:
        raise GeoError("geo.samples is empty: list spatialLIBD sample ids, e.g. [151507, 151508]")
    out = Path(out_dir)
    remotes = []
    for sample in map(str, samples):
        names = {f"h5/{sample}_filtered_feature_bc_matrix.h5": bucket_url}
        if full_image:
            names[f"images/{sample}_full_image.tif"] = bucket_url
        names[f"{sample}/tissue_positions_list.txt"] = positions_url
        names[f"{sample}/scalefactors_json.json"] = positions_url
        for rel, root in names.items():
            base = rel.rsplit("/", 1)[-1]
            local = base if base.startswith(sample) else f"{sample}_{base}"
            remotes.append(RemoteFile(f"{root.rstrip('/')}/{rel}", out / sample / local))
    return remotes


def download_series(
    series: str,
    out_dir: str | Path,
    base_url: str = GEO_SERIES_URL,
    samples: Sequence[str] = (),
    pattern: str | None = None,
    layout: str = "geo",
    positions_url: str = SPATIALLIBD_POSITIONS,
    config: TransferConfig | None = None,
) -> list[DownloadResult]:
    """Download a GEO series' sample files (``layout="geo"``) or spatialLIBD samples (``"spatiallibd"``)."""
    if layout == "spatiallibd":
        remotes = spatiallibd_remote_files(samples, out_dir, base_url, positions_url)
    elif layout == "geo":
        remotes = series_remote_files(
            series, list_series(series, out_dir, base_url, config), out_dir, base_url, samples, pattern
        )
    else:
        raise GeoError(f"geo.layout {layout!r} is not one of: geo, spatiallibd")
    log.info("%s: %d file(s) to fetch", series, len(remotes))
    return download_many(remotes, config=config)
