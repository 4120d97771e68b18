"""Crop- and scale-robust near-duplicate detection for radiographs.

The same radiograph reaches the release through several sources: Cohen re-publishes Figure1 cases as
screenshots (black margins, a different crop, a different aspect ratio), papers re-encode and rescale
films. Byte hashes miss all of that, and a single perceptual hash of the whole frame misses crops.

Method:

1. ``image_signature`` reads the image as 8-bit grayscale, trims near-uniform margins (frames,
   letterboxing, screenshot borders) and keeps a square 96x96 thumbnail of what is left (aspect
   ratio normalized away, so non-uniform rescaling does not matter). From the thumbnail it derives
   ``VIEW_COUNT`` crop views: every combination of a horizontal and a vertical crop (fraction 1.0,
   0.85 or 0.7 of the side, anchored at start, centre or end), each kept as a unit vector twice:
   low-pass (16x16) and band-pass (24x24, the view minus its blur).
2. ``find_pairs`` narrows the candidates in three stages. (a) Low-pass normalized
   cross-correlation (NCC) between every image's full frame and every crop view of every other
   image: a matrix product per block, fast for thousands of images. (b) For pairs that pass,
   band-pass NCC between all crop views of both. (c) For pairs that still pass,
   ``pair_distance`` registers the crop of one image onto the other (pattern search over the crop
   rectangle) and scores band-pass NCC at 48x48; the distance is ``1 - NCC``.

Chest radiographs of different patients look alike at low resolution, so low-pass scores only
prefilter; fine detail (rib edges, devices, noise-free structure) decides. On the release 1.0.0
candidates true duplicates, cropped and rescaled, score below 0.05 and different films mostly far
above 0.2; the few in between are serial films of one patient, which is why every proposed pair is
still reviewed by eye before it goes into duplicates.csv (see docs/curation-1.0.0.md).

Only numpy and Pillow are used, so the module runs wherever the package does.
"""

from __future__ import annotations

import io
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Hashable, Iterable, Mapping

import numpy as np
from PIL import Image

THUMB_SIDE = 96
LOW_SIDE = 16       # stage 1: low-pass crop views, compared for every pair
BAND_SIDE = 24      # stage 2: band-pass crop views, compared for stage-1 survivors
REFINE_SIDE = 48    # stage 3: band-pass NCC after registering the crops, the reported distance
CROP_FRACTIONS = (1.0, 0.85, 0.7)
CROP_ANCHORS = (0.0, 0.5, 1.0)
DEFAULT_THRESHOLD = 0.10
DEFAULT_LOW_PREFILTER = 0.12
DEFAULT_BAND_PREFILTER = 0.25


def _axis_crops() -> list[tuple[float, float]]:
    """(start, length) fractions along one axis: the full side, then each smaller fraction at 3 anchors."""
    crops = [(0.0, 1.0)]
    for fraction in CROP_FRACTIONS[1:]:
        for anchor in CROP_ANCHORS:
            crops.append((anchor * (1.0 - fraction), fraction))
    return crops


_AXIS_CROPS = _axis_crops()
VIEWS = tuple(itertools.product(_AXIS_CROPS, _AXIS_CROPS))  # ((x0, w), (y0, h)); VIEWS[0] is the full frame
VIEW_COUNT = len(VIEWS)


@dataclass(frozen=True)
class Signature:
    """What ``find_pairs`` needs of one image. ``to_bytes`` stores only the thumbnail (a few KB)."""

    thumb: np.ndarray  # (THUMB_SIDE, THUMB_SIDE) uint8, margins trimmed, aspect normalized
    low: np.ndarray    # (VIEW_COUNT, LOW_SIDE**2) float32 unit vectors of the low-pass crop views
    band: np.ndarray   # (VIEW_COUNT, BAND_SIDE**2) float32 unit vectors of the band-pass crop views
    width: int         # original image size, to prefer the larger copy of a pair
    height: int

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, thumb=self.thumb, size=np.array([self.width, self.height]))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Signature":
        with np.load(io.BytesIO(data)) as stored:
            width, height = (int(v) for v in stored["size"])
            return signature_from_thumbnail(stored["thumb"], width, height)


