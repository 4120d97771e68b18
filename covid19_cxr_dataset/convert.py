"""Any input image (JPEG, PNG of any mode, DICOM) -> one normalized 8-bit grayscale JPEG.

The release stores every radiograph the same way, whatever its source published: an 8-bit
grayscale ("L") baseline JPEG without metadata. The same input gives byte-identical output on
every run and machine that has the same Pillow (and, for DICOM, the same pydicom decoders).

Policy, in the order it is applied
----------------------------------
1. **Detection.** A file whose bytes 128-131 are ``DICM`` is DICOM (whatever its extension);
   everything else goes to Pillow. A DICOM without the 128-byte preamble is not recognized.
2. **Decompression bombs.** An image over ``ConvertSettings.max_pixels`` (default
   ``MAX_PIXELS``, 100 megapixels) is refused with reason ``image-too-large`` from its header,
   before any pixel is decoded. ``Image.MAX_IMAGE_PIXELS`` is set to ``MAX_PIXELS`` once, at
   import, so that Pillow's own guard agrees (Pillow raises by itself above twice that).
3. **Decoding.** A multi-frame PIL format (GIF, TIFF, MPO) gives its first frame. Colour JPEGs
   are decoded straight to luminance by libjpeg (``draft("L")``: the Y channel the encoder
   stored, which is the ITU-R 601 luma; converting the decoded RGB back differs by at most one
   level of rounding). When ``max_side`` asks for a downscale, JPEGs are decoded with DCT scaling
   (``draft``) at 1/2, 1/4 or 1/8 of their size, only as far as the decoded image stays at least
   as large as the target on both sides; the final resize below still sets the exact size.
4. **Grayscale** (``pil_to_l``, ``dicom_to_l``):

   ===============  =====================================================================
   L                unchanged
   1                0 / 255
   RGB, P, CMYK...  ITU-R 601-2 luma (Pillow's ``convert("L")``; CMYK through RGB, with
                    Adobe-inverted CMYK JPEGs undone by Pillow's decoder)
   LA, RGBA, PA,    luma, then composited onto black: ``round(L * A / 255)``
   P/L/RGB + tRNS
   I;16*, I, F      linear stretch of the stored range (min -> 0, max -> 255, rounded half up);
                    16-bit files often hold 12-bit data, which a bit-depth scale would
                    leave almost black. A constant image becomes 0.
   DICOM            see ``dicom_to_l``: modality LUT, then the first VOI LUT or window, or
                    else the 0.5th-99.5th percentile range; MONOCHROME1 inverted.
   ===============  =====================================================================

   ICC profiles are not applied (no colour management); every colour is reduced to luma.
5. **Size.** ``max_side=None`` keeps the original size. Otherwise, when the longer side exceeds
   ``max_side``, it becomes exactly ``max_side`` and the shorter side
   ``round_half_up(short * max_side / long)`` (at least 1), resampled with LANCZOS; images are
   never enlarged. See ``target_size``.
6. **Orientation.** The EXIF (or XMP) orientation tag is applied as ``ImageOps.exif_transpose``
   would; then every piece of metadata is dropped.
7. **Encoding** (``encode_jpeg``): baseline JPEG, ``quality`` from the settings (default 95),
   4:4:4 sampling (moot for one channel but pinned), no Huffman optimization, no EXIF, ICC,
   XMP or comment; a plain JFIF 1.01 header with aspect-ratio density 1:1.

Failures are ``errors.ConversionError`` with a reason code of ``records.REASONS``:
``undecodable``, ``image-too-large``, ``dicom-multiframe``, ``dicom-undecodable``. A file that
cannot be opened at all (missing, unreadable) raises ``OSError`` as usual: that is a pipeline
bug, not a property of the image.

Nothing here changes global state after import, so conversions may run in threads or processes.
"""

from __future__ import annotations

import importlib.metadata
import io
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
from PIL import Image
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_windowing, get_decoder

from .errors import ConversionError

MAX_PIXELS = 100_000_000
"""Decompression-bomb limit: images with more pixels are refused (``image-too-large``)."""

Image.MAX_IMAGE_PIXELS = MAX_PIXELS

DEFAULT_QUALITY = 95
JPEG_SUBSAMPLING = 0  # 4:4:4; a grayscale JPEG has one component, pinned all the same
RESAMPLE = Image.Resampling.LANCZOS
DICOM_PERCENTILES = (0.5, 99.5)
"""Stored-value range mapped to 0..255 for a DICOM without a VOI LUT or window."""

