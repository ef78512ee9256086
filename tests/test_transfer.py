"""Resume, retry, verify and error-page handling of slidesnake.data.transfer against a local fake server."""

from __future__ import annotations

import hashlib
import logging
import random
import socket
from dataclasses import replace

import pytest
import requests
from _fake_servers import FakeServer

from slidesnake.data.token import Token
from slidesnake.data.transfer import (
    AuthError,
    DownloadFailures,
    ErrorPageError,
    IntegrityError,
    NoRouteError,
    RemoteFile,
    TransferConfig,
    TransferError,
    backoff_delay,
    download,
    download_many,
    no_route_reason,
    partial_path,
)

CONTENT = random.Random(0).randbytes(300_000)
MD5 = hashlib.md5(CONTENT).hexdigest()
FAST = TransferConfig(retries=2, timeout_s=5, backoff_base_s=0.001, backoff_max_s=0.01, chunk_size=8192)


@pytest.fixture
def server():
    srv = FakeServer(files={"/f.bin": CONTENT, "/g.bin": CONTENT[:1000]}).start()
    yield srv
    srv.stop()


def remote(server, tmp_path, path="/f.bin", md5=MD5, size=len(CONTENT)):
    return RemoteFile(server.url + path, tmp_path / path.lstrip("/"), md5, size)


def test_plain_download_verifies_and_renames(server, tmp_path):
    res = download(remote(server, tmp_path), config=FAST)
    assert res.path.read_bytes() == CONTENT
    assert res.bytes_fetched == len(CONTENT) and res.attempts == 1
    assert not partial_path(res.path).exists()


def test_drop_resumes_with_range_and_fetches_only_the_rest(server, tmp_path):
    server.faults["/f.bin"] = ["drop"]
    res = download(remote(server, tmp_path), config=FAST)
    assert res.path.read_bytes() == CONTENT
    first, second = server.requests_for("/f.bin")
    assert "Range" not in first.headers
    assert first.sent == len(CONTENT) // 2
    # resume starts at the last chunk written to disk: at most one chunk of the first half is re-fetched
    resumed_at = int(second.headers["Range"].removeprefix("bytes=").rstrip("-"))
    assert len(CONTENT) // 2 - FAST.chunk_size < resumed_at <= len(CONTENT) // 2
    assert second.sent == len(CONTENT) - resumed_at
    assert res.bytes_fetched == len(CONTENT) and res.attempts == 2


def test_existing_partial_is_resumed(server, tmp_path):
    rem = remote(server, tmp_path)
    partial_path(rem.dest).write_bytes(CONTENT[:1234])
    download(rem, config=FAST)
    assert server.requests_for("/f.bin")[0].headers["Range"] == "bytes=1234-"
    assert rem.dest.read_bytes() == CONTENT


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    rem = remote(server, tmp_path)
    partial_path(rem.dest).write_bytes(CONTENT[:1234])
    server.faults["/f.bin"] = ["norange"]
    download(rem, config=FAST)
    assert rem.dest.read_bytes() == CONTENT


def test_503_is_retried_then_succeeds(server, tmp_path):
    server.faults["/f.bin"] = ["503", "503"]
    res = download(remote(server, tmp_path), config=FAST)
    assert res.attempts == 3 and res.path.read_bytes() == CONTENT


def test_500_once_is_retried(server, tmp_path):
    server.faults["/f.bin"] = ["500"]
    res = download(remote(server, tmp_path), config=FAST)
    assert res.attempts == 2 and res.path.read_bytes() == CONTENT
    assert [s.sent for s in server.requests_for("/f.bin")] == [0, len(CONTENT)]


def test_slow_response_times_out_and_is_retried(server, tmp_path):
    server.slow_s = 1.0
    server.faults["/f.bin"] = ["slow"]
    res = download(remote(server, tmp_path), config=replace(FAST, timeout_s=0.3))
    assert res.attempts == 2 and res.path.read_bytes() == CONTENT


def test_stalled_body_times_out_and_resumes(server, tmp_path):
    server.slow_s = 1.0
    server.faults["/f.bin"] = ["stall"]
    res = download(remote(server, tmp_path), config=replace(FAST, timeout_s=0.3))
    assert res.path.read_bytes() == CONTENT and res.attempts == 2
    first, second = server.requests_for("/f.bin")
    assert first.sent == len(CONTENT) // 2 and "Range" in second.headers
    assert first.sent + second.sent < len(CONTENT) + FAST.chunk_size  # only the missing bytes came again


def test_persistent_503_gives_up_after_retries(server, tmp_path):
    server.faults["/f.bin"] = ["503"] * 10
    with pytest.raises(TransferError, match="gave up after 3 attempts"):
        download(remote(server, tmp_path), config=FAST)
    assert len(server.requests_for("/f.bin")) == 3


def test_html_body_with_200_is_never_saved(server, tmp_path):
    server.faults["/f.bin"] = ["html200"] * 3
    rem = remote(server, tmp_path)
    with pytest.raises(ErrorPageError, match="HTML page"):
        download(rem, config=FAST)
    assert not rem.dest.exists() and not partial_path(rem.dest).exists()


