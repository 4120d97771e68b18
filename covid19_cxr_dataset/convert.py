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
3. **Lossless JPEG path** (``lossless_jpeg``, see ``jpeg_transcode``): an 8-bit gray or YCbCr
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

from . import jpeg_transcode
from .errors import ConversionError, CxrDatasetError

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

POLICY_VERSION = 2
"""Bump whenever this module's output for some input changes (cache keys use it)."""

MAX_DECODE_BYTES = 640 * 2**20
"""Per-image decode working-memory limit (``decode_bytes``); a worker then stays under 1 GiB."""
MIN_SIDE = 16
"""Default shortest side (px) of a film; smaller images are ``image-too-small``."""
JPEG_MAX_SIDE = 65_500
"""libjpeg refuses to encode a side longer than this."""
PNG_COMPRESS_LEVEL = 6

ACCEPTED_FORMATS = ("JPEG", "PNG", "DICOM")
"""The input formats this module can convert; a release accepts these or a subset."""
FALLBACK_FORMATS = ("jpeg", "png")

CONVERSIONS = {
    "lossless-jpeg": "JPEG source: its luminance DCT coefficients copied into a grayscale JPEG (no decode)",
    "normalized-jpeg": "decoded, normalized to 8-bit grayscale, encoded as JPEG at the release's quality",
    "normalized-png": "decoded, normalized to 8-bit grayscale, encoded as 8-bit PNG",
}
"""Values of ``ConvertedImage.conversion`` (the release's ``conversion`` column)."""
_SUFFIX = {"lossless-jpeg": ".jpg", "normalized-jpeg": ".jpg", "normalized-png": ".png"}

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
    """How a release converts its images (the manifest's ``convert`` section)."""

    quality: int = DEFAULT_QUALITY  # of normalized-jpeg output
    max_side: int | None = None  # cap on the longer side; None keeps the original size
    max_pixels: int = MAX_PIXELS  # decompression-bomb limit (width * height)
    lossless_jpeg: bool = True  # JPEG sources keep their luminance coefficients
    fallback_format: str = "jpeg"  # what the decode path writes: "jpeg" (at quality) or "png"
    optimize_huffman: bool = True  # lossless-jpeg output with optimized Huffman tables
    input_formats: tuple[str, ...] = ACCEPTED_FORMATS  # accepted by magic bytes
    min_side: int = MIN_SIDE  # shorter side below this: image-too-small
    max_decode_bytes: int = MAX_DECODE_BYTES  # decode working-memory limit per image

    def __post_init__(self) -> None:
        if not 1 <= self.quality <= 100:
            raise ValueError(f"ConvertSettings.quality must be 1..100, got {self.quality}")
        if self.max_side is not None and self.max_side < 1:
            raise ValueError(f"ConvertSettings.max_side must be None or >= 1, got {self.max_side}")
        if self.max_pixels < 1:
            raise ValueError(f"ConvertSettings.max_pixels must be >= 1, got {self.max_pixels}")
        if self.fallback_format not in FALLBACK_FORMATS:
            raise ValueError(f"ConvertSettings.fallback_format must be one of {FALLBACK_FORMATS}, got {self.fallback_format!r}")
        formats = tuple(str(f).upper() for f in self.input_formats)
        unknown = sorted(set(formats) - set(ACCEPTED_FORMATS))
        if unknown or not formats:
            raise ValueError(f"ConvertSettings.input_formats must be a non-empty subset of {ACCEPTED_FORMATS}, got {self.input_formats!r}")
        object.__setattr__(self, "input_formats", tuple(f for f in ACCEPTED_FORMATS if f in formats))
        if self.min_side < 1:
            raise ValueError(f"ConvertSettings.min_side must be >= 1, got {self.min_side}")
        if self.max_decode_bytes < 1:
            raise ValueError(f"ConvertSettings.max_decode_bytes must be >= 1, got {self.max_decode_bytes}")

    def cache_identity(self) -> str:
        """Every setting that changes output bytes, for conversion cache keys."""
        return "|".join(f"{name}={getattr(self, name)!r}" for name in self.__dataclass_fields__)

    @property
    def fallback_conversion(self) -> str:
        return f"normalized-{self.fallback_format}"


