"""Verified, cached, resumable, concurrent downloads: the only part of the package that opens a socket.

The contract is pooch's: a file is named by a :class:`FileSpec` (URL, cache key and the pins it must
match); :meth:`Downloader.fetch` returns the path of a *verified* copy in the cache, downloading it only
when the cache has no verified copy. :meth:`Downloader.fetch_all` does the same for many files on a
thread pool behind one progress bar.

Modules (each one job; the details live in their docstrings):

* :mod:`.spec`: :class:`FileSpec`, what to fetch (checked when made).
* :mod:`.core`: :class:`Downloader`, the orchestration (``fetch``, ``fetch_all``, ``check_reachable``:
  HEAD, or a ranged GET where a server refuses HEAD, all files within one deadline, ``CHECK_DEADLINE``).
* :mod:`.cache`: cache layout, per-entry locks, sidecars, checking a cached file, moving a verified
  ``.part`` into place (:func:`default_cache_dir`, :data:`CACHE_ENV`, :data:`MAX_NAME_BYTES`).
* :mod:`.transport`: the requests session, retries, redirect and credential rules; the only module
  that opens a socket.
* :mod:`.resume`: the Range/resume state machine that streams a body into its ``.part``, and the size caps.
* :mod:`.hashes`: :class:`FileHashes`, :func:`hash_file`, :func:`git_blob_sha1`, :func:`file_sha256`
  and the comparison with a spec's pins.
* :mod:`.urls`: :func:`check_base_url`, :func:`redact_url` and origin comparison (no network).
* :mod:`.kaggle`: :func:`fetch_kaggle_archive` through Kaggle's public API, with the credentials found
  by :func:`kaggle_credentials`.

How a file travels
------------------
1. Under a per-entry :mod:`filelock` lock (so that several processes may share one cache), the cached
   file, if any, is re-hashed and compared with the pins. Re-hashing costs about a second per GB and
   catches what a size/mtime check cannot (bit rot, an edit in place); a file without any hash pin is
   compared with the hashes recorded in its sidecar when it was first stored (which proves only that
   the bytes did not change in the cache: such a file is *stored*, never *verified*, and
   :meth:`Downloader.verified_hashes` returns None for it). (:mod:`.cache`)
2. Otherwise the body is streamed into ``<entry>.part`` beside the entry. A connection that breaks in
   the middle of the body is resumed with ``Range: bytes=<received>-``; a ``206`` answer is accepted
   only when its ``Content-Range`` starts at that byte, and a server answering ``200`` instead restarts
   the file from its first byte. Connection failures and ``429/500/502/503/504`` answers before the
   body starts are retried by urllib3 with exponential backoff, honouring ``Retry-After``. A file
   without a pinned size is capped at ``FileSpec.max_size`` (default ``DEFAULT_MAX_UNPINNED_BYTES``):
   a larger announced length is refused before the body, a longer body as soon as it passes the cap.
   (:mod:`.resume`, :mod:`.transport`)
3. The finished ``.part`` is hashed (size, sha256 and git blob sha1 in one streaming pass) and compared
   with the pins *before* :func:`os.replace` moves it into place, so the cache never holds an unverified
   file. A mismatch deletes the ``.part`` and raises :class:`~covid19_cxr_dataset.errors.ChecksumMismatch`.
   (:mod:`.core`, :mod:`.hashes`, :mod:`.cache`)
4. A small JSON sidecar (``<cache>/.verified/<cache key>.json``) records the hashes and whether a
   pin checked them; read it back with :meth:`Downloader.verified_hashes` (pinned files only) or
   :meth:`Downloader.stored_hashes` (any stored file; the record table's ``sha256`` column). A caller
   that finds a cached file unusable (an unpinned "zip" that is an HTML page) calls
   :meth:`Downloader.discard` and fetches it again. (:mod:`.cache`)

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
proxy and CA-bundle settings from the environment still apply. (:mod:`.transport`, :mod:`.urls`)

Kaggle: :func:`fetch_kaggle_archive` downloads a dataset archive through Kaggle's public API with the
credentials found by :func:`kaggle_credentials`. (:mod:`.kaggle`)

Logging: every module logs under its own name below ``covid19_cxr_dataset.download``; set the level
of that logger to quieten or open up all of them.
"""

from __future__ import annotations

from .cache import CACHE_ENV, MAX_NAME_BYTES, default_cache_dir
from .core import CHECK_DEADLINE, Downloader
from .hashes import HASH_CHUNK, FileHashes, file_sha256, git_blob_sha1, hash_file
from .kaggle import (
    KAGGLE_BASE_URL,
    KAGGLE_DATASET,
    KAGGLE_MAX_ARCHIVE_BYTES,
    KaggleCredentials,
    fetch_kaggle_archive,
    kaggle_archive_spec,
    kaggle_credentials,
    kaggle_download_url,
    missing_kaggle_credentials,
)
from .resume import DEFAULT_MAX_UNPINNED_BYTES, NETWORK_CHUNK
from .transport import MAX_REDIRECTS, RETRY_STATUSES, USER_AGENT
from .spec import FileSpec
from .urls import check_base_url, redact_url

__all__ = [
    "CACHE_ENV",
    "CHECK_DEADLINE",
    "DEFAULT_MAX_UNPINNED_BYTES",
    "Downloader",
    "FileHashes",
    "FileSpec",
    "HASH_CHUNK",
    "KAGGLE_BASE_URL",
    "KAGGLE_DATASET",
    "KAGGLE_MAX_ARCHIVE_BYTES",
    "KaggleCredentials",
    "MAX_NAME_BYTES",
    "MAX_REDIRECTS",
    "NETWORK_CHUNK",
    "RETRY_STATUSES",
    "USER_AGENT",
    "check_base_url",
    "default_cache_dir",
    "fetch_kaggle_archive",
    "file_sha256",
    "git_blob_sha1",
    "hash_file",
    "kaggle_archive_spec",
    "kaggle_credentials",
    "kaggle_download_url",
    "missing_kaggle_credentials",
    "redact_url",
]