def test_html_body_without_content_type_is_sniffed(server, tmp_path):
    server.files["/page.svs"] = b"<!DOCTYPE html><html>504 Gateway Timeout</html>"
    rem = RemoteFile(server.url + "/page.svs", tmp_path / "page.svs")
    with pytest.raises(ErrorPageError, match="error page"):
        download(rem, config=TransferConfig(retries=0, timeout_s=5))
    assert list(tmp_path.iterdir()) == []


def test_wrong_md5_is_not_renamed(server, tmp_path):
    rem = remote(server, tmp_path, md5="0" * 32)
    with pytest.raises(IntegrityError, match=f"md5 {MD5} != expected {'0' * 32}"):
        download(rem, config=FAST)
    assert not rem.dest.exists() and not partial_path(rem.dest).exists()


def test_wrong_size_is_not_renamed(server, tmp_path):
    rem = remote(server, tmp_path, "/g.bin", md5=None, size=999)
    with pytest.raises(IntegrityError, match="size 1000 != expected 999"):
        download(rem, config=FAST)
    assert not rem.dest.exists()


def test_server_md5_header_used_when_none_given(server, tmp_path):
    server.files["/f.bin"] = CONTENT[:-1] + b"x"
    server.faults["/f.bin"] = []
    res = download(remote(server, tmp_path, md5=None), config=FAST)
    assert res.path.read_bytes()[-1:] == b"x"


def test_401_403_not_retried_and_token_not_leaked(tmp_path, caplog):
    secret = "s3cr3t-token-value"
    srv = FakeServer(data={"abc": ("x.svs", CONTENT)}, token="other").start()
    try:
        rem = RemoteFile(srv.url + "/data/abc", tmp_path / "x.svs")
        with caplog.at_level(logging.DEBUG), pytest.raises(AuthError) as info:
            download(rem, config=FAST, token=Token(secret))
        assert len(srv.requests_for("/data/abc")) == 1
        assert srv.requests_for("/data/abc")[0].headers["X-Auth-Token"] == secret
    finally:
        srv.stop()
    assert "token" in str(info.value) and "403" in str(info.value)
    assert secret not in str(info.value) and secret not in repr(info.value)
    assert secret not in caplog.text
    assert not (tmp_path / "x.svs").exists()


def test_download_many_reports_every_failure_after_others_finish(server, tmp_path):
    server.faults["/g.bin"] = ["503"] * 10
    good = remote(server, tmp_path)
    bad = remote(server, tmp_path, "/g.bin", md5=None, size=1000)
    missing = remote(server, tmp_path, "/nope.bin", md5=None, size=None)
    with pytest.raises(DownloadFailures) as info:
        download_many([bad, good, missing], config=FAST)
    assert good.dest.read_bytes() == CONTENT
    assert set(info.value.failures) == {"g.bin", "nope.bin"}
    assert "HTTP 404" in info.value.failures["nope.bin"]


def test_existing_verified_file_is_skipped(server, tmp_path):
    rem = remote(server, tmp_path)
    rem.dest.write_bytes(CONTENT)
    assert download(rem, config=FAST).skipped
    assert server.seen == []


def test_backoff_is_bounded_and_grows():
    rng = random.Random(1)
    delays = [backoff_delay(a, 1.0, 10.0, rng) for a in range(8)]
    assert all(0 <= d <= min(10.0, 2**a) for a, d in enumerate(delays))
    assert max(backoff_delay(20, 1.0, 10.0, rng) for _ in range(50)) <= 10.0


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_dns(monkeypatch):
    """Name resolution fails for *.invalid as on a compute node without DNS (EAI_AGAIN), others resolve."""
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if str(host).endswith(".invalid"):
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.mark.parametrize("kind", ["refused", "dns"])
def test_no_route_fails_at_once_with_login_node_advice(kind, tmp_path, no_dns):
    url = f"http://127.0.0.1:{closed_port()}/f.bin" if kind == "refused" else "http://api.gdc.invalid/f.bin"
    sleeps = []
    cfg = replace(FAST, retries=8)
    with pytest.raises(NoRouteError) as err:
        download(RemoteFile(url, tmp_path / "f.bin", MD5, len(CONTENT)), config=cfg, sleep=sleeps.append)
    assert sleeps == []  # no retries, no back-off
    message = str(err.value)
    reason = "connection refused" if kind == "refused" else "name resolution failed"
    assert message.startswith(f"{url}: {reason}; this node has no route to the API")
    assert "login node" in message and "--until gdc_download_slide" in message
    assert no_route_reason(requests.ConnectionError("read timed out")) is None  # other failures still retry


def test_download_many_stops_at_the_first_no_route(tmp_path):
    port = closed_port()
    remotes = [RemoteFile(f"http://127.0.0.1:{port}/{i}.bin", tmp_path / f"{i}.bin", "", 10) for i in range(20)]
    with pytest.raises(NoRouteError, match="no route to the API"):
        download_many(remotes, replace(FAST, retries=8, parallel=1))
