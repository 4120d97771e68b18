"""The input stream itself, checked before a pixel is decoded (policy steps 1b and 3b): a JPEG's scan count,
the damage libjpeg-turbo reports in it, the one repair that restores a complete picture (a missing end
marker), and a PNG's missing end chunk.

Decoders are lenient: Pillow's libjpeg fills what it cannot read with gray or repeated blocks and says
nothing, so a JPEG whose entropy-coded data are garbage, all zeros, or far shorter than its header's
size decodes "fine" to a picture that is not the film. Every 8- and 12-bit DCT JPEG that does not take
the lossless path (whose transform reads every coefficient and refuses any warning) is therefore read
once more, coefficients only, and any warning of libjpeg-turbo refuses it (``image-corrupt``, the warning
in the detail). One exception: a Huffman-coded stream whose only fault is the missing 2-byte end marker
(EOI), whose scans give every coefficient its final value and which reads cleanly once the marker is
appended, holds the whole picture: it is converted from the repaired stream (which decodes to exactly the
pixels of the complete file), and the repair is recorded (``ConvertedImage.repair``). A PNG whose end
chunk (IEND) is missing but whose image data decode completely is accepted likewise, with the same note.

The scan count is capped at ``MAX_JPEG_SCANS`` before anything else: each scan of a progressive JPEG
is one more pass over the whole image, so tens of thousands of tiny scans cost minutes of CPU for one
image (``image-too-many-scans``).
"""

from __future__ import annotations

import struct

from ..errors import ConversionError
from . import lossless_jpeg
from .settings import MAX_JPEG_SCANS, ConvertSettings, _check_size

EOI = b"\xff\xd9"

JPEG_END_MARKER_ADDED = "the JPEG end marker (EOI, 2 bytes) was missing; added: every scan is complete, the pixels are the whole picture"

PNG_END_CHUNK_MISSING = "the PNG end chunk (IEND) is missing; the image data decode completely, the pixels are the whole picture"

_HUFFMAN_PROCESSES = frozenset({"baseline", "extended", "progressive"})  # arithmetic decoders stay silent at a cut

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_scan_count(data: bytes, name: str) -> None:
    """Refuse a JPEG with more than ``MAX_JPEG_SCANS`` scans (``image-too-many-scans``), from its markers alone."""
    count = len(lossless_jpeg.scans(data, MAX_JPEG_SCANS))
    if count > MAX_JPEG_SCANS:
        raise ConversionError(
            f"{name}: JPEG with more than {MAX_JPEG_SCANS:,} scans (every scan is one more decoding pass over the whole "
            "image; encoders write at most a few dozen): a decoding-time bomb, not a film: exclude it",
            reason="image-too-many-scans",
        )


def checked_stream(data: bytes, fmt: str, settings: ConvertSettings, name: str) -> tuple[bytes, str]:
    """(the stream to decode, the repair made or noted, "" for none); ``ConversionError`` when the
    decoder reports damage a repair cannot undo (``image-corrupt``)."""
    if fmt == "PNG":
        return data, PNG_END_CHUNK_MISSING if _png_missing_end(data) else ""
    if fmt != "JPEG":
        return data, ""
    try:
        header = lossless_jpeg.read_header(data)
    except ValueError:
        return data, ""  # markers broken before the first scan: the decoder says what is wrong
    if header.process in ("lossless", "hierarchical") or not header.width or not header.height:
        return data, ""  # pylibjpeg-libjpeg's, which raises on damage; a height given by DNL: the decoder's
    _check_size(header.width, header.height, settings, name, decode_bytes=header.coefficient_bytes + 2 * len(data), jpeg_output=False)
    damage = lossless_jpeg.stream_damage(data)
    if not damage:
        return data, ""
    if (header.process in _HUFFMAN_PROCESSES and not data.endswith(EOI)
            and lossless_jpeg.scans_complete(header, lossless_jpeg.scans(data, MAX_JPEG_SCANS))
            and not lossless_jpeg.stream_damage(data + EOI)):
        return data + EOI, JPEG_END_MARKER_ADDED
    raise ConversionError(
        f"{name}: libjpeg-turbo reports damage in this {header.process} JPEG ({header.width}x{header.height}): {damage}; a "
        "decoder would fill what it cannot read with made-up pixels, so the picture is not the film: the file is truncated "
        "or corrupt: download it again, or exclude it",
        reason="image-corrupt",
    )


def _png_missing_end(data: bytes) -> bool:
    """Whether a PNG's chunks end without IEND (walked by their lengths; nothing decoded)."""
    offset = len(_PNG_SIGNATURE)
    while offset + 8 <= len(data):
        (length,), kind = struct.unpack_from(">I", data, offset), data[offset + 4 : offset + 8]
        if kind == b"IEND":
            return False
        offset += 12 + length
    return True
