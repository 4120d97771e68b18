"""DICOM inputs: reading, pixel decoding by the preferred plugin, and the modality LUT, VOI LUT or window
to 8-bit gray (``dicom_to_l``).

The per-image memory limit holds before anything is inflated or decoded: a deflate-compressed dataset
is refused when it would inflate past a quarter of ``max_decode_bytes`` (``_check_inflated_size``,
counted block by block), and an encapsulated frame whose own header states another size than the
DICOM's Rows x Columns is refused before its decoder allocates that size (``_check_frame_size``)."""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO

import numpy as np
import pydicom
from PIL import Image
from pydicom.encaps import generate_frames
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_windowing, get_decoder

from ..errors import ConversionError
from .settings import (
    DICOM_PERCENTILES, DICOM_PLUGIN_PREFERENCE, MAX_DECODE_BYTES, RESAMPLE, ConvertSettings, NormalizedImage, _DICOM_MAGIC,
    _DICOM_MAGIC_OFFSET, _DICOM_READ_ERRORS, _check_size, target_size,
)


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


_DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian: the whole dataset is one deflate stream


_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"})  # 4-byte lengths


def _meta_transfer_syntax(head: bytes) -> tuple[str, int]:
    """(Transfer Syntax UID, offset of the dataset) from a Part 10 file's meta group (always explicit VR
    little endian), walked element by element; ("", 0) when the group cannot be walked."""
    offset, syntax = _DICOM_MAGIC_OFFSET + len(_DICOM_MAGIC), ""
    try:
        while offset + 8 <= len(head):
            group, element = struct.unpack_from("<HH", head, offset)
            if group != 0x0002:
                return syntax, offset
            vr = head[offset + 4 : offset + 6]
            if vr in _LONG_VRS:
                (length,), start = struct.unpack_from("<I", head, offset + 8), offset + 12
            else:
                (length,), start = struct.unpack_from("<H", head, offset + 6), offset + 8
            if element == 0x0010:
                syntax = head[start : start + length].rstrip(b"\0 ").decode("ascii", "replace")
            offset = start + length
    except struct.error:
        pass
    return syntax, offset if syntax else 0


def _check_inflated_size(stream: BinaryIO, name: str, limit: int) -> None:
    """Refuse a deflate-compressed DICOM whose dataset inflates to more than ``limit`` bytes, counted by
    inflating it a block at a time (nothing kept): pydicom inflates the whole dataset into memory at
    once, so a megabyte of deflate could otherwise hide gigabytes in a private element."""
    syntax, start = _meta_transfer_syntax(stream.read(1 << 16))
    stream.seek(0)
    if syntax != _DEFLATED:
        return
    stream.seek(start)
    inflater, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
    try:
        while chunk := stream.read(1 << 16):
            while chunk:
                total += len(inflater.decompress(chunk, 1 << 20))
                if total > limit:
                    raise ConversionError(
                        f"{name}: deflate-compressed DICOM whose dataset inflates to more than {limit / 2**20:,.0f} MiB (the "
                        "reader holds all of it, several times over; a quarter of the per-image memory limit): a "
                        "decompression bomb, or pixel data far over the limit: exclude the file or raise "
                        "ConvertSettings.max_decode_bytes",
                        reason="image-too-large",
                    )
                chunk = inflater.unconsumed_tail
            if inflater.eof:
                break
    except zlib.error:
        pass  # pydicom reports the damage
    finally:
        stream.seek(0)


def _read_dicom(stream: BinaryIO, name: str, *, stop_before_pixels: bool = False,
                max_inflated: int = MAX_DECODE_BYTES // 4) -> pydicom.Dataset:
    _check_inflated_size(stream, name, max_inflated)
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


def _frame_header_size(frame: bytes) -> tuple[int, int] | None:
    """(width, height) an encapsulated frame's own codestream header states: a JPEG, JPEG-LS or lossless
    JPEG frame header (SOFn), a JPEG 2000 / HTJ2K SIZ marker; None for other codings (RLE: its decoder
    writes Rows x Columns whatever it holds). ValueError when a JPEG-family header cannot be walked."""
    if frame[:2] == b"\xff\xd8":
        offset = 2
        while offset + 4 <= len(frame):
            if frame[offset] != 0xFF:
                raise ValueError(f"expected a marker at byte {offset}")
            marker = frame[offset + 1]
            if marker == 0xFF:
                offset += 1
                continue
            if marker in (0x01, *range(0xD0, 0xD8)):
                offset += 2
                continue
            if marker in (0xD9, 0xDA):
                break
            (length,) = struct.unpack_from(">H", frame, offset + 2)
            if (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker == 0xF7:  # SOFn, SOF55 (JPEG-LS)
                height, width = struct.unpack_from(">HH", frame, offset + 5)
                return width, height
            offset += 2 + length
        raise ValueError("no frame header (SOF) before the first scan")
    siz = frame.find(b"\xff\x4f\xff\x51", 0, 1 << 16)  # JPEG 2000 codestream: SOC, then SIZ
    if siz >= 0:
        x, y, x0, y0 = struct.unpack_from(">IIII", frame, siz + 8)
        return x - x0, y - y0
    return None


def _check_frame_size(ds: pydicom.Dataset, columns: int, rows: int, name: str) -> None:
    """Refuse an encapsulated frame whose own header states another size than Rows x Columns, before it
    is decoded: the memory limit was checked against the DICOM header, and a decoder allocates what
    the frame states (a 64x64 header over a 16000x16000 JPEG frame would take gigabytes)."""
    uid = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if not uid or not getattr(uid, "is_encapsulated", False):
        return
    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        size = _frame_header_size(frame)
    except (StopIteration, ValueError, struct.error, TypeError) as exc:
        raise ConversionError(
            f"{name}: the encapsulated frame of transfer syntax {_transfer_syntax_label(uid)} has no readable header "
            f"({type(exc).__name__}: {exc}); the file is truncated or corrupt: download it again",
            reason="dicom-undecodable",
        ) from exc
    if size is not None and size != (columns, rows):
        raise ConversionError(
            f"{name}: the DICOM header says {columns}x{rows} (Columns x Rows), but its encapsulated frame "
            f"({_transfer_syntax_label(uid)}) says {size[0]}x{size[1]}; not decoded (the memory limit holds for the "
            "size the header states): the file is corrupt or crafted: exclude it",
            reason="dicom-undecodable",
        )


def _normalize_dicom(stream: BinaryIO, settings: ConvertSettings, name: str) -> NormalizedImage:
    ds = _read_dicom(stream, name, max_inflated=settings.max_decode_bytes // 4)
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
    _check_frame_size(ds, columns, rows, name)
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
