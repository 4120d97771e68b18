"""The fetching itself: :class:`Downloader`, orchestration only.

:meth:`Downloader.fetch` returns the path of a *verified* copy of a :class:`~.spec.FileSpec` in the
cache, downloading it only when the cache has no verified copy; :meth:`Downloader.fetch_all` does the
same for many files on a thread pool behind one progress bar, and :meth:`Downloader.check_reachable`
asks the server about them without downloading. The work itself is delegated:

* :class:`~.cache.Cache`: the entry's path, its lock, checking a cached copy, the ``.part`` to write,
  moving a verified ``.part`` into place with its sidecar;
* :class:`~.transport.Transport` and :func:`~.resume.transfer`: the requests, with their retry,
  redirect and credential rules, and the resumable body;
* :func:`~.hashes.hash_file` / :func:`~.hashes.mismatch`: checking the finished ``.part``.

One file, step by step (:meth:`Downloader._fetch`): under the entry's lock, a cached copy that passes
:meth:`~.cache.Cache.is_valid` is returned as it is; otherwise the body is streamed into the
``.part``, hashed and compared with the pins, and only then moved into place. A mismatch deletes the
``.part`` and raises :class:`~covid19_cxr_dataset.errors.ChecksumMismatch`, except that a file
stitched from several responses (which may mix two upstream versions) is first downloaded once more
from its first byte. Offline, no lock is taken and no socket opened: the cache is only read.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping

from tqdm import tqdm

from .. import errors
from .cache import Cache
from .hashes import FileHashes, hash_file, mismatch
from .resume import DEFAULT_MAX_UNPINNED_BYTES, transfer
from .spec import FileSpec
from .transport import DeadlineExceeded, Transport, _HTTPStatusError, file_level
from .urls import redact_url

log = logging.getLogger(__name__)

CHECK_DEADLINE = 120.0
"""Seconds ``Downloader.check_reachable`` (``plan --check-files``) may take for all its files together."""


class Downloader:
    """Fetches :class:`FileSpec` files into a verified cache.

    Args:
        cache_dir: the cache root (created when missing); see :func:`~.cache.default_cache_dir`.
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
        self._transport = Transport(
            offline=offline, workers=workers, retries=retries, backoff=backoff, timeout=timeout,
            allowed_redirect_hosts=allowed_redirect_hosts, auth=auth, headers=headers, credentials_for=credentials_for,
        )
        self._cache = Cache(self.cache_dir, offline=offline, scrub=self._transport.scrub)

    def __repr__(self) -> str:
        origin = self._transport.credentials_origin
        credentials = f", credentials_for={'://'.join(origin[:2])!r}" if origin else ""
        return (
            f"Downloader(cache_dir={str(self.cache_dir)!r}, offline={self.offline}, workers={self.workers}, "
            f"retries={self.retries}, timeout={self.timeout}{credentials})"
        )

    # ---- the cache -------------------------------------------------------------------------------

    def path_for(self, spec: FileSpec | str) -> Path:
        """Where ``spec`` (or a cache key) lives in the cache, whether or not it is there yet."""
        return self._cache.path_for(spec.cache_key if isinstance(spec, FileSpec) else spec)

    def verified_hashes(self, spec: FileSpec | str) -> FileHashes | None:
        """The hashes recorded when a pin verified the cached file (None if none ever did)."""
        return self._cache.recorded(spec.cache_key if isinstance(spec, FileSpec) else spec, verified_only=True)

    def stored_hashes(self, spec: FileSpec | str) -> FileHashes | None:
        """The hashes recorded when the cached file was stored, pinned or not (None if unknown)."""
        return self._cache.recorded(spec.cache_key if isinstance(spec, FileSpec) else spec, verified_only=False)

    def discard(self, spec: FileSpec) -> None:
        """Remove ``spec``'s cached file and its record (a caller found it unusable); the next fetch
        downloads it again."""
        self._cache.discard(spec)

    # ---- fetching --------------------------------------------------------------------------------

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
            return _fetch_offline(self._fetch, list(unique.values()), self.workers, self.cache_dir)

        results, absent = _fetch_concurrently(
            self._fetch, unique, desc=desc, workers=self.workers, progress=self.progress, keep_going=keep_going
        )
        if absent:
            absent.sort(key=lambda entry: entry["cache_key"])
            raise _missing_error(absent, len(unique), self.cache_dir, self._transport.scrub)
        return {spec.cache_key: results[spec.cache_key] for spec in specs}

    def check_reachable(self, specs: list[FileSpec], desc: str = "checking files", *,
                        deadline: float = CHECK_DEADLINE) -> dict[str, dict]:
        """HEAD every spec's URL (same session, retries, redirect rules and credentials as a download);
        download nothing. Returns ``{cache_key: {"url", "status", "size", "reachable", "detail"}}``:
        ``status`` is the final HTTP status, ``size`` the announced Content-Length (or None), and
        ``reachable`` is True for a 200 whose announced size (when both are known) matches the pin. A
        server that refuses HEAD (405/501) is asked for each file's first byte instead
        (``Transport.head``).

        ``deadline``: seconds for all the files together; no request, retry or wait goes past it, and
        the answer comes when it passes whatever the server does (the threads still waiting are left
        to end on their own; they cannot keep the process alive).

        Raises:
            errors.DownloadError: offline, the deadline passed before every file was answered (saying
                how many were), or the server does not answer at all (no point asking it about the
                other files); 5xx/429 answers after the retries likewise.
        """
        if self.offline:
            raise errors.DownloadError(
                "--offline: checking which files the server holds needs the network; run without --offline"
            )
        unique = {spec.cache_key: spec for spec in specs}
        if not unique:
            return {}
        answers = _head_all(self._transport, unique, min(self.workers, len(unique)), deadline, desc, self.progress)
        return {spec.cache_key: answers[spec.cache_key] for spec in specs}

    # ---- one file --------------------------------------------------------------------------------

    def _fetch(self, spec: FileSpec, cancel: threading.Event | None, on_bytes: Callable[[int], None] | None) -> Path:
        target = self.path_for(spec)
        if self.offline:
            # No lock offline: a cache on a read-only disk must still work, and verification only
            # reads (a concurrent writer swaps files in with an atomic rename).
            if target.is_file() and self._cache.is_valid(spec, target):
                return target
            raise _offline_error([spec.cache_key], self.cache_dir)
        try:
            held = self._cache.lock(spec.cache_key, cancel)
        except errors.DownloadError:
            # A read-only cache: what it holds can still be used (files are swapped in atomically).
            if target.is_file() and self._cache.is_valid(spec, target):
                return target
            raise
        with held:
            if self._cache.is_valid(spec, target):
                if on_bytes:
                    on_bytes(target.stat().st_size)
                return target
            _stream_download(spec, target, cancel, on_bytes, self._cache, self._transport, self.max_unpinned_bytes)
        return target


