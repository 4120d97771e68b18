"""A loopback HTTP server for tests: serves a dict of ``path -> bytes`` on 127.0.0.1 with fault injection.

Nothing here reaches beyond the machine: the server binds 127.0.0.1 on an ephemeral port.

Use it as a context manager::

    from loopback import LoopbackServer, github_raw_path, kaggle_download_path

    with LoopbackServer({"/a.bin": b"payload"}) as server:
        url = server.url("/a.bin")              # http://127.0.0.1:<port>/a.bin
        ...
        assert server.requests_for("/a.bin")[0].range is None

or as the pytest fixture ``loopback_server`` (import it into a test module or a conftest:
``from loopback import loopback_server``; it yields a started, empty server and closes it after the
test). ``make_server`` is a factory fixture for tests that need several servers (a mirror and a
foreign host).

Serving
-------
``LoopbackServer(files=None)``; ``server.add(path, data, *, content_length=True)`` adds or replaces
a file (``content_length=False`` sends a close-delimited body without ``Content-Length``). Paths are
matched without the query string, raw or percent-decoded. Helpers build the paths of real layouts:
``github_raw_path(owner, repo, commit, path)`` -> ``/<owner>/<repo>/<commit>/<path>`` (serve it and
use ``server.base_url`` as the raw-content base URL), ``kaggle_download_path(owner, slug)`` ->
``/api/v1/datasets/download/<owner>/<slug>`` (use ``server.base_url`` as the Kaggle base URL).

GET and HEAD are answered. A ``Range: bytes=N-`` or ``bytes=N-M`` header gets ``206`` with
``Content-Range``; a start beyond the end gets ``416`` with ``Content-Range: bytes */<size>``.
Unknown paths get ``404``.

Faults
------
Each fault applies to the next ``times`` requests for its path (``times=None``: every request). Faults
of one path are consumed in the order they were added, one fault per request::

    server.fail(path, 503, times=2)                  # status (500/503/...) for the next 2 requests
    server.fail(path, 429, retry_after=1)            # with a Retry-After header (seconds)
    server.fail(path, 405, times=None, method="HEAD")  # only requests of one method (fail and stall)
    server.cut(path, after=1000, times=1)            # send 1000 body bytes, then drop the connection
    server.stall(path, 5.0)                          # sleep 5 s before answering
    server.stall(path, 5.0, after=1000)              # ... or after 1000 body bytes
    server.corrupt(path, b"wrong bytes")             # serve other bytes (also a truncated body)
    server.redirect(path, "http://elsewhere/x")      # 302 (or status=301/307/308) to a URL
    server.ignore_range(path)                        # answer 200 with the whole body despite Range
    server.shift_range(path, by=10)                  # 206 whose Content-Range starts 10 bytes off
    server.require_auth(prefix, "user", "password")  # basic auth for every path under prefix

Stalls wake up when the server closes, so a test never waits for them.

Request log
-----------
``server.requests`` (a copy) lists :class:`RecordedRequest` objects in arrival order: ``method``,
``path``, ``query``, ``headers`` (lower-case names), ``range`` (the Range header or None),
``status`` and ``body_bytes`` (what the server sent). ``server.requests_for(path, method="GET")``
filters them; ``server.clear_requests()`` empties the log. Requests are recorded when they arrive,
before the answer, so a client that saw an answer always finds its request in the log.
"""

from __future__ import annotations

import base64
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator, Mapping
from urllib.parse import unquote

import pytest

_CHUNK = 16 * 1024


def github_raw_path(owner: str, repo: str, commit: str, path: str) -> str:
    """The path of a file in a raw.githubusercontent.com-like layout."""
    return f"/{owner}/{repo}/{commit}/{path.lstrip('/')}"


def kaggle_download_path(owner: str, slug: str) -> str:
    """The path of Kaggle's public dataset download API for ``owner/slug``."""
    return f"/api/v1/datasets/download/{owner}/{slug}"