DICOM_PLUGIN_PREFERENCE = ("pylibjpeg", "pydicom", "gdcm", "pillow", "pyjpegls")
"""Decoder plugins tried in this order. Lossy JPEG and JPEG 2000 decoders differ in their last
bits, so the choice is pinned rather than left to whichever plugins happen to be installed;
pylibjpeg comes first because it is a declared dependency of the package."""

POLICY_VERSION = 1
"""Bump whenever this module's output for some input changes (cache keys use it)."""

_DECODER_DISTRIBUTIONS = (
    "pylibjpeg",
    "pylibjpeg-libjpeg",
    "pylibjpeg-openjpeg",
    "pylibjpeg-rle",
    "python-gdcm",
)

_DICOM_MAGIC_OFFSET = 128
_DICOM_MAGIC = b"DICM"

_ORIENTATION_TAG = 0x0112
_EXIF_TRANSPOSE = {  # the mapping of PIL.ImageOps.exif_transpose
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
_JPEG_FORMATS = frozenset({"JPEG", "MPO"})

# What Pillow raises on malformed or truncated data, depending on the format plugin.
_PIL_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    struct.error,
)
_DICOM_READ_ERRORS = (
    InvalidDicomError,
    OSError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    AttributeError,
    struct.error,
    NotImplementedError,
)


@dataclass(frozen=True)
class ConvertSettings:
    quality: int = DEFAULT_QUALITY
    max_side: int | None = None  # cap on the longer side; None keeps the original size
    max_pixels: int = MAX_PIXELS  # decompression-bomb limit (width * height)

    def __post_init__(self) -> None:
        if not 1 <= self.quality <= 100:
            raise ValueError(f"ConvertSettings.quality must be 1..100, got {self.quality}")
        if self.max_side is not None and self.max_side < 1:
            raise ValueError(f"ConvertSettings.max_side must be None or >= 1, got {self.max_side}")
        if self.max_pixels < 1:
            raise ValueError(f"ConvertSettings.max_pixels must be >= 1, got {self.max_pixels}")


@dataclass(frozen=True)
class ConvertedImage:
    jpeg: bytes  # 8-bit grayscale baseline JPEG, no metadata, deterministic
    width: int
    height: int
    input_format: str  # "JPEG", "PNG", "DICOM", ...
    input_mode: str  # PIL mode or DICOM photometric interpretation


@dataclass(frozen=True)
class NormalizedImage:
    """The converted picture before JPEG encoding: mode "L", final size and orientation."""

    image: Image.Image
    input_format: str
    input_mode: str


@dataclass(frozen=True)
class ProbeResult:
    format: str  # "JPEG", "PNG", "DICOM", ...
    mode: str  # PIL mode or DICOM photometric interpretation
    width: int
    height: int
    frames: int = 1


# ---------------------------------------------------------------------------------------------
# Public entry points


def convert_file(path: Path, settings: ConvertSettings = ConvertSettings()) -> ConvertedImage:
    """Convert the image file at ``path`` (JPEG, PNG, DICOM...) to the release's JPEG."""
    return _encode(normalize_file(path, settings), settings)


def convert_bytes(
    data: bytes, settings: ConvertSettings = ConvertSettings(), *, name: str = "<bytes>"
) -> ConvertedImage:
    """Convert an encoded image held in memory; ``name`` labels it in error messages."""
    return _encode(normalize_bytes(data, settings, name=name), settings)


def normalize_file(path: Path, settings: ConvertSettings = ConvertSettings()) -> NormalizedImage:
    """Decode ``path`` to the final 8-bit grayscale picture, without encoding it."""
    with open(path, "rb") as stream:
        return _normalize_stream(stream, settings, str(path))


