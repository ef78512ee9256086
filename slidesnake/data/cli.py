"""The ``slidesnake gdc …`` and ``slidesnake geo …`` command groups.

``add_commands(subparsers)`` registers them on the main parser; each subcommand sets ``func(args) -> int``
(0 on success, 1 after a failure summary), so every file is attempted before the command exits non-zero.
Registering them imports nothing heavy (pandas, anndata, requests load inside each command), so
``slidesnake segment --help`` stays cheap; defaults that live in the data modules are filled in there.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


def _handled() -> tuple[type[BaseException], ...]:
    """The library errors a data command reports as a one-line summary (imported when a command runs)."""
    from slidesnake.data.gdc import GdcError
    from slidesnake.data.geo import GeoError
    from slidesnake.data.maf import MafError
    from slidesnake.data.token import TokenError
    from slidesnake.data.transfer import TransferError
    from slidesnake.data.visium import VisiumError

    return (GdcError, GeoError, MafError, TokenError, TransferError, VisiumError, OSError)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``gdc`` and ``geo`` command groups on the main CLI's subparsers."""
    gdc = subparsers.add_parser("gdc", help="query and download from the NCI Genomic Data Commons")
    gdc_sub = gdc.add_subparsers(dest="gdc_command", required=True)

    p = gdc_sub.add_parser("query", help="find slide images and write the slide sheet (TSV)")
    _api(p)
    _projects(p)
    p.add_argument("--strategy", action="append", help="experimental_strategy (repeatable); default Diagnostic Slide")
    p.add_argument("--data-format", default="SVS", help="data_format (default SVS)")
    p.add_argument("--cohort", default="gdc", help="cohort name used in the sheet's path column")
    p.add_argument("--out", required=True, type=Path, help="slide sheet TSV to write")
    p.add_argument("--manifest", type=Path, help="also write a gdc-client manifest here")
    p.set_defaults(func=_guard(cmd_query))

    p = gdc_sub.add_parser("download", help="download the files of a manifest or slide sheet (resumable)")
    _api(p)
    _transfer(p)
    p.add_argument("table", type=Path, metavar="MANIFEST_OR_SHEET")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--token-file", help="file holding the GDC token (controlled data)")
    p.add_argument("--token-env", help="name of an environment variable holding the GDC token")
    p.set_defaults(func=_guard(cmd_download))

    p = gdc_sub.add_parser("clinical", help="write clinical.parquet (one row per case)")
    _api(p)
    _projects(p)
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=_guard(cmd_clinical))

    p = gdc_sub.add_parser("mutations", help="write mutations.parquet from the masked somatic MAFs")
    _api(p)
    _projects(p)
    _transfer(p)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--genes", nargs="+", help="genes to call (default: slidesnake.data.maf.DEFAULT_GENES)")
    p.add_argument("--capture-mb", type=float, default=38.0, help="capture size for TMB (default 38 Mb)")
    p.add_argument("--cache-dir", type=Path, help="where MAFs are kept (default: <out>.mafs/)")
    p.set_defaults(func=_guard(cmd_mutations))

    geo = subparsers.add_parser("geo", help="GEO / spatialLIBD downloads and Visium parsing")
    geo_sub = geo.add_subparsers(dest="geo_command", required=True)
    p = geo_sub.add_parser("download", help="download a series' supplementary files (size-verified)")
    p.add_argument("series", metavar="GSE")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--base-url", help="GEO series root (default: NCBI's GEO series FTP over https)")
    p.add_argument("--samples", nargs="+", default=[], help="GSM ids (geo) or sample ids (spatiallibd)")
    p.add_argument("--pattern", help="regex the file names must match")
    p.add_argument("--layout", choices=["geo", "spatiallibd"], default="geo")
    p.add_argument("--positions-url", help="spatialLIBD positions/scalefactors root (default: spatialLIBD's)")
    _transfer(p)
    p.set_defaults(func=_guard(cmd_geo_download))

    p = geo_sub.add_parser("visium", help="parse one Visium sample folder into .h5ad")
    p.add_argument("folder", type=Path)
    p.add_argument("--sample", default="", help="text that the sample's file names contain")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=_guard(cmd_visium))


def _api(p: argparse.ArgumentParser) -> None:
    p.add_argument("--api", help="GDC API root (default: the public GDC API, https://api.gdc.cancer.gov)")


