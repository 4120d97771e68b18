"""Any accepted input image (JPEG, PNG, DICOM) -> one 8-bit grayscale image for the release.

The release stores every radiograph the same way, whatever its source published: 8-bit
grayscale without metadata. JPEG sources keep their own luminance, bit for bit (path
``lossless-jpeg``); everything else is decoded, normalized and encoded as the release's
``fallback_format`` says (``normalized-jpeg``: baseline JPEG at ``quality``; ``normalized-png``:
8-bit PNG). Which path an image took is ``ConvertedImage.conversion`` (the row's ``conversion``
column). The same input gives byte-identical output on every run and machine that has the same
libraries (``output_fingerprint``).

Policy, in the order it is applied
----------------------------------
1. **Detection, by magic bytes** (``detect_format``; the extension is ignored). Bytes 128-131
   ``DICM``: DICOM; ``FF D8 FF``: JPEG; the PNG signature: PNG; GIF, WebP, TIFF, BMP, ICO,
   JPEG 2000, JPEG XL, PSD, HEIF/AVIF are recognized and refused with ``format-not-accepted``, as
   is any of JPEG/PNG/DICOM that the release's ``input_formats`` leaves out; anything else is
   ``undecodable``. An animated PNG (more than one frame) is ``image-multiframe``.
2. **Size and memory, from the header, before any pixel is decoded.** Over
   ``ConvertSettings.max_pixels`` (default ``MAX_PIXELS``, 100 megapixels): ``image-too-large``.
   The decode's working memory, estimated from size, mode and bit depth (``decode_bytes``), over
   ``max_decode_bytes`` (default 640 MiB; a worker stays under 1 GiB with the interpreter):
   ``image-too-large``. A side above 65,500 px when the output is JPEG (the format's limit):
   ``image-too-large``. A shorter side below ``min_side``: ``image-too-small``.
   ``Image.MAX_IMAGE_PIXELS`` is set to ``MAX_PIXELS`` once, at import, so that Pillow's own
   guard agrees.
3. **Lossless JPEG path** (``lossless_jpeg``, see ``convert.lossless_jpeg``): an 8-bit gray or YCbCr
   JPEG (baseline, extended, progressive or arithmetic) that needs no resize (``max_side``) and
   no EXIF rotation is transcoded by libjpeg-turbo: its Y coefficients are copied into a
   grayscale baseline JPEG with optimized Huffman tables (``optimize_huffman``), no metadata. It
   decodes to exactly the luminance libjpeg decodes from the source (for colour sources the Y
   channel the encoder stored: ITU-R 601 luma, within one level of rounding of the luma of the
   decoded RGB wherever that RGB is not clipped at 0 or 255; saturated colour marks differ more). 12-bit, lossless (SOF3) and hierarchical JPEGs, CMYK/YCCK/RGB components, and
   streams libjpeg-turbo reports as corrupt (bad restart markers, premature end) take the path
   below; a stream that fails there too is ``undecodable``.
4. **Decoding** (the other path). A multi-frame format (MPO) gives its first frame. Colour JPEGs
   are decoded straight to luminance by libjpeg (``draft("L")``). When ``max_side`` asks for a
   downscale, JPEGs are decoded with DCT scaling (``draft``) at 1/2, 1/4 or 1/8 of their size,
   only as far as the decoded image stays at least as large as the target on both sides; the
   final resize below still sets the exact size. JPEGs with 12-bit samples or lossless coding
   (which Pillow's libjpeg cannot read) are decoded by pylibjpeg-libjpeg.
5. **Grayscale** (``pil_to_l``, ``dicom_to_l``):

   ===============  =====================================================================
   L                unchanged
   1                0 / 255
   RGB, P, CMYK...  ITU-R 601-2 luma (Pillow's ``convert("L")``; CMYK through RGB, with
                    Adobe-inverted CMYK JPEGs undone by Pillow's decoder)
   LA, RGBA, PA,    luma, then composited onto black: ``round(L * A / 255)``
   P/L/RGB + tRNS
   I;16*, I, F,     linear stretch of the stored range (min -> 0, max -> 255, rounded half up);
   12-bit JPEG      16-bit files often hold 12-bit data, which a bit-depth scale would
                    leave almost black.
   DICOM            see ``dicom_to_l``: modality LUT, then the first VOI LUT or window, or
                    else the 0.5th-99.5th percentile range; MONOCHROME1 inverted.
   ===============  =====================================================================

   ICC profiles are not applied (no colour management); every colour is reduced to luma.
6. **Size.** ``max_side=None`` keeps the original size. Otherwise, when the longer side exceeds
   ``max_side``, it becomes exactly ``max_side`` and the shorter side
   ``round_half_up(short * max_side / long)`` (at least 1), resampled with LANCZOS; images are
   never enlarged. See ``target_size``.
7. **Orientation.** The EXIF (or XMP) orientation tag is applied as ``ImageOps.exif_transpose``
   would; then every piece of metadata is dropped.
8. **Degenerate films.** An image whose 8-bit result has one value everywhere (blank, or a
   constant 16-bit film) is ``image-constant``, on either path.
9. **Encoding** (``encode_jpeg``, ``encode_png``): baseline JPEG, ``quality`` from the settings
   (default 95), 4:4:4 sampling (moot for one channel but pinned), no Huffman optimization, no
   EXIF, ICC, XMP or comment, a plain JFIF 1.01 header with aspect-ratio density 1:1; or PNG,
   8-bit grayscale, zlib level ``PNG_COMPRESS_LEVEL``, no ancillary chunks.

Failures are ``errors.ConversionError`` with a reason code of ``records.REASONS``:
``undecodable``, ``format-not-accepted``, ``image-multiframe``, ``image-too-large``,
``image-too-small``, ``image-constant``, ``dicom-multiframe``, ``dicom-undecodable``. A file that
cannot be opened at all (missing, unreadable) raises ``OSError`` as usual: that is a pipeline
bug, not a property of the image.

Nothing here changes global state after import, so conversions may run in threads or processes.

Modules: ``settings`` (settings, limits, results, header-level refusals), ``detect`` (magic bytes,
orientation), ``lossless_jpeg`` (libjpeg-turbo transform and the lossless path), ``modes`` (Pillow
inputs and modes), ``dicom`` (DICOM inputs), ``encode`` (JPEG and PNG output); this file runs them
in the policy's order. Where the build caches an output (file naming) is ``convert_cache``'s.
"""