def normalize_bytes(
    data: bytes, settings: ConvertSettings = ConvertSettings(), *, name: str = "<bytes>"
) -> NormalizedImage:
    """Decode an encoded image held in memory to the final 8-bit grayscale picture."""
    return _normalize_stream(io.BytesIO(data), settings, name)


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

    Put it in a conversion cache key: equal fingerprints and settings give equal JPEGs.
    """
    parts = [
        f"policy{POLICY_VERSION}",
        f"pillow{Image.__version__}",
        f"pydicom{pydicom.__version__}",
        f"numpy{np.__version__}",
    ]
    for distribution in _DECODER_DISTRIBUTIONS:
        try:
            parts.append(f"{distribution}{importlib.metadata.version(distribution)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{distribution}-absent")
    return "-".join(parts)


def target_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """The output size for an input of ``width`` x ``height`` under ``max_side``.

    The longer side becomes ``max_side`` when it exceeds it; the shorter side is scaled by the
    same factor and rounded half up (never below 1). Swapping width and height swaps the result.
    """
    longer, shorter = max(width, height), min(width, height)
    if max_side is None or longer <= max_side:
        return width, height
    scaled = max(1, (2 * shorter * max_side + longer) // (2 * longer))
    return (max_side, scaled) if width >= height else (scaled, max_side)


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


# ---------------------------------------------------------------------------------------------
# Pillow inputs


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


def _stretch_to_l(values: np.ndarray) -> Image.Image:
    """Map the stored range of a high-bit-depth image linearly onto 0..255 (half up)."""
    if values.dtype.kind == "f":
        values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        low, high = float(values.min()), float(values.max())
        if high <= low:
            return Image.fromarray(np.zeros(values.shape, dtype=np.uint8))
        scaled = np.floor((values - low) * (255.0 / (high - low)) + 0.5)
        return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8))
    values = values.astype(np.int64)
    low, high = int(values.min()), int(values.max())
    if high == low:
        return Image.fromarray(np.zeros(values.shape, dtype=np.uint8))
    span = high - low
    scaled = ((values - low) * 510 + span) // (2 * span)  # round half up, exact in integers
    return Image.fromarray(scaled.astype(np.uint8))


def _too_large(name: str, exc: Exception) -> ConversionError:
    return ConversionError(f"{name}: image exceeds the decompression-bomb limit ({exc})", reason="image-too-large")


def _open_pil(stream: BinaryIO, name: str) -> Image.Image:
    try:
        return Image.open(stream)
    except Image.DecompressionBombError as exc:
        raise _too_large(name, exc) from exc
    except _PIL_DECODE_ERRORS as exc:
        raise ConversionError(
            f"{name}: not an image Pillow can read ({type(exc).__name__}: {exc}); "
            "expected JPEG, PNG or DICOM: check the download",
            reason="undecodable",
        ) from exc


def _normalize_pil(stream: BinaryIO, settings: ConvertSettings, name: str) -> NormalizedImage:
    img = _open_pil(stream, name)
    _check_pixel_limit(img.width, img.height, settings, name)
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


_ORIENTATION_SOURCES = ("exif", "xmp", "XML:com.adobe.xmp", "Raw profile type exif")  # + TIFF tags


def _exif_orientation(img: Image.Image) -> int:
    if not (hasattr(img, "tag_v2") or any(key in img.info for key in _ORIENTATION_SOURCES)):
        return 1  # nothing to parse: skips getexif's work on the common metadata-free files
    try:
        return int(img.getexif().get(_ORIENTATION_TAG, 1))
    except _PIL_DECODE_ERRORS:
        return 1  # unreadable metadata: the pixels are still the picture as stored


# ---------------------------------------------------------------------------------------------
# DICOM inputs


def dicom_to_l(pixels: np.ndarray, ds: pydicom.Dataset, photometric: str) -> np.ndarray:
    """Map decoded DICOM pixel values to an 8-bit grayscale array.

    ``photometric`` describes ``pixels`` as decoded (colour data arrive as RGB).

    Monochrome:
    1. Modality LUT (``RescaleSlope``/``RescaleIntercept`` or Modality LUT Sequence) through
       pydicom's ``apply_modality_lut``.
    2. The first VOI LUT Sequence item when present (output range ``0..2**b - 1``, ``b`` the bit
       length of the LUT's largest entry, at least 8: LUT descriptors that claim 16 bits for
       12-bit entries are common), else the first Window Center/Width through pydicom's
       ``apply_windowing`` (LINEAR, LINEAR_EXACT or SIGMOID), mapped from the window's output
       range. A window pydicom refuses (e.g. width < 1) is ignored.
    3. Otherwise the 0.5th-99.5th percentiles (numpy's linear method) of the modality values
       are mapped to 0 and 255, values outside clipped; if they coincide, the full min-max.
    4. Rounded half up to 0..255; inverted (255 - v) for MONOCHROME1, or for MONOCHROME2 whose
       Presentation LUT Shape is INVERSE.

    Colour (RGB, PALETTE COLOR): scaled to 8 bits by the bit depth, then ITU-R 601-2 luma.
    """
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        if pixels.ndim != 2:
            raise ValueError(f"expected one sample per pixel, got shape {pixels.shape}")
        values = apply_modality_lut(pixels, ds)
        mapped = _apply_voi(values, ds)
        if mapped is None:
            mapped = _percentile_window(values)
        scaled, low, high = mapped
        gray = _to_uint8(scaled, low, high)
        inverse = str(ds.get("PresentationLUTShape", "")).strip().upper() == "INVERSE"
        if photometric == "MONOCHROME1" or inverse:
            gray = 255 - gray
        return gray
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, ds)
        bits = 16 if rgb.dtype.itemsize > 1 else 8
    elif pixels.ndim == 3 and pixels.shape[-1] == 3:
        rgb = pixels
        bits = int(ds.get("BitsStored", 8) or 8)
    else:
        raise ValueError(f"unsupported photometric interpretation {photometric!r}")
    if bits > 8:
        rgb = np.right_shift(rgb.astype(np.uint32), bits - 8)
    rgb8 = np.ascontiguousarray(np.clip(rgb, 0, 255).astype(np.uint8))
    return np.asarray(Image.fromarray(rgb8).convert("L"))


def _apply_voi(values: np.ndarray, ds: pydicom.Dataset) -> tuple[np.ndarray, float, float] | None:
    """(VOI output, its lowest, its highest value), or None without a usable VOI."""
    sequence = ds.get("VOILUTSequence")
    if sequence:
        item = sequence[0]
        if "LUTDescriptor" in item and "LUTData" in item:
            return _apply_voi_lut_item(values, item, ds)
    if ds.get("WindowCenter") is None or ds.get("WindowWidth") is None:
        return None
    try:
        windowed = apply_windowing(values, ds, index=0)
        # The window's image of -inf and +inf is its output range, whatever pydicom chose.
        low, high = apply_windowing(np.array([-np.inf, np.inf]), ds, index=0)
    except (ValueError, TypeError, IndexError, NotImplementedError):
        return None
    return windowed, float(low), float(high)


def _apply_voi_lut_item(
    values: np.ndarray, item: pydicom.Dataset, ds: pydicom.Dataset
) -> tuple[np.ndarray, float, float]:
    # Not pydicom's apply_voi: it indexes with the LUT's output dtype, so an 8-bit LUT with more
    # than 256 entries wraps around.
    entries, first_mapped, _declared_bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 65536
    element = item["LUTData"]
    raw = element.value
    if isinstance(raw, (bytes, bytearray)):  # VR OW: 16-bit words in the dataset's byte order
        syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        little = syntax is None or syntax.is_little_endian is not False
        lut = np.frombuffer(raw, dtype="<u2" if little else ">u2")[:entries]
    else:  # VR US: one value or several
        lut = np.asarray([raw] if isinstance(raw, int) else list(raw))
    lut = lut.astype(np.int64)
    if lut.size == 0:
        raise ValueError("empty VOI LUT Data")
    index = np.rint(values).astype(np.int64) - first_mapped
    np.clip(index, 0, lut.size - 1, out=index)
    bits = max(8, int(lut.max()).bit_length())
    return lut[index], 0.0, float(2**bits - 1)


def _percentile_window(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    low, high = (float(v) for v in np.percentile(values, DICOM_PERCENTILES))
    if high <= low:
        low, high = float(values.min()), float(values.max())
    return values, low, high


def _to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``low`` -> 0 and ``high`` -> 255 linearly (``high < low`` flips), round half up."""
    if high == low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (np.asarray(values, dtype=np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.floor(scaled + 0.5), 0, 255).astype(np.uint8)


def _is_dicom(stream: BinaryIO) -> bool:
    head = stream.read(_DICOM_MAGIC_OFFSET + len(_DICOM_MAGIC))
    stream.seek(0)
    return head[_DICOM_MAGIC_OFFSET:] == _DICOM_MAGIC


def _read_dicom(stream: BinaryIO, name: str, *, stop_before_pixels: bool = False) -> pydicom.Dataset:
    try:
        ds = pydicom.dcmread(stream, stop_before_pixels=stop_before_pixels)
        ds.get("Rows")  # elements are parsed lazily: touch one so header damage shows here
    except _DICOM_READ_ERRORS as exc:
        raise ConversionError(
            f"{name}: DICOM header cannot be read ({type(exc).__name__}: {exc}); "
            "the file is truncated or corrupt: download it again",
            reason="undecodable",
        ) from exc
    return ds


def _photometric(ds: pydicom.Dataset) -> str:
    return str(ds.get("PhotometricInterpretation", "") or "").strip().upper()


def _dicom_frames(ds: pydicom.Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _transfer_syntax_label(uid: object) -> str:
    name = getattr(uid, "name", "") or "unknown transfer syntax"
    return f"{uid} ({name})"


def _decode_dicom_pixels(ds: pydicom.Dataset, name: str) -> tuple[np.ndarray, str]:
    """Decoded pixels of a single-frame dataset and their photometric interpretation."""
    uid = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if not uid:
        raise ConversionError(
            f"{name}: DICOM file meta has no Transfer Syntax UID (0002,0010); "
            "expected a Part 10 file",
            reason="dicom-undecodable",
        )
    label = _transfer_syntax_label(uid)
    try:
        decoder = get_decoder(uid)
    except NotImplementedError as exc:
        raise ConversionError(
            f"{name}: transfer syntax {label} has no pixel data decoder in pydicom ({exc})",
            reason="dicom-undecodable",
        ) from exc
    if decoder.is_native:
        plugins: tuple[str, ...] = ("",)
    else:
        available = decoder.available_plugins
        if not available:
            missing = "; ".join(decoder.missing_dependencies) or "none listed"
            raise ConversionError(
                f"{name}: transfer syntax {label} cannot be decoded here: no decoder plugin is "
                f"installed (missing: {missing})",
                reason="dicom-undecodable",
            )
        ranked = {plugin: rank for rank, plugin in enumerate(DICOM_PLUGIN_PREFERENCE)}
        plugins = tuple(sorted(available, key=lambda p: (ranked.get(p, len(ranked)), p)))
    failures = []
    for plugin in plugins:
        try:
            pixels, meta = decoder.as_array(ds, decoding_plugin=plugin, as_rgb=True)
        except Exception as exc:  # plugins raise anything: RuntimeError, ValueError, OSError...
            failures.append(f"{plugin or 'native'}: {type(exc).__name__}: {exc}")
            continue
        photometric = str(meta.get("photometric_interpretation", _photometric(ds))).upper()
        return pixels, photometric
    raise ConversionError(
        f"{name}: pixel data with transfer syntax {label} cannot be decoded "
        f"({' | '.join(failures)}); the file is corrupt or uses an unsupported variant",
        reason="dicom-undecodable",
    )


def _normalize_dicom(stream: BinaryIO, settings: ConvertSettings, name: str) -> NormalizedImage:
    ds = _read_dicom(stream, name)
    photometric = _photometric(ds)
    frames = _dicom_frames(ds)
    if frames > 1:
        raise ConversionError(
            f"{name}: multi-frame DICOM ({frames} frames, {photometric}); a release holds single "
            "radiographs: exclude it or extract the frame wanted",
            reason="dicom-multiframe",
        )
    if "PixelData" not in ds:
        raise ConversionError(
            f"{name}: DICOM file has no Pixel Data element (7FE0,0010); expected an image",
            reason="undecodable",
        )
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ConversionError(
            f"{name}: DICOM Rows/Columns missing or invalid ({exc})", reason="undecodable"
        ) from exc
    _check_pixel_limit(columns, rows, settings, name)
    pixels, decoded_photometric = _decode_dicom_pixels(ds, name)
    try:
        gray = dicom_to_l(pixels, ds, decoded_photometric)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, NotImplementedError) as exc:
        raise ConversionError(
            f"{name}: DICOM pixels ({decoded_photometric}, transfer syntax "
            f"{_transfer_syntax_label(ds.file_meta.TransferSyntaxUID)}) cannot be mapped to "
            f"grayscale ({type(exc).__name__}: {exc})",
            reason="undecodable",
        ) from exc
    image = Image.fromarray(gray)
    target = target_size(image.width, image.height, settings.max_side)
    if image.size != target:
        image = image.resize(target, RESAMPLE)
    return NormalizedImage(image, "DICOM", photometric)


# ---------------------------------------------------------------------------------------------
# Shared steps


def _normalize_stream(stream: BinaryIO, settings: ConvertSettings, name: str) -> NormalizedImage:
    if _is_dicom(stream):
        return _normalize_dicom(stream, settings, name)
    return _normalize_pil(stream, settings, name)


def _check_pixel_limit(width: int, height: int, settings: ConvertSettings, name: str) -> None:
    if width * height > settings.max_pixels:
        raise ConversionError(
            f"{name}: {width}x{height} = {width * height:,} pixels exceeds the limit of "
            f"{settings.max_pixels:,} (decompression-bomb guard); exclude the file or raise "
            "ConvertSettings.max_pixels if it is a genuine radiograph",
            reason="image-too-large",
        )


def _encode(normalized: NormalizedImage, settings: ConvertSettings) -> ConvertedImage:
    image = normalized.image
    return ConvertedImage(
        jpeg=encode_jpeg(image, settings.quality),
        width=image.width,
        height=image.height,
        input_format=normalized.input_format,
        input_mode=normalized.input_mode,
    )
