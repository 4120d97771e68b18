"""Lesion-mark detector: proposes images that may carry drawn arrows, circles, boxes or labels.

Papers mark lesions with saturated colour (red, yellow, green arrows; circles; boxes) drawn over a
grayscale film. Colour alone is not enough: scanners burn in coloured text, rulers are coloured,
and photographs of film or old figures carry a uniform colour cast. The detector therefore looks
for *local* colour that departs from the image's own colour-versus-brightness relation:

1. The image is read as RGB (palette and alpha flattened), reduced to at most ``WORK_SIDE`` px.
2. Each pixel's chroma vector (RGB minus its gray level) is compared with the median chroma of
   all pixels of similar brightness. A tinted film has a large but brightness-consistent chroma,
   so its residual is small; a drawn stroke's residual is large.
3. Pixels with residual and own chroma both above ``RESIDUAL_THRESHOLD`` form a mask, joined by a 3x3 dilation and
   split into 8-connected components.
4. A component is a *mark* when it is large enough (its longer bounding-box side at least
   ``MIN_MARK_EXTENT`` of the image's longer side) and not text-like (a short, wide run of small
   glyphs near the border is scanner text). Its shape proposes the reason: hollow and roughly
   round -> circle, hollow with pixels on the four bounding-box sides -> box, solid -> arrow.
5. Grayscale films get an optional second pass for pure-white thin strokes away from the border
   (flag ``gray-stroke``); it proposes ``annotation-other`` only for review, since side markers
   and burned-in text are white too.

The result is a proposal for a human: every proposal is reviewed by eye before it becomes a
decision in ``decisions/annotations.csv``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
from PIL import Image

from .interrupts import worker_pool

WORK_SIDE = 768
RESIDUAL_THRESHOLD = 45.0  # chroma residual, 0-255 scale
MIN_MARK_EXTENT = 0.035    # fraction of the longer image side
MIN_MARK_PIXELS = 25
BORDER_FRACTION = 0.08     # text-like components inside this margin are treated as scanner text
GRAY_STROKE_MIN_EXTENT = 0.06
FLAG_SCORE = 0.5


@dataclass
class AuditResult:
    score: float                                   # 0 = nothing; >= FLAG_SCORE = proposed for review
    flags: list[str] = field(default_factory=list)  # e.g. "colour-arrow", "colour-circle", "colour-text", "colour-cast"
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)  # (left, top, right, bottom), original pixels
    reason: str = ""                               # proposed reason code ("" when nothing is proposed)

    @property
    def flagged(self) -> bool:
        return self.score >= FLAG_SCORE


def load_rgb(path_or_image: str | Path | Image.Image) -> tuple[np.ndarray, float]:
    """(RGB float32 array at most WORK_SIDE px, scale factor back to original pixels)."""
    if isinstance(path_or_image, (str, Path)):
        with Image.open(path_or_image) as opened:
            opened.load()
            return load_rgb(opened)
    image = path_or_image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        low, high = np.percentile(values, [0.5, 99.5])
        image = Image.fromarray((np.clip((values - low) / max(high - low, 1e-9), 0, 1) * 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    image = image.convert("RGB")
    scale = max(image.size) / WORK_SIDE
    if scale > 1:
        image = image.resize((round(image.width / scale), round(image.height / scale)), Image.Resampling.BOX)
    return np.asarray(image, dtype=np.float32), max(scale, 1.0)


def chroma_residual(rgb: np.ndarray, bins: int = 32) -> np.ndarray:
    """Per-pixel distance of the chroma vector from the median chroma at that brightness."""
    gray = rgb.mean(axis=2)
    chroma = rgb - gray[..., None]
    level = np.minimum((gray / 256.0 * bins).astype(np.int32), bins - 1)
    expected = np.zeros((bins, 3), dtype=np.float32)
    flat_level = level.ravel()
    flat_chroma = chroma.reshape(-1, 3)
    order = np.argsort(flat_level, kind="stable")
    bounds = np.searchsorted(flat_level[order], np.arange(bins + 1))
    for b in range(bins):
        members = order[bounds[b]:bounds[b + 1]]
        if members.size:
            expected[b] = np.median(flat_chroma[members], axis=0)
    return np.linalg.norm(chroma - expected[level], axis=2)


def dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:, :] |= mask[:-1, :]
    out[:-1, :] |= mask[1:, :]
    grown = out.copy()
    grown[:, 1:] |= out[:, :-1]
    grown[:, :-1] |= out[:, 1:]
    return grown


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected component labels (1..n; 0 = background), by union-find over mask pixels."""
    height, width = mask.shape
    index = np.full(mask.shape, -1, dtype=np.int64)
    ys, xs = np.nonzero(mask)
    index[ys, xs] = np.arange(len(ys))
    parent = np.arange(len(ys))

    def find(i: np.ndarray) -> np.ndarray:
        while True:
            up = parent[i]
            if np.array_equal(up, i):
                return i
            parent[i] = parent[up]  # path halving
            i = parent[i]

    for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):
        ny, nx = ys + dy, xs + dx
        ok = (ny < height) & (nx >= 0) & (nx < width)
        a = index[ys[ok], xs[ok]]
        b = index[ny[ok], nx[ok]]
        keep = b >= 0
        a, b = a[keep], b[keep]
        for _ in range(64):  # vectorised union: repeat until the roots agree
            ra, rb = find(a), find(b)
            differ = ra != rb
            if not differ.any():
                break
            hi, lo = np.maximum(ra[differ], rb[differ]), np.minimum(ra[differ], rb[differ])
            parent[hi] = lo
    roots = find(np.arange(len(ys)))
    _, labels = np.unique(roots, return_inverse=True)
    out = np.zeros(mask.shape, dtype=np.int32)
    out[ys, xs] = labels + 1
    return out, int(labels.max() + 1) if len(labels) else 0