# ---- the steps of fetch_all, fetch and check_reachable -----------------------------------------------


def _head_all(transport: Transport, unique: dict[str, FileSpec], workers: int, seconds: float, desc: str,
              progress: bool) -> dict[str, dict]:
    """``Transport.head`` of every spec on ``workers`` daemon threads, all within ``seconds``: at the
    deadline the answer is an error naming how many files were answered, even while a thread still
    waits on a silent server (a daemon thread cannot hold the process)."""
    deadline = time.monotonic() + seconds
    pending: queue.SimpleQueue = queue.SimpleQueue()
    for item in unique.items():
        pending.put(item)
    done: queue.SimpleQueue = queue.SimpleQueue()
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            try:
                key, spec = pending.get_nowait()
            except queue.Empty:
                return
            try:
                done.put((key, transport.head(spec, deadline=deadline), None))
            except BaseException as exc:  # handed to the caller's thread, which raises it
                done.put((key, None, exc))

    for _ in range(workers):
        threading.Thread(target=work, name="check-files", daemon=True).start()
    answers: dict[str, dict] = {}
    with tqdm(total=len(unique), desc=desc, unit="file", disable=not progress) as bar:
        try:
            while len(answers) < len(unique):
                try:
                    key, answer, failure = done.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    failure = DeadlineExceeded("")
                if isinstance(failure, DeadlineExceeded):
                    origin = redact_url(next(iter(unique.values())).url).split("/", 3)[:3]
                    raise errors.DownloadError(transport.scrub(
                        f"{'/'.join(origin)}: answered {len(answers):,} of {len(unique):,} file checks within the deadline of "
                        f"{seconds:g} s (HEAD requests, retries included); the others are not reported missing, since no "
                        "answer says nothing about a file. Check the network or the mirror and run again, or give it "
                        "longer (plan --check-deadline SECONDS)"
                    )) from None
                if failure is not None:
                    raise failure
                answers[key] = answer
                bar.update()
        finally:
            stop.set()
    return answers


