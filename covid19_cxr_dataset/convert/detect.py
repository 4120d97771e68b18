"""Format detection by magic bytes (policy step 1: ``detect_format``) and the EXIF/XMP orientation an image asks for."""

from __future__ import annotations

from PIL import Image

from ..errors import ConversionError
from .settings import ConvertSettings, _DICOM_MAGIC, _DICOM_MAGIC_OFFSET, _ORIENTATION_TAG, _PIL_DECODE_ERRORS


_MAGIC = (  # (offset, bytes, format name); JPEG, PNG and DICOM are checked first
    (0, b"GIF87a", "GIF"), (0, b"GIF89a", "GIF"), (0, b"II*\x00", "TIFF"), (0, b"MM\x00*", "TIFF"),
    (0, b"II+\x00", "TIFF"), (0, b"MM\x00+", "TIFF"), (0, b"BM", "BMP"), (0, b"\x00\x00\x01\x00", "ICO"),
    (0, b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"), (0, b"\xff\x4f\xff\x51", "JPEG 2000"),
    (0, b"\xff\x0a", "JPEG XL"), (0, b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"), (0, b"8BPS", "PSD"),
    (0, b"P1", "PNM"), (0, b"P2", "PNM"), (0, b"P3", "PNM"), (0, b"P4", "PNM"), (0, b"P5", "PNM"), (0, b"P6", "PNM"),
)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def detect_format(data: bytes) -> str:
    """The file format by its first bytes: "JPEG", "PNG", "DICOM", another name, or "" if unknown."""
    if data[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] == _DICOM_MAGIC:
        return "DICOM"
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == _PNG_SIGNATURE:
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[4:8] == b"ftyp":
        return "HEIF/AVIF"
    if data[-18:-2] == b"TRUEVISION-XFILE":
        return "TGA"
    for offset, magic, name in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return name
    return ""


def _accepted_format(data: bytes, settings: ConvertSettings, name: str) -> str:
    fmt = detect_format(data)
    if not fmt:
        raise ConversionError(
            f"{name}: not an image this package can read (first bytes {data[:8].hex(' ') or 'none: empty file'}); "
            "expected JPEG, PNG or DICOM: check the download",
            reason="undecodable",
        )
    if fmt not in settings.input_formats:
        raise ConversionError(
            f"{name}: the file is {fmt} (by its first bytes, whatever its extension), which this release does not "
            f"accept (accepted: {', '.join(settings.input_formats)}); exclude it, or convert it upstream and pin the new file",
            reason="format-not-accepted",
        )
    return fmt


_ORIENTATION_SOURCES = ("exif", "xmp", "XML:com.adobe.xmp", "Raw profile type exif")  # + TIFF tags


def _exif_orientation(img: Image.Image) -> int:
    if not (hasattr(img, "tag_v2") or any(key in img.info for key in _ORIENTATION_SOURCES)):
        return 1  # nothing to parse: skips getexif's work on the common metadata-free files
    try:
        return int(img.getexif().get(_ORIENTATION_TAG, 1))
    except _PIL_DECODE_ERRORS:
        return 1  # unreadable metadata: the pixels are still the picture as stored
