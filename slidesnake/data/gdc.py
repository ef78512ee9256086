"""NCI GDC client: paged ``/files`` and ``/cases`` search, slide sheets, gdc-client manifests, ``/data`` downloads.

Searches are POSTed as JSON (long filters break GET URLs) and paged with ``from``/``size`` until
``pagination.pages``; downloads go through :mod:`slidesnake.data.transfer` (resume, md5, retries).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import requests

from slidesnake.data.cohorts import LabelRule
from slidesnake.data.token import Token
from slidesnake.data.transfer import (
    DownloadResult,
    RemoteFile,
    TransferConfig,
    backoff_delay,
    download,
    download_many,
    no_route_message,
    no_route_reason,
)
from slidesnake.errors import ComputationError
from slidesnake.io.atomic import write_csv

log = logging.getLogger(__name__)

GDC_API = "https://api.gdc.cancer.gov"
SLIDE_FIELDS = (
    "file_id",
    "file_name",
    "md5sum",
    "file_size",
    "access",
    "state",
    "cases.case_id",
    "cases.submitter_id",
    "cases.project.project_id",
    "cases.diagnoses.primary_diagnosis",
)
SHEET_COLUMNS = (
    "slide_id", "case_id", "path", "label", "md5", "source",
    "file_id", "file_name", "file_size", "project_id", "submitter_id", "access",
)  # fmt: skip
MANIFEST_COLUMNS = ("id", "filename", "md5", "size", "state")
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class GdcError(ComputationError):
    """The GDC API answered with an error or an unexpected payload."""


class ManifestError(GdcError):
    """A manifest/sheet file lacks the columns needed to download."""


@dataclass
class SlideQuery:
    """What slides to find: projects and the slide-image enums of the GDC dictionary."""

    projects: Sequence[str] = field(default_factory=list)
    strategy: str | Sequence[str] = "Diagnostic Slide"
    data_format: str = "SVS"
    data_type: str = "Slide Image"


def _in(field_name: str, values: str | Sequence[str]) -> dict[str, Any]:
    return {
        "op": "in",
        "content": {"field": field_name, "value": [values] if isinstance(values, str) else list(values)},
    }


def slide_filters(query: SlideQuery) -> dict[str, Any]:
    """GDC JSON filter for slide images of ``query.projects`` with the given strategy and format."""
    return {
        "op": "and",
        "content": [
            _in("cases.project.project_id", query.projects),
            _in("data_type", query.data_type),
            _in("experimental_strategy", query.strategy),
            _in("data_format", query.data_format),
        ],
    }


class GdcClient:
    """Paged search over the GDC API with explicit timeouts and retries on 5xx/timeouts."""

    def __init__(
        self,
        api: str = GDC_API,
        session: requests.Session | None = None,
        timeout_s: float = 60.0,
        retries: int = 8,
        backoff_base_s: float = 1.0,
        page_size: int = 500,
    ):
        self.api = api.rstrip("/")
        self.session = session or requests.Session()
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_base_s = backoff_base_s
        self.page_size = page_size

    def search(
        self,
        endpoint: str,
        filters: Mapping[str, Any],
        fields: Iterable[str],
        expand: Iterable[str] = (),
    ) -> Iterator[dict[str, Any]]:
        """Yield every hit of ``/{endpoint}`` for ``filters``, page by page until ``pagination.pages``."""
        start, page, pages = 0, 0, 1
        while page < pages:
            body: dict[str, Any] = {
                "filters": filters,
                "fields": ",".join(fields),
                "format": "JSON",
                "size": self.page_size,
                "from": start,
            }
            if expand:
                body["expand"] = ",".join(expand)
            data = self._post(endpoint, body)["data"]
            pagination = data["pagination"]
            yield from data["hits"]
            page, pages = int(pagination["page"]), int(pagination["pages"])
            start += self.page_size
            if not data["hits"]:
                break
            log.info("%s: page %d/%d", endpoint, page, pages)

    def _post(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.api}/{endpoint}"
        for attempt in range(self.retries + 1):
            try:
                resp = self.session.post(url, json=body, timeout=self.timeout_s)
            except (requests.ConnectionError, requests.Timeout) as exc:
                reason = no_route_reason(exc)
                if reason is not None:  # DNS failure or refused: retrying on a node without network cannot help
                    raise GdcError(no_route_message(url, reason)) from None
                error = f"{type(exc).__name__} from {url}"
            else:
                if resp.status_code not in _RETRY_STATUS:
                    return self._json(resp, url)
                error = f"HTTP {resp.status_code} from {url}"
            delay = backoff_delay(attempt, self.backoff_base_s, 60.0)
            log.warning("%s; retrying in %.2f s", error, delay)
            time.sleep(delay)
        raise GdcError(f"{error} after {self.retries} retries; check --api / gdc.api and https://status.gdc.cancer.gov")

    @staticmethod
    def _json(resp: requests.Response, url: str) -> dict[str, Any]:
        if resp.status_code != 200:
            raise GdcError(f"HTTP {resp.status_code} from {url}: {resp.text[:300]}")
        try:
            payload = resp.json()
            ok = isinstance(payload["data"]["hits"], list) and "pages" in payload["data"]["pagination"]
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            raise GdcError(f"{url} did not return a GDC search payload (data.hits/pagination): {resp.text[:200]!r}")
        return payload


def query_slides(client: GdcClient, query: SlideQuery) -> list[dict[str, Any]]:
    """All slide-file hits for ``query`` (raw GDC JSON records)."""
    if not query.projects:
        raise GdcError("no projects to query: set gdc.projects (or --project), e.g. TCGA-LUAD")
    return list(client.search("files", slide_filters(query), SLIDE_FIELDS))


def flatten_file_hit(hit: Mapping[str, Any]) -> dict[str, Any]:
    """One flat record per file: its own fields plus the first case's ids, project and primary diagnosis."""
    case = (hit.get("cases") or [{}])[0]
    diagnoses = [d.get("primary_diagnosis") for d in case.get("diagnoses") or [] if d.get("primary_diagnosis")]
    return {
        "file_id": hit.get("file_id") or hit.get("id"),
        "file_name": hit["file_name"],
        "md5": hit.get("md5sum", ""),
        "file_size": hit.get("file_size"),
        "access": hit.get("access", ""),
        "case_id": case.get("case_id", ""),
        "submitter_id": case.get("submitter_id", ""),
        "project_id": (case.get("project") or {}).get("project_id", ""),
        "primary_diagnosis": diagnoses[0] if diagnoses else None,
    }


