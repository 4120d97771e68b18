"""Kaggle: a dataset archive through Kaggle's public API, with credentials found the way the Kaggle CLI does.

:func:`fetch_kaggle_archive` returns the verified cached path of a dataset archive (by default
:data:`KAGGLE_DATASET`, the pneumonia chest X-rays), downloading it only when the cache has no copy
that passes its pins. Its :class:`~.core.FileSpec` comes from :func:`kaggle_archive_spec`: the URL
``<base>/api/v1/datasets/download/<owner>/<slug>[?datasetVersionNumber=N]`` and the cache key
``kaggle/<owner>/<slug>/<v<N>|latest>/<slug>.zip``, capped at :data:`KAGGLE_MAX_ARCHIVE_BYTES` when
its size is not pinned.

Credentials (:func:`kaggle_credentials`): ``KAGGLE_USERNAME``/``KAGGLE_KEY`` win over ``kaggle.json``
(read from ``$KAGGLE_CONFIG_DIR``, else ``~/.kaggle``); half a pair, a malformed file or a value HTTP
basic auth cannot carry is a :class:`~covid19_cxr_dataset.errors.CredentialsError` that never quotes
the key; a ``kaggle.json`` readable by other users is warned about. They are sent as basic auth to
the Kaggle API origin only: the downloader's credential rule (:mod:`.transport`) keeps them off
Kaggle's redirect to its signed storage URL, whose signature :func:`~.urls.redact_url` masks in
messages. A cached archive needs no credentials, even offline.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from .. import errors
from .cache import default_cache_dir
from .core import Downloader
from .spec import FileSpec
from .transport import _HTTPStatusError

log = logging.getLogger(__name__)

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
