"""Lossless JPEG -> grayscale JPEG: the luminance DCT coefficients copied, nothing decoded.

``transcode_luminance`` is libjpeg-turbo's transform (``jpegtran -grayscale -copy none
-optimize``) through the ``turbojpeg`` binding (a PyPI wheel that bundles libjpeg-turbo, so it
installs without system packages). The output keeps the source's luminance coefficients and
quantization table exactly, so it decodes to the very pixels a libjpeg decoder gives for the
source's Y component; no DCT or quantization is run. Restart markers, metadata and every
colour component are dropped; the output is baseline (sequential, Huffman) with optimized
tables when asked.

``read_header`` parses the markers up to the first scan (a few hundred bytes, no decoding) and
``lossless_obstacle`` says why a stream cannot go this way: more than 8 bits per sample,
lossless or hierarchical JPEG, components that are not gray or YCbCr (CMYK, YCCK, RGB without
colour transform), or a luminance sampled below the chroma. Arithmetic-coded and progressive
streams are transcoded: libjpeg-turbo reads both, and the output is baseline Huffman.

Also the lossless JPEG path itself (policy step 3, ``_transcode_jpeg``): when a source takes it, and the check of its output."""

from __future__ import annotations

import functools
import importlib.metadata
import io
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..errors import CxrDatasetError
from .settings import ConvertSettings, ConvertedImage, _ORIENTATION_TAG, _PIL_DECODE_ERRORS, _check_size, target_size
from .encode import _check_not_constant


try:  # the ``turbojpeg`` distribution (pybind11 binding), not PyTurboJPEG, which has the same module name
    import turbojpeg as _turbojpeg

    _HAVE_TRANSFORM = callable(getattr(_turbojpeg, "transform", None))
except ImportError:  # pragma: no cover - a declared dependency
    _turbojpeg = None
    _HAVE_TRANSFORM = False


TRANSFORM_DISTRIBUTION = "turbojpeg"


_SOF_MARKERS = {
    0xC0: ("baseline", 8), 0xC1: ("extended", 0), 0xC2: ("progressive", 0), 0xC3: ("lossless", 0),
    0xC5: ("hierarchical", 0), 0xC6: ("hierarchical", 0), 0xC7: ("hierarchical", 0),
    0xC9: ("arithmetic", 0), 0xCA: ("arithmetic-progressive", 0), 0xCB: ("lossless", 0),
    0xCD: ("hierarchical", 0), 0xCE: ("hierarchical", 0), 0xCF: ("hierarchical", 0),
}


_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RSTn carry no length


class TranscodeError(Exception):
    """The stream cannot be transcoded losslessly (or is corrupt); the message says why."""


