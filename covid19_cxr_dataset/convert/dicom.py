"""DICOM inputs: reading, pixel decoding by the preferred plugin, and the modality LUT, VOI LUT or window
to 8-bit gray (``dicom_to_l``)."""

from __future__ import annotations

from typing import BinaryIO

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_windowing, get_decoder

from ..errors import ConversionError
from .settings import ConvertSettings, DICOM_PERCENTILES, DICOM_PLUGIN_PREFERENCE, NormalizedImage, RESAMPLE, _DICOM_MAGIC, _DICOM_MAGIC_OFFSET, _DICOM_READ_ERRORS, _check_size, target_size


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
