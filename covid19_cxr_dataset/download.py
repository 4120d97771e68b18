"""Verified, cached, resumable, concurrent downloads: the only module of the package that opens a socket.

The contract is pooch's: a file is named by a :class:`FileSpec` (URL, cache key and the pins it must
match); :meth:`Downloader.fetch` returns the path of a *verified* copy in the cache, downloading it only
when the cache has no verified copy. :meth:`Downloader.fetch_all` does the same for many files on a
thread pool behind one progress bar.

How a file travels
------------------
1. Under a per-entry :mod:`filelock` lock (so that several processes may share one cache), the cached
   file, if any, is re-hashed and compared with the pins. Re-hashing costs about a second per GB and
   catches what a size/mtime check cannot (bit rot, an edit in place); a file without any hash pin is
   compared with the hashes recorded in its sidecar when it was first stored (which proves only that
   the bytes did not change in the cache: such a file is *stored*, never *verified*, and
   :meth:`Downloader.verified_hashes` returns None for it).
2. Otherwise the body is streamed into ``<entry>.part`` beside the entry. A connection that breaks in
   the middle of the body is resumed with ``Range: bytes=<received>-``; a ``206`` answer is accepted
   only when its ``Content-Range`` starts at that byte, and a server answering ``200`` instead restarts
   the file from its first byte. Connection failures and ``429/500/502/503/504`` answers before the
   body starts are retried by urllib3 with exponential backoff, honouring ``Retry-After``. A file
   without a pinned size is capped at ``FileSpec.max_size`` (default ``DEFAULT_MAX_UNPINNED_BYTES``):
   a larger announced length is refused before the body, a longer body as soon as it passes the cap.
3. The finished ``.part`` is hashed (size, sha256 and git blob sha1 in one streaming pass) and compared
   with the pins *before* :func:`os.replace` moves it into place, so the cache never holds an unverified
   file. A mismatch deletes the ``.part`` and raises :class:`~covid19_cxr_dataset.errors.ChecksumMismatch`.
4. A small JSON sidecar (``<cache>/.verified/<cache key>.json``) records the hashes and whether a
   pin checked them; read it back with :meth:`Downloader.verified_hashes` (pinned files only) or
   :meth:`Downloader.stored_hashes` (any stored file; the record table's ``sha256`` column). A caller
   that finds a cached file unusable (an unpinned "zip" that is an HTML page) calls
   :meth:`Downloader.discard` and fetches it again.

Cache layout::

    <cache_dir>/<cache key>                  verified files only
    <cache_dir>/<cache key>.part             a download in progress (or one to resume)
    <cache_dir>/.verified/<cache key>.json   hashes recorded when the file was verified
    <cache_dir>/.locks/<hash of key>.lock    one lock per entry

A path component longer than ``MAX_NAME_BYTES`` is stored under a shortened name ending in a hash of
the full one, so that ``.part``/``.json`` suffixes never exceed the file system's 255-byte limit.

Security rules: redirects are followed only to ``https`` targets, to the origin that was asked, or to
an ``allowed_redirect_hosts`` entry (a mirror the user named); credentials (``auth``/``headers``) are
sent only to their own origin (``credentials_for``) and never appear in messages, logs or reprs; URLs
in messages are passed through :func:`redact_url`. No credential is ever taken from the environment:
``~/.netrc`` entries are not sent (requests would add them to any request without ``auth``), while
proxy and CA-bundle settings from the environment still apply.

Kaggle: :func:`fetch_kaggle_archive` downloads a dataset archive through Kaggle's public API with the
credentials found by :func:`kaggle_credentials`.
"""

from __future__ import annotations

import concurrent.futures
import errno
import hashlib
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Mapping
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import filelock
import requests
import urllib3
from requests.adapters import HTTPAdapter
from tqdm import tqdm
from urllib3.util.retry import Retry

from . import __version__, errors

log = logging.getLogger(__name__)

CACHE_ENV = "COVID19_CXR_CACHE"
"""Environment variable naming the cache dir when ``--cache-dir`` is not given."""

RETRY_STATUSES = (429, 500, 502, 503, 504)
"""HTTP statuses that urllib3 retries (with backoff, honouring ``Retry-After``)."""

MAX_REDIRECTS = 10
DEFAULT_MAX_UNPINNED_BYTES = 256 * 1024**2
"""Cap on a file whose size is not pinned (the largest pinned image of release 1.0.0 is 4.2 MB)."""
MAX_NAME_BYTES = 200
"""Longest path component stored as is; longer ones are shortened (see the module docstring)."""
NETWORK_CHUNK = 1 << 16
HASH_CHUNK = 1 << 20
USER_AGENT = f"covid19-cxr-dataset/{__version__} (+https://arxiv.org/abs/2007.09695)"

_DEFAULT_PORTS = {"http": 80, "https": 443}
_HEX = re.compile(r"^[0-9a-f]+$")
# Query parameters that carry secrets in signed URLs (Kaggle redirects to signed storage URLs).
_SECRET_QUERY_NAME = re.compile(r"sig|signature|token|key|secret|credential|password|auth", re.IGNORECASE)
_RESERVED_TOP_LEVEL = (".verified", ".locks")


