"""Content hashes: what a file hashes to, and whether that agrees with the pins of its spec.

A file is identified by three numbers, all computed in one streaming pass by :func:`hash_file` so
that a multi-gigabyte archive is read once and never loaded whole:

* its size in bytes;
* its sha256 (hex), the pin used for release artefacts and Kaggle archives;
* its git blob sha1 (hex): ``sha1(b"blob <size>\\0" + data)``, what ``git hash-object`` prints and
  what GitHub's tree API lists, so a file of a pinned commit can be checked without trusting the host.

:func:`mismatch` compares such hashes with a spec's pins and says, as a message fragment, how they
differ; the downloader calls it on a cached file (before reusing it) and on a finished ``.part``
(before moving it into place). :func:`file_sha256` is the package's one plain "sha256 of a file"
helper.

Nothing here touches the network or the cache layout.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from .spec import FileSpec

HASH_CHUNK = 1 << 20
"""Bytes read at a time when hashing a file (1 MiB)."""

HEX = re.compile(r"^[0-9a-f]+$")
"""Lower-case hex digits only: what a normalized pin and a recorded hash look like."""


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
    """Size, sha256 and git blob sha1 of ``path`` in one streaming pass (the file is never loaded whole).

    Raises:
        OSError: the file cannot be read, or its size changed while it was being hashed (the blob
            header is built from the size before the bytes are read, so a growing file would give a
            wrong blob id).
    """
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


def file_sha256(path: Path, on_bytes: Callable[[int], Any] | None = None) -> str:
    """The sha256 (lower-case hex) of the bytes of ``path``, read in 1 MiB chunks.

    Exactly ``hashlib.sha256(Path(path).read_bytes()).hexdigest()``, without loading the file whole.
    Use :func:`hash_file` instead when the size or git blob id is needed too (one pass for all three).
    ``on_bytes(n)`` is called after each chunk (a progress bar's ``update``).
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(HASH_CHUNK):
            digest.update(block)
            if on_bytes is not None:
                on_bytes(len(block))
    return digest.hexdigest()


def mismatch(spec: FileSpec, hashes: FileHashes) -> str:
    """How ``hashes`` differ from the spec's pins, as a message fragment; "" when they agree.

    ``spec`` is read for ``size`` (``-1``: not pinned), ``sha256`` and ``git_blob_sha1`` (``""``: not
    pinned); each pin that is set and differs adds one ``"<what> expected X, got Y"`` part, joined by
    ``"; "``. A spec without any pin therefore always agrees.
    """
    problems = []
    if spec.size >= 0 and hashes.size != spec.size:
        problems.append(f"size expected {spec.size} bytes, got {hashes.size}")
    if spec.sha256 and hashes.sha256 != spec.sha256:
        problems.append(f"sha256 expected {spec.sha256}, got {hashes.sha256}")
    if spec.git_blob_sha1 and hashes.git_blob_sha1 != spec.git_blob_sha1:
        problems.append(f"git blob sha1 expected {spec.git_blob_sha1}, got {hashes.git_blob_sha1}")
    return "; ".join(problems)
