"""Pillow inputs (policy steps 4-7 for JPEG and PNG): decoding, PIL modes to 8-bit gray (``pil_to_l``),
the decode memory estimate (``decode_bytes``), 12-bit and lossless JPEGs through pylibjpeg-libjpeg."""

from __future__ import annotations

import io
from typing import BinaryIO

import numpy as np
from PIL import Image

from ..errors import ConversionError
from . import lossless_jpeg
from .settings import ConvertSettings, NormalizedImage, RESAMPLE, _ALPHA_MODES, _EXIF_TRANSPOSE, _JPEG_FORMATS, _PIL_DECODE_ERRORS, _check_size, _too_large, target_size
from .detect import _exif_orientation


def pil_to_l(img: Image.Image) -> Image.Image:
    """Reduce a loaded PIL image of any mode to 8-bit grayscale; see the module's table.

    Returns ``img`` itself when it is already plain "L" (no copy).
    """
    mode = img.mode
    has_alpha = mode in _ALPHA_MODES or "transparency" in img.info
    if mode == "L" and not has_alpha:
        return img
    if mode == "1":
        return img.convert("L")
    if mode.startswith("I") or mode == "F":
        return _stretch_to_l(np.asarray(img))
    if has_alpha:
        luma_alpha = img if mode == "LA" else img.convert("RGBA").convert("LA")
        luma, alpha = luma_alpha.split()
        # Pasting through a mask blends with Pillow's DIV255: exactly round(L * A / 255).
        # (ImageChops.multiply would truncate instead.)
        composited = Image.new("L", img.size, 0)
        composited.paste(luma, mask=alpha)
        return composited
    if mode in ("RGB", "P"):
        return img.convert("L")
    return img.convert("RGB").convert("L")


_STRETCH_ROWS = 256  # rows per block: the int64 temporaries stay a few MiB whatever the image size


def _stretch_to_l(values: np.ndarray) -> Image.Image:
    """Map the stored range of a high-bit-depth image linearly onto 0..255 (half up).

    Works in blocks of rows so that a 100-megapixel 16-bit image needs no 8-byte-per-pixel copy.
    """
    floating = values.dtype.kind == "f"
    if floating:
        finite = [np.nan_to_num(values[i : i + _STRETCH_ROWS].astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
                  for i in range(0, values.shape[0], _STRETCH_ROWS)]
        low = float(min(block.min() for block in finite))
        high = float(max(block.max() for block in finite))
    else:
        low, high = int(values.min()), int(values.max())
    out = np.zeros(values.shape, dtype=np.uint8)
    if high <= low:
        return Image.fromarray(out)
    for index, start in enumerate(range(0, values.shape[0], _STRETCH_ROWS)):
        if floating:
            scaled = np.floor((finite[index] - low) * (255.0 / (high - low)) + 0.5)
            out[start : start + _STRETCH_ROWS] = np.clip(scaled, 0, 255).astype(np.uint8)
        else:
            span = high - low
            block = values[start : start + _STRETCH_ROWS].astype(np.int64)
            out[start : start + _STRETCH_ROWS] = ((block - low) * 510 + span) // (2 * span)  # half up, exact
    return Image.fromarray(out)


def _open_pil(stream: BinaryIO, name: str, fmt: str | None = None) -> Image.Image:
    try:
        return Image.open(stream, formats=[fmt] if fmt else None)
    except Image.DecompressionBombError as exc:
        raise _too_large(name, exc) from exc
    except _PIL_DECODE_ERRORS as exc:
        raise ConversionError(
            f"{name}: not an image Pillow can read ({type(exc).__name__}: {exc}); "
            "expected JPEG, PNG or DICOM: check the download",
            reason="undecodable",
        ) from exc


_STORED_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}  # else 4 (Pillow pads)


_EXTRA_BYTES = {"I;16": 5, "I;16B": 5, "I;16L": 5, "I;16N": 5, "I": 7, "F": 7, "CMYK": 7}  # else 3, alpha 13


def decode_bytes(width: int, height: int, mode: str, *, coefficient_bytes: int = 0) -> int:
    """Working memory (bytes) the decode path needs for a ``width`` x ``height`` image of PIL ``mode``.

    The decoded image as Pillow stores it (1, 2 or 4 bytes a pixel), plus the copies and
    temporaries of its reduction to "L" (``pil_to_l``, ``_stretch_to_l``), the final image and a
    transpose; plus, for progressive or 12-bit JPEGs, libjpeg's whole-image coefficient buffer.
    """
    extra = 13 if mode in _ALPHA_MODES else _EXTRA_BYTES.get(mode, 3)
    return width * height * (_STORED_BYTES.get(mode, 4) + extra) + coefficient_bytes


_LIBJPEG_PROCESSES = frozenset({"lossless", "hierarchical", "arithmetic", "arithmetic-progressive"})