@dataclass
class _Component:
    left: int
    top: int
    right: int
    bottom: int
    pixels: int
    edge_share: float  # share of pixels on the outer 20 % band of the bounding box
    centre_empty: bool
    corners: int       # bounding-box corners (10 % squares) holding pixels: 4 for a box, 0 for a circle

    @property
    def width(self) -> int:
        return self.right - self.left + 1

    @property
    def height(self) -> int:
        return self.bottom - self.top + 1

    @property
    def fill(self) -> float:
        return self.pixels / (self.width * self.height)


def _components(mask: np.ndarray) -> list[_Component]:
    labels, count = label_components(mask)
    if count == 0:
        return []
    ys, xs = np.nonzero(labels)
    ids = labels[ys, xs] - 1
    out = []
    for component in range(count):
        members = ids == component
        cy, cx = ys[members], xs[members]
        left, right, top, bottom = int(cx.min()), int(cx.max()), int(cy.min()), int(cy.max())
        w, h = right - left + 1, bottom - top + 1
        band_x, band_y = max(1, w // 5), max(1, h // 5)
        on_edge = (cx < left + band_x) | (cx > right - band_x) | (cy < top + band_y) | (cy > bottom - band_y)
        centre = labels[top + h // 2, left + w // 2] == component + 1
        corner_x, corner_y = max(1, w // 10), max(1, h // 10)
        in_x = (cx < left + corner_x, cx > right - corner_x)
        in_y = (cy < top + corner_y, cy > bottom - corner_y)
        corners = sum(bool((ix & iy).any()) for ix in in_x for iy in in_y)
        out.append(_Component(left, top, right, bottom, int(members.sum()), float(on_edge.mean()), not centre, corners))
    return out


def _classify(component: _Component, shape: tuple[int, int]) -> str:
    """'text', 'circle', 'box', 'arrow' or 'line' for one component (shape = image height, width)."""
    height, width = shape
    long_side = max(height, width)
    w, h = component.width, component.height
    near_border = (
        component.top < BORDER_FRACTION * height
        or component.bottom > (1 - BORDER_FRACTION) * height
        or component.left < BORDER_FRACTION * width
        or component.right > (1 - BORDER_FRACTION) * width
    )
    small_height = min(w, h) < 0.03 * long_side
    elongated = max(w, h) > 4 * min(w, h)
    if elongated and small_height and near_border:
        return "text"  # a row of scanner text, or a ruler along the border
    if elongated and component.fill > 0.5:
        return "line"
    if component.fill < 0.35 and component.centre_empty and min(w, h) > 0.04 * long_side:
        # A drawn box fills the corners of its bounding box; a circle or ellipse leaves them empty.
        return "box" if component.corners == 4 and component.edge_share > 0.9 else "circle"
    return "arrow"


_REASON_BY_SHAPE = {"arrow": "annotation-arrow", "circle": "annotation-circle", "box": "annotation-box", "line": "annotation-other"}


def audit_array(rgb: np.ndarray, scale: float = 1.0) -> AuditResult:
    height, width = rgb.shape[:2]
    long_side = max(height, width)
    result = AuditResult(score=0.0)
    chroma = np.linalg.norm(rgb - rgb.mean(axis=2, keepdims=True), axis=2)
    if np.median(chroma) > 8:
        result.flags.append("colour-cast")
    residual = chroma_residual(rgb)
    # A mark is coloured itself (own chroma) and off the image's colour curve (residual); white
    # text on a tinted photo is off the curve but neutral, so it does not count.
    mask = (residual > RESIDUAL_THRESHOLD) & (chroma > RESIDUAL_THRESHOLD)
    if mask.mean() > 0.25:
        # A quarter of the image off its own colour curve: a colour photo or figure, not a film.
        result.flags.append("colour-image")
        result.score = 0.6
        result.reason = "not-a-radiograph"
        return result
    shapes: list[tuple[float, str]] = []
    if mask.any():
        for component in _components(dilate(mask)):
            extent = max(component.width, component.height) / long_side
            if extent < MIN_MARK_EXTENT or component.pixels < MIN_MARK_PIXELS:
                continue
            kind = _classify(component, (height, width))
            if kind == "text":
                if "colour-text" not in result.flags:
                    result.flags.append("colour-text")
                continue
            result.flags.append(f"colour-{kind}")
            result.boxes.append(
                (int(component.left * scale), int(component.top * scale), int((component.right + 1) * scale), int((component.bottom + 1) * scale))
            )
            # Score grows with size: one arrow of 4 % of the side is just enough to propose.
            shapes.append((min(1.0, 0.5 + 5.0 * (extent - MIN_MARK_EXTENT)), kind))
    if shapes:
        best_score, best_kind = max(shapes)
        result.score = best_score
        result.reason = _REASON_BY_SHAPE[best_kind]
    elif "colour-cast" not in result.flags:
        gray_score = _gray_stroke_score(rgb.mean(axis=2))
        if gray_score > 0:
            result.flags.append("gray-stroke")
            result.score = max(result.score, min(0.45, gray_score))
    return result


def _gray_stroke_score(gray: np.ndarray) -> float:
    """Weak evidence of pure-white thin strokes inside the film (never enough alone to propose)."""
    height, width = gray.shape
    long_side = max(height, width)
    white = gray >= 250
    inner = np.zeros_like(white)
    mh, mw = int(BORDER_FRACTION * 2 * height), int(BORDER_FRACTION * 2 * width)
    inner[mh:height - mh, mw:width - mw] = True
    white &= inner
    if not white.any() or white.mean() > 0.02:  # large saturated areas are overexposure, not strokes
        return 0.0
    best = 0.0
    for component in _components(white):
        extent = max(component.width, component.height) / long_side
        if extent >= GRAY_STROKE_MIN_EXTENT and component.fill < 0.3:
            best = max(best, extent)
    return best


def audit_image(path_or_image: str | Path | Image.Image) -> AuditResult:
    """Audit one image file (any Pillow-readable format and mode) or PIL image."""
    rgb, scale = load_rgb(path_or_image)
    return audit_array(rgb, scale)


def _audit_row(path: str) -> dict:
    try:
        result = audit_image(path)
    except Exception as error:  # an unreadable file is a finding of its own, not a crash
        return {"path": path, "score": float("nan"), "flags": f"error:{type(error).__name__}", "reason": "", "boxes": ""}
    return {
        "path": path,
        "score": round(result.score, 4),
        "flags": ";".join(result.flags),
        "reason": result.reason if result.flagged else "",
        "boxes": ";".join(",".join(str(v) for v in box) for box in result.boxes),
    }


def audit_paths(paths: Iterable[str | Path], workers: int = 1) -> pd.DataFrame:
    """One row per image: path, score, flags (";"-joined), proposed reason code, boxes."""
    paths = [str(p) for p in paths]
    if workers > 1 and len(paths) > 1:
        with worker_pool(workers) as pool:  # a Ctrl-C ends the workers at once (interrupts.worker_pool)
            rows = list(pool.map(_audit_row, paths, chunksize=4))
    else:
        rows = [_audit_row(p) for p in paths]
    return pd.DataFrame(rows, columns=["path", "score", "flags", "reason", "boxes"])
