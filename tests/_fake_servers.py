"""A fake GDC API / GEO / S3 file server on 127.0.0.1 for the download tests (threaded http.server).

Static files support Range (206 + Content-Range) and scripted faults consumed one per request:
``"drop"`` (send half the body then close), ``"500"`` / ``"503"``, ``"slow"`` (wait ``slow_s`` before
answering), ``"stall"`` (send half the body, then wait ``slow_s`` and close), ``"html200"`` (a 200
carrying an HTML page), ``"norange"`` (ignore Range, send the whole file). ``/files`` and ``/cases`` page over given hits.
Every request is recorded (method, path, headers, body bytes sent) so tests can assert on them.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

HTML_504 = b"<html><head><title>504 Gateway Time-out</title></head><body>504</body></html>"


@dataclass
class Seen:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""
    sent: int = 0


@dataclass
class FakeServer:
    """State of the fake server; ``start()`` binds an ephemeral port, ``stop()`` shuts it down."""

    files: dict[str, bytes] = field(default_factory=dict)
    content_types: dict[str, str] = field(default_factory=dict)
    data: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    file_hits: list[dict] = field(default_factory=list)
    case_hits: list[dict] = field(default_factory=list)
    faults: dict[str, list[str]] = field(default_factory=dict)
    token: str | None = None
    chunk: int = 1 << 16
    slow_s: float = 1.5
    seen: list[Seen] = field(default_factory=list)

    def start(self) -> FakeServer:
        state = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):  # noqa: A002 - silence stderr access log
                return

            def do_GET(self):
                state._handle(self, "GET", b"")

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                state._handle(self, "POST", body)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def requests_for(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path.split("?")[0] == path]

    # -- request handling -------------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler, method: str, body: bytes) -> None:
        seen = Seen(method, h.path, dict(h.headers.items()), body)
        self.seen.append(seen)
        url = urlparse(h.path)
        path = re.sub(r"^/v0", "", url.path)
        if path in ("/files", "/cases"):
            params = (
                json.loads(body) if method == "POST" and body else {k: v[0] for k, v in parse_qs(url.query).items()}
            )
            return self._page(h, self.file_hits if path == "/files" else self.case_hits, params)
        if path.startswith("/data/"):
            file_id = path.removeprefix("/data/")
            if self.token is not None and h.headers.get("X-Auth-Token") != self.token:
                msg = {"message": "You don't have access to the data: Please specify a X-Auth-Token"}
                return self._send(h, 403, json.dumps(msg).encode(), "application/json")
            if file_id not in self.data:
                return self._send(h, 404, json.dumps({"message": f"{file_id} not found"}).encode(), "application/json")
            name, content = self.data[file_id]
            return self._serve_bytes(h, file_id, content, name, seen)
        if path in self.files:
            return self._serve_bytes(h, path, self.files[path], path.rsplit("/", 1)[-1], seen)
        self._send(h, 404, b"<html>404 Not Found</html>", "text/html")

    def _page(self, h: BaseHTTPRequestHandler, hits: list[dict], params: dict) -> None:
        start, size = int(params.get("from", 0)), int(params.get("size", 10))
        total = len(hits)
        page = {
            "data": {
                "hits": hits[start : start + size],
                "pagination": {
                    "count": len(hits[start : start + size]),
                    "total": total,
                    "size": size,
                    "from": start,
                    "sort": "",
                    "page": start // size + 1,
                    "pages": max(1, math.ceil(total / size)),
                },
            },
            "warnings": {},
        }
        self._send(h, 200, json.dumps(page).encode(), "application/json")

    def _serve_bytes(self, h: BaseHTTPRequestHandler, key: str, content: bytes, name: str, seen: Seen) -> None:
        fault = self.faults[key].pop(0) if self.faults.get(key) else None
        if fault in ("500", "503"):
            return self._send(h, int(fault), b'{"message": "server error"}', "application/json")
        if fault == "slow":
            time.sleep(self.slow_s)  # the client has timed out and hung up: answering would hit a closed socket
            h.close_connection = True
            return None
        if fault == "html200":
            return self._send(h, 200, HTML_504, "text/html")
        start, status = 0, 200
        match = re.match(r"bytes=(\d+)-", h.headers.get("Range", ""))
        if match and fault != "norange":
            start, status = int(match.group(1)), 206
        if start >= len(content) and status == 206:
            return self._send(h, 416, b"", "application/octet-stream")
        body = content[start:]
        h.send_response(status)
        h.send_header("Content-Type", self.content_types.get(key, "application/octet-stream"))
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Content-Disposition", f"attachment; filename={name}")
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}")
        else:
            h.send_header("Content-MD5", hashlib.md5(content).hexdigest())
        h.end_headers()
        limit = len(body) // 2 if fault in ("drop", "stall") else len(body)
        for i in range(0, limit, self.chunk):
            piece = body[i : min(i + self.chunk, limit)]
            h.wfile.write(piece)
            seen.sent += len(piece)
        h.wfile.flush()
        if fault == "stall":
            time.sleep(self.slow_s)
        if fault in ("drop", "stall"):
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
