"""Resumable, verified, retrying HTTP downloads shared by the GDC and GEO clients.

A file is streamed into ``<dest>.partial``; after a drop only the missing bytes are requested with
``Range``; size and md5 are checked before the rename, so ``<dest>`` exists only when it is right.
Error pages (HTML/JSON bodies, e.g. a gateway's 504 page) are refused before a byte is written.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import queue
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from slidesnake.data.token import Token, scrub
from slidesnake.errors import ComputationError
from slidesnake.progress import Progress

log = logging.getLogger(__name__)

AUTH_HEADER = "X-Auth-Token"
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_TRANSIENT = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    ConnectionResetError,
)
_ERROR_PAGE_START = re.compile(rb"^\s*(<!doctype html|<html|<\?xml|\{\s*\"(message|error|errors|warnings)\")", re.I)


class TransferError(ComputationError):
    """A file could not be downloaded (after the configured retries)."""


class AuthError(TransferError):
    """401/403: the token is missing, invalid, expired, or lacks access; never retried."""


class ErrorPageError(TransferError):
    """The server answered with an HTML/JSON error body where the file was expected."""


class IntegrityError(TransferError):
    """The completed download does not match the expected size or md5."""


class DownloadFailures(TransferError):
    """Some files of a batch failed; raised after all the others finished."""

    def __init__(self, failures: dict[str, str]):
        self.failures = failures
        lines = "\n".join(f"  {name}: {reason}" for name, reason in sorted(failures.items()))
        super().__init__(f"{len(failures)} file(s) failed to download:\n{lines}")


@dataclass
class TransferConfig:
    """Retry, timeout and parallelism settings (defaults follow the cohort config's gdc section)."""

    retries: int = 8
    timeout_s: float = 60.0
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    chunk_size: int = 1 << 20
    parallel: int = 4


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch: where from, where to, and what it must look like when complete."""

    url: str
    dest: Path
    md5: str | None = None
    size: int | None = None

    @property
    def name(self) -> str:
        return self.dest.name


@dataclass(frozen=True)
class DownloadResult:
    """What one download did: bytes fetched over the network (resumes fetch less) and attempts used."""

    path: Path
    bytes_fetched: int
    attempts: int
    skipped: bool = False


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform(0, min(max_s, base_s * 2**attempt)).

    Jitter spreads retries of many parallel workers so they do not hit a recovering server together.
    """
    return (rng or random).uniform(0.0, min(max_s, base_s * (2**attempt)))


def auth_headers(token: Token | None) -> dict[str, str]:
    """The request headers carrying ``token`` (empty for open data)."""
    return {AUTH_HEADER: token.value} if token is not None else {}


def md5_file(path: Path) -> str:
    """Hex md5 of a file, read in chunks."""
    return _md5_object(path).hexdigest()


def partial_path(dest: Path) -> Path:
    """Where an unfinished download of ``dest`` lives."""
    return dest.with_name(dest.name + ".partial")


class _RunningMd5:
    """md5 of the partial file, updated by a helper thread while the next chunk arrives.

    Hashing in line with the socket reads would serialise two GIL-free operations; the pipeline keeps
    verified downloads as fast as an unverified one, and verifying costs no second read of the file.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=16)
        self._thread: threading.Thread | None = None
        self.digest = hashlib.md5()
        self.count = 0

    def _work(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self.digest.update(chunk)
            self._queue.task_done()
        self._queue.task_done()

    def update(self, chunk: bytes) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="md5", daemon=True)
            self._thread.start()
        self._queue.put(chunk)
        self.count += len(chunk)

    def close(self) -> None:
        """Finish pending chunks and stop the helper thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def reset(self) -> None:
        self.close()
        self.digest = hashlib.md5()
        self.count = 0

    def sync(self, part: Path) -> None:
        """Re-hash ``part`` from disk only if it differs in length from what was hashed (a prior run's partial)."""
        self.close()
        size = part.stat().st_size if part.exists() else 0
        if size != self.count:
            self.digest = _md5_object(part) if size else hashlib.md5()
            self.count = size

    def hexdigest(self) -> str:
        self.close()
        return self.digest.hexdigest()


def _md5_object(path: Path) -> Any:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest


class NoRouteError(TransferError):
    """The host has no route to the server (DNS failure, connection refused, network unreachable).

    Retrying cannot help on a compute node without internet, so this fails at once.
    """


_NO_ROUTE_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH})

DOWNLOAD_ON_LOGIN_NODE = (
    "this node has no route to the API (no network: a cluster compute node?); run the download stage on a "
    "login node with internet, e.g. `snakemake --configfile <cohort.yaml> --cores 4 --until gdc_download_slide "
    "gdc_clinical gdc_mutations` (GEO: --until geo_download), then run the rest where you like"
)