def slide_id_from_name(file_name: str) -> str:
    """Slide id = the file name without ``.svs`` (TCGA barcode + uuid), as TCGA users expect."""
    return file_name[: -len(".svs")] if file_name.lower().endswith(".svs") else Path(file_name).stem


def slide_sheet(hits: Iterable[Mapping[str, Any]], cohort: str, rule: LabelRule | None = None) -> pd.DataFrame:
    """The DESIGN §2 slide sheet (all str) from file hits; unlabelled slides are dropped when a rule is given."""
    rows = []
    dropped = 0
    for hit in hits:
        rec = flatten_file_hit(hit)
        label = rule.label(rec) if rule is not None else rec["project_id"]
        if label is None:
            dropped += 1
            continue
        slide_id = slide_id_from_name(rec["file_name"])
        rows.append(
            {
                **rec,
                "slide_id": slide_id,
                "label": label,
                "path": f"resources/slides/{cohort}/{slide_id}.svs",
                "source": "gdc",
            }
        )
    if dropped:
        log.info("%d slide(s) left out: their %s has no label in the cohort's label map", dropped, rule.field)
    df = pd.DataFrame(rows, columns=[*SHEET_COLUMNS, "primary_diagnosis"])
    df = df.drop(columns="primary_diagnosis").drop_duplicates("file_id").sort_values("slide_id")
    return df.fillna("").astype(str).reset_index(drop=True)


def write_sheet(df: pd.DataFrame, path: str | Path) -> None:
    """Write a slide sheet as TSV, atomically."""
    write_csv(path, df, sep="\t")


def read_sheet(path: str | Path) -> pd.DataFrame:
    """Read a slide sheet TSV with every column as str."""
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def write_manifest(sheet: pd.DataFrame, path: str | Path) -> None:
    """Export a gdc-client compatible manifest (``id filename md5 size state``) from a slide sheet."""
    manifest = pd.DataFrame(
        {
            "id": sheet["file_id"],
            "filename": sheet["file_name"],
            "md5": sheet["md5"],
            "size": sheet["file_size"],
            "state": sheet["state"] if "state" in sheet else "released",
        }
    )
    write_csv(path, manifest, sep="\t")


def read_download_table(path: str | Path) -> pd.DataFrame:
    """Read a gdc-client manifest or a slide sheet into columns file_id, file_name, md5, file_size (str)."""
    # quotechar "#" as in gdc-client's parser: file names may contain quotes
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quotechar="#")
    if "id" in df.columns:
        df = df.rename(columns={"id": "file_id", "filename": "file_name", "size": "file_size"})
    elif "file_id" not in df.columns:
        raise ManifestError(
            f"{path}: neither a gdc-client manifest (column 'id') nor a slide sheet (column 'file_id'); "
            "export one with `slidesnake gdc query` or the GDC portal's Manifest button"
        )
    for col in ("file_name", "md5", "file_size"):
        if col not in df.columns:
            df[col] = ""
    df["file_name"] = [name or fid for name, fid in zip(df["file_name"], df["file_id"])]
    return df[["file_id", "file_name", "md5", "file_size"]]


def remote_file(api: str, file_id: str, dest: str | Path, md5: str = "", size: str | int = "") -> RemoteFile:
    """The ``/data/{file_id}`` download of one GDC file to ``dest``."""
    return RemoteFile(
        url=f"{api.rstrip('/')}/data/{file_id}",
        dest=Path(dest),
        md5=md5 or None,
        size=int(size) if str(size).strip() else None,
    )


def download_table(
    table: pd.DataFrame,
    out_dir: str | Path,
    api: str = GDC_API,
    config: TransferConfig | None = None,
    token: Token | None = None,
) -> list[DownloadResult]:
    """Download every file of a manifest/sheet table into ``out_dir`` (raises DownloadFailures at the end)."""
    out = Path(out_dir)
    remotes = [
        remote_file(api, r.file_id, out / r.file_name, r.md5, r.file_size) for r in table.itertuples(index=False)
    ]
    return download_many(remotes, config=config, token=token)


def download_slide(
    sheet: pd.DataFrame,
    slide_id: str,
    dest: str | Path,
    api: str = GDC_API,
    config: TransferConfig | None = None,
    token: Token | None = None,
) -> DownloadResult:
    """Download the slide ``slide_id`` of a sheet to ``dest`` (one Snakemake job per slide)."""
    rows = sheet[sheet["slide_id"] == slide_id]
    if rows.empty:
        raise ManifestError(f"slide {slide_id} is not in the slide sheet; rerun the gdc_query checkpoint")
    row = rows.iloc[0]
    return download(remote_file(api, row["file_id"], dest, row["md5"], row["file_size"]), config=config, token=token)
