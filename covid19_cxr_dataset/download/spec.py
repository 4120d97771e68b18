"""What to fetch: a :class:`FileSpec` names one file by URL, cache key and the pins it must match.

A spec is checked when it is made, so a typo in a manifest fails before anything is downloaded: the
URL must be absolute ``http``/``https``, the cache key a plain relative path
(:func:`~.cache.check_cache_key`), the hash pins hex digits of the right length (normalized to lower
case), the sizes ``-1`` or a byte count. Specs are frozen and compare by value, so a cache key listed
twice can be checked to name the same file.

What counts as *pinned*: a sha256 or a git blob sha1. A size alone only bounds the transfer; a file
without a hash pin is merely *stored* in the cache, never *verified* (see :mod:`.cache`).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from .cache import check_cache_key
from .hashes import HEX
from .urls import redact_url


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
        check_cache_key(self.cache_key)
        for name, length in (("sha256", 64), ("git_blob_sha1", 40)):
            value = getattr(self, name).strip().lower()
            if value and (len(value) != length or not HEX.match(value)):
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