def _fetch_concurrently(
    fetch_one: Callable[[FileSpec, threading.Event, Callable[[int], None]], Path],
    unique: dict[str, FileSpec],
    *,
    desc: str,
    workers: int,
    progress: bool,
    keep_going: bool,
) -> tuple[dict[str, Path], list[dict]]:
    """Run ``fetch_one(spec, cancel, on_bytes)`` for every spec on ``workers`` threads behind one progress bar.

    Returns ``({cache_key: path}, absent)``: ``absent`` lists, as :func:`_absent_entry` records, the
    files that ``keep_going`` let fail (a file-level failure, see :func:`~.transport.file_level`).
    Any other failure, and Ctrl-C, is raised at once: the ``cancel`` event then tells running workers to
    stop at their next chunk (a ``.part`` is kept for a later resume), work not yet started is dropped,
    and the workers are waited for at most ``STOP_WAIT_SECONDS``. They are daemon threads: one blocked on
    a silent server does not hold the program open after the error (Python joins every
    ``ThreadPoolExecutor`` thread at exit, for as long as a read timeout and its retries take).
    The bar counts bytes, with a total only when every size is pinned.
    """
    sizes = [s.size for s in unique.values()]
    total = sum(sizes) if all(size >= 0 for size in sizes) else None
    bar_lock = threading.Lock()
    cancel = threading.Event()
    todo: queue.SimpleQueue[str] = queue.SimpleQueue()
    done: queue.SimpleQueue[tuple[str, Path | None, BaseException | None]] = queue.SimpleQueue()
    for key in unique:
        todo.put(key)
    with tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress) as bar:

        def advance(count: int) -> None:
            with bar_lock:
                bar.update(count)

        def work() -> None:
            while not cancel.is_set():
                try:
                    key = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    done.put((key, fetch_one(unique[key], cancel, advance), None))
                except BaseException as exc:  # handed to the main thread, which decides
                    done.put((key, None, exc))

        threads = [threading.Thread(target=work, name=f"download-{n}", daemon=True) for n in range(min(workers, len(unique)))]
        results: dict[str, Path] = {}
        absent: list[dict] = []
        try:
            for thread in threads:
                thread.start()
            for _ in range(len(unique)):
                key, path, exc = done.get()
                if exc is None:
                    results[key] = path
                elif keep_going and isinstance(exc, (_HTTPStatusError, errors.ChecksumMismatch)) and file_level(exc):
                    absent.append(_absent_entry(unique[key], exc))
                else:
                    raise exc
        finally:
            # Reached with an error (or Ctrl-C) in flight: stop the rest, wait a little for running workers.
            cancel.set()
            deadline = time.monotonic() + STOP_WAIT_SECONDS
            for thread in threads:
                if thread.ident is not None:  # a Ctrl-C may arrive while the threads are being started
                    thread.join(max(0.0, deadline - time.monotonic()))
    return results, absent


STOP_WAIT_SECONDS = 5.0
"""How long a failed or interrupted ``fetch_all`` waits for transfers to stop at their next chunk."""


def _fetch_offline(
    fetch_one: Callable[[FileSpec, None, None], Path], specs: list[FileSpec], workers: int, cache_dir: Path
) -> dict[str, Path]:
    """Offline ``fetch_all``: check every spec in the cache, then raise one error listing all the missing keys."""

    def check(spec: FileSpec) -> Path | None:
        try:
            return fetch_one(spec, None, None)
        except errors.OfflineMissing:
            return None

    # Threads, because re-hashing thousands of cached files is the whole cost (hashlib drops the GIL).
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(workers, len(specs))) as pool:
        paths = list(pool.map(check, specs))
    found = {spec.cache_key: path for spec, path in zip(specs, paths) if path is not None}
    missing = [spec.cache_key for spec, path in zip(specs, paths) if path is None]
    if missing:
        raise _offline_error(missing, cache_dir)
    return found


