"""Encoding the normalized 8-bit image (policy step 9: ``encode_jpeg``, ``encode_png``) and the constant-film refusal (step 8)."""

from __future__ import annotations

import io

from PIL import Image

from ..errors import ConversionError
from .settings import ConvertSettings, ConvertedImage, DEFAULT_QUALITY, JPEG_MAX_SIDE, JPEG_SUBSAMPLING, NormalizedImage, PNG_COMPRESS_LEVEL, _check_size


def _check_not_constant(image: Image.Image, name: str) -> None:
    low, high = image.getextrema()
    if low == high:
        raise ConversionError(
            f"{name}: every pixel of the {image.width}x{image.height} image has the value {low} after conversion "
            "(a blank film, or a constant high-bit-depth image); it holds no radiograph: exclude it",
            reason="image-constant",
        )


def encode_jpeg(image: Image.Image, quality: int = DEFAULT_QUALITY) -> bytes:
    """Encode an "L" image as the release's baseline JPEG: fixed settings, no metadata."""
    if image.mode != "L":
        raise ValueError(f"encode_jpeg expects a mode 'L' image, got mode {image.mode!r}")
    buffer = io.BytesIO()
    # Pillow copies a comment from image.info unless one is given; nothing else is inherited.
    image.save(
        buffer,
        format="JPEG",
        quality=quality,
        subsampling=JPEG_SUBSAMPLING,
        optimize=False,
        progressive=False,
        comment=b"",
    )
    return buffer.getvalue()


def encode_png(image: Image.Image) -> bytes:
    """Encode an "L" image as the release's 8-bit grayscale PNG: fixed zlib level, no ancillary chunks."""
    if image.mode != "L":
        raise ValueError(f"encode_png expects a mode 'L' image, got mode {image.mode!r}")
    buffer = io.BytesIO()
    # Pillow copies icc_profile and transparency from image.info unless given; give neither.
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False, icc_profile=None, transparency=None)
    return buffer.getvalue()


def _encode(normalized: NormalizedImage, settings: ConvertSettings, name: str = "<image>") -> ConvertedImage:
    image = normalized.image
    if settings.fallback_format == "png":
        data = encode_png(image)
    else:
        if max(image.size) > JPEG_MAX_SIDE:  # after an EXIF rotation or a DICOM's own size
            _check_size(*image.size, settings, name, decode_bytes=0, jpeg_output=True)
        data = encode_jpeg(image, settings.quality)
    return ConvertedImage(
        data=data,
        width=image.width,
        height=image.height,
        input_format=normalized.input_format,
        input_mode=normalized.input_mode,
        conversion=settings.fallback_conversion,
    )