@dataclass(frozen=True)
class ConvertedImage:
    data: bytes  # 8-bit grayscale JPEG (baseline) or PNG, no metadata, deterministic
    width: int
    height: int
    input_format: str  # "JPEG", "PNG", "DICOM", ...
    input_mode: str  # PIL mode or DICOM photometric interpretation
    conversion: str = "normalized-jpeg"  # a key of CONVERSIONS

    @property
    def jpeg(self) -> bytes:
        """The encoded bytes (kept under this name for callers of the JPEG-only versions)."""
        return self.data

    @property
    def suffix(self) -> str:
        return _SUFFIX[self.conversion]


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
    return _normalize(data, _accepted_format(data, settings, name), settings, name)


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
    versions.update(jpeg_transcode.library_versions())
    return versions


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


def _convert(data: bytes, settings: ConvertSettings, name: str) -> ConvertedImage:
    fmt = _accepted_format(data, settings, name)
    if fmt == "JPEG" and settings.lossless_jpeg:
        transcoded = _transcode_jpeg(data, settings, name)
        if transcoded is not None:
            return transcoded
    return _encode(_normalize(data, fmt, settings, name), settings, name)


def _transcode_jpeg(data: bytes, settings: ConvertSettings, name: str) -> ConvertedImage | None:
    """The lossless-jpeg path, or None when this stream must be decoded instead (policy 3)."""
    try:
        header = jpeg_transcode.read_header(data)
    except ValueError:
        return None  # the decoder says what is wrong with it
    if jpeg_transcode.lossless_obstacle(header):
        return None
    if not jpeg_transcode.available():  # never a silent change of output: the release asks for this path
        raise CxrDatasetError(
            "the release transcodes JPEG sources losslessly (convert.lossless_jpeg), but the 'turbojpeg' package "
            "(libjpeg-turbo's transform API) is missing or shadowed by PyTurboJPEG, which installs a module of the "
            "same name; run: pip install --force-reinstall 'turbojpeg>=0.0.2,<0.1' (and uninstall PyTurboJPEG)"
        )
    width, height = header.width, header.height
    _check_size(width, height, settings, name, decode_bytes=header.coefficient_bytes + 2 * len(data), jpeg_output=False)
    if target_size(width, height, settings.max_side) != (width, height):
        return None
    if header.has_exif:
        try:
            if _exif_orientation(Image.open(io.BytesIO(data))) not in (0, 1):
                return None  # the decode path rotates it
        except _PIL_DECODE_ERRORS:
            return None  # the decode path reports the damage
    try:
        output = jpeg_transcode.transcode_luminance(data, optimize=settings.optimize_huffman)
        check = jpeg_transcode.read_header(output)
    except (jpeg_transcode.TranscodeError, ValueError):
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


def _check_not_constant(image: Image.Image, name: str) -> None:
    low, high = image.getextrema()
    if low == high:
        raise ConversionError(
            f"{name}: every pixel of the {image.width}x{image.height} image has the value {low} after conversion "
            "(a blank film, or a constant high-bit-depth image); it holds no radiograph: exclude it",
            reason="image-constant",
        )


def cache_path(stem: Path, conversion: str) -> Path:
    """Where a conversion cache keeps an output: ``<stem>.<conversion><suffix>``."""
    return stem.with_name(f"{stem.name}.{conversion}{_SUFFIX[conversion]}")


def cached_output(stem: Path) -> Path | None:
    """The cached output for ``stem``, whichever path it took, or None."""
    for conversion in CONVERSIONS:
        path = cache_path(stem, conversion)
        if path.is_file():
            return path
    return None


def conversion_of(path: str | Path) -> str:
    """The conversion path of a cached output, from its name (``cache_path``)."""
    name = Path(path).name
    for conversion, suffix in _SUFFIX.items():
        if name.endswith(f".{conversion}{suffix}"):
            return conversion
    raise ValueError(f"{path}: not a conversion cache file name (<sha256>.<conversion><suffix>)")