def _stream_download(
    spec: FileSpec,
    target: Path,
    cancel: threading.Event | None,
    on_bytes: Callable[[int], None] | None,
    cache: Cache,
    transport: Transport,
    max_unpinned_bytes: int,
) -> None:
    """Download ``spec`` into the cache as ``target``; the caller holds the entry's lock (pooch: stream_download).

    The body goes into ``target``'s ``.part`` (:func:`~.resume.transfer`), which is hashed and
    compared with the pins; only a match is moved into place (:meth:`~.cache.Cache.install`). A
    mismatch deletes the ``.part``; when the body was stitched from several responses (or a leftover
    ``.part``), the file is downloaded once more from its first byte before giving up.

    Raises:
        errors.ChecksumMismatch: the bytes differ from the pins; nothing entered the cache.
        errors.DownloadError: as :func:`~.resume.transfer` and :meth:`~.cache.Cache.install`.
    """
    part = cache.part_for(spec, target)
    retried_clean = False
    while True:
        resumed = transfer(
            transport, spec, part, cancel, on_bytes,
            lambda exc: cache.write_error(spec, exc), max_unpinned_bytes,
        )
        hashes = hash_file(part)
        problem = mismatch(spec, hashes)
        if not problem:
            break
        part.unlink(missing_ok=True)
        if resumed and not retried_clean:
            # A file stitched from several responses may mix two upstream versions; try once whole.
            log.warning("%s: %s after a resumed transfer; downloading it once more from the start",
                        redact_url(spec.url), problem)
            retried_clean = True
            continue
        raise errors.ChecksumMismatch(transport.scrub(
            f"{redact_url(spec.url)}: {problem}. The download was discarded and nothing entered the cache "
            f"({cache.root}). If upstream changed the file, the manifest's pin must be reviewed; "
            "otherwise retry later or use a mirror."
        ))
    cache.install(spec, part, target, hashes)
    log.info("verified %s (%d bytes, sha256 %s)", spec.cache_key, hashes.size, hashes.sha256)


# ---- messages -------------------------------------------------------------------------------------


def _absent_entry(spec: FileSpec, exc: errors.DownloadError) -> dict:
    """The :class:`~covid19_cxr_dataset.errors.MissingUpstreamFiles` record of a file left out by ``keep_going``."""
    status = str(exc.status) if isinstance(exc, _HTTPStatusError) else "checksum"
    return {"cache_key": spec.cache_key, "url": redact_url(spec.url), "status": status, "detail": str(exc)}


def _status_words(status: str) -> str:
    return "bytes differ from the pin" if status == "checksum" else f"HTTP {status}"


def _missing_error(
    absent: list[dict], total: int, cache_dir: Path, scrub: Callable[[str], str]
) -> errors.MissingUpstreamFiles:
    """One error listing every file ``keep_going`` left out (the first 20 shown), counted by status."""
    statuses: dict[str, int] = {}
    for entry in absent:
        statuses[entry["status"]] = statuses.get(entry["status"], 0) + 1
    shown = "\n  ".join(f"{e['status']:>8}  {e['url']}" for e in absent[:20])
    more = f"\n  ... and {len(absent) - 20} more" if len(absent) > 20 else ""
    return errors.MissingUpstreamFiles(scrub(
        f"{len(absent)} of {total} file(s) could not be downloaded ("
        + ", ".join(f"{_status_words(status)}: {n}" for status, n in sorted(statuses.items()))
        + f"); every other file is verified in the cache {cache_dir}:\n  {shown}{more}"
    ), absent)


def _offline_error(missing: list[str], cache_dir: Path) -> errors.OfflineMissing:
    """One error listing every key an offline run did not find verified in the cache (the first 20 shown)."""
    shown = "\n  ".join(missing[:20]) + (f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else "")
    return errors.OfflineMissing(
        f"offline mode: {len(missing)} file(s) are not verified in the cache {cache_dir}:\n  {shown}\n"
        "Run once without --offline to download them (or point --cache-dir / COVID19_CXR_CACHE at a "
        "cache that holds them).",
        missing,
    )