@dataclass
class RecordedRequest:
    """One request the server received, and what it answered."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    status: int = 0
    body_bytes: int = 0

    @property
    def range(self) -> str | None:
        return self.headers.get("range")


@dataclass
class Fault:
    """One injected misbehaviour; see the module docstring for the constructors."""

    kind: str  # status | cut | stall | body | redirect | ignore-range | shift-range
    times: int | None = 1
    status: int = 0
    retry_after: str | None = None
    after: int | None = None
    seconds: float = 0.0
    body: bytes = b""
    location: str = ""
    shift: int = 0
    method: str | None = None  # only requests of this method ("HEAD", "GET"); None: any


@dataclass
class _File:
    data: bytes
    content_length: bool = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: "LoopbackServer"

    def handle_error(self, request, client_address) -> None:
        # Clients that time out or cut the connection are part of the tests, not errors.
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError, socket.timeout)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10  # Idle keep-alive connections end on their own.
    server: _Server

    def do_GET(self) -> None:
        self.server.owner._handle(self, head=False)

    def do_HEAD(self) -> None:
        self.server.owner._handle(self, head=True)

    def log_message(self, format, *args) -> None:  # noqa: A002 - the stdlib's signature
        pass


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 serving ``files``; see the module docstring."""

    def __init__(self, files: Mapping[str, bytes] | None = None):
        self._lock = threading.Lock()
        self._files: dict[str, _File] = {}
        self._faults: dict[str, list[Fault]] = {}
        self._auth: list[tuple[str, str]] = []
        self._requests: list[RecordedRequest] = []
        self._stop = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        for path, data in (files or {}).items():
            self.add(path, data)

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> "LoopbackServer":
        if self._httpd is None:
            self._httpd = _Server(("127.0.0.1", 0), _Handler)
            self._httpd.owner = self
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "LoopbackServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ---- addresses -------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._httpd is not None, "start the server first"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>`` (no trailing slash); also the server's origin."""
        return f"http://127.0.0.1:{self.port}"

    origin = base_url

    def url(self, path: str) -> str:
        return self.base_url + (path if path.startswith("/") else "/" + path)

    # ---- content and faults ----------------------------------------------------------------------

    def add(self, path: str, data: bytes, *, content_length: bool = True) -> None:
        with self._lock:
            self._files[_norm(path)] = _File(bytes(data), content_length)

    def _fault(self, path: str, fault: Fault) -> None:
        with self._lock:
            self._faults.setdefault(_norm(path), []).append(fault)

    def fail(self, path: str, status: int, *, times: int | None = 1, retry_after: float | str | None = None,
             method: str | None = None) -> None:
        retry = None if retry_after is None else str(retry_after)
        self._fault(path, Fault("status", times, status=status, retry_after=retry, method=method))

    def cut(self, path: str, after: int, *, times: int | None = 1) -> None:
        self._fault(path, Fault("cut", times, after=after))

    def stall(self, path: str, seconds: float, *, after: int | None = None, times: int | None = 1,
              method: str | None = None) -> None:
        self._fault(path, Fault("stall", times, seconds=seconds, after=after, method=method))

    def corrupt(self, path: str, body: bytes, *, times: int | None = None) -> None:
        self._fault(path, Fault("body", times, body=bytes(body)))

    def redirect(self, path: str, location: str, *, status: int = 302, times: int | None = None) -> None:
        self._fault(path, Fault("redirect", times, status=status, location=location))

    def ignore_range(self, path: str, *, times: int | None = None) -> None:
        self._fault(path, Fault("ignore-range", times))

    def shift_range(self, path: str, by: int, *, times: int | None = 1) -> None:
        self._fault(path, Fault("shift-range", times, shift=by))

    def require_auth(self, prefix: str, username: str, password: str) -> None:
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        with self._lock:
            self._auth.append((_norm(prefix), f"Basic {token}"))

    # ---- request log -----------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_for(self, path: str, method: str | None = "GET") -> list[RecordedRequest]:
        path = _norm(path)
        return [r for r in self.requests if _norm(r.path) == path and (method is None or r.method == method)]

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    # ---- serving ---------------------------------------------------------------------------------

    def _handle(self, handler: _Handler, *, head: bool) -> None:
        raw_path, _, query = handler.path.partition("?")
        record = RecordedRequest(
            method=handler.command,
            path=raw_path,
            query=query,
            headers={k.lower(): v for k, v in handler.headers.items()},
        )
        with self._lock:
            self._requests.append(record)
            key = raw_path if raw_path in self._files else _norm(raw_path)
            needed = [token for prefix, token in self._auth if key.startswith(prefix)]
            authorized = not needed or record.headers.get("authorization") in needed
            fault = self._take_fault(key, handler.command) if authorized else None
            served = self._files.get(key)
        try:
            if not authorized:
                self._send_simple(handler, record, 401, {"WWW-Authenticate": 'Basic realm="loopback"'}, head)
                return
            if fault is not None and fault.kind == "status":
                extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
                self._send_simple(handler, record, fault.status, extra, head)
                return
            if fault is not None and fault.kind == "redirect":
                self._send_simple(handler, record, fault.status, {"Location": fault.location}, head)
                return
            if fault is not None and fault.kind == "stall" and fault.after is None:
                self._stop.wait(fault.seconds)
            if served is None:
                self._send_simple(handler, record, 404, {}, head)
                return
            data = fault.body if fault is not None and fault.kind == "body" else served.data
            self._send_data(handler, record, data, served.content_length, fault, head)
        except (ConnectionError, TimeoutError, socket.timeout):
            handler.close_connection = True

    def _take_fault(self, key: str, method: str) -> Fault | None:
        for fault in self._faults.get(key, []):
            if fault.method is not None and fault.method != method:
                continue
            if fault.times is None:
                return fault
            if fault.times > 0:
                fault.times -= 1
                return fault
        return None

    def _send_simple(self, handler: _Handler, record: RecordedRequest, status: int, headers: dict, head: bool) -> None:
        body = f"{status} from loopback\n".encode()
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Type", "text/plain")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        record.status = status
        if not head:
            handler.wfile.write(body)
            record.body_bytes = len(body)

    def _send_data(
        self, handler: _Handler, record: RecordedRequest, data: bytes, content_length: bool, fault: Fault | None, head: bool
    ) -> None:
        size = len(data)
        start, end = 0, size - 1
        status = 200
        wanted = _parse_range(record.range, size)
        if wanted is not None and not (fault is not None and fault.kind == "ignore-range"):
            if wanted == "unsatisfiable":
                self._send_simple(handler, record, 416, {"Content-Range": f"bytes */{size}"}, head)
                return
            start, end = wanted
            status = 206
        body = data[start : end + 1]
        handler.send_response(status)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Accept-Ranges", "bytes")
        if status == 206:
            shift = fault.shift if fault is not None and fault.kind == "shift-range" else 0
            handler.send_header("Content-Range", f"bytes {start + shift}-{end + shift}/{size}")
        if content_length:
            handler.send_header("Content-Length", str(len(body)))
        else:
            handler.send_header("Connection", "close")
            handler.close_connection = True
        handler.end_headers()
        record.status = status
        if head:
            return
        limit = len(body)
        if fault is not None and fault.kind == "cut":
            limit = min(limit, fault.after or 0)
        stall_at = fault.after if fault is not None and fault.kind == "stall" and fault.after is not None else None
        position = 0
        while position < limit:
            stop = min(limit, position + _CHUNK)
            if stall_at is not None and position < stall_at < stop:
                stop = stall_at
            handler.wfile.write(body[position:stop])
            position = stop
            record.body_bytes = position
            if stall_at is not None and position == stall_at:
                handler.wfile.flush()
                self._stop.wait(fault.seconds)
                stall_at = None
        handler.wfile.flush()
        if limit < len(body):
            # The cut: close both directions so the client sees the body end early.
            handler.close_connection = True
            try:
                handler.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _norm(path: str) -> str:
    path = unquote(path.split("?", 1)[0])
    return path if path.startswith("/") else "/" + path


def _parse_range(header: str | None, size: int):
    """``(start, end)`` for one ``bytes=`` range, ``"unsatisfiable"``, or None (serve everything)."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[len("bytes="):].strip().partition("-")
    try:
        if first == "":
            count = int(last)
            return (max(0, size - count), size - 1) if count > 0 and size else "unsatisfiable"
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size:
        return "unsatisfiable"
    return start, min(end, size - 1)


@pytest.fixture
def loopback_server() -> Iterator[LoopbackServer]:
    """A started, empty :class:`LoopbackServer`, closed after the test."""
    with LoopbackServer() as server:
        yield server


@pytest.fixture
def make_server() -> Iterator:
    """A factory: ``make_server(files=None)`` returns another started server; all close after the test."""
    servers: list[LoopbackServer] = []

    def make(files: Mapping[str, bytes] | None = None) -> LoopbackServer:
        server = LoopbackServer(files).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


__all__ = [
    "Fault",
    "LoopbackServer",
    "RecordedRequest",
    "github_raw_path",
    "kaggle_download_path",
    "loopback_server",
    "make_server",
]
