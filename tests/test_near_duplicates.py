"""Crop- and scale-robust near-duplicate detection (near_duplicates.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covid19_cxr_dataset import near_duplicates as nd

REAL = os.environ.get("COVID19_CXR_REAL_FIXTURES", "")
real = pytest.mark.skipif(not REAL, reason="COVID19_CXR_REAL_FIXTURES is not set")


def textured(seed: int, size: int = 600) -> Image.Image:
    """Random texture at several scales plus a gradient: like a film, distinct detail for each seed."""
    rng = np.random.default_rng(seed)
    values = np.zeros((size, size), dtype=np.float32)
    for cells, amplitude in ((6, 40), (20, 25), (75, 15)):
        noise = rng.normal(0, 1, (cells, cells)).astype(np.float32)
        values += amplitude * np.asarray(Image.fromarray(noise, mode="F").resize((size, size), Image.Resampling.BICUBIC))
    y, x = np.mgrid[0:size, 0:size]
    values += 128 + 30 * np.sin(np.pi * x / size) - 20 * (y / size)
    return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8))


def test_crop_and_rescale_of_the_same_image_is_found():
    original = textured(1)
    copy = original.crop((40, 25, 560, 540)).resize((430, 380), Image.Resampling.BILINEAR)
    other = textured(2)
    signatures = {"original": nd.image_signature(original), "copy": nd.image_signature(copy), "other": nd.image_signature(other)}
    pairs = nd.find_pairs(signatures)
    assert [(a, b) for a, b, _ in pairs] == [("original", "copy")]
    assert pairs[0][2] <= nd.DEFAULT_THRESHOLD


def test_black_screenshot_border_is_trimmed():
    original = textured(3)
    framed = Image.new("L", (700, 660), 0)
    framed.paste(original, (60, 20))
    assert nd.pair_distance(nd.image_signature(original), nd.image_signature(framed)) < 0.02


def test_different_images_are_far_apart():
    a, b = nd.image_signature(textured(4)), nd.image_signature(textured(5))
    assert nd.pair_distance(a, b) > 3 * nd.DEFAULT_THRESHOLD


def test_signature_round_trips_through_bytes():
    signature = nd.image_signature(textured(6).convert("RGB"))
    restored = nd.Signature.from_bytes(signature.to_bytes())
    assert (restored.width, restored.height) == (600, 600)
    np.testing.assert_array_equal(restored.thumb, signature.thumb)
    assert nd.pair_distance(signature, restored) < 1e-4
    assert len(signature.to_bytes()) < 20_000


def test_modes_are_read_alike():
    gray = textured(7)
    rgba = gray.convert("RGBA")
    wide = Image.fromarray((np.asarray(gray, dtype=np.uint16) * 257)).convert("I;16")
    base = nd.image_signature(gray)
    assert nd.pair_distance(base, nd.image_signature(rgba)) < 0.01
    assert nd.pair_distance(base, nd.image_signature(wide)) < 0.05


def test_git_blob_duplicates():
    pairs = nd.git_blob_duplicates({"a": "x1", "b": "x2", "c": "x1", "d": "", "e": ""})
    assert pairs == [("a", "c")]


def test_keys_a_restricts_pairs():
    original = textured(8)
    copy = original.resize((500, 500))
    signatures = {"a": nd.image_signature(original), "b": nd.image_signature(copy), "c": nd.image_signature(textured(9))}
    assert nd.find_pairs(signatures, keys_a=["c"]) == []
    assert len(nd.find_pairs(signatures, keys_a=["a"])) == 1


@real
def test_real_figure1_copy_in_cohen_is_found():
    cohen = nd.image_signature(Path(REAL) / "cohen" / "images" / "figure1-5e7c1b8d98c29ab001275405-98.jpeg")
    figure1 = nd.image_signature(Path(REAL) / "figure1" / "images" / "COVID-00003a.jpg")
    other = nd.image_signature(Path(REAL) / "cohen" / "images" / "nejmoa2001191_f1-PA.jpeg")
    lancet = nd.image_signature(Path(REAL) / "cohen" / "images" / "lancet-case2a.jpg")
    pairs = nd.find_pairs({"cohen": cohen, "figure1": figure1, "other": other, "lancet": lancet})
    assert [(a, b) for a, b, _ in pairs] == [("cohen", "figure1")]


@real
def test_real_same_patient_other_view_is_not_a_duplicate():
    frontal = nd.image_signature(Path(REAL) / "cohen" / "images" / "nejmoa2001191_f1-PA.jpeg")
    lateral = nd.image_signature(Path(REAL) / "cohen" / "images" / "nejmoa2001191_f1-L.jpeg")
    assert nd.pair_distance(frontal, lateral) > nd.DEFAULT_THRESHOLD


@pytest.mark.slow
def test_stage_one_scales_to_thousands_of_images():
    base = [nd.image_signature(textured(seed, size=200)) for seed in range(20)]
    signatures = [base[i % 20] for i in range(3200)]
    start = time.perf_counter()
    similarity = nd.low_pass_similarity(signatures)
    assert similarity.shape == (3200, 3200)
    assert time.perf_counter() - start < 60
