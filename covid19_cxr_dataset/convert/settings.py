"""The conversion policy's settings, limits and results (``ConvertSettings``, ``ConvertedImage``), and the
refusals decided from an image's header alone (``_check_size``: policy step 2; ``target_size``: step 6)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from PIL import Image
from pydicom.errors import InvalidDicomError

from ..errors import ConversionError


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


POLICY_VERSION = 3

"""Bump whenever this module's output for some input changes (cache keys use it)."""


MAX_DECODE_BYTES = 640 * 2**20

"""Per-image decode working-memory limit (``decode_bytes``); a worker then stays under 1 GiB."""


MAX_JPEG_SCANS = 500

"""A JPEG with more scans is refused (``image-too-many-scans``): each scan is a pass over the whole image,
and encoders write a few dozen at most (libjpeg's progressive scripts: 6 for gray, 10 for colour).
libjpeg-turbo's own documentation suggests the same bound for its scan limit."""


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


SUFFIXES = {"lossless-jpeg": ".jpg", "normalized-jpeg": ".jpg", "normalized-png": ".png"}


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
    repair: str = ""  # what was missing from a stream whose pixels are complete (convert.integrity), "" if nothing

    @property
    def jpeg(self) -> bytes:
        """The encoded bytes (kept under this name for callers of the JPEG-only versions)."""
        return self.data

    @property
    def suffix(self) -> str:
        return SUFFIXES[self.conversion]


@dataclass(frozen=True)
class NormalizedImage:
    """The converted picture before JPEG encoding: mode "L", final size and orientation."""

    image: Image.Image
    input_format: str
    input_mode: str
    repair: str = ""  # as ConvertedImage.repair


@dataclass(frozen=True)
class ProbeResult:
    format: str  # "JPEG", "PNG", "DICOM", ...
    mode: str  # PIL mode or DICOM photometric interpretation
    width: int
    height: int
    frames: int = 1


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


def _too_large(name: str, exc: Exception) -> ConversionError:
    return ConversionError(f"{name}: image exceeds the decompression-bomb limit ({exc})", reason="image-too-large")


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