def _to_gray(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        low, high = np.percentile(values, [0.5, 99.5])
        scaled = np.clip((values - low) / max(high - low, 1e-9), 0, 1) * 255
        return scaled.astype(np.uint8)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    return np.asarray(image.convert("L"), dtype=np.uint8)


def trim_margins(gray: np.ndarray, *, std_limit: float = 6.0, extreme_fraction: float = 0.97) -> tuple[int, int, int, int]:
    """Bounding box (top, bottom, left, right) after dropping near-uniform outer rows and columns.

    A row or column is margin when its spread is tiny, or when almost all of it is near black or
    near white (screenshot frames, letterboxing, scanner borders with a little noise).
    """
    g = gray.astype(np.float32)

    def is_margin(lines: np.ndarray) -> np.ndarray:
        extreme = ((lines < 16) | (lines > 240)).mean(axis=1) >= extreme_fraction
        return (lines.std(axis=1) < std_limit) | extreme

    def first_content(flags: np.ndarray) -> int:
        content = np.flatnonzero(~flags)
        return int(content[0]) if content.size else 0

    rows, cols = is_margin(g), is_margin(g.T)
    top = first_content(rows)
    bottom = len(rows) - first_content(rows[::-1])
    left = first_content(cols)
    right = len(cols) - first_content(cols[::-1])
    if bottom - top < gray.shape[0] // 4 or right - left < gray.shape[1] // 4:
        return 0, gray.shape[0], 0, gray.shape[1]
    return top, bottom, left, right


def _resize(array: np.ndarray, width: int, height: int) -> np.ndarray:
    shrinking = array.shape[0] >= height and array.shape[1] >= width
    method = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    image = Image.fromarray(np.ascontiguousarray(array, dtype=np.float32), mode="F")
    return np.asarray(image.resize((width, height), method), dtype=np.float32)


def _crop(thumb: np.ndarray, rect: tuple[float, float, float, float]) -> np.ndarray:
    """``rect`` = (x0, y0, w, h) as fractions of the thumbnail side."""
    n = thumb.shape[0]
    x0, y0, w, h = rect
    xs, ys = int(round(x0 * n)), int(round(y0 * n))
    xe, ye = max(xs + 2, int(round((x0 + w) * n))), max(ys + 2, int(round((y0 + h) * n)))
    return thumb[ys:ye, xs:xe]


def _view_rect(view: int) -> tuple[float, float, float, float]:
    (x0, w), (y0, h) = VIEWS[view]
    return (x0, y0, w, h)


def _unit(flat: np.ndarray) -> np.ndarray:
    flat = flat.astype(np.float64)
    flat = flat - flat.mean(axis=-1, keepdims=True)
    norms = np.linalg.norm(flat, axis=-1, keepdims=True)
    return (flat / np.maximum(norms, 1e-9)).astype(np.float32)


def _band_pass(patch: np.ndarray) -> np.ndarray:
    """Detail at the patch's own scale: the patch minus its 1/6-resolution blur."""
    side = patch.shape[0]
    blurred = _resize(_resize(patch, max(2, side // 6), max(2, side // 6)), side, side)
    return patch - blurred


def signature_from_thumbnail(thumb: np.ndarray, width: int, height: int) -> Signature:
    thumb = np.asarray(thumb, dtype=np.uint8)
    as_float = thumb.astype(np.float32)
    low = np.empty((VIEW_COUNT, LOW_SIDE * LOW_SIDE), dtype=np.float32)
    band = np.empty((VIEW_COUNT, BAND_SIDE * BAND_SIDE), dtype=np.float32)
    for view in range(VIEW_COUNT):
        patch = _crop(as_float, _view_rect(view))
        low[view] = _resize(patch, LOW_SIDE, LOW_SIDE).ravel()
        band[view] = _band_pass(_resize(patch, BAND_SIDE, BAND_SIDE)).ravel()
    return Signature(thumb=thumb, low=_unit(low), band=_unit(band), width=width, height=height)


def image_signature(image: str | Path | Image.Image) -> Signature:
    """Signature of one image file (any Pillow-readable format and mode) or PIL image."""
    if isinstance(image, (str, Path)):
        with Image.open(image) as opened:
            opened.draft("L", (1024, 1024))  # JPEG: decode at reduced size, much faster
            opened.load()
            return image_signature(opened)
    width, height = image.size
    gray = _to_gray(image)
    scale = max(1, max(gray.shape) // 512)
    if scale > 1:
        gray = np.asarray(Image.fromarray(gray).reduce(scale))
    top, bottom, left, right = trim_margins(gray)
    thumb = _resize(gray[top:bottom, left:right].astype(np.float32), THUMB_SIDE, THUMB_SIDE)
    return signature_from_thumbnail(np.clip(np.rint(thumb), 0, 255).astype(np.uint8), width, height)


def low_pass_similarity(signatures: list[Signature]) -> np.ndarray:
    """(N, N) float32: best NCC between A's full frame and any crop view of B, symmetrised."""
    full = np.stack([s.low[0] for s in signatures])             # (N, D)
    views = np.stack([s.low for s in signatures])               # (N, V, D)
    n = len(signatures)
    flat = views.reshape(n * VIEW_COUNT, -1)
    best = np.empty((n, n), dtype=np.float32)
    block = max(1, 2_000_000 // max(1, n * VIEW_COUNT))
    for start in range(0, n, block):
        scores = full[start:start + block] @ flat.T             # (b, N*V)
        best[start:start + block] = scores.reshape(-1, n, VIEW_COUNT).max(axis=2)
    return np.maximum(best, best.T)


def _band_best(a: Signature, b: Signature) -> tuple[float, int, int]:
    scores = a.band @ b.band.T
    view_a, view_b = np.unravel_index(int(scores.argmax()), scores.shape)
    return float(scores[view_a, view_b]), int(view_a), int(view_b)


def _refine_vector(thumb: np.ndarray, rect) -> np.ndarray:
    return _unit(_band_pass(_resize(_crop(thumb, rect), REFINE_SIDE, REFINE_SIDE)).ravel())


def _register(ta: np.ndarray, ra, tb: np.ndarray, rb) -> float:
    """Best refined score moving B's crop rectangle from ``rb`` by a pattern search (4, 2, 1 % steps)."""
    reference = _refine_vector(ta, ra)
    best = float(reference @ _refine_vector(tb, rb))
    rb = list(rb)
    for step in (0.04, 0.02, 0.01):
        improved = True
        while improved:
            improved = False
            for k in range(4):
                for delta in (-step, step):
                    trial = list(rb)
                    trial[k] += delta
                    x0, y0, w, h = trial
                    if x0 < -1e-6 or y0 < -1e-6 or x0 + w > 1 + 1e-6 or y0 + h > 1 + 1e-6 or w < 0.5 or h < 0.5:
                        continue
                    score = float(reference @ _refine_vector(tb, trial))
                    if score > best + 1e-4:
                        best, rb, improved = score, trial, True
    return best


def _centre_view(fraction: float) -> int:
    half = (0.5 * (1.0 - fraction), fraction)
    return VIEWS.index((half, half))


# Where registration starts on the first image: the full frame, then central crops, which stay
# comparable when the other copy is rotated a little or carries a border the trim missed.
_START_VIEWS = (0, _centre_view(CROP_FRACTIONS[1]), _centre_view(CROP_FRACTIONS[2]))


def pair_distance(a: Signature, b: Signature) -> float:
    """1 - band-pass NCC of the two images after registering one crop onto the other.

    For each image in turn as the reference and each of ``_START_VIEWS`` as its crop, the other
    image starts from its best low-pass matching crop view and its crop rectangle (x0, y0, w, h) is
    moved by a pattern search. 0 means identical detail; different radiographs score far above
    ``DEFAULT_THRESHOLD``.
    """
    ta, tb = a.thumb.astype(np.float32), b.thumb.astype(np.float32)
    best = -1.0
    for first, second, t1, t2 in ((a, b, ta, tb), (b, a, tb, ta)):
        for view_1 in _START_VIEWS:
            view_2 = int((second.low @ first.low[view_1]).argmax())
            best = max(best, _register(t1, _view_rect(view_1), t2, _view_rect(view_2)))
            if best >= 0.95:  # unmistakable; no need to search further
                return max(0.0, 1.0 - best)
    return max(0.0, 1.0 - best)


def find_pairs(
    signatures: Mapping[Hashable, Signature],
    threshold: float = DEFAULT_THRESHOLD,
    *,
    low_prefilter: float = DEFAULT_LOW_PREFILTER,
    band_prefilter: float = DEFAULT_BAND_PREFILTER,
    keys_a: Iterable[Hashable] | None = None,
) -> list[tuple[Hashable, Hashable, float]]:
    """Pairs of keys whose images look like the same radiograph, as ``(key_a, key_b, distance)``.

    Three stages, each cheaper per pair than the next: low-pass NCC of crop views for all pairs
    (one matrix product per block), band-pass NCC of crop views for pairs with
    ``1 - low <= low_prefilter``, registered band-pass NCC (``pair_distance``) for pairs with
    ``1 - band <= band_prefilter``. Pairs with ``distance <= threshold`` are returned once, first
    key in the mapping's order, sorted by distance. ``keys_a`` restricts pairs to those with at
    least one member among them (e.g. one source against all).
    """
    keys = list(signatures)
    if len(keys) < 2:
        return []
    sigs = [signatures[k] for k in keys]
    similar = np.triu(low_pass_similarity(sigs) >= 1.0 - low_prefilter, k=1)
    if keys_a is not None:
        wanted = np.zeros(len(keys), dtype=bool)
        wanted[[keys.index(k) for k in keys_a]] = True
        similar &= wanted[:, None] | wanted[None, :]
    pairs = []
    for i, j in zip(*np.nonzero(similar)):
        band, _, _ = _band_best(sigs[i], sigs[j])
        if 1.0 - band > band_prefilter:
            continue
        distance = pair_distance(sigs[i], sigs[j])
        if distance <= threshold:
            pairs.append((keys[i], keys[j], round(distance, 4)))
    pairs.sort(key=lambda p: p[2])
    return pairs


def git_blob_duplicates(blob_ids: Mapping[Hashable, str]) -> list[tuple[Hashable, Hashable]]:
    """Pairs of keys with the same git blob id (byte-identical files), first key in mapping order."""
    first: dict[str, Hashable] = {}
    pairs = []
    for key, blob in blob_ids.items():
        if not blob:
            continue
        if blob in first:
            pairs.append((first[blob], key))
        else:
            first[blob] = key
    return pairs
