"""HTTP transport: the one place of the download package that opens a socket.

:class:`Transport` owns one :class:`requests.Session` (its connection pool sized to the downloader's
workers) and every rule about what may be asked of whom. :meth:`Transport.open` sends one GET or HEAD
and follows the redirects it may; :func:`.resume.transfer` reads a body through it and resumes it
when the connection breaks. The cache decides what to fetch and where the bytes go; this module only
asks the server and says, in a message fit for the user, why it could not.

Requests and retries
--------------------
Every request carries ``User-Agent: covid19-cxr-dataset/<version>`` and ``Accept-Encoding: identity``
(ranges and hashes are about the stored bytes; a content-encoded body would break both). Connection
failures and ``429/500/502/503/504`` answers (:data:`RETRY_STATUSES`) before the body starts are
retried by urllib3 (:class:`_Retry`) with exponential backoff (``backoff * 2**n``), honouring
``Retry-After`` up to ``_Retry.RETRY_AFTER_CAP`` seconds. A final status other than 200/206/416
raises :class:`_HTTPStatusError`, whose ``status`` lets callers tell a file the server refuses
(:func:`file_level`: a 4xx other than 429) from a server that fails (5xx/429 after the retries,
no answer), and lets Kaggle turn 401/403 into advice.

Security rules
--------------
Redirects are followed by hand (at most :data:`MAX_REDIRECTS`), only to ``https`` targets, to the
origin that was asked, or to an ``allowed_redirect_hosts`` entry (a mirror the user named): an entry
with a scheme (``"http://mirror:8080"``) must match scheme, host and port, a bare ``"host"`` or
``"host:port"`` matches any scheme. Credentials (``auth``/``headers``) are sent only to their own
origin (``credentials_for``), on every hop that reaches it and on no other, and never appear in
messages, logs or reprs: URLs in messages pass through :func:`~.urls.redact_url` and every message
through :meth:`Transport.scrub`. No credential is ever taken from the environment: ``~/.netrc``
entries are not sent (requests would add them to any request without ``auth``; :class:`_NoNetrcAuth`
stops that), while proxy and CA-bundle settings from the environment still apply.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import TYPE_CHECKING, Iterable, Mapping
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError, ResponseError
from urllib3.util.retry import Retry

from .. import __version__, errors
from .urls import _origin, _parses, redact_url

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from .spec import FileSpec

log = logging.getLogger(__name__)

RETRY_STATUSES = (429, 500, 502, 503, 504)
"""HTTP statuses that urllib3 retries (with backoff, honouring ``Retry-After``)."""

MAX_REDIRECTS = 10
USER_AGENT = f"covid19-cxr-dataset/{__version__} (+https://arxiv.org/abs/2007.09695)"


def _describe(exc: BaseException) -> str:
    """A short cause for a requests/urllib3 failure: the innermost reason, not the pool's chatter."""
    seen = exc
    for _ in range(6):
        reason = getattr(seen, "reason", None)
        if isinstance(reason, BaseException):
            seen = reason
        elif seen.args and isinstance(seen.args[0], BaseException):
            seen = seen.args[0]
        else:
            break
    # urllib3 prefixes reasons with "<...Connection object at 0x...>: "; the address helps nobody.
    text = re.sub(r"<[^>]* object at 0x[0-9a-f]+>:?\s*", "", str(seen)).strip()
    return f"{type(seen).__name__}: {text}" if text else type(seen).__name__


# ---- failures --------------------------------------------------------------------------------------