def _projects(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project", action="append", required=True, help="project id, e.g. TCGA-LUAD (repeatable)")


def _transfer(p: argparse.ArgumentParser) -> None:
    p.add_argument("--parallel", type=int, default=4, help="parallel downloads (default 4)")
    p.add_argument("--retries", type=int, default=8, help="retries without progress per file (default 8)")
    p.add_argument("--timeout", type=float, default=60.0, help="connect/read timeout in seconds (default 60)")


def _config(args: argparse.Namespace):
    from slidesnake.data.transfer import TransferConfig

    return TransferConfig(retries=args.retries, timeout_s=args.timeout, parallel=args.parallel)


def _guard(func: Callable[[argparse.Namespace], None]) -> Callable[[argparse.Namespace], int]:
    """Turn the library's errors into a logged summary and exit status 1 (no traceback for user errors)."""

    def run(args: argparse.Namespace) -> int:
        from slidesnake.data.transfer import DownloadFailures

        if getattr(args, "api", "unset") is None:
            from slidesnake.data.gdc import GDC_API

            args.api = GDC_API
        try:
            func(args)
        except DownloadFailures as exc:
            log.error("%s", exc)
            return 1
        except _handled() as exc:
            log.error("%s: %s", type(exc).__name__, exc)
            return 1
        return 0

    run.__doc__ = func.__doc__
    return run


def cmd_query(args: argparse.Namespace) -> None:
    """gdc query: slide sheet (and optional manifest) for the projects."""
    from slidesnake.data.gdc import GdcClient, SlideQuery, query_slides, slide_sheet, write_manifest, write_sheet

    query = SlideQuery(
        projects=args.project, strategy=args.strategy or "Diagnostic Slide", data_format=args.data_format
    )
    sheet = slide_sheet(query_slides(GdcClient(args.api), query), args.cohort)
    write_sheet(sheet, args.out)
    if args.manifest:
        write_manifest(sheet, args.manifest)
    log.info("%d slide(s) -> %s", len(sheet), args.out)


def cmd_download(args: argparse.Namespace) -> None:
    """gdc download: every file of the table into --out."""
    from slidesnake.data.gdc import download_table, read_download_table
    from slidesnake.data.token import read_token

    token = read_token(args.token_file, args.token_env)
    results = download_table(read_download_table(args.table), args.out, args.api, _config(args), token)
    log.info("%d file(s) ready in %s", len(results), args.out)


def cmd_clinical(args: argparse.Namespace) -> None:
    """gdc clinical: clinical.parquet for the projects."""
    from slidesnake.data.clinical import clinical_table, fetch_cases
    from slidesnake.data.gdc import GdcClient
    from slidesnake.io.atomic import write_parquet

    table = clinical_table(fetch_cases(GdcClient(args.api), args.project))
    write_parquet(args.out, table)
    log.info("%d case(s) -> %s", len(table), args.out)


def cmd_mutations(args: argparse.Namespace) -> None:
    """gdc mutations: mutations.parquet for the projects."""
    from slidesnake.data.gdc import GdcClient
    from slidesnake.data.maf import DEFAULT_GENES, MutationParams, fetch_mutation_table
    from slidesnake.io.atomic import write_parquet

    cache = args.cache_dir or args.out.with_name(args.out.name + ".mafs")
    params = MutationParams(genes=args.genes or list(DEFAULT_GENES), capture_mb=args.capture_mb)
    table = fetch_mutation_table(GdcClient(args.api), args.project, cache, params, _config(args))
    write_parquet(args.out, table)
    log.info("%d case(s) -> %s", len(table), args.out)


def cmd_geo_download(args: argparse.Namespace) -> None:
    """geo download: a series' (or spatialLIBD samples') files into --out."""
    from slidesnake.data.geo import GEO_SERIES_URL, SPATIALLIBD_POSITIONS, download_series

    base_url = args.base_url or GEO_SERIES_URL
    positions = args.positions_url or SPATIALLIBD_POSITIONS
    results = download_series(
        args.series, args.out, base_url, args.samples, args.pattern, args.layout, positions, _config(args)
    )
    log.info("%d file(s) ready in %s", len(results), args.out)


def cmd_visium(args: argparse.Namespace) -> None:
    """geo visium: one sample folder -> .h5ad."""
    from slidesnake.data.visium import find_visium_files, read_visium, write_h5ad

    adata = read_visium(find_visium_files(args.folder, args.sample), args.sample or args.folder.name)
    write_h5ad(adata, args.out)