@dataclass(frozen=True)
class JpegHeader:
    process: str  # "baseline", "extended", "progressive", "lossless", "hierarchical", "arithmetic"...
    precision: int  # bits per sample
    width: int
    height: int
    component_ids: tuple[int, ...]
    sampling: tuple[tuple[int, int], ...]  # (h, v) per component
    jfif: bool
    adobe_transform: int | None  # APP14 "Adobe" transform flag, None without the marker
    has_exif: bool
    exif: bytes = b""  # the APP1 "Exif" segments' bodies, joined as Pillow joins them
    xmp: bytes = b""  # the last APP1 XMP packet (after its namespace), as Pillow keeps it

    @property
    def color_space(self) -> str:
        """The colour space libjpeg infers (jdapimin.c ``default_decompress_parms``)."""
        count = len(self.component_ids)
        if count == 1:
            return "GRAY"
        if count == 3:
            if self.jfif:
                return "YCbCr"
            if self.adobe_transform is not None:
                return "RGB" if self.adobe_transform == 0 else "YCbCr"
            return "RGB" if self.component_ids == (0x52, 0x47, 0x42) else "YCbCr"
        if count == 4:
            return "YCCK" if self.adobe_transform == 2 else "CMYK"
        return f"{count} components"

    @property
    def coefficient_bytes(self) -> int:
        """Memory libjpeg holds for the whole image's coefficients (2 bytes each, all components)."""
        max_h = max(h for h, _ in self.sampling)
        max_v = max(v for _, v in self.sampling)
        mcu_w, mcu_h = 8 * max_h, 8 * max_v
        mcus = -(-self.width // mcu_w) * -(-self.height // mcu_h)
        return mcus * sum(h * v for h, v in self.sampling) * 64 * 2


def read_header(data: bytes) -> JpegHeader:
    """Parse the markers before the first scan; ``ValueError`` when they are malformed."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("no SOI marker")
    offset, jfif, adobe, exif, frame = 2, False, None, False, None
    exif_body, xmp = b"", b""
    while True:
        while offset < len(data) and data[offset] == 0xFF and offset + 1 < len(data) and data[offset + 1] == 0xFF:
            offset += 1  # fill bytes
        if offset + 2 > len(data) or data[offset] != 0xFF:
            raise ValueError(f"expected a marker at byte {offset}")
        marker = data[offset + 1]
        offset += 2
        if marker in _STANDALONE:
            continue
        if marker == 0xD9:
            raise ValueError("EOI before the first scan")
        if offset + 2 > len(data):
            raise ValueError("truncated marker segment")
        (length,) = struct.unpack_from(">H", data, offset)
        body = data[offset + 2 : offset + length]
        if length < 2 or len(body) != length - 2:
            raise ValueError(f"marker 0xFF{marker:02X} segment runs past the end of the file")
        if marker == 0xE0 and body[:5] == b"JFIF\x00":
            jfif = True
        elif marker == 0xE1 and body[:6] == b"Exif\x00\x00":
            exif, exif_body = True, exif_body + body[6:] if exif_body else body  # as Pillow joins them
        elif marker == 0xE1 and body.startswith(_XMP_NAMESPACE):
            xmp = body[len(_XMP_NAMESPACE):]  # the last one, as Pillow keeps it
        elif marker == 0xEE and body[:5] == b"Adobe" and len(body) >= 12:
            adobe = body[11]
        elif marker in _SOF_MARKERS:
            if frame is not None:
                raise ValueError("more than one frame header")
            if len(body) < 6:
                raise ValueError("short frame header")
            precision, height, width, count = struct.unpack_from(">BHHB", body)
            if len(body) < 6 + 3 * count or count == 0:
                raise ValueError("frame header lists more components than it holds")
            ids = tuple(body[6 + 3 * i] for i in range(count))
            sampling = tuple((body[7 + 3 * i] >> 4, body[7 + 3 * i] & 15) for i in range(count))
            if any(h == 0 or v == 0 for h, v in sampling):
                raise ValueError("zero sampling factor")
            frame = (_SOF_MARKERS[marker][0], precision, width, height, ids, sampling)
        elif marker == 0xDA:
            if frame is None:
                raise ValueError("scan before the frame header")
            process, precision, width, height, ids, sampling = frame
            return JpegHeader(process, precision, width, height, ids, sampling, jfif, adobe, exif, exif_body, xmp)
        offset += length


_XMP_NAMESPACE = b"http://ns.adobe.com/xap/1.0/\x00"


def header_orientation(header: JpegHeader) -> int:
    """The EXIF (else XMP) orientation of a JPEG from its header segments, read as Pillow's
    ``getexif`` reads it: for the streams Pillow cannot open (12-bit), and those it opens but not
    decodes (arithmetic, lossless), so that every path applies the tag alike (policy 7)."""
    if header.exif:
        exif = Image.Exif()
        try:
            exif.load(header.exif)
            value = exif.get(_ORIENTATION_TAG)
        except _PIL_DECODE_ERRORS:
            value = None  # unreadable metadata: the pixels are still the picture as stored
        if value is not None:
            try:
                return int(value)
            except (TypeError, ValueError):
                return 1
    found = re.search(rb'tiff:Orientation(="|>)([0-9])', header.xmp) if header.xmp else None
    return int(found[2]) if found else 1


# ---- the scans: how many, and whether they cover every coefficient ---------------------------------

_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # a marker, not stuffed data, a restart or a fill byte


@dataclass(frozen=True)
class Scan:
    components: tuple[int, ...]
    spectral: tuple[int, int]  # Ss, Se
    approximation: tuple[int, int]  # Ah, Al


def scans(data: bytes, limit: int) -> list[Scan]:
    """The scan headers (SOS) of a JPEG stream, in order; stops after ``limit + 1`` of them. Walks
    the markers, skipping each segment and the entropy-coded data (no pixel is decoded); a malformed
    stream ends the list where the damage starts (the decoder reports it)."""
    found: list[Scan] = []
    offset = 2
    try:
        while offset + 4 <= len(data):
            if data[offset] != 0xFF or data[offset + 1] in (0x00, *range(0xD0, 0xD8)):
                match = _NEXT_MARKER.search(data, offset)
                if match is None:
                    break
                offset = match.start()
            while data[offset + 1] == 0xFF:
                offset += 1  # fill bytes
            marker = data[offset + 1]
            if marker == 0xD9:
                break
            if marker in _STANDALONE:
                offset += 2
                continue
            (length,) = struct.unpack_from(">H", data, offset + 2)
            if marker == 0xDA:
                body = data[offset + 4 : offset + 2 + length]
                count = body[0]
                ss, se, a = body[1 + 2 * count : 4 + 2 * count]
                found.append(Scan(tuple(body[1 + 2 * i] for i in range(count)), (ss, se), (a >> 4, a & 15)))
                if len(found) > limit:
                    break
            offset += 2 + max(length, 2)
    except (IndexError, ValueError, struct.error):
        pass  # the damage is the decoder's to report
    return found


def scans_complete(header: JpegHeader, found: list[Scan]) -> bool:
    """Whether the scans give every coefficient of every component its final value: a sequential
    stream scans each component once; a progressive one refines each coefficient to its last bit
    (Al = 0). A stream cut between two scans decodes without a warning once an end marker is
    appended, to a blurrier picture: this tells it from one that lacks only its end marker."""
    if header.process in ("progressive", "arithmetic-progressive"):
        return all(
            any(c in scan.components and scan.spectral[0] <= k <= scan.spectral[1] and scan.approximation[1] == 0 for scan in found)
            for c in header.component_ids for k in range(64)
        )
    return all(any(c in scan.components for scan in found) for c in header.component_ids)


def stream_damage(data: bytes) -> str:
    """What libjpeg-turbo reports while reading every coefficient of ``data`` (warnings included:
    corrupt entropy data, premature end, extraneous bytes), or "" when it reads cleanly. Nothing is
    decoded to pixels and nothing written (``transform(nooutput=True)``). Only for 8- and 12-bit DCT
    streams (lossless and hierarchical JPEGs are pylibjpeg-libjpeg's, which raises on damage)."""
    if not _HAVE_TRANSFORM:
        return ""
    try:
        _turbojpeg.transform(data, nooutput=True)
    except (RuntimeError, ValueError) as exc:
        return str(exc) or type(exc).__name__
    return ""


def lossless_obstacle(header: JpegHeader) -> str:
    """Why ``header``'s stream cannot be transcoded to grayscale losslessly, or "" if it can."""
    if header.process in ("lossless", "hierarchical"):
        return f"{header.process} JPEG"
    if header.precision != 8:
        return f"{header.precision}-bit samples"
    if header.color_space not in ("GRAY", "YCbCr"):
        return f"{header.color_space} components"
    if len(header.sampling) > 1:
        max_h = max(h for h, _ in header.sampling)
        max_v = max(v for _, v in header.sampling)
        if header.sampling[0] != (max_h, max_v):
            return "luminance sampled below the chroma"
    if header.width == 0 or header.height == 0:
        return "no size in the frame header (DNL)"
    return ""


def available() -> bool:
    return _HAVE_TRANSFORM


def transcode_luminance(data: bytes, *, optimize: bool = True) -> bytes:
    """The Y component of ``data`` as a grayscale baseline JPEG, coefficients copied unchanged.

    Raises ``TranscodeError`` for anything libjpeg-turbo reports, warnings included (corrupt
    data, bad restart markers, premature end): such streams go through a full decode instead.
    """
    if not _HAVE_TRANSFORM:
        raise TranscodeError(
            "the 'turbojpeg' package (libjpeg-turbo's transform API) is not importable; "
            "reinstall covid19-cxr-dataset (PyTurboJPEG installs a different module of the same name)"
        )
    try:
        output = _turbojpeg.transform(data, gray=True, copynone=True, optimize=optimize, progressive=False)
    except (RuntimeError, ValueError) as exc:
        raise TranscodeError(str(exc)) from exc
    return _plain_jfif(output)


_JFIF_APP0 = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"


_PLAIN_JFIF_FIELDS = b"\x01\x01\x00\x00\x01\x00\x01\x00\x00"  # version 1.01, aspect ratio 1:1, no thumbnail


def _plain_jfif(jpeg: bytes) -> bytes:
    """libjpeg copies the source's JFIF version and density (dpi) into the output; write the plain
    header Pillow writes instead, so that no source metadata survives and every output agrees."""
    if not jpeg.startswith(_JFIF_APP0):
        raise TranscodeError("transform output does not start with a JFIF APP0 segment")
    start = len(_JFIF_APP0)
    return jpeg[:start] + _PLAIN_JFIF_FIELDS + jpeg[start + len(_PLAIN_JFIF_FIELDS):]


@functools.lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    """The distribution and the libjpeg-turbo build the transcoded bytes depend on.

    The wheel bundles its own libjpeg-turbo (``turbojpeg.libs/``); its version string is read
    from the library itself, since the binding does not expose it.
    """
    try:
        version = importlib.metadata.version(TRANSFORM_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        version = "absent"
    return {TRANSFORM_DISTRIBUTION: version, "libjpeg-turbo": _bundled_libjpeg_turbo()}


def _bundled_libjpeg_turbo() -> str:
    if not _HAVE_TRANSFORM:
        return "absent"
    module = Path(_turbojpeg.__file__)
    for library in sorted(module.parent.glob("turbojpeg.libs/*turbojpeg*")) + [module]:
        try:
            found = re.search(rb"libjpeg-turbo version ([0-9.]+)(?: \(build (\d+)\))?", library.read_bytes())
        except OSError:
            continue
        if found:
            return found.group(1).decode() + (f"-{found.group(2).decode()}" if found.group(2) else "")
    return "unknown"


def _transcode_jpeg(data: bytes, settings: ConvertSettings, name: str) -> ConvertedImage | None:
    """The lossless-jpeg path, or None when this stream must be decoded instead (policy 3)."""
    try:
        header = read_header(data)
    except ValueError:
        return None  # the decoder says what is wrong with it
    if lossless_obstacle(header):
        return None
    if not available():  # never a silent change of output: the release asks for this path
        raise CxrDatasetError(
            "the release transcodes JPEG sources losslessly (convert.lossless_jpeg), but the 'turbojpeg' package "
            "(libjpeg-turbo's transform API) is missing or shadowed by PyTurboJPEG, which installs a module of the "
            "same name; run: pip install --force-reinstall 'turbojpeg>=0.0.2,<0.1' (and uninstall PyTurboJPEG)"
        )
    width, height = header.width, header.height
    _check_size(width, height, settings, name, decode_bytes=header.coefficient_bytes + 2 * len(data), jpeg_output=False)
    if target_size(width, height, settings.max_side) != (width, height):
        return None
    if header_orientation(header) not in (0, 1):
        return None  # the decode path rotates it
    try:
        output = transcode_luminance(data, optimize=settings.optimize_huffman)
        check = read_header(output)
    except (TranscodeError, ValueError):
        return None  # corrupt data, bad restart markers...: the decoder decides
    if (check.width, check.height, len(check.component_ids)) != (width, height, 1):
        return None
    if _may_be_constant(output, width, height):
        _check_not_constant(Image.open(io.BytesIO(output)), name)
    mode = "L" if header.color_space == "GRAY" else "RGB"
    return ConvertedImage(output, width, height, "JPEG", mode, "lossless-jpeg")


def _may_be_constant(jpeg: bytes, width: int, height: int) -> bool:
    """Cheap screen: a constant image costs about 2 bits per 8x8 block with optimized tables
    (one DC and one end-of-block code), any real film far more. Only then is it decoded."""
    blocks = -(-width // 8) * -(-height // 8)
    return len(jpeg) < 1024 + blocks // 2