class _HTTPStatusError(errors.DownloadError):
    """A final HTTP error status; ``status`` lets callers (Kaggle) turn 401/403 into advice."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class _Cancelled(Exception):
    """Raised inside a worker when ``fetch_all`` gave up after another file failed."""


class DeadlineExceeded(errors.DownloadError):
    """A request could not be answered before the deadline its caller set (``Transport.open(deadline=...)``)."""


def file_level(exc: errors.DownloadError) -> bool:
    """True when a failure concerns one file (the server answered: not there, forbidden, other bytes),
    False when it concerns the server (5xx/429 after the retries): then asking for more files is futile."""
    if isinstance(exc, errors.ChecksumMismatch):
        return True
    return isinstance(exc, _HTTPStatusError) and 400 <= exc.status < 500 and exc.status != 429


# ---- requests plumbing -----------------------------------------------------------------------------


_DEADLINE = threading.local()
"""The deadline (``time.monotonic()``) of the request this thread is sending, if its caller set one:
urllib3 runs the retries inside ``session.request``, so ``_Retry`` reads it here."""


def _remaining() -> float | None:
    deadline = getattr(_DEADLINE, "value", None)
    return None if deadline is None else deadline - time.monotonic()


class _Retry(Retry):
    """urllib3 Retry whose ``Retry-After`` wait is capped, so a hostile server cannot park a build, and
    which retries nothing past the deadline of the request (``_DEADLINE``) nor waits beyond it."""

    RETRY_AFTER_CAP = 300.0

    def get_retry_after(self, response):  # type: ignore[override]
        value = super().get_retry_after(response)
        remaining = _remaining()
        return None if value is None else min(value, self.RETRY_AFTER_CAP, *(() if remaining is None else (max(0.0, remaining),)))

    def get_backoff_time(self) -> float:
        remaining = _remaining()
        value = super().get_backoff_time()
        return value if remaining is None else min(value, max(0.0, remaining))

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):  # type: ignore[override]
        remaining = _remaining()
        if remaining is not None and remaining <= 0:
            raise MaxRetryError(_pool, url or "", error or ResponseError("the deadline passed"))  # type: ignore[arg-type]
        return super().increment(method, url, response, error, _pool, _stacktrace)


class _NoNetrcAuth(requests.auth.AuthBase):
    """Explicitly no credentials: without an ``auth``, requests would add a ``~/.netrc`` entry for the host."""

    def __call__(self, request):
        return request


_NO_AUTH = _NoNetrcAuth()


def _announced_size(response: requests.Response) -> int | None:
    """The file's size a response announces: the total of ``Content-Range`` (``bytes 0-0/1234``, ``bytes
    */1234``) for a partial answer, else ``Content-Length``; None when it says none."""
    if response.status_code in (206, 416):
        total = response.headers.get("Content-Range", "").rpartition("/")[2].strip()
        return int(total) if total.isdigit() else None
    length = response.headers.get("Content-Length", "")
    return int(length) if length.isdigit() else None


# ---- the transport ---------------------------------------------------------------------------------


class Transport:
    """One session, its retry policy, and the redirect and credential rules of a :class:`Downloader`.

    The arguments are the downloader's (see :class:`~covid19_cxr_dataset.download.core.Downloader`);
    they are validated there. With ``offline=True`` no session is built at all, so nothing can reach a
    socket by accident; :meth:`scrub` still works. Safe to use from several threads.
    """

    def __init__(
        self,
        *,
        offline: bool,
        workers: int,
        retries: int,
        backoff: float,
        timeout: float,
        allowed_redirect_hosts: Iterable[str],
        auth: tuple[str, str] | None,
        headers: Mapping[str, str] | None,
        credentials_for: str | None,
    ):
        self.workers = workers
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self._allowed_origins: set[tuple[str, str, int | None]] = set()
        self._allowed_hosts: set[tuple[str, int | None]] = set()
        for entry in allowed_redirect_hosts:
            if "://" in entry:
                self._allowed_origins.add(_origin(entry))
            else:
                parts = urlsplit("//" + entry)
                self._allowed_hosts.add(((parts.hostname or "").lower(), parts.port))
        self._auth = (str(auth[0]), str(auth[1])) if auth else None
        self._credential_headers = dict(headers or {})
        self.credentials_origin = _origin(credentials_for) if credentials_for else None
        """``(scheme, host, port)`` that may receive the credentials, or None."""
        self._secrets = sorted(
            {s for s in [*(self._auth[1:] if self._auth else ()), *self._credential_headers.values()] if len(s) >= 3},
            key=len,
            reverse=True,
        )
        # Offline mode builds no session at all: nothing below can then reach a socket by accident.
        self._session = None if offline else self._make_session()

    def scrub(self, text: str) -> str:
        """``text`` with every credential value replaced by ``***``."""
        # Belt and braces: messages are built from redacted URLs, but a secret must never leak.
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    # ---- one request -----------------------------------------------------------------------------

    def _make_session(self) -> requests.Session:
        retry = _Retry(
            total=self.retries,
            connect=self.retries,
            read=self.retries,
            status=self.retries,
            backoff_factor=self.backoff,
            status_forcelist=RETRY_STATUSES,
            allowed_methods=frozenset({"GET", "HEAD"}),
            respect_retry_after_header=True,
            raise_on_status=False,
            raise_on_redirect=False,
        )
        adapter = HTTPAdapter(max_retries=retry, pool_connections=max(10, self.workers), pool_maxsize=self.workers)
        session = requests.Session()
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers["User-Agent"] = USER_AGENT
        # Ranges and hashes are about the stored bytes; a content-encoded body would break both.
        session.headers["Accept-Encoding"] = "identity"
        return session

    def _redirect_allowed(self, target: str, source: str) -> bool:
        scheme, host, port = _origin(target)
        if scheme == "https":
            return True
        if scheme != "http":
            return False
        return (
            (scheme, host, port) == _origin(source)
            or (scheme, host, port) in self._allowed_origins
            or (host, None) in self._allowed_hosts
            or (host, port) in self._allowed_hosts
        )

    def open(self, url: str, offset: int, method: str = "GET", *, byte_range: str = "",
             deadline: float | None = None) -> requests.Response:
        """GET (or HEAD) ``url`` (from byte ``offset``, or the ``byte_range`` given, e.g. ``"bytes=0-0"``),
        following allowed redirects; a 200/206/416 response. ``deadline`` (``time.monotonic()``): no
        request, retry or wait goes past it; each request's timeout is what is left of it.

        Raises:
            _HTTPStatusError: another final status (after the retries for 429/5xx).
            DeadlineExceeded: the deadline passed before an answer.
            errors.DownloadError: no answer after the retries, an invalid URL or redirect target, a
                refused redirect, or more than :data:`MAX_REDIRECTS` redirects.
        """
        assert self._session is not None, "offline downloaders never open connections"
        _DEADLINE.value = deadline
        try:
            return self._open(url, offset, method, byte_range, deadline)
        finally:
            _DEADLINE.value = None

    def _open(self, url: str, offset: int, method: str, byte_range: str, deadline: float | None) -> requests.Response:
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            headers = {"Range": byte_range} if byte_range else {"Range": f"bytes={offset}-"} if offset else {}
            timeout = self.timeout
            if deadline is not None:
                timeout = min(timeout, deadline - time.monotonic())
                if timeout <= 0:
                    raise DeadlineExceeded(self.scrub(f"{redact_url(url)}: no answer before the deadline"))
            auth = None
            if self.credentials_origin is not None and _origin(current) == self.credentials_origin:
                headers.update(self._credential_headers)
                auth = self._auth
            log.debug("%s %s%s", method, redact_url(current), f" from byte {offset}" if offset else "")
            try:
                response = self._session.request(
                    method, current, headers=headers, auth=auth or _NO_AUTH, stream=True,
                    timeout=(timeout, timeout), allow_redirects=False,
                )
            except (requests.exceptions.InvalidURL, ValueError) as exc:
                if _parses(current):  # requests parses a redirect's Location even when not following it
                    problem = f"answered with a redirect to an address that is not a valid URL ({_describe(exc)})"
                    advice = "The server (or mirror) is misconfigured: retry later or use another mirror."
                else:
                    problem = f"is not a valid URL ({_describe(exc)})"
                    advice = "Check the mirror or manifest that produced it."
                raise errors.DownloadError(self.scrub(f"{redact_url(current)} {problem}; refusing it. {advice}")) from None
            except requests.RequestException as exc:
                if deadline is not None and time.monotonic() >= deadline:
                    raise DeadlineExceeded(self.scrub(f"{redact_url(url)}: no answer before the deadline ({_describe(exc)})")) from None
                raise errors.DownloadError(self.scrub(
                    f"{redact_url(url)}: no answer after {self.retries} retries ({_describe(exc)}). Check the "
                    "network, proxy or mirror and run again; completed files stay in the cache."
                )) from None
            if response.is_redirect:
                location = response.headers["Location"]
                response.close()
                try:
                    target = urljoin(current, location)
                    allowed = self._redirect_allowed(target, current)
                except ValueError as exc:
                    raise errors.DownloadError(self.scrub(
                        f"{redact_url(url)} redirects to {location[:200]!r}, which is not a valid URL ({exc}); "
                        "refusing to follow. The server (or mirror) is misconfigured: retry later or use another mirror."
                    )) from None
                if not allowed:
                    raise errors.DownloadError(self.scrub(
                        f"{redact_url(url)} redirects to {redact_url(target)}, which is neither https nor an "
                        "allowed mirror host; refusing to follow. If you trust that host, pass it as the mirror "
                        "(allowed_redirect_hosts)."
                    ))
                current = target
                continue
            if response.status_code in (200, 206, 416):
                return response
            status, reason = response.status_code, response.reason
            response.close()
            retried = f" after {self.retries} retries" if status in RETRY_STATUSES else ""
            advice = {
                401: "the server wants credentials (or rejected the ones given)",
                403: "access is forbidden (credentials, terms not accepted, or rate limit)",
                404: "the file is not there: check the pinned commit/path or the mirror",
            }.get(status, "retry later or use a mirror")
            raise _HTTPStatusError(self.scrub(
                f"{redact_url(url)}: HTTP {status} {reason}{retried}; expected 200. {advice[0].upper() + advice[1:]}."
            ), status)
        raise errors.DownloadError(self.scrub(
            f"{redact_url(url)}: more than {MAX_REDIRECTS} redirects (last {redact_url(current)}); the URL is wrong "
            "or the server misconfigured."
        ))

    def head(self, spec: FileSpec, *, deadline: float | None = None) -> dict:
        """HEAD ``spec.url``: ``{"url", "status", "size", "reachable", "detail"}`` (see ``check_reachable``).

        A server that does not do HEAD (405 Method Not Allowed, 501 Not Implemented) is asked for the
        file's first byte instead (GET with ``Range: bytes=0-0``; the body is not read): a 206 (or a
        200 from a server that ignores ranges) says the file is there, and its size. A file-level
        refusal (4xx other than 429) is an answer (``reachable`` False); any other failure is raised,
        as by :meth:`open`, ``DeadlineExceeded`` included.
        """
        method = "HEAD"
        try:
            try:
                response = self.open(spec.url, 0, method="HEAD", deadline=deadline)
            except _HTTPStatusError as exc:
                if exc.status not in (405, 501):
                    raise
                method = "ranged GET (the server refuses HEAD)"
                response = self.open(spec.url, 0, method="GET", byte_range="bytes=0-0", deadline=deadline)
        except _HTTPStatusError as exc:
            if not file_level(exc):
                raise
            return {"url": redact_url(spec.url), "status": exc.status, "size": None, "reachable": False, "detail": str(exc)}
        with response:  # closed unread: a ranged GET's one byte (or a whole body a server sends anyway) is not wanted
            status, size = response.status_code, _announced_size(response)
        if method != "HEAD" and status in (206, 416):
            status = 200  # the server holds the file (416: an empty one); what HEAD's 200 says
        detail = ""
        if status != 200:
            detail = f"HTTP {status} to a {method} request; expected 200"
        elif spec.size >= 0 and size is not None and size != spec.size:
            detail = f"the server announces {size} bytes; the pin says {spec.size}"
        return {"url": redact_url(spec.url), "status": status, "size": size, "reachable": not detail, "detail": detail}

    # ---- one body --------------------------------------------------------------------------------
