"""The body of one file: streamed into its ``.part``, resumed by byte range when the connection breaks.

:func:`transfer` is the state machine that turns one or more HTTP responses into a complete ``.part``
file; the cache (:mod:`.cache`) then verifies that file before moving it into place. It asks
:class:`~.transport.Transport` for every response, so the redirect, credential and retry rules of
that module apply to each resume too.

How a body is resumed
---------------------
* Before each request, the bytes already in ``.part`` are the offset. A ``.part`` longer than a
  pinned size is discarded; one exactly as long as a pinned size is returned for verification
  without asking the server.
* ``Range: bytes=<offset>-`` is sent for a non-zero offset. A ``206`` answer is accepted only when its
  ``Content-Range`` starts at that byte (else the ``.part`` is dropped and the file restarted); a
  ``200`` answer is the whole body, so the file restarts from its first byte (and the progress bar is
  wound back); a ``416`` whose ``Content-Range`` total equals the offset means the ``.part`` is
  already whole, any other ``416`` restarts the file.
* A connection that breaks in the middle of the body (a requests/urllib3 error) is a failure; so is a
  response that ended early without bringing a single byte. A body that ends early after bringing
  some bytes is simply resumed. After more than ``retries`` failures the transfer gives up; a pinned
  file keeps its ``.part`` (the next run resumes it), an unpinned one loses it (nothing would check
  the stitched result). Waits between failures grow as ``backoff * 2**(n-1)``, capped at 60 s.
* A body the server content-encoded anyway (``Content-Encoding`` other than ``identity``) is decoded,
  and cannot be resumed by offset: its ``.part`` is dropped on a failure.

Size caps
---------
A file with a pinned size is refused (:class:`~covid19_cxr_dataset.errors.ChecksumMismatch`) as soon
as the announced length differs or the body passes that size. A file without one is capped at
:func:`size_cap`: its ``FileSpec.max_size`` when set, else the downloader's ``max_unpinned_bytes``
(default :data:`DEFAULT_MAX_UNPINNED_BYTES`); a larger announced length is refused before
the body, a longer body as soon as it passes the cap. Either way the ``.part`` is deleted.

Every byte written goes through :func:`_write_chunk` and the ``.part`` is closed by :func:`_close_part`
(the seams tests use to simulate a full disk); a failure to open, write or close the ``.part`` (closing
writes its last buffered bytes) becomes the caller's ``write_error(exc)``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import requests
import urllib3

from .. import errors
from .transport import Transport, _Cancelled, _describe
from .urls import redact_url

if TYPE_CHECKING:  # pragma: no cover - annotations only
    import threading

    from .spec import FileSpec

log = logging.getLogger(__name__)

DEFAULT_MAX_UNPINNED_BYTES = 256 * 1024**2
"""Cap on a file whose size is not pinned (the largest pinned image of release 1.0.0 is 4.2 MB)."""
NETWORK_CHUNK = 1 << 16
"""Most bytes read from the socket at a time."""


def size_cap(spec: FileSpec, max_unpinned_bytes: int) -> int:
    """The most bytes accepted for ``spec``: its pinned size, else its ``max_size``, else ``max_unpinned_bytes``."""
    return spec.size if spec.size >= 0 else spec.max_size if spec.max_size >= 0 else max_unpinned_bytes


def _write_chunk(handle, data: bytes) -> None:
    # One seam for every byte written to a .part, so tests can simulate a full disk.
    handle.write(data)


@contextlib.contextmanager
def _open_part(handle, write_error: Callable[[OSError], errors.DownloadError]) -> Iterator[None]:
    """The open ``.part`` while the body is written; closing it writes its last buffered bytes, which can
    fail as a write does (a disk that fills just then): that is ``write_error`` too, never a raw OSError.
    When the body itself failed, that failure is the one raised."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            handle.close()
        raise
    try:
        _close_part(handle)
    except OSError as exc:
        raise write_error(exc) from None


def _close_part(handle) -> None:
    # The seam tests use to simulate a disk that fills while the .part is closed.
    handle.close()


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