from __future__ import annotations

import importlib.metadata
import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from . import integrity, lossless_jpeg
from .settings import (
    ACCEPTED_FORMATS, CONVERSIONS, DEFAULT_QUALITY, FALLBACK_FORMATS, MAX_PIXELS, POLICY_VERSION, SUFFIXES, ConvertedImage,
    ConvertSettings, NormalizedImage, ProbeResult, _DECODER_DISTRIBUTIONS, target_size,
)
from .detect import _accepted_format, detect_format
from .encode import _check_not_constant, _encode, encode_jpeg, encode_png
from .lossless_jpeg import _transcode_jpeg
from .modes import _normalize_pil, _open_pil, decode_bytes, pil_to_l
from .dicom import _dicom_frames, _is_dicom, _normalize_dicom, _photometric, _read_dicom, dicom_to_l

__all__ = [
    "ACCEPTED_FORMATS", "CONVERSIONS", "DEFAULT_QUALITY", "FALLBACK_FORMATS", "MAX_PIXELS", "SUFFIXES", "ConvertSettings",
    "ConvertedImage", "NormalizedImage", "ProbeResult", "convert_bytes", "convert_file", "decode_bytes", "detect_format",
    "dicom_to_l", "encode_jpeg", "encode_png", "library_versions", "normalize_bytes", "normalize_file", "output_fingerprint",
    "pil_to_l", "probe", "target_size",
]