def no_route_reason(exc: BaseException) -> str | None:
    """'name resolution failed' / 'connection refused' / 'network unreachable' when ``exc`` (a requests
    error and its chain of causes) says the host cannot reach the server at all, else None."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        err = stack.pop()
        if id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, socket.gaierror) or type(err).__name__ == "NameResolutionError":
            return "name resolution failed"
        if isinstance(err, ConnectionRefusedError):
            return "connection refused"
        if isinstance(err, OSError) and err.errno in _NO_ROUTE_ERRNOS:
            return "connection refused" if err.errno == errno.ECONNREFUSED else "network unreachable"
        nxt = [err.__cause__, err.__context__, getattr(err, "reason", None), *getattr(err, "args", ())]
        stack.extend(e for e in nxt if isinstance(e, BaseException))
    return None


def no_route_message(url: str, reason: str) -> str:
    """The error text for :class:`NoRouteError`: which URL, why, and how to download elsewhere."""
    return f"{url}: {reason}; {DOWNLOAD_ON_LOGIN_NODE}"


class _Retry(Exception):
    """Internal: a transient failure (5xx, timeout, reset, short read) worth another attempt."""


def download(
    remote: RemoteFile,
    session: requests.Session | None = None,
    config: TransferConfig | None = None,
    token: Token | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> DownloadResult:
    """Download ``remote`` to ``remote.dest``: resume, retry transient failures, verify, rename.

    An existing ``dest`` of the expected size (and md5 when known) is kept as is. The retry budget
    counts consecutive attempts that made no progress, so a flaky link that keeps delivering bytes
    still finishes.
    """
    cfg = config or TransferConfig()
    sess = session or requests.Session()
    dest = Path(remote.dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() and _complete(dest, remote):
        log.info("%s: already present and verified", dest.name)
        return DownloadResult(dest, 0, 0, skipped=True)
    running = _RunningMd5()
    try:
        return _download_loop(remote, dest, sess, cfg, token, sleep, running)
    finally:
        running.close()


def _download_loop(
    remote: RemoteFile,
    dest: Path,
    sess: requests.Session,
    cfg: TransferConfig,
    token: Token | None,
    sleep: Callable[[float], None],
    running: _RunningMd5,
) -> DownloadResult:
    part = partial_path(dest)
    fetched = attempts = failures = 0
    expected_md5 = remote.md5.lower() if remote.md5 else None
    while True:
        attempts += 1
        before = part.stat().st_size if part.exists() else 0
        try:
            server_md5 = _fetch_into(part, remote, sess, cfg, token, running)
            expected_md5 = expected_md5 or server_md5
            fetched += part.stat().st_size - before
            break
        except (_Retry, ErrorPageError) as exc:
            if part.exists() and part.stat().st_size == 0:
                part.unlink()
            got = (part.stat().st_size if part.exists() else 0) - before
            fetched += max(got, 0)
            failures = 0 if got > 0 else failures + 1
            if failures > cfg.retries:
                error = ErrorPageError if isinstance(exc, ErrorPageError) else TransferError
                raise error(
                    f"{dest.name}: gave up after {attempts} attempts ({cfg.retries} retries without progress); "
                    f"last error: {scrub(str(exc), token)}; rerun to resume from {part.name}"
                ) from None
            delay = backoff_delay(failures, cfg.backoff_base_s, cfg.backoff_max_s)
            log.warning("%s: %s; retrying in %.2f s", dest.name, scrub(str(exc), token), delay)
            sleep(delay)
    running.sync(part)
    _verify(part, remote, expected_md5, running.hexdigest())
    part.replace(dest)
    log.info("%s: downloaded %d bytes in %d attempt(s)", dest.name, fetched, attempts)
    return DownloadResult(dest, fetched, attempts)


def _complete(path: Path, remote: RemoteFile) -> bool:
    if remote.size is not None and path.stat().st_size != remote.size:
        return False
    return remote.md5 is None or md5_file(path) == remote.md5.lower()


def _fetch_into(
    part: Path,
    remote: RemoteFile,
    sess: requests.Session,
    cfg: TransferConfig,
    token: Token | None,
    running: _RunningMd5,
) -> str | None:
    """One GET appending to ``part`` (and to the running md5); returns the server's md5 header or raises _Retry."""
    offset = part.stat().st_size if part.exists() else 0
    if remote.size is not None and offset > remote.size:
        part.unlink()
        offset = 0
    running.sync(part)
    headers = {**auth_headers(token), "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = sess.get(remote.url, headers=headers, stream=True, timeout=cfg.timeout_s)
    except _TRANSIENT as exc:
        reason = no_route_reason(exc)
        if reason is not None:
            raise NoRouteError(no_route_message(remote.url, reason)) from None
        raise _Retry(f"{type(exc).__name__} connecting to {remote.url}") from None
    with resp:
        status = resp.status_code
        if status == 416 and remote.size is not None and offset >= remote.size:
            return None
        if status in (401, 403):
            raise AuthError(
                f"{remote.name}: HTTP {status} from {remote.url}: {_server_message(resp, token)}. The file is "
                "controlled or the token is invalid/expired: get a new token from the GDC Data Portal, save it "
                "in the file named by gdc.token_file (or the variable named by gdc.token_env), and check that "
                "your dbGaP access covers this project"
            )
        if status in _RETRY_STATUS:
            raise _Retry(f"HTTP {status} from {remote.url}")
        if status == 416:
            part.unlink(missing_ok=True)
            raise _Retry(f"HTTP 416 for range {offset}- of {remote.url}; restarting from byte 0")
        if status not in (200, 206):
            raise TransferError(f"{remote.name}: HTTP {status} from {remote.url}: {_server_message(resp, token)}")
        _refuse_error_page(resp, remote)
        mode = "ab"
        if offset and status == 200:
            log.warning("%s: server ignored the Range request; restarting from byte 0", remote.name)
            mode = "wb"
            running.reset()
        elif status == 206:
            _check_content_range(resp, offset, remote)
        sniff = offset == 0 or mode == "wb"
        try:
            with open(part, mode) as fh:
                for chunk in resp.iter_content(chunk_size=cfg.chunk_size):
                    if sniff:
                        _refuse_error_bytes(chunk, remote)
                        sniff = False
                    fh.write(chunk)
                    running.update(chunk)
        except _TRANSIENT as exc:
            raise _Retry(f"connection dropped ({type(exc).__name__}) while reading {remote.url}") from None
        size = part.stat().st_size
        expected_len = resp.headers.get("Content-Length")
        if status == 206 and remote.size is not None and size < remote.size:
            raise _Retry(f"short read: {size} of {remote.size} bytes")
        if expected_len is not None and status == 200 and size < int(expected_len):
            raise _Retry(f"short read: {size} of {expected_len} bytes")
        return _header_md5(resp)


def _header_md5(resp: requests.Response) -> str | None:
    value = resp.headers.get("Content-MD5", "").strip().lower()
    return value if re.fullmatch(r"[0-9a-f]{32}", value) else None


def _check_content_range(resp: requests.Response, offset: int, remote: RemoteFile) -> None:
    match = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
    if match is None or int(match.group(1)) != offset:
        raise TransferError(
            f"{remote.name}: asked for bytes {offset}- but the server sent Content-Range "
            f"{resp.headers.get('Content-Range')!r}; delete {partial_path(remote.dest).name} and rerun"
        )


def _refuse_error_page(resp: requests.Response, remote: RemoteFile) -> None:
    ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
    suffix = remote.dest.suffix.lower()
    if ctype == "text/html" and suffix not in (".html", ".htm"):
        raise ErrorPageError(f"{remote.name}: the server sent an HTML page instead of the file ({remote.url})")
    if ctype == "application/json" and suffix != ".json":
        raise ErrorPageError(f"{remote.name}: the server sent a JSON message instead of the file ({remote.url})")


def _refuse_error_bytes(chunk: bytes, remote: RemoteFile) -> None:
    if remote.dest.suffix.lower() in (".html", ".htm", ".json", ".xml"):
        return
    if _ERROR_PAGE_START.match(chunk[:256]):
        raise ErrorPageError(
            f"{remote.name}: the body starts like an error page ({chunk[:40]!r}), not data; nothing was saved"
        )


def _server_message(resp: requests.Response, token: Token | None) -> str:
    try:
        text = resp.json().get("message", "")
    except ValueError:
        text = resp.text[:200]
    return scrub(str(text).strip(), token) or resp.reason


def _verify(part: Path, remote: RemoteFile, expected_md5: str | None, actual: str) -> None:
    size = part.stat().st_size
    if remote.size is not None and size != remote.size:
        part.unlink()
        raise IntegrityError(
            f"{remote.name}: size {size} != expected {remote.size}; removed {part.name}, rerun to download again"
        )
    if expected_md5 is None:
        log.warning("%s: no md5 known; verified by size only", remote.name)
        return
    if actual != expected_md5:
        part.unlink()
        raise IntegrityError(
            f"{remote.name}: md5 {actual} != expected {expected_md5}; removed {part.name}, rerun to download "
            "again (if it repeats, the manifest's md5 may be stale)"
        )


def download_many(
    remotes: Iterable[RemoteFile],
    config: TransferConfig | None = None,
    token: Token | None = None,
    session_factory: Callable[[], requests.Session] = requests.Session,
) -> list[DownloadResult]:
    """Download files with ``config.parallel`` workers; raise DownloadFailures after all finish if any failed.

    Each worker thread gets its own session (``requests.Session`` is not thread-safe).
    """
    cfg = config or TransferConfig()
    remotes = list(remotes)
    results: list[DownloadResult] = []
    failures: dict[str, str] = {}

    def work(remote: RemoteFile) -> DownloadResult:
        with session_factory() as sess:
            return download(remote, sess, cfg, token)

    progress = Progress(len(remotes), "download", unit="files", logger=log)
    with ThreadPoolExecutor(max_workers=max(1, cfg.parallel)) as pool:
        futures = {pool.submit(work, r): r for r in remotes}
        for fut in as_completed(futures):
            remote = futures[fut]
            progress.update(1)
            try:
                results.append(fut.result())
            except NoRouteError:
                # no network at all: every other file would fail the same way, so stop now
                for other in futures:
                    other.cancel()
                raise
            except (TransferError, OSError) as exc:
                reason = scrub(str(exc), token)
                log.error("%s failed: %s", remote.name, reason)
                failures[remote.name] = reason
    progress.close()
    if failures:
        raise DownloadFailures(failures)
    return results