def transfer(
    transport: Transport,
    spec: FileSpec,
    part: Path,
    cancel: threading.Event | None,
    on_bytes: Callable[[int], None] | None,
    write_error: Callable[[OSError], errors.DownloadError],
    max_unpinned_bytes: int,
) -> bool:
    """Stream ``spec.url`` into ``part`` until the body is complete (see the module docstring).

    ``on_bytes`` is told of every chunk written (and of a negative count when a restart drops
    bytes already counted); ``write_error`` turns a failure to open or write ``part`` into the
    error to raise; ``max_unpinned_bytes`` is the cap of :func:`size_cap` for a spec with neither
    ``size`` nor ``max_size``. A leftover ``part`` is resumed from its end.

    Returns True when the result is stitched together (a leftover ``.part`` or several responses),
    so that a failed verification is worth one more clean attempt.

    Raises:
        _Cancelled: ``cancel`` was set (``part`` is kept for a later resume).
        errors.ChecksumMismatch: the announced length or the body disagrees with a pinned size.
        errors.DownloadError: the size cap was passed, the disk refused the bytes, or the transfer
            broke more than ``transport.retries`` times; and whatever :meth:`.Transport.open` raises.
    """
    failures = 0
    responses = 0
    leftover = part.exists() and part.stat().st_size > 0
    ceiling = size_cap(spec, max_unpinned_bytes)
    while True:
        if cancel is not None and cancel.is_set():
            raise _Cancelled()
        offset = part.stat().st_size if part.exists() else 0
        if spec.size >= 0 and offset > spec.size:
            part.unlink()
            offset = 0
        if spec.size > 0 and offset == spec.size:
            return leftover or responses > 1  # A leftover .part that is already whole: verification decides.
        response = transport.open(spec.url, offset)
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
                _give_up_if(transport, failures, spec, part, "the server refused to resume (HTTP 416)")
                continue
            if response.status_code == 206:
                start, _, total = _content_range(response.headers.get("Content-Range", ""))
                if start != offset:
                    log.info("%s: Content-Range %r does not start at byte %d; restarting",
                             redact_url(spec.url), response.headers.get("Content-Range"), offset)
                    part.unlink(missing_ok=True)
                    failures += 1
                    _give_up_if(transport, failures, spec, part, "the server answered a wrong Content-Range")
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
                raise errors.ChecksumMismatch(transport.scrub(
                    f"{redact_url(spec.url)}: size expected {spec.size} bytes, the server announces {total}. "
                    "Nothing entered the cache; if upstream changed the file, the manifest's pin must be reviewed."
                ))
            if spec.size < 0 and total is not None and total > ceiling:
                part.unlink(missing_ok=True)
                raise _too_large(transport, spec, ceiling, f"the server announces {total} bytes")
            received = offset
            try:
                handle = open(part, "ab" if offset else "wb")
            except OSError as exc:
                raise write_error(exc) from None
            try:
                with _open_part(handle, write_error):
                    for chunk in _body_chunks(response):
                        if cancel is not None and cancel.is_set():
                            raise _Cancelled()
                        received += len(chunk)
                        if spec.size >= 0 and received > spec.size:
                            raise errors.ChecksumMismatch(transport.scrub(
                                f"{redact_url(spec.url)}: size expected {spec.size} bytes, the server sent "
                                "more. Nothing entered the cache."
                            ))
                        if spec.size < 0 and received > ceiling:
                            raise _too_large(transport, spec, ceiling, f"the body passed {ceiling} bytes")
                        try:
                            _write_chunk(handle, chunk)
                        except OSError as exc:
                            raise write_error(exc) from None
                        if on_bytes:
                            on_bytes(len(chunk))
            except errors.DownloadError:
                part.unlink(missing_ok=True)
                raise
            except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
                failures += 1
                if not resumable:
                    part.unlink(missing_ok=True)  # Encoded bytes cannot be resumed by byte offset.
                _give_up_if(transport, failures, spec, part, _describe(exc))
                log.warning("%s: transfer broke after %d bytes (%s); resuming (%d/%d)",
                            redact_url(spec.url), received, _describe(exc), failures, transport.retries)
                time.sleep(min(transport.backoff * 2 ** (failures - 1), 60.0))
                continue
            if total is not None and received < total:
                # A close-delimited body that ended early, or a server sending the range in pieces:
                # no exception, just fewer bytes. Only a response that brought nothing is a failure.
                if received == offset:
                    failures += 1
                    _give_up_if(transport, failures, spec, part, f"the body stopped at byte {received} of {total}")
                continue
            return leftover or responses > 1
        finally:
            response.close()

def _too_large(transport: Transport, spec: FileSpec, ceiling: int, what: str) -> errors.DownloadError:
    return errors.DownloadError(transport.scrub(
        f"{redact_url(spec.url)}: {what}, more than the {ceiling}-byte cap for a file whose size is "
        "not pinned. The transfer was stopped and nothing entered the cache; pin the file's size in the manifest "
        "(lock file) if it really is that large, or check the URL or mirror."
    ))

def _give_up_if(transport: Transport, failures: int, spec: FileSpec, part: Path, cause: str) -> None:
    if failures <= transport.retries:
        return
    kept = part.stat().st_size if part.exists() else 0
    if kept and not spec.pinned:
        part.unlink()
        kept = 0
    resume = f" The next run resumes at byte {kept}." if kept else ""
    raise errors.DownloadError(transport.scrub(
        f"{redact_url(spec.url)}: the transfer failed {failures} times; last cause: {cause}.{resume} "
        "Check the network (or the mirror) and run again."
    ))