def default_cache_dir() -> Path:
    """The cache dir used when ``--cache-dir`` is not given.

    ``$COVID19_CXR_CACHE`` when set (``~`` expanded), else ``~/.cache/covid19-cxr-dataset``.
    """
    configured = os.environ.get(CACHE_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "covid19-cxr-dataset"


@dataclass(frozen=True)
class FileSpec:
    """One file to fetch: where from, where in the cache, and what it must hash to.

    Attributes:
        url: absolute ``http``/``https`` URL.
        cache_key: relative POSIX path in the cache, e.g. ``github/<owner>/<repo>/<commit>/<path>``.
            The key is the file's identity: a cached file under the same key is reused whatever URL
            (mirror) the spec names now.
        sha256: pinned sha256 (hex), or ``""``.
        git_blob_sha1: pinned git blob id (hex), or ``""``; the hash of ``b"blob <size>\\0" + data``.
        size: pinned size in bytes, or ``-1`` when unknown.
        max_size: when ``size`` is unknown, the most bytes accepted (``-1``: the downloader's
            ``max_unpinned_bytes``).

    Hex pins are normalized to lower case. A malformed spec raises :class:`ValueError` at once, so a
    typo in a manifest fails before anything is downloaded.
    """

    url: str
    cache_key: str
    sha256: str = ""
    git_blob_sha1: str = ""
    size: int = -1
    max_size: int = -1

    def __post_init__(self) -> None:
        if urlsplit(self.url).scheme not in ("http", "https"):
            raise ValueError(f"FileSpec url {redact_url(self.url)!r} is not an absolute http(s) URL")
        _check_cache_key(self.cache_key)
        for name, length in (("sha256", 64), ("git_blob_sha1", 40)):
            value = getattr(self, name).strip().lower()
            if value and (len(value) != length or not _HEX.match(value)):
                raise ValueError(
                    f"FileSpec {self.cache_key!r}: {name} {getattr(self, name)!r} is not {length} hex digits"
                )
            object.__setattr__(self, name, value)
        if not isinstance(self.size, int) or self.size < -1:
            raise ValueError(f"FileSpec {self.cache_key!r}: size {self.size!r} is neither -1 nor a byte count")
        if not isinstance(self.max_size, int) or self.max_size < -1:
            raise ValueError(f"FileSpec {self.cache_key!r}: max_size {self.max_size!r} is neither -1 nor a byte count")

    @property
    def pinned(self) -> bool:
        """True when a hash pins the content (a size alone does not)."""
        return bool(self.sha256 or self.git_blob_sha1)


@dataclass(frozen=True)
class FileHashes:
    """What a file hashes to: its size, sha256 and git blob sha1."""

    size: int
    sha256: str
    git_blob_sha1: str


def git_blob_sha1(data: bytes) -> str:
    """The git blob id of ``data`` (what ``git hash-object`` prints)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def hash_file(path: Path) -> FileHashes:
    """Size, sha256 and git blob sha1 of ``path`` in one streaming pass (the file is never loaded whole)."""
    sha256 = hashlib.sha256()
    blob = hashlib.sha1()
    with open(path, "rb") as handle:
        # The blob header needs the size first; fstat of the open handle gives the size of what we read.
        size = os.fstat(handle.fileno()).st_size
        blob.update(b"blob %d\0" % size)
        read = 0
        while chunk := handle.read(HASH_CHUNK):
            sha256.update(chunk)
            blob.update(chunk)
            read += len(chunk)
    if read != size:
        raise OSError(f"{path} changed size while being hashed ({size} then {read} bytes)")
    return FileHashes(size=size, sha256=sha256.hexdigest(), git_blob_sha1=blob.hexdigest())


def check_base_url(url: str, option: str = "--mirror") -> str:
    """``url`` without a trailing slash if it is an absolute ``http(s)://host[:port][/path]`` URL.

    Raises:
        errors.DownloadError: another scheme (``file://``, ``ftp://``), no scheme or host, a port
            outside 1-65535, or an unparseable address; the message names ``option`` and the form expected.
    """
    problem = ""
    try:
        parts = urlsplit(url.strip())
        port = parts.port  # ValueError when out of range or not a number
        if parts.scheme.lower() not in ("http", "https"):
            problem = f"its scheme is {parts.scheme + '://' if parts.scheme else 'missing'}, not http:// or https://"
        elif not parts.hostname:
            problem = "it names no host"
        elif port == 0:
            problem = "port 0 is not a port"
        elif parts.query or parts.fragment or parts.username or parts.password:
            problem = "it carries a query, fragment or credentials"
    except ValueError as error:
        problem = f"it cannot be parsed ({error})"
    if problem:
        raise errors.DownloadError(
            f"{option} {redact_url(url)!r} is not a usable base URL: {problem}. Expected an absolute URL such as "
            "https://mirror.example.org/github (host and optional port 1-65535, then the same "
            "<owner>/<repo>/<commit>/<path> layout as raw.githubusercontent.com)."
        )
    return url.strip().rstrip("/")


def redact_url(url: str) -> str:
    """``url`` fit for a message: userinfo replaced by ``***`` and signed-URL secrets masked."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = "***@" + netloc.rsplit("@", 1)[1]
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode([(k, "***" if _SECRET_QUERY_NAME.search(k) else v) for k, v in pairs], safe="*")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "<unparseable URL>"


def _check_cache_key(key: str) -> None:
    path = PurePosixPath(key)
    if (
        not key
        or "\\" in key
        or "\0" in key
        or path.is_absolute()
        or re.match(r"^[A-Za-z]:", key)
        or any(part in ("..", ".") for part in key.split("/"))
        or "" in key.split("/")
        or path.parts[0] in _RESERVED_TOP_LEVEL
        or key.endswith(".part")
    ):
        raise ValueError(
            f"cache key {key!r} is not a plain relative path (no '..', '.', empty or absolute parts, no "
            f"'.part' suffix, not under {', '.join(_RESERVED_TOP_LEVEL)})"
        )


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme)


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


class _Retry(Retry):
    """urllib3 Retry whose ``Retry-After`` wait is capped, so a hostile server cannot park a build."""

    RETRY_AFTER_CAP = 300.0

    def get_retry_after(self, response):  # type: ignore[override]
        value = super().get_retry_after(response)
        return None if value is None else min(value, self.RETRY_AFTER_CAP)


class _HTTPStatusError(errors.DownloadError):
    """A final HTTP error status; ``status`` lets callers (Kaggle) turn 401/403 into advice."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def _file_level(exc: errors.DownloadError) -> bool:
    """True when a failure concerns one file (the server answered: not there, forbidden, other bytes),
    False when it concerns the server (5xx/429 after the retries): then asking for more files is futile."""
    if isinstance(exc, errors.ChecksumMismatch):
        return True
    return isinstance(exc, _HTTPStatusError) and 400 <= exc.status < 500 and exc.status != 429


def _absent_entry(spec: FileSpec, exc: errors.DownloadError) -> dict:
    status = str(exc.status) if isinstance(exc, _HTTPStatusError) else "checksum"
    return {"cache_key": spec.cache_key, "url": redact_url(spec.url), "status": status, "detail": str(exc)}


def _status_words(status: str) -> str:
    return "bytes differ from the pin" if status == "checksum" else f"HTTP {status}"


class _Cancelled(Exception):
    """Raised inside a worker when ``fetch_all`` gave up after another file failed."""


def _write_chunk(handle, data: bytes) -> None:
    # One seam for every byte written to a .part, so tests can simulate a full disk.
    handle.write(data)


class Downloader:
    """Fetches :class:`FileSpec` files into a verified cache.

    Args:
        cache_dir: the cache root (created when missing); see :func:`default_cache_dir`.
        offline: never open a socket; a file missing from the cache (or failing verification) raises
            :class:`~covid19_cxr_dataset.errors.OfflineMissing`.
        workers: threads used by :meth:`fetch_all`.
        retries: retries per HTTP request (connection errors, timeouts, 429/5xx), and separately the
            number of times a body cut mid-transfer is resumed.
        backoff: backoff factor in seconds; waits grow as ``backoff * 2**n``.
        timeout: connect and read timeout in seconds; a server silent for longer is an error (retried).
        allowed_redirect_hosts: hosts a redirect may lead to over plain ``http`` (``https`` targets and
            the origin that was asked are always allowed). An entry with a scheme
            (``"http://mirror:8080"``) must match scheme, host and port; a bare ``"host"`` or
            ``"host:port"`` matches any scheme.
        progress: show a tqdm progress bar in :meth:`fetch_all`.
        auth: ``(user, password)`` sent as HTTP basic auth, only to ``credentials_for``.
        headers: extra request headers (e.g. a token), only to ``credentials_for``.
        credentials_for: the origin (``"https://www.kaggle.com"``) that may receive ``auth``/``headers``;
            required when either is given.
        max_unpinned_bytes: cap on a file whose size is not pinned (unless its spec sets ``max_size``).

    One :class:`requests.Session` is shared by all threads (its connection pool is sized to
    ``workers``). The object is safe to use from several threads; the cache is safe to share between
    processes.
    """

    def __init__(
        self,
        cache_dir: Path,
        *,
        offline: bool = False,
        workers: int = 8,
        retries: int = 5,
        backoff: float = 0.5,
        timeout: float = 30.0,
        allowed_redirect_hosts: Iterable[str] = (),
        progress: bool = True,
        auth: tuple[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        credentials_for: str | None = None,
        max_unpinned_bytes: int = DEFAULT_MAX_UNPINNED_BYTES,
    ):
        if workers < 1 or retries < 0 or backoff < 0 or timeout <= 0:
            raise ValueError("workers >= 1, retries >= 0, backoff >= 0 and timeout > 0 are required")
        if (auth or headers) and not credentials_for:
            raise ValueError("auth/headers need credentials_for=<origin>, the one origin allowed to receive them")
        self.cache_dir = Path(cache_dir).expanduser()
        self.offline = offline
        self.workers = workers
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.progress = progress
        self.max_unpinned_bytes = max_unpinned_bytes
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
        self._credentials_origin = _origin(credentials_for) if credentials_for else None
        self._secrets = sorted(
            {s for s in [*(self._auth[1:] if self._auth else ()), *self._credential_headers.values()] if len(s) >= 3},
            key=len,
            reverse=True,
        )
        # Offline mode builds no session at all: nothing below can then reach a socket by accident.
        self._session = None if offline else self._make_session()

    def __repr__(self) -> str:
        credentials = f", credentials_for={'://'.join(self._credentials_origin[:2])!r}" if self._credentials_origin else ""
        return (
            f"Downloader(cache_dir={str(self.cache_dir)!r}, offline={self.offline}, workers={self.workers}, "
            f"retries={self.retries}, timeout={self.timeout}{credentials})"
        )

    # ---- public API ------------------------------------------------------------------------------

    def path_for(self, spec: FileSpec | str) -> Path:
        """Where ``spec`` (or a cache key) lives in the cache, whether or not it is there yet."""
        key = spec.cache_key if isinstance(spec, FileSpec) else spec
        _check_cache_key(key)
        return self.cache_dir.joinpath(*_stored_parts(key))

    def verified_hashes(self, spec: FileSpec | str) -> FileHashes | None:
        """The hashes recorded when a pin verified the cached file (None if none ever did)."""
        key = spec.cache_key if isinstance(spec, FileSpec) else spec
        record = self._read_sidecar(key)
        if record is None or not record.get("pinned", True):
            return None
        return FileHashes(record["size"], record["sha256"], record["git_blob_sha1"])

    def stored_hashes(self, spec: FileSpec | str) -> FileHashes | None:
        """The hashes recorded when the cached file was stored, pinned or not (None if unknown)."""
        key = spec.cache_key if isinstance(spec, FileSpec) else spec
        record = self._read_sidecar(key)
        return None if record is None else FileHashes(record["size"], record["sha256"], record["git_blob_sha1"])

    def discard(self, spec: FileSpec) -> None:
        """Remove ``spec``'s cached file and its record (a caller found it unusable); the next fetch
        downloads it again."""
        with self._entry_lock(spec, None):
            self.path_for(spec).unlink(missing_ok=True)
            self._sidecar_path(spec.cache_key).unlink(missing_ok=True)

    def fetch(self, spec: FileSpec) -> Path:
        """Return the path of a verified copy of ``spec`` in the cache, downloading it if needed.

        Raises:
            errors.OfflineMissing: offline and the cache has no verified copy.
            errors.ChecksumMismatch: the downloaded bytes differ from the pins (nothing was cached).
            errors.DownloadError: the file could not be fetched after the allowed retries, a redirect
                was refused, or the disk is full.
        """
        return self._fetch(spec, None, None)

    def fetch_all(self, specs: list[FileSpec], desc: str = "downloading", *, keep_going: bool = False) -> dict[str, Path]:
        """Fetch every spec; return ``{cache_key: path}`` in the order of ``specs``.

        Downloads run on ``workers`` threads behind one progress bar (bytes). The first error stops
        the work not yet started, lets running transfers stop at their next chunk (their ``.part`` is
        kept for a later resume) and is raised; files completed before stay in the cache. Offline,
        every spec is checked first and one :class:`~covid19_cxr_dataset.errors.OfflineMissing` lists
        all the missing keys.

        ``keep_going``: a file the server refuses for good (a final 4xx status other than 429) or
        serves with bytes that differ from its pins does not stop the others; once every other file
        is fetched, one :class:`~covid19_cxr_dataset.errors.MissingUpstreamFiles` lists each such file
        with its status. Failures that concern the server rather than a file (no answer, 5xx/429
        after the retries, a refused redirect) still stop everything at once, as without it.

        A cache key listed twice must name the same file (same URL and pins), else :class:`ValueError`.
        """
        unique: dict[str, FileSpec] = {}
        for spec in specs:
            known = unique.setdefault(spec.cache_key, spec)
            if known != spec:
                raise ValueError(f"cache key {spec.cache_key!r} is given twice with different URLs or pins")
        if not unique:
            return {}
        if self.offline:
            return self._fetch_all_offline(list(unique.values()))

        sizes = [s.size for s in unique.values()]
        total = sum(sizes) if all(size >= 0 for size in sizes) else None
        bar_lock = threading.Lock()
        cancel = threading.Event()
        with tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=not self.progress) as bar:

            def advance(count: int) -> None:
                with bar_lock:
                    bar.update(count)

            results: dict[str, Path] = {}
            absent: list[dict] = []
            pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(self.workers, len(unique)))
            try:
                futures = {pool.submit(self._fetch, spec, cancel, advance): key for key, spec in unique.items()}
                for future in concurrent.futures.as_completed(futures):
                    try:
                        results[futures[future]] = future.result()
                    except (_HTTPStatusError, errors.ChecksumMismatch) as exc:
                        if not keep_going or not _file_level(exc):
                            raise
                        absent.append(_absent_entry(unique[futures[future]], exc))
            finally:
                # Reached with an error (or Ctrl-C) in flight: stop the rest, wait for running workers.
                cancel.set()
                pool.shutdown(wait=True, cancel_futures=True)
        if absent:
            raise self._missing_error(sorted(absent, key=lambda entry: entry["cache_key"]), len(unique))
        return {spec.cache_key: results[spec.cache_key] for spec in specs}

    def check_reachable(self, specs: list[FileSpec], desc: str = "checking files") -> dict[str, dict]:
        """HEAD every spec's URL (same session, retries, redirect rules and credentials as a download);
        download nothing. Returns ``{cache_key: {"url", "status", "size", "reachable", "detail"}}``:
        ``status`` is the final HTTP status, ``size`` the announced Content-Length (or None), and
        ``reachable`` is True for a 200 whose announced size (when both are known) matches the pin.

        Raises:
            errors.DownloadError: offline, or the server does not answer at all (no point asking it
                about the other files); 5xx/429 answers after the retries likewise.
        """
        if self.offline:
            raise errors.DownloadError(
                "--offline: checking which files the server holds needs the network; run without --offline"
            )
        unique = {spec.cache_key: spec for spec in specs}
        if not unique:
            return {}
        with tqdm(total=len(unique), desc=desc, unit="file", disable=not self.progress) as bar:
            with concurrent.futures.ThreadPoolExecutor(max_workers=min(self.workers, len(unique))) as pool:
                answers = {}
                for key, answer in zip(unique, pool.map(self._head, unique.values())):
                    answers[key] = answer
                    bar.update()
        return {spec.cache_key: answers[spec.cache_key] for spec in specs}

    def _head(self, spec: FileSpec) -> dict:
        try:
            response = self._open(spec.url, 0, method="HEAD")
        except _HTTPStatusError as exc:
            if not _file_level(exc):
                raise
            return {"url": redact_url(spec.url), "status": exc.status, "size": None, "reachable": False, "detail": str(exc)}
        with response:
            length = response.headers.get("Content-Length", "")
            size = int(length) if length.isdigit() else None
            status = response.status_code
        detail = ""
        if status != 200:
            detail = f"HTTP {status} to a HEAD request; expected 200"
        elif spec.size >= 0 and size is not None and size != spec.size:
            detail = f"the server announces {size} bytes; the pin says {spec.size}"
        return {"url": redact_url(spec.url), "status": status, "size": size, "reachable": not detail, "detail": detail}

    def _missing_error(self, absent: list[dict], total: int) -> errors.MissingUpstreamFiles:
        statuses: dict[str, int] = {}
        for entry in absent:
            statuses[entry["status"]] = statuses.get(entry["status"], 0) + 1
        shown = "\n  ".join(f"{e['status']:>8}  {e['url']}" for e in absent[:20])
        more = f"\n  ... and {len(absent) - 20} more" if len(absent) > 20 else ""
        return errors.MissingUpstreamFiles(self._scrub(
            f"{len(absent)} of {total} file(s) could not be downloaded ("
            + ", ".join(f"{_status_words(status)}: {n}" for status, n in sorted(statuses.items()))
            + f"); every other file is verified in the cache {self.cache_dir}:\n  {shown}{more}"
        ), absent)

    # ---- offline ---------------------------------------------------------------------------------

    def _fetch_all_offline(self, specs: list[FileSpec]) -> dict[str, Path]:
        def check(spec: FileSpec) -> Path | None:
            try:
                return self._fetch(spec, None, None)
            except errors.OfflineMissing:
                return None

        # Threads, because re-hashing thousands of cached files is the whole cost (hashlib drops the GIL).
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(self.workers, len(specs))) as pool:
            paths = list(pool.map(check, specs))
        found = {spec.cache_key: path for spec, path in zip(specs, paths) if path is not None}
        missing = [spec.cache_key for spec, path in zip(specs, paths) if path is None]
        if missing:
            raise self._offline_error(missing)
        return found

    def _offline_error(self, missing: list[str]) -> errors.OfflineMissing:
        shown = "\n  ".join(missing[:20]) + (f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else "")
        return errors.OfflineMissing(
            f"offline mode: {len(missing)} file(s) are not verified in the cache {self.cache_dir}:\n  {shown}\n"
            "Run once without --offline to download them (or point --cache-dir / COVID19_CXR_CACHE at a "
            "cache that holds them).",
            missing,
        )

    # ---- one file --------------------------------------------------------------------------------

    def _fetch(self, spec: FileSpec, cancel: threading.Event | None, on_bytes: Callable[[int], None] | None) -> Path:
        target = self.path_for(spec)
        if self.offline:
            # No lock offline: a cache on a read-only disk must still work, and verification only
            # reads (a concurrent writer swaps files in with an atomic rename).
            if target.is_file() and self._cached_is_valid(spec, target):
                return target
            raise self._offline_error([spec.cache_key])
        try:
            held = self._entry_lock(spec, cancel)
        except errors.DownloadError:
            # A read-only cache: what it holds can still be used (files are swapped in atomically).
            if target.is_file() and self._cached_is_valid(spec, target):
                return target
            raise
        with held:
            if self._cached_is_valid(spec, target):
                if on_bytes:
                    on_bytes(target.stat().st_size)
                return target
            self._download(spec, target, cancel, on_bytes)
        return target

    def _entry_lock(self, spec: FileSpec, cancel: threading.Event | None):
        lock_dir = self.cache_dir / ".locks"
        try:
            lock_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise errors.DownloadError(
                f"cannot create the cache dir {self.cache_dir}: {exc.strerror}. Pass --cache-dir (or set "
                f"{CACHE_ENV}) to a writable folder."
            ) from None
        name = hashlib.sha256(spec.cache_key.encode("utf-8")).hexdigest()[:32] + ".lock"
        lock = filelock.FileLock(str(lock_dir / name))
        # Poll so that a worker waiting on another process's download still notices a cancellation.
        while True:
            try:
                lock.acquire(timeout=0.5)
                return _Held(lock)
            except filelock.Timeout:
                if cancel is not None and cancel.is_set():
                    raise _Cancelled() from None
            except OSError as exc:
                raise errors.DownloadError(
                    f"the cache dir {self.cache_dir} is not writable ({exc.strerror or exc}), and {spec.cache_key} "
                    "is not complete in it. Pass --cache-dir (or set "
                    f"{CACHE_ENV}) to a writable folder, or use --offline with a cache that holds every file."
                ) from None

    def _sidecar_path(self, key: str) -> Path:
        parts = _stored_parts(key)
        return self.cache_dir.joinpath(".verified", *parts[:-1], parts[-1] + ".json")

    def _read_sidecar(self, key: str) -> dict | None:
        try:
            record = json.loads(self._sidecar_path(key).read_text(encoding="utf-8"))
            # A damaged sidecar is as good as none: the file is then re-verified or fetched again.
            if (
                isinstance(record.get("size"), int)
                and all(isinstance(record.get(k), str) and _HEX.match(record[k]) for k in ("sha256", "git_blob_sha1"))
                and len(record["sha256"]) == 64
            ):
                return record
        except (OSError, ValueError, AttributeError):
            pass
        return None

    def _write_sidecar(self, spec: FileSpec, hashes: FileHashes) -> None:
        path = self._sidecar_path(spec.cache_key)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "url": redact_url(spec.url),
            "size": hashes.size,
            "sha256": hashes.sha256,
            "git_blob_sha1": hashes.git_blob_sha1,
            # Only a pin verifies: an unpinned file is merely stored, whatever it holds.
            "pinned": spec.pinned,
            "verified_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        temporary = path.with_name(path.name + f".{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            temporary.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)

    def _cached_is_valid(self, spec: FileSpec, target: Path) -> bool:
        if not target.is_file():
            return False
        hashes = hash_file(target)
        sidecar = self._read_sidecar(spec.cache_key)
        if spec.pinned:
            problem = _mismatch(spec, hashes)
        elif sidecar is None:
            # Unpinned and never recorded (e.g. a crash between rename and sidecar): origin unknown.
            problem = "no record of it ever being verified"
        else:
            problem = _mismatch(FileSpec(spec.url, spec.cache_key, sidecar["sha256"], "", spec.size), hashes)
        if problem:
            log.warning("cached %s fails verification (%s); %s", target, problem,
                        "ignored offline" if self.offline else "fetching it again")
            return False
        if sidecar is None or sidecar["sha256"] != hashes.sha256 or sidecar.get("pinned", True) != spec.pinned:
            try:
                self._write_sidecar(spec, hashes)
            except OSError:
                pass  # Pins still verify the file; an unpinned one is merely fetched again next time.
        return True

    def _download(self, spec: FileSpec, target: Path, cancel, on_bytes) -> None:
        part = target.with_name(target.name + ".part")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise errors.DownloadError(
                f"cannot create {target.parent} in the cache: {exc.strerror}. Pass --cache-dir (or set "
                f"{CACHE_ENV}) to a writable folder."
            ) from None
        if part.exists() and not spec.pinned:
            # A leftover .part can be trusted for resuming only when a hash will check the result.
            part.unlink()
        retried_clean = False
        while True:
            resumed = self._transfer(spec, part, cancel, on_bytes)
            hashes = hash_file(part)
            problem = _mismatch(spec, hashes)
            if not problem:
                break
            part.unlink(missing_ok=True)
            if resumed and not retried_clean:
                # A file stitched from several responses may mix two upstream versions; try once whole.
                log.warning("%s: %s after a resumed transfer; downloading it once more from the start",
                            redact_url(spec.url), problem)
                retried_clean = True
                continue
            raise errors.ChecksumMismatch(self._scrub(
                f"{redact_url(spec.url)}: {problem}. The download was discarded and nothing entered the cache "
                f"({self.cache_dir}). If upstream changed the file, the manifest's pin must be reviewed; "
                "otherwise retry later or use a mirror."
            ))
        try:
            os.replace(part, target)
            self._write_sidecar(spec, hashes)
        except OSError as exc:
            part.unlink(missing_ok=True)
            target.unlink(missing_ok=True)
            raise self._write_error(spec, exc) from None
        log.info("verified %s (%d bytes, sha256 %s)", spec.cache_key, hashes.size, hashes.sha256)

    def _transfer(self, spec: FileSpec, part: Path, cancel, on_bytes) -> bool:
        """Stream ``spec.url`` into ``part`` until the body is complete.

        Returns True when the result is stitched together (a leftover ``.part`` or several responses),
        so that a failed verification is worth one more clean attempt.
        """
        failures = 0
        responses = 0
        leftover = part.exists() and part.stat().st_size > 0
        ceiling = self._ceiling(spec)
        while True:
            if cancel is not None and cancel.is_set():
                raise _Cancelled()
            offset = part.stat().st_size if part.exists() else 0
            if spec.size >= 0 and offset > spec.size:
                part.unlink()
                offset = 0
            if spec.size > 0 and offset == spec.size:
                return leftover or responses > 1  # A leftover .part that is already whole: verification decides.
            response = self._open(spec.url, offset)
            responses += 1
            try:
                resumable = response.headers.get("Content-Encoding", "identity").lower() in ("identity", "")
                if response.status_code == 416:
                    total = _content_range(response.headers.get("Content-Range", ""))[2]
                    if total == offset and offset > 0:
                        return leftover or responses > 1
                    log.info("%s: range %d- not satisfiable; restarting", redact_url(spec.url), offset)
                    part.unlink(missing_ok=True)
                    failures += 1
                    self._give_up_if(failures, spec, part, "the server refused to resume (HTTP 416)")
                    continue
                if response.status_code == 206:
                    start, _, total = _content_range(response.headers.get("Content-Range", ""))
                    if start != offset:
                        log.info("%s: Content-Range %r does not start at byte %d; restarting",
                                 redact_url(spec.url), response.headers.get("Content-Range"), offset)
                        part.unlink(missing_ok=True)
                        failures += 1
                        self._give_up_if(failures, spec, part, "the server answered a wrong Content-Range")
                        continue
                else:  # 200: the whole body, whether or not a range was asked for.
                    if offset:
                        log.info("%s: server ignored the Range request; restarting from byte 0", redact_url(spec.url))
                        if on_bytes:
                            on_bytes(-offset)
                    offset = 0
                    length = response.headers.get("Content-Length", "")
                    total = int(length) if length.isdigit() and resumable else None
                if spec.size >= 0 and total is not None and total != spec.size:
                    part.unlink(missing_ok=True)
                    raise errors.ChecksumMismatch(self._scrub(
                        f"{redact_url(spec.url)}: size expected {spec.size} bytes, the server announces {total}. "
                        "Nothing entered the cache; if upstream changed the file, the manifest's pin must be reviewed."
                    ))
                if spec.size < 0 and total is not None and total > ceiling:
                    part.unlink(missing_ok=True)
                    raise self._too_large(spec, f"the server announces {total} bytes")
                received = offset
                try:
                    handle = open(part, "ab" if offset else "wb")
                except OSError as exc:
                    raise self._write_error(spec, exc) from None
                try:
                    with handle:
                        for chunk in _body_chunks(response):
                            if cancel is not None and cancel.is_set():
                                raise _Cancelled()
                            received += len(chunk)
                            if spec.size >= 0 and received > spec.size:
                                raise errors.ChecksumMismatch(self._scrub(
                                    f"{redact_url(spec.url)}: size expected {spec.size} bytes, the server sent "
                                    "more. Nothing entered the cache."
                                ))
                            if spec.size < 0 and received > ceiling:
                                raise self._too_large(spec, f"the body passed {ceiling} bytes")
                            try:
                                _write_chunk(handle, chunk)
                            except OSError as exc:
                                raise self._write_error(spec, exc) from None
                            if on_bytes:
                                on_bytes(len(chunk))
                except errors.DownloadError:
                    part.unlink(missing_ok=True)
                    raise
                except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
                    failures += 1
                    if not resumable:
                        part.unlink(missing_ok=True)  # Encoded bytes cannot be resumed by byte offset.
                    self._give_up_if(failures, spec, part, _describe(exc))
                    log.warning("%s: transfer broke after %d bytes (%s); resuming (%d/%d)",
                                redact_url(spec.url), received, _describe(exc), failures, self.retries)
                    time.sleep(min(self.backoff * 2 ** (failures - 1), 60.0))
                    continue
                if total is not None and received < total:
                    # A close-delimited body that ended early, or a server sending the range in pieces:
                    # no exception, just fewer bytes. Only a response that brought nothing is a failure.
                    if received == offset:
                        failures += 1
                        self._give_up_if(failures, spec, part, f"the body stopped at byte {received} of {total}")
                    continue
                return leftover or responses > 1
            finally:
                response.close()

    def _ceiling(self, spec: FileSpec) -> int:
        return spec.size if spec.size >= 0 else spec.max_size if spec.max_size >= 0 else self.max_unpinned_bytes

    def _too_large(self, spec: FileSpec, what: str) -> errors.DownloadError:
        return errors.DownloadError(self._scrub(
            f"{redact_url(spec.url)}: {what}, more than the {self._ceiling(spec)}-byte cap for a file whose size is "
            "not pinned. The transfer was stopped and nothing entered the cache; pin the file's size in the manifest "
            "(lock file) if it really is that large, or check the URL or mirror."
        ))

    def _give_up_if(self, failures: int, spec: FileSpec, part: Path, cause: str) -> None:
        if failures <= self.retries:
            return
        kept = part.stat().st_size if part.exists() else 0
        if kept and not spec.pinned:
            part.unlink()
            kept = 0
        resume = f" The next run resumes at byte {kept}." if kept else ""
        raise errors.DownloadError(self._scrub(
            f"{redact_url(spec.url)}: the transfer failed {failures} times; last cause: {cause}.{resume} "
            "Check the network (or the mirror) and run again."
        ))

    def _write_error(self, spec: FileSpec, exc: OSError) -> errors.DownloadError:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return errors.DownloadError(self._scrub(
                f"the disk is full: writing {spec.cache_key} (from {redact_url(spec.url)}) into the cache dir "
                f"{self.cache_dir} failed ({os.strerror(exc.errno)}). The partial file was removed and the cache "
                f"is unchanged; free some space or pass --cache-dir (or set {CACHE_ENV}) to a larger disk."
            ))
        return errors.DownloadError(self._scrub(
            f"could not write {spec.cache_key} into the cache dir {self.cache_dir}: {exc.strerror or exc}. The "
            f"partial file was removed; check that the folder is writable or pass --cache-dir."
        ))

    # ---- HTTP ------------------------------------------------------------------------------------

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

    def _open(self, url: str, offset: int, method: str = "GET") -> requests.Response:
        """GET (or HEAD) ``url`` (from byte ``offset``), following allowed redirects; a 200/206/416 response."""
        assert self._session is not None, "offline downloaders never open connections"
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            auth = None
            if self._credentials_origin is not None and _origin(current) == self._credentials_origin:
                headers.update(self._credential_headers)
                auth = self._auth
            log.debug("%s %s%s", method, redact_url(current), f" from byte {offset}" if offset else "")
            try:
                response = self._session.request(
                    method, current, headers=headers, auth=auth or _NO_AUTH, stream=True,
                    timeout=(self.timeout, self.timeout), allow_redirects=False,
                )
            except (requests.exceptions.InvalidURL, ValueError) as exc:
                if _parses(current):  # requests parses a redirect's Location even when not following it
                    problem = f"answered with a redirect to an address that is not a valid URL ({_describe(exc)})"
                    advice = "The server (or mirror) is misconfigured: retry later or use another mirror."
                else:
                    problem = f"is not a valid URL ({_describe(exc)})"
                    advice = "Check the mirror or manifest that produced it."
                raise errors.DownloadError(self._scrub(f"{redact_url(current)} {problem}; refusing it. {advice}")) from None
            except requests.RequestException as exc:
                raise errors.DownloadError(self._scrub(
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
                    raise errors.DownloadError(self._scrub(
                        f"{redact_url(url)} redirects to {location[:200]!r}, which is not a valid URL ({exc}); "
                        "refusing to follow. The server (or mirror) is misconfigured: retry later or use another mirror."
                    )) from None
                if not allowed:
                    raise errors.DownloadError(self._scrub(
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
            raise _HTTPStatusError(self._scrub(
                f"{redact_url(url)}: HTTP {status} {reason}{retried}; expected 200. {advice[0].upper() + advice[1:]}."
            ), status)
        raise errors.DownloadError(self._scrub(
            f"{redact_url(url)}: more than {MAX_REDIRECTS} redirects (last {redact_url(current)}); the URL is wrong "
            "or the server misconfigured."
        ))

    def _scrub(self, text: str) -> str:
        # Belt and braces: messages are built from redacted URLs, but a secret must never leak.
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


class _NoNetrcAuth(requests.auth.AuthBase):
    """Explicitly no credentials: without an ``auth``, requests would add a ``~/.netrc`` entry for the host."""

    def __call__(self, request):
        return request


_NO_AUTH = _NoNetrcAuth()


def _parses(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
        return bool(parts.hostname)
    except ValueError:
        return False


def _stored_parts(key: str) -> list[str]:
    """The cache key's components as stored: one longer than MAX_NAME_BYTES is cut and given a hash."""
    parts = key.split("/")
    for index, part in enumerate(parts):
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            digest = hashlib.sha256(part.encode("utf-8")).hexdigest()[:16]
            suffix = PurePosixPath(part).suffix
            suffix = suffix if len(suffix.encode("utf-8")) <= 16 else ""
            head = part.encode("utf-8")[:100].decode("utf-8", "ignore")
            parts[index] = f"{head}~{digest}{suffix}"
    return parts


class _Held:
    """Context manager releasing an already-acquired file lock."""

    def __init__(self, lock: filelock.BaseFileLock):
        self._lock = lock

    def __enter__(self):
        return self._lock

    def __exit__(self, *exc_info) -> None:
        self._lock.release()


def _body_chunks(response: requests.Response) -> Iterable[bytes]:
    """The body as it arrives; decoded only when the server insisted on a content encoding.

    ``read1`` hands over whatever has arrived: urllib3's ``read(amt)`` (behind ``iter_content``) keeps
    filling its buffer and drops the bytes of a short last read when the connection breaks, and those
    bytes would then be fetched again by the resume.
    """
    raw = response.raw
    read = raw.read1 if hasattr(raw, "read1") else raw.read
    while chunk := read(NETWORK_CHUNK, decode_content=True):
        yield chunk


def _content_range(value: str) -> tuple[int | None, int | None, int | None]:
    """``bytes a-b/N`` -> (a, b, N) and ``bytes */N`` -> (None, None, N); unknown parts are None."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*", value or "")
    if not match:
        return None, None, None
    start, end, total = match.groups()
    return (
        int(start) if start else None,
        int(end) if end else None,
        int(total) if total and total != "*" else None,
    )


def _mismatch(spec: FileSpec, hashes: FileHashes) -> str:
    """How ``hashes`` differ from the spec's pins, as a message fragment; "" when they agree."""
    problems = []
    if spec.size >= 0 and hashes.size != spec.size:
        problems.append(f"size expected {spec.size} bytes, got {hashes.size}")
    if spec.sha256 and hashes.sha256 != spec.sha256:
        problems.append(f"sha256 expected {spec.sha256}, got {hashes.sha256}")
    if spec.git_blob_sha1 and hashes.git_blob_sha1 != spec.git_blob_sha1:
        problems.append(f"git blob sha1 expected {spec.git_blob_sha1}, got {hashes.git_blob_sha1}")
    return "; ".join(problems)


# ---- Kaggle ---------------------------------------------------------------------------------------

KAGGLE_BASE_URL = "https://www.kaggle.com"
KAGGLE_DATASET = "paultimothymooney/chest-xray-pneumonia"
KAGGLE_MAX_ARCHIVE_BYTES = 8 * 1024**3
"""Cap on a Kaggle archive whose size is not pinned (chest-xray-pneumonia's is about 2.5 GB)."""
_KAGGLE_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class KaggleCredentials:
    """A Kaggle username and API key; ``source`` says where they were found. The key is never shown."""

    username: str
    key: str = field(repr=False)
    source: str = ""


def kaggle_credentials(environ: Mapping[str, str] | None = None) -> KaggleCredentials | None:
    """Find Kaggle API credentials the way the Kaggle CLI does; None when there are none.

    ``KAGGLE_USERNAME`` / ``KAGGLE_KEY`` win over ``kaggle.json``, which is read from
    ``$KAGGLE_CONFIG_DIR`` when set, else from ``~/.kaggle``.

    Raises:
        errors.CredentialsError: only half of the credentials is set, or kaggle.json is malformed.
    """
    environ = os.environ if environ is None else environ
    username = environ.get("KAGGLE_USERNAME", "").strip()
    key = environ.get("KAGGLE_KEY", "").strip()
    if username and key:
        return _checked_credentials(username, key, "environment (KAGGLE_USERNAME, KAGGLE_KEY)")
    config_dir = environ.get("KAGGLE_CONFIG_DIR", "").strip()
    path = (Path(config_dir).expanduser() if config_dir else Path.home() / ".kaggle") / "kaggle.json"
    if path.is_file():
        _warn_if_readable_by_others(path)
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(content, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            # The exception text could quote the file (and so the key): name only its kind.
            raise errors.CredentialsError(
                f"{path} is not a readable kaggle.json ({type(exc).__name__}); expected "
                '{"username": "...", "key": "..."} as downloaded from kaggle.com (Settings > API > Create New '
                "Token). Fix or delete it. " + _kaggle_ways_out()
            ) from None
        username = username or str(content.get("username", "")).strip()
        key = key or str(content.get("key", "")).strip()
        if username and key:
            return _checked_credentials(username, key, str(path))
        where = f"{path} and the environment"
    else:
        where = "the environment"
    if username or key:
        absent = "KAGGLE_KEY (or kaggle.json's key)" if username else "KAGGLE_USERNAME (or kaggle.json's username)"
        raise errors.CredentialsError(
            f"incomplete Kaggle credentials in {where}: {absent} is missing. " + _kaggle_ways_out()
        )
    return None


def _checked_credentials(username: str, key: str, source: str) -> KaggleCredentials:
    """Credentials that HTTP basic auth can carry (ASCII; Kaggle names and keys always are)."""
    for name, value in (("username", username), ("key", key)):
        if not value.isascii() or not value.isprintable():
            # Never quote the value: it is (or sits next to) a secret.
            raise errors.CredentialsError(
                f"the Kaggle {name} from {source} holds non-ASCII or control characters, which HTTP authentication "
                "cannot carry; expected your Kaggle username and the 32-character hex API key from kaggle.json. "
                "Check for a pasted quote or stray character. " + _kaggle_ways_out()
            )
    return KaggleCredentials(username, key, source)


def _warn_if_readable_by_others(path: Path) -> None:
    """Warn, as the Kaggle client does, when kaggle.json can be read by other users."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if os.name == "posix" and mode & 0o077:
        log.warning("Your Kaggle API key in %s is readable by other users on this system (mode %s); to fix this, run "
                    "'chmod 600 %s'", path, oct(mode & 0o777), path)


def _kaggle_ways_out(dataset: str = KAGGLE_DATASET) -> str:
    return (
        "Either set KAGGLE_USERNAME and KAGGLE_KEY (or put kaggle.json in ~/.kaggle or in $KAGGLE_CONFIG_DIR; "
        "create it at kaggle.com under Settings > API), or download the archive by hand from "
        f"https://www.kaggle.com/datasets/{dataset} and pass --kaggle-archive PATH."
    )


def missing_kaggle_credentials(dataset: str = KAGGLE_DATASET) -> errors.CredentialsError:
    """The error to raise when the Kaggle archive is needed and no credentials were found."""
    return errors.CredentialsError(
        f"the Kaggle dataset {dataset} needs Kaggle API credentials, and none were found (no KAGGLE_USERNAME/"
        f"KAGGLE_KEY, no kaggle.json). {_kaggle_ways_out(dataset)}"
    )


def kaggle_download_url(dataset: str, version: int | None = None, *, base_url: str = KAGGLE_BASE_URL) -> str:
    """The public API URL of a dataset archive (``?datasetVersionNumber=N`` when a version is pinned)."""
    if not _KAGGLE_DATASET_NAME.match(dataset):
        raise ValueError(f"Kaggle dataset {dataset!r} is not 'owner/slug'")
    url = f"{base_url.rstrip('/')}/api/v1/datasets/download/{dataset}"
    return f"{url}?datasetVersionNumber={int(version)}" if version is not None else url


def kaggle_archive_spec(
    dataset: str, version: int | None = None, *, sha256: str = "", size: int = -1, base_url: str = KAGGLE_BASE_URL
) -> FileSpec:
    """The :class:`FileSpec` of a Kaggle archive; its cache key is ``kaggle/<owner>/<slug>/<v<N>|latest>/<slug>.zip``."""
    url = kaggle_download_url(dataset, version, base_url=base_url)
    owner, slug = dataset.split("/")
    tag = f"v{int(version)}" if version is not None else "latest"
    return FileSpec(url=url, cache_key=f"kaggle/{owner}/{slug}/{tag}/{slug}.zip", sha256=sha256, size=size,
                    max_size=KAGGLE_MAX_ARCHIVE_BYTES)


def fetch_kaggle_archive(
    dataset: str = KAGGLE_DATASET,
    *,
    version: int | None = None,
    cache_dir: Path | None = None,
    credentials: KaggleCredentials | None = None,
    sha256: str = "",
    size: int = -1,
    base_url: str = KAGGLE_BASE_URL,
    offline: bool = False,
    discard_cached: bool = False,
    **downloader_options,
) -> Path:
    """Download (or find in the cache) a Kaggle dataset archive; return its verified cached path.

    A verified archive already in the cache is returned without credentials. Otherwise
    ``credentials`` (default: :func:`kaggle_credentials`) are sent as HTTP basic auth to ``base_url``
    only; Kaggle's redirect to its signed storage URL gets none. ``base_url`` lets tests point at a
    loopback server. Other keyword arguments go to :class:`Downloader` (``retries``, ``timeout``,
    ``progress``, ``allowed_redirect_hosts``...). ``discard_cached``: remove the cached copy first (the
    caller found it unusable, e.g. not a zip) and download it again.

    Raises:
        errors.CredentialsError: no credentials found, or Kaggle rejected them (HTTP 401/403); the
            message explains how to set them or to pass ``--kaggle-archive``.
        errors.OfflineMissing: offline and not in the cache.
        errors.ChecksumMismatch / errors.DownloadError: as :meth:`Downloader.fetch`.
    """
    spec = kaggle_archive_spec(dataset, version, sha256=sha256, size=size, base_url=base_url)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    progress = downloader_options.pop("progress", True)
    if discard_cached and not offline:
        Downloader(cache_dir, offline=True, progress=False).discard(spec)
    try:
        return Downloader(cache_dir, offline=True, progress=False).fetch(spec)
    except errors.OfflineMissing as exc:
        if offline:
            raise errors.OfflineMissing(
                f"offline mode: the Kaggle archive {dataset} is not verified in the cache {cache_dir} "
                f"({spec.cache_key}). Run once without --offline, or pass --kaggle-archive PATH.",
                exc.missing,
            ) from None
    credentials = credentials if credentials is not None else kaggle_credentials()
    if credentials is None:
        raise missing_kaggle_credentials(dataset)
    downloader = Downloader(
        cache_dir,
        auth=(credentials.username, credentials.key),
        credentials_for=base_url,
        progress=progress,
        **downloader_options,
    )
    try:
        return downloader.fetch_all([spec], desc=f"kaggle {dataset}")[spec.cache_key]
    except _HTTPStatusError as exc:
        if exc.status not in (401, 403):
            raise
        raise errors.CredentialsError(
            f"Kaggle refused the credentials from {credentials.source or 'the caller'} for {dataset} "
            f"(HTTP {exc.status}); expected a valid username and API key. Create a new token at kaggle.com under "
            "Settings > API, or download the archive by hand from "
            f"https://www.kaggle.com/datasets/{dataset} and pass --kaggle-archive PATH."
        ) from None