def convert_file(path: Path, settings: ConvertSettings = ConvertSettings()) -> ConvertedImage:
    """Convert the image file at ``path`` (JPEG, PNG, DICOM) to the release's image."""
    return _convert(Path(path).read_bytes(), settings, str(path))


def convert_bytes(
    data: bytes, settings: ConvertSettings = ConvertSettings(), *, name: str = "<bytes>"
) -> ConvertedImage:
    """Convert an encoded image held in memory; ``name`` labels it in error messages."""
    return _convert(bytes(data), settings, name)


def normalize_file(path: Path, settings: ConvertSettings = ConvertSettings()) -> NormalizedImage:
    """Decode ``path`` to the final 8-bit grayscale picture (the decode path), without encoding it."""
    return normalize_bytes(Path(path).read_bytes(), settings, name=str(path))


def normalize_bytes(
    data: bytes, settings: ConvertSettings = ConvertSettings(), *, name: str = "<bytes>"
) -> NormalizedImage:
    """Decode an encoded image held in memory to the final 8-bit grayscale picture."""
    data = bytes(data)
    fmt = _accepted_format(data, settings, name)
    if fmt == "JPEG":
        integrity.check_scan_count(data, name)
    data, repair = integrity.checked_stream(data, fmt, settings, name)
    return _normalize(data, fmt, settings, name, repair)


def probe(path: Path) -> ProbeResult:
    """Read only the header of ``path``: format, mode and size (cheap; no pixel is decoded)."""
    name = str(path)
    with open(path, "rb") as stream:
        if _is_dicom(stream):
            ds = _read_dicom(stream, name, stop_before_pixels=True)
            return ProbeResult(
                format="DICOM",
                mode=_photometric(ds),
                width=int(ds.get("Columns", 0) or 0),
                height=int(ds.get("Rows", 0) or 0),
                frames=_dicom_frames(ds),
            )
        img = _open_pil(stream, name)
        return ProbeResult(
            format=img.format or "",
            mode=img.mode,
            width=img.width,
            height=img.height,
            frames=getattr(img, "n_frames", 1),
        )


def output_fingerprint() -> str:
    """The policy version and the versions of every library that can change the output bytes.

    Put it in a conversion cache key: equal fingerprints and settings give equal output.
    """
    return "-".join(f"{name}{version}" for name, version in library_versions().items())


def library_versions() -> dict[str, str]:
    """{library: version} for everything the output bytes depend on (see ``output_fingerprint``)."""
    versions = {
        "policy": str(POLICY_VERSION),
        "pillow": Image.__version__,
        "pydicom": pydicom.__version__,
        "numpy": np.__version__,
    }
    for distribution in _DECODER_DISTRIBUTIONS:
        try:
            versions[distribution] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            versions[distribution] = "-absent"
    versions.update(lossless_jpeg.library_versions())
    return versions


def _convert(data: bytes, settings: ConvertSettings, name: str) -> ConvertedImage:
    fmt = _accepted_format(data, settings, name)
    if fmt == "JPEG":
        integrity.check_scan_count(data, name)
        # The transform reads every coefficient and refuses any warning: what it transcodes is intact.
        transcoded = _transcode_jpeg(data, settings, name) if settings.lossless_jpeg else None
        if transcoded is not None:
            return transcoded
    data, repair = integrity.checked_stream(data, fmt, settings, name)
    if repair and fmt == "JPEG" and settings.lossless_jpeg:
        transcoded = _transcode_jpeg(data, settings, name)  # the repaired stream takes the path the whole file takes
        if transcoded is not None:
            return replace(transcoded, repair=repair)
    return replace(_encode(_normalize(data, fmt, settings, name), settings, name), repair=repair)


def _normalize(data: bytes, fmt: str, settings: ConvertSettings, name: str, repair: str = "") -> NormalizedImage:
    if fmt == "DICOM":
        normalized = _normalize_dicom(io.BytesIO(data), settings, name)
    else:
        normalized = _normalize_pil(data, fmt, settings, name)
    _check_not_constant(normalized.image, name)
    return replace(normalized, repair=repair) if repair else normalized