def _normalize_pil(data: bytes, fmt: str, settings: ConvertSettings, name: str) -> NormalizedImage:
    header = None
    if fmt == "JPEG":
        try:
            header = lossless_jpeg.read_header(data)
        except ValueError:
            header = None  # Pillow's decoder reports the damage below
    if header is not None and (header.precision != 8 or header.process in _LIBJPEG_PROCESSES):
        components = len(header.component_ids)
        _check_size(header.width, header.height, settings, name,
                    decode_bytes=header.width * header.height * (2 * components + 5) + header.coefficient_bytes)
        return _normalize_with_libjpeg(data, header, settings, name)
    img = _open_pil(io.BytesIO(data), name, fmt)
    coefficients = header.coefficient_bytes if header is not None and header.process != "baseline" else 0
    _check_size(img.width, img.height, settings, name, decode_bytes=decode_bytes(img.width, img.height, img.mode, coefficient_bytes=coefficients))
    if fmt == "PNG" and getattr(img, "n_frames", 1) > 1:
        raise ConversionError(
            f"{name}: animated PNG with {img.n_frames} frames; a release holds single radiographs, and which frame "
            "is the film is not defined: exclude it or extract the frame wanted",
            reason="image-multiframe",
        )
    input_format, input_mode = img.format or "", img.mode
    target = target_size(img.width, img.height, settings.max_side)
    box = None
    try:
        if input_format in _JPEG_FORMATS:
            downscale = target if target != img.size else None
            drafted = img.draft("L", downscale)  # the mode only changes for YCbCr/RGB JPEGs
            if drafted is not None and downscale is not None:
                box = drafted[1]
        img.load()
        gray = pil_to_l(img)
    except Image.DecompressionBombError as exc:
        raise _too_large(name, exc) from exc
    except _PIL_DECODE_ERRORS as exc:
        raise ConversionError(
            f"{name}: {input_format} image ({input_mode}, {img.width}x{img.height}) cannot be "
            f"decoded ({type(exc).__name__}: {exc}); the file is truncated or corrupt: "
            "download it again",
            reason="undecodable",
        ) from exc
    if gray.size != target:
        gray = gray.resize(target, RESAMPLE, box=box)
    transpose = _EXIF_TRANSPOSE.get(_exif_orientation(img))
    if transpose is not None:
        gray = gray.transpose(transpose)
    return NormalizedImage(gray, input_format, input_mode)


def _normalize_with_libjpeg(data: bytes, header: lossless_jpeg.JpegHeader, settings: ConvertSettings, name: str) -> NormalizedImage:
    """12-bit and lossless JPEGs, which Pillow's 8-bit libjpeg cannot read: pylibjpeg-libjpeg decodes
    them; gray or the Y of YCbCr is stretched like any high-bit-depth image, RGB reduced to luma."""
    import libjpeg  # pylibjpeg-libjpeg, a declared dependency (also DICOM's JPEG decoder)

    label = f"{header.precision}-bit {header.process} JPEG ({header.color_space}, {header.width}x{header.height})"
    try:
        pixels = np.asarray(libjpeg.decode(data))
    except (RuntimeError, ValueError) as exc:
        raise ConversionError(
            f"{name}: {label} cannot be decoded ({type(exc).__name__}: {exc}); the file is truncated or corrupt: "
            "download it again",
            reason="undecodable",
        ) from exc
    if pixels.ndim == 3 and header.color_space == "RGB" and pixels.dtype == np.uint8:
        gray = Image.fromarray(np.ascontiguousarray(pixels)).convert("L")
    elif pixels.ndim == 3 and header.color_space == "RGB":
        rgb = pixels.astype(np.int64)
        gray = _stretch_to_l((rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16)
    elif pixels.ndim == 3 and header.color_space == "YCbCr":
        gray = _stretch_to_l(np.ascontiguousarray(pixels[..., 0])) if header.precision > 8 else Image.fromarray(np.ascontiguousarray(pixels[..., 0]))
    elif pixels.ndim == 2:
        gray = _stretch_to_l(pixels) if header.precision > 8 else Image.fromarray(pixels.astype(np.uint8))
    else:
        raise ConversionError(f"{name}: {label} with decoded shape {pixels.shape} is not supported", reason="undecodable")
    target = target_size(gray.width, gray.height, settings.max_side)
    if gray.size != target:
        gray = gray.resize(target, RESAMPLE)
    transpose = _EXIF_TRANSPOSE.get(lossless_jpeg.header_orientation(header))  # as every other path (policy 7)
    if transpose is not None:
        gray = gray.transpose(transpose)
    mode = {"GRAY": "I;16" if header.precision > 8 else "L"}.get(header.color_space, header.color_space)
    return NormalizedImage(gray, "JPEG", mode)
