"""convert/: every input kind -> the release's 8-bit grayscale JPEG.

Pixel checks compare the normalized 8-bit array (``normalize_bytes``/``normalize_file``, before
JPEG encoding) with an expectation computed here from first principles, exactly; the JPEG round
trip is checked separately with a tolerance.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageOps
from pydicom.uid import (
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    UID,
)

from covid19_cxr_dataset import records
from covid19_cxr_dataset.convert import (
    MAX_PIXELS,
    ConvertSettings,
    convert_bytes,
    convert_file,
    encode_jpeg,
    normalize_bytes,
    normalize_file,
    output_fingerprint,
    pil_to_l,
    probe,
    target_size,
)
from covid19_cxr_dataset.errors import ConversionError

from dicom_factory import (
    compress_jpeg_baseline_with_pillow,
    compress_with_gdcm,
    compress_with_pydicom,
    encapsulate_frame,
    gdcm_available,
    make_dataset,
    to_bytes,
)

_real_env = os.environ.get("COVID19_CXR_REAL_FIXTURES", "")
REAL = Path(_real_env) if _real_env else None
HAVE_REAL = REAL is not None and REAL.is_dir()
requires_real = pytest.mark.skipif(not HAVE_REAL, reason="COVID19_CXR_REAL_FIXTURES unset or missing")
requires_gdcm = pytest.mark.skipif(not gdcm_available(), reason="python-gdcm (test-only JPEG-LS/lossless encoder) missing")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


# ---------------------------------------------------------------------------------------------
# Helpers: expectations from first principles


def gray_of(normalized) -> np.ndarray:
    assert normalized.image.mode == "L"
    return np.asarray(normalized.image)


def normalized_array(data: bytes, settings: ConvertSettings = ConvertSettings()) -> np.ndarray:
    return gray_of(normalize_bytes(data, settings))


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma in Pillow's fixed point: (19595 R + 38470 G + 7471 B + 2^15) >> 16."""
    rgb = rgb.astype(np.int64)
    return ((rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16).astype(np.uint8)


def over_black(gray: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """round(L * A / 255); never a tie since 255 is odd."""
    return np.rint(gray.astype(np.float64) * alpha.astype(np.float64) / 255.0).astype(np.uint8)


def round_half_up(values: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(values + 0.5), 0, 255).astype(np.uint8)


def linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 (LINEAR) onto 0..255."""
    x = x.astype(np.float64)
    low_edge = center - 0.5 - (width - 1) / 2
    high_edge = center - 0.5 + (width - 1) / 2
    y = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255
    y = np.where(x <= low_edge, 0.0, np.where(x > high_edge, 255.0, y))
    return round_half_up(y)


def percentile_stretch(x: np.ndarray) -> np.ndarray:
    low, high = np.percentile(x.astype(np.float64), [0.5, 99.5])
    return round_half_up((np.clip(x, low, high) - low) * 255.0 / (high - low))


def png_bytes(image: Image.Image, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **params)
    return buffer.getvalue()


def encoded(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def jpeg_markers(data: bytes) -> list[int]:
    """Marker codes of a JPEG up to and including SOS."""
    assert data[:2] == b"\xff\xd8"
    markers, offset = [], 2
    while offset < len(data):
        assert data[offset] == 0xFF
        marker = data[offset + 1]
        markers.append(marker)
        if marker == 0xDA:
            return markers
        (length,) = struct.unpack(">H", data[offset + 2 : offset + 4])
        offset += 2 + length
    raise AssertionError("no SOS marker")


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth 8-bit picture (gradients + blobs): JPEG error on it stays small."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    rng = np.random.default_rng(seed)
    picture = 40 + 150 * xx / width + 40 * np.sin(yy / 9.0)
    for _ in range(4):
        cy, cx, radius = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(5, 15)
        picture += 30 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
    return np.clip(picture, 0, 255).astype(np.uint8)


RNG = np.random.default_rng(20200605)
STORED_12 = RNG.integers(0, 4096, (48, 64)).astype(np.uint16)
STORED_16 = RNG.integers(0, 65536, (40, 56)).astype(np.uint16)
SIGNED_12 = RNG.integers(-2048, 2048, (48, 64)).astype(np.int16)


# ---------------------------------------------------------------------------------------------
# DICOM: values of interest


def test_dicom_window_monochrome2_12_bit():
    ds = make_dataset(STORED_12, bits_stored=12, window=(2000, 1025))
    result = normalize_bytes(to_bytes(ds))
    assert (result.input_format, result.input_mode) == ("DICOM", "MONOCHROME2")
    np.testing.assert_array_equal(gray_of(result), linear_window(STORED_12, 2000, 1025))


def test_dicom_monochrome1_is_inverted_so_bone_is_bright():
    ds = make_dataset(STORED_12, bits_stored=12, window=(2000, 1025), photometric="MONOCHROME1")
    result = normalize_bytes(to_bytes(ds))
    assert result.input_mode == "MONOCHROME1"
    np.testing.assert_array_equal(gray_of(result), 255 - linear_window(STORED_12, 2000, 1025))


def test_dicom_monochrome2_with_inverse_presentation_lut_shape_is_inverted():
    ds = make_dataset(STORED_12, bits_stored=12, window=(2000, 1025))
    ds.PresentationLUTShape = "INVERSE"
    np.testing.assert_array_equal(normalized_array(to_bytes(ds)), 255 - linear_window(STORED_12, 2000, 1025))


def test_dicom_first_of_several_windows_is_used():
    ds = make_dataset(STORED_12, bits_stored=12, window=([2000, 500], [1025, 100]))
    np.testing.assert_array_equal(normalized_array(to_bytes(ds)), linear_window(STORED_12, 2000, 1025))


def test_dicom_sigmoid_window():
    ds = make_dataset(STORED_12, bits_stored=12, window=(2000, 1000), voi_function="SIGMOID")
    expected = round_half_up(255.0 / (1 + np.exp(-4 * (STORED_12.astype(np.float64) - 2000) / 1000)))
    np.testing.assert_array_equal(normalized_array(to_bytes(ds)), expected)


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
@pytest.mark.parametrize("stored, bits", [(STORED_12, 12), (STORED_16, 16)], ids=["12-bit", "16-bit"])
def test_dicom_without_voi_uses_the_percentile_range(stored, bits, photometric):
    ds = make_dataset(stored, bits_stored=bits, photometric=photometric)
    expected = percentile_stretch(stored)
    if photometric == "MONOCHROME1":
        expected = 255 - expected
    np.testing.assert_array_equal(normalized_array(to_bytes(ds)), expected)


def test_dicom_12_bit_uses_the_full_output_range():
    ds = make_dataset(STORED_12 // 2, bits_stored=12)  # values 0..2047 only
    gray = normalized_array(to_bytes(ds))
    assert gray.min() == 0 and gray.max() == 255


def test_dicom_rescale_slope_intercept_before_window():
    ds = make_dataset(STORED_12, bits_stored=12, rescale=(2, -1024), window=(1000, 2049))
    modality = STORED_12.astype(np.float64) * 2 - 1024
    np.testing.assert_array_equal(normalized_array(to_bytes(ds)), linear_window(modality, 1000, 2049))


def test_dicom_rescale_without_window_uses_percentiles_of_modality_values():
    ds = make_dataset(STORED_12, bits_stored=12, rescale=(-1.5, 3000))  # negative slope flips
    modality = STORED_12.astype(np.float64) * -1.5 + 3000
    np.testing.assert_array_equal(normalized_array(to_bytes(ds)), percentile_stretch(modality))


def test_dicom_signed_pixels_are_sign_extended_from_bits_stored():
    # 12-bit two's complement stored without sign extension in 16-bit words, as devices write it.
    raw = (SIGNED_12.astype(np.int32) & 0x0FFF).astype("<u2").tobytes()
    ds = make_dataset(SIGNED_12, bits_stored=12, signed=True, window=(0, 4097), raw_pixel_bytes=raw)
    np.testing.assert_array_equal(normalized_array(to_bytes(ds)), linear_window(SIGNED_12, 0, 4097))


def test_dicom_signed_pixels_without_window():
    ds = make_dataset(SIGNED_12, bits_stored=12, signed=True)
    np.testing.assert_array_equal(normalized_array(to_bytes(ds)), percentile_stretch(SIGNED_12))


@pytest.mark.parametrize("vr", ["US", "OW"])
def test_dicom_voi_lut_sequence_with_8_bit_entries_and_4096_inputs(vr):
    # pydicom 3.0's apply_voi indexes with the LUT's uint8 dtype and wraps for > 256 entries.
    # A window is present too: the LUT wins.
    lut = np.floor(np.sqrt(np.arange(4096) / 4095) * 255).astype(int)
    ds = make_dataset(STORED_12, bits_stored=12, voi_lut=([4096, 0, 8], lut.tolist()), voi_lut_vr=vr, window=(10, 10))
    np.testing.assert_array_equal(normalized_array(to_bytes(ds)), lut[STORED_12].astype(np.uint8))


def test_dicom_voi_lut_declared_16_bit_with_12_bit_entries_and_first_mapped():
    lut = 4095 - np.arange(2048) * 2  # inverting ramp over inputs 1024..3071
    ds = make_dataset(STORED_12, bits_stored=12, voi_lut=([2048, 1024, 16], lut.tolist()))
    index = np.clip(STORED_12.astype(int) - 1024, 0, 2047)
    expected = round_half_up(lut[index] * 255.0 / 4095)
    np.testing.assert_array_equal(normalized_array(to_bytes(ds)), expected)


# ---------------------------------------------------------------------------------------------
# DICOM: transfer syntaxes

NATIVE_CASES = {
    "12-bit window": dict(pixels=STORED_12, bits_stored=12, window=(2000, 1025)),
    "16-bit MONOCHROME1 percentiles": dict(pixels=STORED_16, bits_stored=16, photometric="MONOCHROME1"),
    "signed rescaled": dict(pixels=SIGNED_12, bits_stored=12, signed=True, rescale=(1, -100)),
}


def _native(case: str):
    params = dict(NATIVE_CASES[case])
    ds = make_dataset(params.pop("pixels"), **params)
    return ds, normalized_array(to_bytes(ds))


@pytest.mark.parametrize("case", sorted(NATIVE_CASES))
@pytest.mark.parametrize("uid", [RLELossless, JPEG2000Lossless], ids=lambda u: UID(u).name)
def test_dicom_lossless_pydicom_encoded_matches_native(uid, case):
    ds, expected = _native(case)
    compressed = to_bytes(compress_with_pydicom(ds, uid))
    assert pydicom.dcmread(io.BytesIO(compressed)).file_meta.TransferSyntaxUID == uid
    np.testing.assert_array_equal(normalized_array(compressed), expected)


@requires_gdcm
@pytest.mark.parametrize("case", sorted(NATIVE_CASES))
@pytest.mark.parametrize("uid", [JPEGLSLossless, JPEGLosslessSV1, JPEGLossless], ids=lambda u: UID(u).name)
def test_dicom_lossless_gdcm_encoded_matches_native(uid, case):
    ds, expected = _native(case)
    compressed = compress_with_gdcm(ds, uid)
    assert pydicom.dcmread(io.BytesIO(compressed)).file_meta.TransferSyntaxUID == uid
    np.testing.assert_array_equal(normalized_array(compressed), expected)


def _decoded_stored_values(data: bytes) -> np.ndarray:
    # convert.py pins pylibjpeg (lossy decoders differ in their last bit); decode the same way.
    return pydicom.pixels.pixel_array(io.BytesIO(data), decoding_plugin="pylibjpeg")


def _lossy_case(compressed: bytes, uid: str, center: float, width: float, native_expected: np.ndarray):
    assert pydicom.dcmread(io.BytesIO(compressed)).file_meta.TransferSyntaxUID == uid
    gray = normalized_array(compressed)
    np.testing.assert_array_equal(gray, linear_window(_decoded_stored_values(compressed), center, width))
    assert np.abs(gray.astype(int) - native_expected.astype(int)).mean() < 2


def test_dicom_jpeg2000_lossy():
    stored = smooth_image(64, 80).astype(np.uint16) * 16
    ds = make_dataset(stored, bits_stored=12, window=(2048, 4097))
    compressed = to_bytes(compress_with_pydicom(ds, JPEG2000, j2k_cr=[8]))
    _lossy_case(compressed, JPEG2000, 2048, 4097, linear_window(stored, 2048, 4097))


@requires_gdcm
def test_dicom_jpeg_ls_near_lossless():
    ds = make_dataset(STORED_12, bits_stored=12, window=(2048, 4097))
    compressed = compress_with_gdcm(ds, JPEGLSNearLossless, near_lossless_error=3)
    decoded = _decoded_stored_values(compressed)
    assert 0 < np.abs(decoded.astype(int) - STORED_12).max() <= 3  # genuinely near-lossless
    _lossy_case(compressed, JPEGLSNearLossless, 2048, 4097, linear_window(STORED_12, 2048, 4097))


def test_dicom_jpeg_baseline_grayscale():
    stored = smooth_image(64, 80)
    ds = make_dataset(stored, window=(128, 257))
    compressed = to_bytes(compress_jpeg_baseline_with_pillow(ds, stored))
    _lossy_case(compressed, JPEGBaseline8Bit, 128, 257, linear_window(stored, 128, 257))


def test_dicom_rgb_is_reduced_to_luma():
    rgb = RNG.integers(0, 256, (24, 32, 3)).astype(np.uint8)
    result = normalize_bytes(to_bytes(make_dataset(rgb, photometric="RGB")))
    assert result.input_mode == "RGB"
    np.testing.assert_array_equal(gray_of(result), luma(rgb))


def test_dicom_palette_color_is_reduced_to_luma():
    index = RNG.integers(0, 256, (24, 32)).astype(np.uint8)
    palette = RNG.integers(0, 65536, (256, 3)).astype(np.uint16)  # 16-bit entries
    ds = make_dataset(index, photometric="PALETTE COLOR")
    for channel, colour in enumerate(("Red", "Green", "Blue")):
        ds.add_new(f"{colour}PaletteColorLookupTableDescriptor", "US", [256, 0, 16])
        ds.add_new(f"{colour}PaletteColorLookupTableData", "OW", palette[:, channel].astype("<u2").tobytes())
    result = normalize_bytes(to_bytes(ds))
    assert result.input_mode == "PALETTE COLOR"
    np.testing.assert_array_equal(gray_of(result), luma((palette[index] >> 8).astype(np.uint8)))


def test_dicom_ybr_jpeg_baseline_is_reduced_to_luma():
    rgb = np.stack([smooth_image(64, 80, seed=s) for s in (1, 2, 3)], axis=-1)
    ds = compress_jpeg_baseline_with_pillow(make_dataset(rgb, photometric="RGB"), rgb, quality=95)
    compressed = to_bytes(ds)
    result = normalize_bytes(compressed)
    assert result.input_mode == "YBR_FULL_422"
    np.testing.assert_array_equal(gray_of(result), luma(_decoded_stored_values(compressed)))
    assert np.abs(gray_of(result).astype(int) - luma(rgb).astype(int)).max() <= 6


def test_dicom_corrupt_codestream_is_dicom_undecodable():
    ds = encapsulate_frame(make_dataset(STORED_12.astype(np.uint8)), b"\xff\xd8\xff\xdb" + bytes(64), JPEGBaseline8Bit)
    with pytest.raises(ConversionError) as raised:
        convert_bytes(to_bytes(ds), name="corrupt.dcm")
    assert raised.value.reason == "dicom-undecodable"
    message = str(raised.value)
    assert "corrupt.dcm" in message and JPEGBaseline8Bit in message and "JPEG Baseline" in message


def test_dicom_transfer_syntax_without_decoder_is_dicom_undecodable():
    mpeg2 = "1.2.840.10008.1.2.4.100"
    ds = encapsulate_frame(make_dataset(STORED_12.astype(np.uint8)), bytes(64), mpeg2)
    with pytest.raises(ConversionError) as raised:
        convert_bytes(to_bytes(ds))
    assert raised.value.reason == "dicom-undecodable"
    assert mpeg2 in str(raised.value) and "MPEG2" in str(raised.value)


def test_dicom_multiframe_is_refused():
    frames = np.stack([STORED_12] * 3)
    with pytest.raises(ConversionError) as raised:
        convert_bytes(to_bytes(make_dataset(frames, bits_stored=12, frames=3)), name="cine.dcm")
    assert raised.value.reason == "dicom-multiframe"
    assert "cine.dcm" in str(raised.value) and "3 frames" in str(raised.value)


def test_dicom_single_frame_with_number_of_frames_1_converts():
    ds = make_dataset(STORED_12, bits_stored=12, window=(2000, 1025))
    ds.NumberOfFrames = 1
    np.testing.assert_array_equal(normalized_array(to_bytes(ds)), linear_window(STORED_12, 2000, 1025))


def test_dicom_truncated_pixel_data_is_refused():
    data = to_bytes(make_dataset(STORED_12, bits_stored=12))
    with pytest.raises(ConversionError) as raised:
        convert_bytes(data[: len(data) - 1000])
    assert raised.value.reason == "dicom-undecodable"
    assert "Explicit VR Little Endian" in str(raised.value)


def test_dicom_is_detected_by_preamble_not_extension(tmp_path):
    ds = make_dataset(STORED_12, bits_stored=12, window=(2000, 1025))
    disguised = tmp_path / "radiograph.png"
    disguised.write_bytes(to_bytes(ds))
    assert convert_file(disguised).input_format == "DICOM"
    png_named_dcm = tmp_path / "image.dcm"
    png_named_dcm.write_bytes(png_bytes(Image.fromarray(smooth_image(20, 30))))
    assert convert_file(png_named_dcm).input_format == "PNG"


def test_dicom_over_the_pixel_limit_is_refused_before_decoding():
    ds = make_dataset(STORED_12, bits_stored=12)
    with pytest.raises(ConversionError) as raised:
        convert_bytes(to_bytes(ds), ConvertSettings(max_pixels=48 * 64 - 1))
    assert raised.value.reason == "image-too-large"


def test_dicom_max_side():
    ds = make_dataset(STORED_12, bits_stored=12, window=(2000, 1025))
    result = convert_bytes(to_bytes(ds), ConvertSettings(max_side=32))
    assert (result.width, result.height) == (32, 24)
    assert Image.open(io.BytesIO(result.jpeg)).size == (32, 24)


# ---------------------------------------------------------------------------------------------
# PNG / JPEG / TIFF modes

GRAY = RNG.integers(0, 256, (32, 48)).astype(np.uint8)
RGB = RNG.integers(0, 256, (32, 48, 3)).astype(np.uint8)


def test_png_l_is_unchanged():
    result = normalize_bytes(png_bytes(Image.fromarray(GRAY)))
    assert (result.input_format, result.input_mode) == ("PNG", "L")
    np.testing.assert_array_equal(gray_of(result), GRAY)


def test_png_1_bit():
    bits = GRAY > 128
    image = Image.fromarray(bits.astype(np.uint8) * 255).convert("1")
    data = png_bytes(image)
    assert Image.open(io.BytesIO(data)).mode == "1"
    np.testing.assert_array_equal(normalized_array(data), np.where(bits, 255, 0).astype(np.uint8))


def test_png_la_is_composited_onto_black_for_every_value_pair():
    gray, alpha = np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8))
    data = png_bytes(Image.fromarray(np.stack([gray, alpha], axis=-1), mode="LA"))
    np.testing.assert_array_equal(normalized_array(data), over_black(gray, alpha))


@pytest.mark.parametrize("maximum", [4095, 65535, 1023], ids=["12-bit", "16-bit", "10-bit"])
def test_png_16_bit_stretches_the_stored_range(maximum):
    values = RNG.integers(37, maximum + 1, (32, 48)).astype(np.uint16)
    values[0, 0], values[0, 1] = 37, maximum  # known range 37..maximum
    data = png_bytes(Image.fromarray(values))
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    span = maximum - 37
    expected = ((values.astype(np.int64) - 37) * 510 + span) // (2 * span)
    np.testing.assert_array_equal(normalized_array(data), expected.astype(np.uint8))


def test_16_bit_big_endian_and_32_bit_modes_stretch_the_stored_range():
    values = RNG.integers(100, 4001, (32, 48)).astype(np.uint16)
    low, span = int(values.min()), int(values.max()) - int(values.min())
    expected = (((values.astype(np.int64) - low) * 510 + span) // (2 * span)).astype(np.uint8)
    big_endian = Image.frombytes("I;16B", (48, 32), values.astype(">u2").tobytes())
    np.testing.assert_array_equal(np.asarray(pil_to_l(big_endian)), expected)
    np.testing.assert_array_equal(np.asarray(pil_to_l(Image.fromarray(values.astype(np.int32)))), expected)


def test_stretch_in_row_blocks_equals_the_whole_image_formula():
    values = RNG.integers(0, 65536, (700, 40)).astype(np.uint16)  # several 256-row blocks
    low, span = int(values.min()), int(values.max()) - int(values.min())
    expected = (((values.astype(np.int64) - low) * 510 + span) // (2 * span)).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(pil_to_l(Image.fromarray(values))), expected)


def test_constant_16_bit_image_is_excluded_as_constant():
    data = png_bytes(Image.fromarray(np.full((64, 64), 3000, dtype=np.uint16)))
    with pytest.raises(ConversionError) as raised:
        convert_bytes(data, name="blank16.png")
    assert raised.value.reason == "image-constant"
    assert "blank16.png" in str(raised.value) and "every pixel" in str(raised.value)


def test_png_palette():
    palette = RNG.integers(0, 256, (256, 3)).astype(np.uint8)
    image = Image.fromarray(GRAY, mode="L").convert("P")
    image.putpalette(palette.flatten().tolist())
    data = png_bytes(image)
    assert Image.open(io.BytesIO(data)).mode == "P"
    np.testing.assert_array_equal(normalized_array(data), luma(palette[GRAY]))


def test_png_palette_with_transparency():
    palette = RNG.integers(0, 256, (256, 3)).astype(np.uint8)
    alpha = RNG.integers(0, 256, 256).astype(np.uint8)
    image = Image.fromarray(GRAY, mode="L").convert("P")
    image.putpalette(palette.flatten().tolist())
    data = png_bytes(image, transparency=alpha.tobytes())
    reopened = Image.open(io.BytesIO(data))
    assert reopened.mode == "P" and "transparency" in reopened.info
    np.testing.assert_array_equal(normalized_array(data), over_black(luma(palette[GRAY]), alpha[GRAY]))


def test_png_l_with_transparent_gray_value():
    data = png_bytes(Image.fromarray(GRAY), transparency=int(GRAY[0, 0]))
    expected = np.where(GRAY == GRAY[0, 0], 0, GRAY).astype(np.uint8)
    np.testing.assert_array_equal(normalized_array(data), expected)


def test_png_rgb_is_itu_601_luma():
    result = normalize_bytes(png_bytes(Image.fromarray(RGB)))
    assert result.input_mode == "RGB"
    np.testing.assert_array_equal(gray_of(result), luma(RGB))


def test_png_rgba_luma_composited_onto_black():
    alpha = RNG.integers(0, 256, (32, 48)).astype(np.uint8)
    data = png_bytes(Image.fromarray(np.dstack([RGB, alpha]), mode="RGBA"))
    np.testing.assert_array_equal(normalized_array(data), over_black(luma(RGB), alpha))


def test_colour_cast_film_photo_becomes_luminance_preserving_order():
    film = smooth_image(32, 48).astype(np.float64)
    tint = np.array([0.85, 0.55, 1.0])  # purple cast, as in Cohen's tpmd200203f2-a.png
    tinted = np.clip(film[..., None] * tint, 0, 255).astype(np.uint8)
    gray = normalized_array(png_bytes(Image.fromarray(tinted)))
    np.testing.assert_array_equal(gray, luma(tinted))
    order = np.argsort(film.ravel(), kind="stable")
    assert np.all(np.diff(gray.ravel()[order].astype(int)) >= -1)  # monotone up to rounding


def test_cmyk_jpeg_with_adobe_marker():
    cmyk = np.stack([smooth_image(32, 48, seed=s) // 2 for s in range(4)], axis=-1).astype(np.uint8)
    data = encoded(Image.fromarray(cmyk, mode="CMYK"), "JPEG", quality=100)
    opened = Image.open(io.BytesIO(data))
    assert opened.mode == "CMYK" and "adobe" in opened.info  # Pillow writes inverted Adobe CMYK
    result = normalize_bytes(data)
    assert result.input_mode == "CMYK"
    c, m, y, k = (cmyk[..., i].astype(np.float64) for i in range(4))
    rgb = np.stack([(255 - c) * (255 - k) / 255, (255 - m) * (255 - k) / 255, (255 - y) * (255 - k) / 255], axis=-1)
    assert np.abs(gray_of(result).astype(int) - luma(np.rint(rgb)).astype(int)).max() <= 4


def test_rgb_jpeg_luminance_is_within_one_level_of_decoded_rgb_luma():
    rgb = np.stack([smooth_image(40, 56, seed=s) for s in (4, 5, 6)], axis=-1)
    data = encoded(Image.fromarray(rgb), "JPEG", quality=90)
    gray = normalized_array(data)
    reference = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
    assert np.abs(gray.astype(int) - reference.astype(int)).max() <= 1


# An asymmetric picture: each EXIF orientation must come out as this, whatever is stored.
UPRIGHT = np.zeros((24, 40), dtype=np.uint8)
UPRIGHT[:8, :10] = 250  # bright top-left corner
UPRIGHT[:, 30:] = 120


def _stored_for_orientation(orientation: int) -> Image.Image:
    """The pixels a camera stores so that ``orientation`` displays UPRIGHT."""
    inverse = {
        1: None,
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_90,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_270,
    }[orientation]
    image = Image.fromarray(UPRIGHT)
    return image if inverse is None else image.transpose(inverse)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encoded(_stored_for_orientation(orientation), "JPEG", quality=100, exif=exif.tobytes())
    gray = normalized_array(data)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("L"))
    np.testing.assert_array_equal(gray, expected)
    assert gray.shape == UPRIGHT.shape
    assert np.abs(gray.astype(int) - UPRIGHT.astype(int)).mean() < 3
    output = Image.open(io.BytesIO(convert_bytes(data).jpeg))
    assert 0x0112 not in output.getexif()


def test_exif_orientation_with_max_side_keeps_displayed_shape():
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encoded(_stored_for_orientation(6), "JPEG", quality=100, exif=exif.tobytes())
    result = convert_bytes(data, ConvertSettings(max_side=20))
    assert (result.width, result.height) == (20, 12)


def test_pil_to_l_returns_plain_l_without_copy():
    image = Image.fromarray(GRAY)
    assert pil_to_l(image) is image


# ---------------------------------------------------------------------------------------------
# Size policy


@pytest.mark.parametrize(
    "size, max_side, expected",
    [
        ((100, 50), None, (100, 50)),
        ((100, 50), 100, (100, 50)),
        ((100, 50), 200, (100, 50)),  # never enlarged
        ((100, 50), 40, (40, 20)),
        ((50, 100), 40, (20, 40)),
        ((1000, 333), 100, (100, 33)),  # 33.3 -> 33
        ((1000, 335), 100, (100, 34)),  # 33.5 -> 34 (half up)
        ((335, 1000), 100, (34, 100)),
        ((5000, 3), 100, (100, 1)),  # never below 1
        ((64, 64), 32, (32, 32)),
    ],
)
def test_target_size(size, max_side, expected):
    assert target_size(*size, max_side) == expected


def test_png_downscale_is_lanczos_of_the_grayscale_image():
    picture = smooth_image(90, 120)
    gray = normalized_array(png_bytes(Image.fromarray(picture)), ConvertSettings(max_side=50))
    expected = np.asarray(Image.fromarray(picture).resize((50, 38), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(gray, expected)


@pytest.mark.parametrize("max_side", [500, 260, 130, 64])
def test_jpeg_downscale_with_draft_stays_close_to_full_decode(max_side):
    picture = np.asarray(Image.fromarray(smooth_image(300, 400)).resize((1040, 780)))
    data = encoded(Image.fromarray(picture), "JPEG", quality=95)
    gray = normalized_array(data, ConvertSettings(max_side=max_side))
    size = target_size(1040, 780, max_side)
    assert gray.shape == (size[1], size[0])
    full = Image.open(io.BytesIO(data))
    full.load()
    reference = np.asarray(full.resize(size, Image.Resampling.LANCZOS))
    difference = np.abs(gray.astype(int) - reference.astype(int))
    assert difference.mean() < 1.0 and difference.max() <= 6


# ---------------------------------------------------------------------------------------------
# Output JPEG

ALLOWED_MARKERS = {0xE0, 0xDB, 0xC0, 0xC4, 0xDA}  # APP0 JFIF, DQT, SOF0 baseline, DHT, SOS


def _metadata_heavy_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "Scanner maker"
    icc = b"\x00" * 128
    return encoded(Image.fromarray(smooth_image(48, 64)), "JPEG", quality=90, exif=exif.tobytes(),
                   icc_profile=icc, comment=b"patient name", dpi=(300, 300))


def test_output_is_baseline_grayscale_jpeg_without_metadata():
    result = convert_bytes(_metadata_heavy_jpeg())
    assert set(jpeg_markers(result.jpeg)) <= ALLOWED_MARKERS
    assert result.jpeg.endswith(b"\xff\xd9")
    output = Image.open(io.BytesIO(result.jpeg))
    assert output.format == "JPEG" and output.mode == "L" and output.size == (64, 48)
    assert not {"exif", "icc_profile", "comment", "progressive", "dpi"} & set(output.info)
    assert output.info["jfif_density"] == (1, 1) and output.info["jfif_unit"] == 0


def test_output_of_l_image_carrying_a_comment_has_no_comment():
    data = encoded(Image.fromarray(smooth_image(16, 16)), "JPEG", comment=b"burned metadata")
    assert Image.open(io.BytesIO(data)).info["comment"] == b"burned metadata"
    assert 0xFE not in jpeg_markers(convert_bytes(data).jpeg)


def test_jpeg_round_trip_is_within_encoder_error():
    picture = smooth_image(96, 128)
    normalized = normalize_bytes(png_bytes(Image.fromarray(picture)))
    decoded = np.asarray(Image.open(io.BytesIO(encode_jpeg(normalized.image, 95))))
    difference = np.abs(decoded.astype(int) - gray_of(normalized).astype(int))
    assert difference.max() <= 4 and difference.mean() < 1.0


def test_quality_setting_is_used():
    data = png_bytes(Image.fromarray(GRAY))
    assert len(convert_bytes(data, ConvertSettings(quality=50)).jpeg) < len(convert_bytes(data).jpeg)


def test_output_is_deterministic_across_calls_and_threads():
    inputs = [
        _metadata_heavy_jpeg(),
        png_bytes(Image.fromarray(RGB)),
        to_bytes(make_dataset(STORED_12, bits_stored=12)),
    ]
    first = [convert_bytes(data).jpeg for data in inputs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        again = list(pool.map(lambda data: convert_bytes(data).jpeg, inputs * 4))
    assert again == first * 4


def test_output_fingerprint_names_pillow_pydicom_and_decoders():
    fingerprint = output_fingerprint()
    assert fingerprint == output_fingerprint()
    assert Image.__version__ in fingerprint and pydicom.__version__ in fingerprint
    assert "pylibjpeg-libjpeg" in fingerprint and fingerprint.startswith("policy")


def test_encode_jpeg_refuses_other_modes():
    with pytest.raises(ValueError):
        encode_jpeg(Image.fromarray(RGB))


@pytest.mark.parametrize("field, value", [("quality", 0), ("quality", 101), ("max_side", 0), ("max_pixels", 0)])
def test_settings_are_validated(field, value):
    with pytest.raises(ValueError):
        ConvertSettings(**{field: value})


# ---------------------------------------------------------------------------------------------
# Refusals: decompression bombs and broken files


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("size", [(20_000, 20_000), (11_000, 10_000)], ids=["pillow-guard", "own-guard"])
def test_png_claiming_huge_dimensions_is_image_too_large(size):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(ConversionError) as raised:
            convert_bytes(_png_header_only(*size), name="bomb.png")
    assert raised.value.reason == "image-too-large"
    assert "bomb.png" in str(raised.value)
    assert size[0] * size[1] > MAX_PIXELS


def test_pixel_limit_can_be_lowered():
    data = png_bytes(Image.fromarray(GRAY))
    with pytest.raises(ConversionError) as raised:
        convert_bytes(data, ConvertSettings(max_pixels=GRAY.size - 1))
    assert raised.value.reason == "image-too-large"
    assert convert_bytes(data, ConvertSettings(max_pixels=GRAY.size)).width == 48


@pytest.mark.parametrize("fmt, reason", [("JPEG", "image-corrupt"), ("PNG", "undecodable")])
def test_truncated_image_is_refused_and_names_the_file(tmp_path, fmt, reason):
    data = encoded(Image.fromarray(smooth_image(200, 300)), fmt)
    broken = tmp_path / f"broken.{fmt.lower()}"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError) as raised:
        convert_file(broken)
    assert raised.value.reason == reason  # JPEG: libjpeg-turbo reports the premature end (convert.integrity)
    assert str(broken) in str(raised.value)
    assert not isinstance(raised.value.__cause__, ConversionError)


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\xff\xd8\xff" + bytes(200)], ids=["empty", "text", "jpeg-soi-garbage"])
def test_garbage_is_undecodable(data):
    with pytest.raises(ConversionError) as raised:
        convert_bytes(data, name="garbage.bin")
    assert raised.value.reason == "undecodable"
    assert "garbage.bin" in str(raised.value)


def test_every_reason_raised_is_a_known_code():
    for reason in ("undecodable", "image-too-large", "dicom-multiframe", "dicom-undecodable", "format-not-accepted",
                   "image-multiframe", "image-too-small", "image-constant", "image-corrupt", "image-too-many-scans"):
        assert reason in records.REASONS


def test_missing_file_is_an_os_error_not_a_conversion_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        convert_file(tmp_path / "absent.png")


# ---------------------------------------------------------------------------------------------
# probe


def test_probe(tmp_path):
    png = tmp_path / "a.png"
    png.write_bytes(png_bytes(Image.fromarray(RGB)))
    dcm = tmp_path / "a.dcm"
    dcm.write_bytes(to_bytes(make_dataset(STORED_12, bits_stored=12, photometric="MONOCHROME1")))
    assert (probe(png).format, probe(png).mode, probe(png).width, probe(png).height) == ("PNG", "RGB", 48, 32)
    info = probe(dcm)
    assert (info.format, info.mode, info.width, info.height, info.frames) == ("DICOM", "MONOCHROME1", 64, 48, 1)


# ---------------------------------------------------------------------------------------------
# Real upstream files


def _real_images() -> list[Path]:
    if not HAVE_REAL:
        return []
    return sorted(p for p in REAL.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


@pytest.mark.real
@requires_real
@pytest.mark.parametrize(
    "relative, mode",
    [("cohen/images/tpmd200203f2-a.png", "P"), ("cohen/images/covid-19-caso-95-1-15.png", "RGBA")],
)
def test_real_palette_and_rgba_png_become_l_jpeg_of_original_size(relative, mode):
    path = REAL / relative
    original = Image.open(path)
    assert original.mode == mode
    result = convert_file(path)
    assert (result.input_format, result.input_mode) == ("PNG", mode)
    output = Image.open(io.BytesIO(result.jpeg))
    assert output.format == "JPEG" and output.mode == "L"
    assert output.size == original.size == (result.width, result.height)


@pytest.mark.real
@requires_real
@pytest.mark.parametrize("path", _real_images(), ids=lambda p: str(p.relative_to(REAL)) if HAVE_REAL else str(p))
def test_every_real_image_converts(path):
    result = convert_file(path)
    output = Image.open(io.BytesIO(result.jpeg))
    assert output.format == "JPEG" and output.mode == "L"
    assert set(jpeg_markers(result.jpeg)) <= ALLOWED_MARKERS
    source = Image.open(path)
    displayed = ImageOps.exif_transpose(source).size if source.getexif().get(0x0112, 1) > 4 else source.size
    assert output.size == displayed == (result.width, result.height)


@pytest.mark.real
@requires_real
def test_real_fixture_set_covers_every_source():
    sources = {p.relative_to(REAL).parts[0] for p in _real_images()}
    assert sources == {"cohen", "figure1", "actualmed", "kaggle"}


@pytest.mark.real
@requires_real
@pytest.mark.parametrize(
    "relative",
    [
        "cohen/images/tpmd200203f2-a.png",
        "cohen/images/covid-19-caso-95-1-15.png",
        "cohen/images/nejmc2001573_f1a.jpeg",
        "kaggle/chest_xray/test/NORMAL/IM-0001-0001.jpeg",
    ],
)
@pytest.mark.parametrize("max_side", [None, 512])
def test_real_conversion_is_byte_identical_when_repeated(relative, max_side):
    settings = ConvertSettings(max_side=max_side)
    assert convert_file(REAL / relative, settings).jpeg == convert_file(REAL / relative, settings).jpeg


@pytest.mark.real
@requires_real
def test_real_kaggle_jpeg_downscaled_with_draft_is_close_to_full_decode():
    path = REAL / "kaggle/chest_xray/test/NORMAL/IM-0028-0001.jpeg"
    gray = gray_of(normalize_file(path, ConvertSettings(max_side=512)))
    full = Image.open(path).convert("L")
    size = target_size(*full.size, 512)
    reference = np.asarray(full.resize(size, Image.Resampling.LANCZOS))
    assert gray.shape == reference.shape
    assert np.abs(gray.astype(int) - reference.astype(int)).mean() < 1.5


# ---------------------------------------------------------------------------------------------
# Lossless JPEG path: luminance coefficients copied (issue 15)


def source_luminance(data: bytes) -> np.ndarray:
    """What libjpeg decodes as the source's luminance: gray samples, or the Y of YCbCr (draft "L")."""
    image = Image.open(io.BytesIO(data))
    image.draft("L", None)
    assert image.mode == "L"
    return np.asarray(image)


def decoded(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.mode == "L"
    return np.asarray(image)


def assert_lossless(result, data: bytes, reference: np.ndarray | None = None) -> None:
    assert result.conversion == "lossless-jpeg"
    out = Image.open(io.BytesIO(result.data))
    assert out.format == "JPEG" and out.mode == "L" and not out.info.get("progressive")
    assert set(jpeg_markers(result.data)) <= ALLOWED_MARKERS
    assert not {"exif", "icc_profile", "comment", "dpi"} & set(out.info)
    expected = source_luminance(data) if reference is None else reference
    np.testing.assert_array_equal(np.asarray(out), expected)


def _rgb_film(height: int, width: int) -> np.ndarray:
    gray = smooth_image(height, width).astype(np.int64)
    return np.stack([gray, np.clip(gray + 12, 0, 255), np.clip(gray - 7, 0, 255)], axis=-1).astype(np.uint8)


@pytest.mark.parametrize(
    "case",
    ["gray-baseline", "gray-progressive", "gray-restart-markers", "gray-odd-size", "ycbcr-420", "ycbcr-444-progressive"],
)
def test_jpeg_sources_are_transcoded_to_their_exact_luminance(case):
    gray = Image.fromarray(smooth_image(96, 128))
    data = {
        "gray-baseline": lambda: encoded(gray, "JPEG", quality=90),
        "gray-progressive": lambda: encoded(gray, "JPEG", quality=90, progressive=True),
        "gray-restart-markers": lambda: encoded(gray, "JPEG", quality=90, restart_marker_blocks=3),
        "gray-odd-size": lambda: encoded(Image.fromarray(smooth_image(77, 101)), "JPEG", quality=85),
        "ycbcr-420": lambda: encoded(Image.fromarray(_rgb_film(77, 101)), "JPEG", quality=90, subsampling=2),
        "ycbcr-444-progressive": lambda: encoded(Image.fromarray(_rgb_film(64, 80)), "JPEG", quality=90, subsampling=0, progressive=True),
    }[case]()
    result = convert_bytes(data)
    assert_lossless(result, data)
    assert (result.width, result.height) == Image.open(io.BytesIO(data)).size


def test_colour_jpeg_luminance_is_within_one_level_of_the_luma_of_its_decoded_rgb():
    data = encoded(Image.fromarray(_rgb_film(96, 128)), "JPEG", quality=92, subsampling=2)
    result = convert_bytes(data)
    assert result.conversion == "lossless-jpeg" and result.input_mode == "RGB"
    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert np.abs(decoded(result.data).astype(int) - luma(rgb).astype(int)).max() <= 1


def test_arithmetic_coded_jpeg_is_transcoded_to_huffman_losslessly():
    turbojpeg = pytest.importorskip("turbojpeg")
    gray = np.ascontiguousarray(smooth_image(64, 80))
    data = turbojpeg.compress(gray, 90, turbojpeg.SAMP.GRAY, arithmetic=True)
    assert 0xC9 in jpeg_markers(data)  # SOF9: arithmetic sequential
    reference = np.asarray(turbojpeg.decompress(data))  # libjpeg-turbo's own decode of the source
    result = convert_bytes(data)
    assert 0xC9 not in jpeg_markers(result.data) and 0xC4 in jpeg_markers(result.data)  # Huffman tables
    assert_lossless(result, data, reference=reference.reshape(gray.shape))


def test_lossless_output_is_smaller_with_optimized_huffman_and_identical_in_pixels():
    data = encoded(Image.fromarray(smooth_image(200, 240)), "JPEG", quality=90)
    optimized = convert_bytes(data)
    standard = convert_bytes(data, ConvertSettings(optimize_huffman=False))
    assert len(optimized.data) < len(standard.data)
    np.testing.assert_array_equal(decoded(optimized.data), decoded(standard.data))


def test_lossless_output_is_byte_identical_across_calls_and_threads():
    inputs = [encoded(Image.fromarray(smooth_image(64 + i, 80)), "JPEG", quality=80 + i) for i in range(4)]
    first = [convert_bytes(d).data for d in inputs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(lambda d: convert_bytes(d).data, inputs * 3)) == first * 3


def test_fingerprint_names_the_transform_library_and_its_libjpeg_turbo():
    from covid19_cxr_dataset.convert import library_versions

    versions = library_versions()
    assert versions["turbojpeg"] not in ("", "absent") and versions["libjpeg-turbo"] not in ("", "absent", "unknown")
    assert f"turbojpeg{versions['turbojpeg']}" in output_fingerprint()
    assert f"libjpeg-turbo{versions['libjpeg-turbo']}" in output_fingerprint()


# ---------------------------------------------------------------------------------------------
# JPEGs that take the decode path, recorded as such


def _adobe_rgb_jpeg() -> bytes:
    turbojpeg = pytest.importorskip("turbojpeg")
    return turbojpeg.compress(np.ascontiguousarray(_rgb_film(64, 80)), 90, turbojpeg.SAMP.Y444, colorspace=turbojpeg.CS.RGB)


def _restart_marker_corrupted() -> bytes:
    data = encoded(Image.fromarray(smooth_image(96, 128)), "JPEG", quality=90, restart_marker_blocks=2)
    at = data.index(b"\xff\xd1")  # the second restart marker becomes RST5
    return data[:at] + b"\xff\xd5" + data[at + 2 :]


def _exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(Image.fromarray(smooth_image(96, 120)), "JPEG", quality=90, exif=exif.tobytes())


def _twelve_bit_jpeg() -> bytes:
    from pydicom.data import get_testdata_file
    from pydicom.encaps import generate_frames

    ds = pydicom.dcmread(get_testdata_file("JPGExtended.dcm"))
    return next(generate_frames(ds.PixelData, number_of_frames=1))


def _lossless_sof3_jpeg() -> bytes:
    turbojpeg = pytest.importorskip("turbojpeg")
    return turbojpeg.compress(np.ascontiguousarray(smooth_image(64, 80)), 100, turbojpeg.SAMP.GRAY, lossless=True)


def test_twelve_bit_jpeg_is_decoded_by_libjpeg_and_stretched():
    import libjpeg

    data = _twelve_bit_jpeg()
    assert 0xC1 in jpeg_markers(data)  # SOF1: extended sequential, 12-bit here
    values = np.asarray(libjpeg.decode(data)).astype(np.int64)
    low, span = int(values.min()), int(values.max() - values.min())
    expected = (((values - low) * 510 + span) // (2 * span)).astype(np.uint8)
    result = convert_bytes(data)
    assert result.conversion == "normalized-jpeg" and result.input_mode == "I;16"
    np.testing.assert_array_equal(normalized_array(data), expected)


def test_lossless_sof3_jpeg_is_decoded_exactly():
    data = _lossless_sof3_jpeg()
    assert 0xC3 in jpeg_markers(data)
    result = convert_bytes(data, ConvertSettings(fallback_format="png"))
    assert result.conversion == "normalized-png"
    np.testing.assert_array_equal(decoded(result.data), smooth_image(64, 80))


@pytest.mark.parametrize("case", ["cmyk", "adobe-rgb", "exif-rotated", "max-side"])
def test_jpegs_that_cannot_be_transcoded_take_the_decode_path(case):
    settings = ConvertSettings()
    if case == "cmyk":
        cmyk = np.stack([smooth_image(48, 64, seed=s) // 2 for s in range(4)], axis=-1).astype(np.uint8)
        data = encoded(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=95)
    elif case == "adobe-rgb":
        data = _adobe_rgb_jpeg()
        rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        assert np.abs(normalized_array(data).astype(int) - luma(rgb).astype(int)).max() <= 1  # luma, not the R plane
    elif case == "exif-rotated":
        exif = Image.Exif()
        exif[0x0112] = 6
        data = encoded(Image.fromarray(smooth_image(48, 64)), "JPEG", quality=90, exif=exif.tobytes())
    else:
        data = encoded(Image.fromarray(smooth_image(96, 128)), "JPEG", quality=90)
        settings = ConvertSettings(max_side=64)
    result = convert_bytes(data, settings)
    assert result.conversion == "normalized-jpeg"
    out = Image.open(io.BytesIO(result.data))
    assert out.mode == "L" and out.size == (result.width, result.height)
    if case == "exif-rotated":
        assert out.size == (48, 64)


def test_jpeg_corrupt_beyond_decoding_is_refused_not_a_crash():
    data = encoded(Image.fromarray(smooth_image(96, 128)), "JPEG", quality=90)
    # markers broken before the first scan: undecodable; a warning of libjpeg-turbo while reading the scans
    # (premature end, a restart marker out of order) is damage (convert.integrity)
    cases = [("undecodable", data[:200] + bytes(300)), ("image-corrupt", data[: len(data) // 3]),
             ("image-corrupt", _restart_marker_corrupted())]
    for reason, broken in cases:
        with pytest.raises(ConversionError) as raised:
            convert_bytes(broken, name="broken.jpg")
        assert raised.value.reason == reason and "broken.jpg" in str(raised.value)


def test_lossless_path_can_be_switched_off():
    data = encoded(Image.fromarray(smooth_image(96, 128)), "JPEG", quality=90)
    assert convert_bytes(data, ConvertSettings(lossless_jpeg=False)).conversion == "normalized-jpeg"


# ---------------------------------------------------------------------------------------------
# Fallback format: 8-bit PNG


def test_png_fallback_stores_the_normalized_pixels_exactly_without_metadata():
    rgba = np.dstack([_rgb_film(40, 56), np.full((40, 56), 200, np.uint8)])
    data = png_bytes(Image.fromarray(rgba, "RGBA"), icc_profile=b"\0" * 128, dpi=(300, 300))
    settings = ConvertSettings(fallback_format="png")
    result = convert_bytes(data, settings)
    assert result.conversion == "normalized-png" and result.suffix == ".png"
    out = Image.open(io.BytesIO(result.data))
    assert out.format == "PNG" and out.mode == "L"
    assert not {"icc_profile", "dpi", "transparency", "exif"} & set(out.info)
    np.testing.assert_array_equal(np.asarray(out), normalized_array(data, settings))
    chunks, offset = [], 8
    while offset < len(result.data):
        (length,) = struct.unpack(">I", result.data[offset : offset + 4])
        chunks.append(result.data[offset + 4 : offset + 8])
        offset += 12 + length
    assert set(chunks) == {b"IHDR", b"IDAT", b"IEND"}
    jpeg = encoded(Image.fromarray(smooth_image(48, 64)), "JPEG", quality=90)
    assert convert_bytes(jpeg, settings).conversion == "lossless-jpeg"  # JPEG sources keep their own path


# ---------------------------------------------------------------------------------------------
# Accepted formats, by magic bytes (issue 12: silently accepted images)


def _frames(mode: str = "L", count: int = 2) -> list[Image.Image]:
    return [Image.fromarray(smooth_image(48, 64, seed=i)).convert(mode) for i in range(count)]


def _not_accepted_files() -> dict[str, bytes]:
    gray = Image.fromarray(smooth_image(48, 64))
    files = {
        "gif": encoded(gray, "GIF"),
        "tiff-multipage": (lambda f: encoded(f[0], "TIFF", save_all=True, append_images=f[1:]))(_frames()),
        "webp": encoded(gray, "WEBP"),
        "bmp": encoded(gray, "BMP"),
        "ico": encoded(gray, "ICO"),
        "tga": encoded(gray, "TGA"),
        "jpeg2000": encoded(gray, "JPEG2000"),
        "lab-tiff": encoded(Image.merge("LAB", [gray, gray, gray]), "TIFF"),
        "float-tiff-nan": encoded(Image.fromarray(np.where(smooth_image(48, 64) > 100, np.nan, 1.0).astype(np.float32)), "TIFF"),
    }
    return files


@pytest.mark.parametrize("kind", list(_not_accepted_files()))
def test_formats_a_release_does_not_accept_are_refused_by_magic_bytes(kind, tmp_path):
    path = tmp_path / f"film-{kind}.jpg"  # the extension says JPEG: the bytes decide
    path.write_bytes(_not_accepted_files()[kind])
    with pytest.raises(ConversionError) as raised:
        convert_file(path)
    assert raised.value.reason == "format-not-accepted"
    message = str(raised.value)
    assert str(path) in message and "accepted: JPEG, PNG, DICOM" in message


def test_animated_png_is_refused_as_multiframe():
    frames = _frames()
    data = png_bytes(frames[0], save_all=True, append_images=frames[1:])
    with pytest.raises(ConversionError) as raised:
        convert_bytes(data, name="cine.png")
    assert raised.value.reason == "image-multiframe" and "2 frames" in str(raised.value)


def test_a_png_named_jpg_is_converted_as_the_png_it_is(tmp_path):
    path = tmp_path / "really-a-png.jpg"
    path.write_bytes(png_bytes(Image.fromarray(GRAY)))
    result = convert_file(path)
    assert (result.input_format, result.conversion) == ("PNG", "normalized-jpeg")


def test_only_the_formats_a_release_declares_are_accepted():
    settings = ConvertSettings(input_formats=["jpeg"])
    assert settings.input_formats == ("JPEG",)
    with pytest.raises(ConversionError) as raised:
        convert_bytes(png_bytes(Image.fromarray(GRAY)), settings, name="x.png")
    assert raised.value.reason == "format-not-accepted" and "is PNG" in str(raised.value)
    with pytest.raises(ValueError):
        ConvertSettings(input_formats=["gif"])


# ---------------------------------------------------------------------------------------------
# Degenerate films


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("size", [(1, 1), (15, 200)])
def test_tiny_images_are_excluded_as_too_small(fmt, size):
    data = encoded(Image.fromarray(RNG.integers(0, 256, (size[1], size[0])).astype(np.uint8)), fmt)
    with pytest.raises(ConversionError) as raised:
        convert_bytes(data, name="thumb")
    assert raised.value.reason == "image-too-small" and f"{size[0]}x{size[1]}" in str(raised.value)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_constant_films_are_excluded_on_either_path(fmt):
    data = encoded(Image.new("L", (300, 200), 77), fmt)
    with pytest.raises(ConversionError) as raised:
        convert_bytes(data, name="blank")
    assert raised.value.reason == "image-constant"


def test_a_nearly_blank_jpeg_with_content_is_kept():
    picture = np.zeros((200, 300), np.uint8)
    picture[90:110, 140:160] = 200
    data = encoded(Image.fromarray(picture), "JPEG", quality=90)
    assert_lossless(convert_bytes(data), data)


# ---------------------------------------------------------------------------------------------
# Sides above 65,500 px and decode memory (issue 12)


def _wide_png(width: int, height: int = 16) -> bytes:
    row = np.tile(np.arange(256, dtype=np.uint8), width // 256 + 1)[:width]
    return png_bytes(Image.fromarray(np.ascontiguousarray(np.broadcast_to(row, (height, width)))))


def test_side_above_the_jpeg_limit_is_excluded_not_an_encoder_crash():
    data = _wide_png(65_501)
    with pytest.raises(ConversionError) as raised:
        convert_bytes(data, name="panorama.png")
    assert raised.value.reason == "image-too-large"
    assert "65,500" in str(raised.value) and "panorama.png" in str(raised.value)
    result = convert_bytes(data, ConvertSettings(fallback_format="png"))  # PNG has no such limit
    assert (result.width, result.conversion) == (65_501, "normalized-png")
    assert convert_bytes(data, ConvertSettings(max_side=4096)).width == 4096  # downscaled first: fits


def _sixteen_bit_png(width: int, height: int) -> bytes:
    """A 16-bit grayscale PNG of width x height, gradient rows, compressed tight (header + zlib stream)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    first = b"\x00" + np.linspace(0, 4095, width).astype(">u2").tobytes()
    same_as_above = b"\x02" + bytes(2 * width)  # PNG filter "Up" with zero differences
    compressor = zlib.compressobj(9)
    stream = compressor.compress(first) + b"".join(compressor.compress(same_as_above) for _ in range(height - 1)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", stream) + chunk(b"IEND", b"")


_RSS_SCRIPT = """
import sys
from pathlib import Path
from covid19_cxr_dataset.convert import convert_file
from covid19_cxr_dataset.errors import ConversionError
try:
    result = convert_file(Path(sys.argv[1]))
    outcome = result.conversion
except ConversionError as error:
    outcome = error.reason
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork + exec
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(outcome, peak * 1024)
"""


def _convert_in_a_fresh_process(path: Path) -> tuple[str, int]:
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    done = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(path)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    outcome, rss = done.stdout.split()
    return outcome, int(rss)


def test_16_bit_png_of_100_megapixels_under_1_mib_is_refused_before_decoding(tmp_path):
    path = tmp_path / "huge16.png"
    path.write_bytes(_sixteen_bit_png(10_000, 9_999))
    assert path.stat().st_size < 2**20
    with pytest.raises(ConversionError) as raised:
        convert_file(path)
    assert raised.value.reason == "image-too-large" and "MiB" in str(raised.value) and str(path) in str(raised.value)
    outcome, rss = _convert_in_a_fresh_process(path)
    assert outcome == "image-too-large" and rss < 2**30


@pytest.mark.slow
@pytest.mark.parametrize("mode, size", [("I;16", (9_000, 9_000)), ("RGBA", (6_000, 6_000)), ("L", (10_000, 9_999))])
def test_largest_images_under_the_decode_limit_convert_within_1_gib(tmp_path, mode, size):
    path = tmp_path / f"big-{mode.replace(';', '')}.png"
    if mode == "I;16":
        path.write_bytes(_sixteen_bit_png(*size))
    else:
        gradient = np.broadcast_to(np.linspace(0, 255, size[0]).astype(np.uint8), (size[1], size[0]))
        image = Image.fromarray(np.ascontiguousarray(gradient)).convert(mode)
        image.save(path, compress_level=1)
    outcome, rss = _convert_in_a_fresh_process(path)
    assert outcome == "normalized-jpeg"
    assert rss < 2**30, f"{mode} {size}: peak RSS {rss / 2**20:.0f} MiB"


def _real_jpegs() -> list[Path]:
    return [p for p in _real_images() if p.read_bytes()[:3] == b"\xff\xd8\xff"]


@pytest.mark.real
@requires_real
@pytest.mark.parametrize("path", _real_jpegs(), ids=lambda p: str(p.relative_to(REAL)) if HAVE_REAL else str(p))
def test_real_jpegs_keep_their_luminance_bit_for_bit(path):
    data = path.read_bytes()
    result = convert_file(path)
    assert_lossless(result, data)
    assert len(result.data) <= len(data) * 1.02  # no bigger than the source, give or take the JFIF header
    if Image.open(path).mode == "RGB":
        # Colour: within one level of the luma of the decoded RGB (rounding), wherever that RGB is
        # not clipped at 0 or 255 (saturated colour marks: there the stored Y is the truer value).
        rgb = np.asarray(Image.open(path).convert("RGB"))
        difference = np.abs(decoded(result.data).astype(int) - luma(rgb).astype(int))
        unclipped = ~((rgb == 0) | (rgb == 255)).any(axis=-1)
        assert difference[unclipped].max() <= 1


@pytest.mark.real
@requires_real
def test_real_fixture_jpegs_cover_grayscale_colour_and_progressive():
    modes = {(Image.open(p).mode, bool(Image.open(p).info.get("progressive"))) for p in _real_jpegs()}
    assert {("L", False), ("RGB", False), ("RGB", True), ("L", True)} <= modes


# ---------------------------------------------------------------------------------------------
# In a build: the conversion column, exclusions instead of crashes, byte-identical rebuilds


def _build_world(world, fallback: str = "jpeg"):
    """``world`` (a fresh_world) with three Cohen films replaced by inputs the converter must refuse or decode."""
    from synthetic import COHEN, git_blob_sha1

    def replace(path: str, data: bytes) -> None:
        world.served[f"/{COHEN[0]}/{COHEN[1]}/{path}"] = data
        lock = world.manifest_dir / "locks" / "cohen.tsv"
        lines = [f"{path}\t{git_blob_sha1(data)}\t{len(data)}" if line.startswith(path + "\t") else line
                 for line in lock.read_text().splitlines()]
        lock.write_text("\n".join(lines) + "\n")

    replace("images/c9.jpg", encoded(Image.fromarray(smooth_image(96, 120)), "GIF"))  # a GIF named .jpg
    replace("images/c1-b.jpg", _wide_png(65_600))  # wider than JPEG allows
    replace("images/c1-a.jpg", _exif_rotated_jpeg())  # decodable, but not transcodable
    text = (world.manifest_dir / "manifest.yaml").read_text()
    kept = 8 if fallback == "jpeg" else 9  # a PNG holds the 65,600 px wide film
    text = text.replace("train: {COVID-19: 10,", f"train: {{COVID-19: {kept},")
    text = text.replace("convert: {quality: 95, max_side: null}",
                        f"convert: {{quality: 95, max_side: null, lossless_jpeg: true, fallback_format: {fallback}, input_formats: [jpeg, png]}}")
    (world.manifest_dir / "manifest.yaml").write_text(text)
    return world


def _build(world, out: Path, cache: Path) -> dict:
    from covid19_cxr_dataset import manifest as manifest_module
    from covid19_cxr_dataset.build import Options, build
    from loopback import LoopbackServer

    with LoopbackServer(dict(world.served)) as server:
        options = Options(cache_dir=cache, mirror=server.base_url, workers=2, progress=False, kaggle_archive=world.kaggle_zip)
        return build(manifest_module.load(world.manifest_dir), out, options)


def test_build_records_each_images_conversion_and_excludes_what_it_cannot_convert(fresh_world, tmp_path):
    import pyarrow.parquet as pq

    world = _build_world(fresh_world)
    report = _build(world, tmp_path / "out", tmp_path / "cache")
    reasons = {e["source_path"]: e["reason"] for e in report["exclusions"] if e["stage"] == "convert"}
    assert reasons == {"images/c9.jpg": "format-not-accepted", "images/c1-b.jpg": "image-too-large"}
    rows = pq.read_table(sorted((tmp_path / "out" / "data").rglob("*.parquet"))).to_pylist()
    conversion = {(r["source"], r["source_path"]): r["conversion"] for r in rows}
    assert conversion[("cohen", "images/c1-a.jpg")] == "normalized-jpeg"  # EXIF-rotated
    assert conversion[("cohen", "images/c2.png")] == "normalized-jpeg"
    assert {c for (source, _), c in conversion.items() if source == "kaggle"} == {"lossless-jpeg"}
    counts = report["conversions"]["counts"]
    assert sum(counts.values()) == len(rows) and counts["lossless-jpeg"] >= 7
    assert report["conversions"]["libraries"]["turbojpeg"] not in ("", "absent")
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"lossless-jpeg {counts['lossless-jpeg']}" in card and f"turbojpeg {report['conversions']['libraries']['turbojpeg']}" in card


def test_two_builds_give_byte_identical_shards_with_png_fallback(fresh_world, tmp_path):
    import datasets

    world = _build_world(fresh_world, fallback="png")
    first = _build(world, tmp_path / "one", tmp_path / "cache-one")
    second = _build(world, tmp_path / "two", tmp_path / "cache-two")
    assert first["shards"] == second["shards"] and first["fingerprint"] == second["fingerprint"]
    for shard in first["shards"]:
        assert (tmp_path / "one" / shard).read_bytes() == (tmp_path / "two" / shard).read_bytes()
    loaded = datasets.load_dataset(str(tmp_path / "one"))
    by_path = {r["source_path"]: r for split in loaded.values() for r in split}
    assert by_path["images/c2.png"]["conversion"] == "normalized-png" and by_path["images/c2.png"]["image"].format == "PNG"
    assert by_path["images/c1-a.jpg"]["image"].format == "PNG"
    assert by_path["images/c1-b.jpg"]["image"].size == (65_600, 16)
    assert first["conversions"]["counts"]["normalized-png"] >= 3


def test_missing_transform_library_is_one_clear_error_not_a_silent_change_of_output(monkeypatch):
    from covid19_cxr_dataset.convert import lossless_jpeg as jpeg_transcode
    from covid19_cxr_dataset.errors import CxrDatasetError

    monkeypatch.setattr(jpeg_transcode, "_HAVE_TRANSFORM", False)
    data = encoded(Image.fromarray(smooth_image(48, 64)), "JPEG", quality=90)
    with pytest.raises(CxrDatasetError) as raised:
        convert_bytes(data)
    assert not isinstance(raised.value, ConversionError)  # the build stops instead of excluding every JPEG
    assert "pip install" in str(raised.value) and "turbojpeg" in str(raised.value)
    assert convert_bytes(data, ConvertSettings(lossless_jpeg=False)).conversion == "normalized-jpeg"
