"""The cache: where a file lives, who may write it, and whether what it holds can be trusted.

Cache layout::

    <cache_dir>/<cache key>                  verified files only
    <cache_dir>/<cache key>.part             a download in progress (or one to resume)
    <cache_dir>/.verified/<cache key>.json   hashes recorded when the file was verified
    <cache_dir>/.locks/<hash of key>.lock    one lock per entry

A cache key is a plain relative POSIX path (:func:`check_cache_key`), e.g.
``github/<owner>/<repo>/<commit>/<path>``; it is the file's identity, whatever URL (mirror) it came
from. A path component longer than :data:`MAX_NAME_BYTES` is stored under a shortened name ending in
a hash of the full one (:func:`_stored_parts`), so that ``.part``/``.json`` suffixes never exceed the
file system's 255-byte limit.

The rules :class:`Cache` keeps
------------------------------
* Writers take a per-entry :mod:`filelock` lock (:meth:`Cache.lock`), so several processes may share
  one cache. A cache whose lock folder cannot be created or written is read-only: what it holds can
  still be used, because files only ever enter it by an atomic rename.
* A cached file is re-hashed and compared with the pins each time it is used
  (:meth:`Cache.is_valid`). Re-hashing costs about a second per GB and catches what a size/mtime
  check cannot (bit rot, an edit in place). A file without any hash pin is compared with the hashes
  recorded in its sidecar when it was first stored, which proves only that the bytes did not change
  in the cache: such a file is *stored*, never *verified* (:meth:`Cache.recorded` with
  ``verified_only`` returns None for it), and one without a sidecar is not trusted at all.
* A finished ``.part`` is hashed and compared with the pins by the downloader *before*
  :meth:`Cache.install` moves it into place with :func:`os.replace`, so the cache never holds an
  unverified file; the sidecar (``.verified/<cache key>.json``: redacted URL, size, sha256, git blob
  sha1, whether a pin checked them, when) is written right after. A damaged sidecar counts as none.
* A leftover ``.part`` is resumed only when a hash pin will check the result (:meth:`Cache.part_for`).
* :meth:`Cache.discard` removes an entry a caller found unusable (an unpinned "zip" that is an HTML
  page), so that the next fetch downloads it again.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import os
import re
import threading
import time
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Callable

import filelock

from .. import errors
from .hashes import HEX, FileHashes, hash_file, mismatch
from .transport import _Cancelled
from .urls import redact_url

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from .spec import FileSpec

log = logging.getLogger(__name__)

CACHE_ENV = "COVID19_CXR_CACHE"
"""Environment variable naming the cache dir when ``--cache-dir`` is not given."""

MAX_NAME_BYTES = 200
"""Longest path component stored as is; longer ones are shortened (see the module docstring)."""

_RESERVED_TOP_LEVEL = (".verified", ".locks")


def default_cache_dir() -> Path:
    """The cache dir used when ``--cache-dir`` is not given.

    ``$COVID19_CXR_CACHE`` when set (``~`` expanded), else ``~/.cache/covid19-cxr-dataset``.
    """
    configured = os.environ.get(CACHE_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "covid19-cxr-dataset"


def check_cache_key(key: str) -> None:
    """Raise :class:`ValueError` unless ``key`` is a plain relative POSIX path fit to be a cache key.

    Refused: an empty key, backslashes, NUL, absolute paths and drive letters, ``.``/``..``/empty
    components, a ``.part`` suffix (a download in progress) and the reserved top-level folders.
    """
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


class Cache:
    """One cache dir and the rules of the module docstring; safe to share between threads and processes.

    Args:
        root: the cache dir (created on the first write).
        offline: only words a log line ("ignored offline" rather than "fetching it again").
        scrub: applied to every error message (the downloader's credential scrubber).
    """

    def __init__(self, root: Path, *, offline: bool = False, scrub: Callable[[str], str] = lambda text: text):
        self.root = root
        self.offline = offline
        self._scrub = scrub

    def path_for(self, key: str) -> Path:
        """Where the entry ``key`` lives, whether or not it is there yet (:class:`ValueError` for a bad key)."""
        check_cache_key(key)
        return self.root.joinpath(*_stored_parts(key))

    # ---- locks -----------------------------------------------------------------------------------

    def lock(self, key: str, cancel: threading.Event | None) -> _Held:
        """Acquire the per-entry lock of ``key``; use the result as a context manager to release it.

        Waits as long as another process holds it, polling so that a set ``cancel`` is noticed.

        Raises:
            _Cancelled: ``cancel`` was set while waiting.
            errors.DownloadError: the lock folder cannot be created, or the lock file not written
                (a read-only cache).
        """
        lock_dir = self.root / ".locks"
        try:
            lock_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise errors.DownloadError(
                f"cannot create the cache dir {self.root}: {exc.strerror}. Pass --cache-dir (or set "
                f"{CACHE_ENV}) to a writable folder."
            ) from None
        name = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32] + ".lock"
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
                    f"the cache dir {self.root} is not writable ({exc.strerror or exc}), and {key} "
                    "is not complete in it. Pass --cache-dir (or set "
                    f"{CACHE_ENV}) to a writable folder, or use --offline with a cache that holds every file."
                ) from None

    # ---- sidecars --------------------------------------------------------------------------------

    def sidecar_path(self, key: str) -> Path:
        """``.verified/<stored key>.json``: where the hashes of ``key`` are recorded."""
        parts = _stored_parts(key)
        return self.root.joinpath(".verified", *parts[:-1], parts[-1] + ".json")

    def read_sidecar(self, key: str) -> dict | None:
        """The sidecar record of ``key``, or None when it is missing or damaged."""
        try:
            record = json.loads(self.sidecar_path(key).read_text(encoding="utf-8"))
            # A damaged sidecar is as good as none: the file is then re-verified or fetched again.
            if (
                isinstance(record.get("size"), int)
                and all(isinstance(record.get(k), str) and HEX.match(record[k]) for k in ("sha256", "git_blob_sha1"))
                and len(record["sha256"]) == 64
            ):
                return record
        except (OSError, ValueError, AttributeError):
            pass
        return None

    def write_sidecar(self, spec: FileSpec, hashes: FileHashes) -> None:
        """Record ``hashes`` for ``spec`` (atomically: a temporary file renamed into place)."""
        path = self.sidecar_path(spec.cache_key)
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

    def recorded(self, key: str, *, verified_only: bool) -> FileHashes | None:
        """The hashes recorded for ``key``; with ``verified_only``, None unless a pin verified them."""
        record = self.read_sidecar(key)
        if record is None or (verified_only and not record.get("pinned", True)):
            return None
        return FileHashes(record["size"], record["sha256"], record["git_blob_sha1"])

    # ---- entries ---------------------------------------------------------------------------------

    def is_valid(self, spec: FileSpec, target: Path) -> bool:
        """True when ``target`` holds bytes that ``spec``'s pins (or, unpinned, its sidecar) vouch for.

        A file that fails is logged and left in place (the download overwrites it); a valid one whose
        sidecar is missing or stale gets a fresh sidecar when the cache is writable.
        """
        if not target.is_file():
            return False
        hashes = hash_file(target)
        sidecar = self.read_sidecar(spec.cache_key)
        if spec.pinned:
            problem = mismatch(spec, hashes)
        elif sidecar is None:
            # Unpinned and never recorded (e.g. a crash between rename and sidecar): origin unknown.
            problem = "no record of it ever being verified"
        else:
            problem = mismatch(dataclasses.replace(spec, sha256=sidecar["sha256"], git_blob_sha1=""), hashes)
        if problem:
            log.warning("cached %s fails verification (%s); %s", target, problem,
                        "ignored offline" if self.offline else "fetching it again")
            return False
        if sidecar is None or sidecar["sha256"] != hashes.sha256 or sidecar.get("pinned", True) != spec.pinned:
            try:
                self.write_sidecar(spec, hashes)
            except OSError:
                pass  # Pins still verify the file; an unpinned one is merely fetched again next time.
        return True

    def part_for(self, spec: FileSpec, target: Path) -> Path:
        """The ``.part`` beside ``target``, its folder created; a leftover one is kept only if ``spec`` is pinned.

        Raises:
            errors.DownloadError: the folder cannot be created.
        """
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
        return part

    def install(self, spec: FileSpec, part: Path, target: Path, hashes: FileHashes) -> None:
        """Move the verified ``part`` into place as ``target`` and record ``hashes`` in its sidecar.

        Raises:
            errors.DownloadError: the rename or the sidecar failed; ``part`` and ``target`` are then
                both removed, so the cache holds no entry without its record.
        """
        try:
            os.replace(part, target)
            self.write_sidecar(spec, hashes)
        except OSError as exc:
            part.unlink(missing_ok=True)
            target.unlink(missing_ok=True)
            raise self.write_error(spec, exc) from None

    def discard(self, spec: FileSpec) -> None:
        """Remove ``spec``'s entry and its sidecar, under the entry's lock."""
        with self.lock(spec.cache_key, None):
            self.path_for(spec.cache_key).unlink(missing_ok=True)
            self.sidecar_path(spec.cache_key).unlink(missing_ok=True)

    def write_error(self, spec: FileSpec, exc: OSError) -> errors.DownloadError:
        """The error for a failure to write ``spec``'s bytes into the cache (a full disk says so)."""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return errors.DownloadError(self._scrub(
                f"the disk is full: writing {spec.cache_key} (from {redact_url(spec.url)}) into the cache dir "
                f"{self.root} failed ({os.strerror(exc.errno)}). The partial file was removed and the cache "
                f"is unchanged; free some space or pass --cache-dir (or set {CACHE_ENV}) to a larger disk."
            ))
        return errors.DownloadError(self._scrub(
            f"could not write {spec.cache_key} into the cache dir {self.root}: {exc.strerror or exc}. The "
            f"partial file was removed; check that the folder is writable or pass --cache-dir."
        ))