def conversion_summary(converted_paths) -> dict:
    """For the build report: images per conversion path, and the library versions the bytes depend on."""
    counts = {conversion: 0 for conversion in CONVERSIONS}
    for path in converted_paths:
        if path:
            counts[conversion_of(path)] += 1
    return {"counts": counts, "libraries": library_versions()}


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


def encode_png(image: Image.Image) -> bytes:
    """Encode an "L" image as the release's 8-bit grayscale PNG: fixed zlib level, no ancillary chunks."""
    if image.mode != "L":
        raise ValueError(f"encode_png expects a mode 'L' image, got mode {image.mode!r}")
    buffer = io.BytesIO()
    # Pillow copies icc_profile and transparency from image.info unless given; give neither.
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False, icc_profile=None, transparency=None)
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


def _too_large(name: str, exc: Exception) -> ConversionError:
    return ConversionError(f"{name}: image exceeds the decompression-bomb limit ({exc})", reason="image-too-large")


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
            header = jpeg_transcode.read_header(data)
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


def _normalize_with_libjpeg(data: bytes, header: jpeg_transcode.JpegHeader, settings: ConvertSettings, name: str) -> NormalizedImage:
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
    mode = {"GRAY": "I;16" if header.precision > 8 else "L"}.get(header.color_space, header.color_space)
    return NormalizedImage(gray, "JPEG", mode)


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


_DICOM_EXTRA_BYTES = 40  # float64 modality values, window output and percentile copies per pixel


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
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    stored = max(1, int(ds.get("BitsAllocated", 16) or 16) // 8) * samples
    _check_size(columns, rows, settings, name, decode_bytes=columns * rows * (stored + _DICOM_EXTRA_BYTES))
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


def _normalize(data: bytes, fmt: str, settings: ConvertSettings, name: str) -> NormalizedImage:
    if fmt == "DICOM":
        normalized = _normalize_dicom(io.BytesIO(data), settings, name)
    else:
        normalized = _normalize_pil(data, fmt, settings, name)
    _check_not_constant(normalized.image, name)
    return normalized


def _check_size(width: int, height: int, settings: ConvertSettings, name: str, *, decode_bytes: int, jpeg_output: bool | None = None) -> None:
    """Refusals from the header alone (policy 2): pixel count, decode memory, JPEG side limit, tiny films."""
    if width * height > settings.max_pixels:
        raise ConversionError(
            f"{name}: {width}x{height} = {width * height:,} pixels exceeds the limit of "
            f"{settings.max_pixels:,} (decompression-bomb guard); exclude the file or raise "
            "ConvertSettings.max_pixels if it is a genuine radiograph",
            reason="image-too-large",
        )
    if decode_bytes > settings.max_decode_bytes:
        raise ConversionError(
            f"{name}: decoding this {width}x{height} image needs about {decode_bytes / 2**20:,.0f} MiB "
            f"(mode and bit depth included), over the per-image limit of {settings.max_decode_bytes / 2**20:,.0f} MiB "
            "that keeps each worker under 1 GiB; exclude the file or raise ConvertSettings.max_decode_bytes",
            reason="image-too-large",
        )
    if jpeg_output is None:
        jpeg_output = settings.fallback_format == "jpeg"
    target = target_size(width, height, settings.max_side)
    if jpeg_output and max(target) > JPEG_MAX_SIDE:
        raise ConversionError(
            f"{name}: the output would be {target[0]}x{target[1]} px, and JPEG holds at most {JPEG_MAX_SIDE:,} px a "
            "side; exclude the file, set the release's max_side, or choose fallback_format: png",
            reason="image-too-large",
        )
    if min(width, height) < settings.min_side:
        raise ConversionError(
            f"{name}: {width}x{height} px is smaller than the release's minimum side of {settings.min_side} px; "
            "a thumbnail or placeholder, not a film: exclude it",
            reason="image-too-small",
        )


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
