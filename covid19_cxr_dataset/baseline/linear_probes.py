"""The fast shortcut probes: logistic regression on what a release's shards hold, on every certificate.

Numpy and Pillow only (no TensorFlow, whatever the training backend), seconds on a CPU for a release
of ~6k images. Each image is decoded once at reduced size (``read_probe_table``); from it come the
metadata and four thumbnails of ``THUMBNAIL`` x ``THUMBNAIL``, one per view (``VIEWS``):

- ``film``: the whole film, the *reference*: what a linear model reads with the lungs in view;
- ``border``: the centre box (``probes.CENTRE_FRACTION`` of each side) blanked, as the DCNN border probe;
- ``lung``: a centred ellipse of that size blanked (the lung region), as the DCNN lung probe;
- ``corners``: only the four corner squares (``CORNER_FRACTION`` of each side) kept: where burned-in
  text, side markers and hospital stamps usually sit (a simple stand-in for a text region; text
  elsewhere on the border is in the ``border`` view).

Blanking sets the hidden pixels to the mean of the visible ones at decode resolution, before the
thumbnail is made, so no thumbnail pixel mixes in what was hidden. Each view's probe is a multinomial
logistic regression (L2, balanced class weights, ``fit_softmax_regression``) on the standardized
thumbnail pixels: a linear lower bound on what a CNN reads from the same pixels. Its numbers are the
shared probe result (``probes.probe_result``: per-class AUC with bootstrap intervals, recall, balanced
accuracy, flag), with the share of the linear ``film`` reference's and of the full model's AUC it reaches.

``metadata_probe`` predicts the label from metadata, and says which features carry it: one probe per
feature group (``FEATURE_GROUPS``: size, file format, bit depth and encoding, intensity).
``source_probe`` names the source of COVID-19 films. ``linear_holdout_probe`` is the source hold-out
(``holdout.py``) with the ``film`` view's linear model.
"""

from __future__ import annotations

import dataclasses
import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .. import CLASS_NAMES
from .evaluate import COVID19
from .holdout import holdout_entry, holdout_result, holdout_sources, holdout_train_mask
from .probes import CENTRE_FRACTION, centre_mask, probe_result, skipped

THUMBNAIL = 32
DECODE_SIDE = THUMBNAIL * 8  # decode at least this many pixels a side (JPEG DCT scaling), then blank and shrink
CORNER_FRACTION = 0.2
VIEWS = ("film", "border", "lung", "corners")
VIEW_PROBES = {f"linear-{view}": view for view in VIEWS}
THUMBNAIL_L2 = 1e-2
LINEAR_MODEL = f"multinomial logistic regression (L2, balanced class weights) on {THUMBNAIL}x{THUMBNAIL} thumbnails"
FEATURE_GROUPS = {
    "size": ("width", "height", "aspect", "log_pixels"),
    "file format": ("format=",),
    "bit depth and encoding": ("gray_levels_log2", "conversion="),
    "intensity": ("mean_intensity", "std_intensity", "dark_share", "bright_share"),
}
"""Metadata feature groups; an entry ending in ``=`` stands for every one-hot column of that name."""


# --- a small softmax regression (numpy) ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SoftmaxRegression:
    weights: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    scale: np.ndarray

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        logits = ((np.asarray(features, np.float64) - self.mean) / self.scale) @ self.weights + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def predict(self, features: np.ndarray) -> np.ndarray:
        return np.argmax(self.probabilities(features), axis=1)


def balanced_weights(labels: np.ndarray, classes: int) -> np.ndarray:
    """Per image n / (classes present x images of its class): every class weighs the same in the loss."""
    labels = np.asarray(labels, np.int64)
    counts = np.bincount(labels, minlength=classes).astype(np.float64)
    present = int((counts > 0).sum())
    return labels.size / (present * counts[labels]) if labels.size else np.zeros(0)


def fit_softmax_regression(features: np.ndarray, labels: np.ndarray, classes: int, *, l2: float = 1e-2,
                           steps: int = 30, tolerance: float = 1e-5,
                           sample_weight: np.ndarray | None = None) -> SoftmaxRegression:
    """Multinomial logistic regression (L2 on the weights, not the bias) on standardized features.

    Minimizes mean(weight x cross-entropy) + l2/2 |W|^2 by accelerated gradient steps preconditioned
    with Böhning's bound on the Hessian (1/2 X'WX/n + l2, computed and inverted once): the steps are
    Newton-like from the start, so ``steps`` passes over the data converge where plain gradient descent
    needs hundreds; it stops early once no coefficient moves by ``tolerance`` (deterministic; float32
    passes, float64 solve). With fewer images than features the fit runs in the span of the images
    (the L2 solution lies there), so a small release costs an n x n problem. ``sample_weight`` (mean 1)
    weighs each image's loss, e.g. ``balanced_weights``.
    """
    x = np.asarray(features, np.float64)
    n, d = x.shape
    mean = x.mean(axis=0) if n else np.zeros(d)
    scale = x.std(axis=0) if n else np.ones(d)
    scale[scale == 0] = 1.0
    standardized = (x - mean) / scale
    basis = None
    if 0 < n < d:  # the representer theorem: the penalized weights are a combination of the images
        eigenvalues, vectors = np.linalg.eigh(standardized @ standardized.T)  # n x n: cheaper than an SVD
        keep = eigenvalues > 1e-10 * max(eigenvalues.max(), 1e-300)
        basis = standardized.T @ (vectors[:, keep] / np.sqrt(eigenvalues[keep]))  # (d, rank), orthonormal columns
        standardized = standardized @ basis
    weight = (np.ones(n) if sample_weight is None else np.asarray(sample_weight, np.float64)) / max(n, 1)
    target = np.eye(classes, dtype=np.float32)[np.asarray(labels, np.int64)]
    coefficients = _preconditioned_fit(standardized, target, weight, l2, steps, tolerance)
    weights, bias = coefficients[:-1], coefficients[-1]
    return SoftmaxRegression(basis @ weights if basis is not None else weights, bias, mean, scale)


def _preconditioned_fit(features: np.ndarray, target: np.ndarray, weight: np.ndarray, l2: float, steps: int,
                        tolerance: float) -> np.ndarray:
    """(d + 1, classes) coefficients, the bias last; see ``fit_softmax_regression``."""
    n, d = features.shape
    z = np.empty((n, d + 1), np.float32)
    z[:, :d] = features
    z[:, d] = 1.0  # the bias
    penalty = np.full(d + 1, l2)
    penalty[d] = 0.0
    bound = 0.5 * (z.T @ (z * weight.astype(np.float32)[:, None])).astype(np.float64) + np.diag(penalty)
    inverse = np.linalg.inv(bound + 1e-9 * np.eye(d + 1))
    coefficients = previous = np.zeros((d + 1, target.shape[1]))
    for iteration in range(1, steps + 1):
        look = coefficients + (iteration - 1) / (iteration + 2) * (coefficients - previous)
        logits = z @ look.astype(np.float32)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        error = (weight[:, None] * (probs - target)).astype(np.float32)
        gradient = (z.T @ error).astype(np.float64) + penalty[:, None] * look
        previous, coefficients = coefficients, look - inverse @ gradient
        if np.max(np.abs(coefficients - previous)) < tolerance:
            break
    return coefficients


def fit_balanced(features: np.ndarray, labels: np.ndarray, classes: int, **kwargs: Any) -> SoftmaxRegression:
    return fit_softmax_regression(features, labels, classes, sample_weight=balanced_weights(labels, classes), **kwargs)


# --- views --------------------------------------------------------------------------------------------


def hidden_mask(view: str, height: int, width: int) -> np.ndarray:
    """(height, width) bool, True where ``view`` hides the film."""
    if view == "film":
        return np.zeros((height, width), bool)
    if view == "border":
        return centre_mask(height, width, "box", CENTRE_FRACTION)
    if view == "lung":
        return centre_mask(height, width, "ellipse", CENTRE_FRACTION)
    if view == "corners":
        rows = np.arange(height)[:, None]
        columns = np.arange(width)[None, :]
        side_y, side_x = CORNER_FRACTION * height, CORNER_FRACTION * width
        in_corner = ((rows < side_y) | (rows >= height - side_y)) & ((columns < side_x) | (columns >= width - side_x))
        return ~in_corner
    raise ValueError(f"view {view!r}: expected one of {', '.join(VIEWS)}")


def thumbnail_views(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """{view: (THUMBNAIL, THUMBNAIL) float32 in [0, 1]} of one gray image (2-D uint8 array)."""
    from PIL import Image

    height, width = pixels.shape
    views = {}
    for view in VIEWS:
        hidden = hidden_mask(view, height, width)
        shown = pixels
        if hidden.any():
            shown = pixels.copy()
            shown[hidden] = np.uint8(np.rint(pixels[~hidden].mean())) if (~hidden).any() else 0
        thumbnail = Image.fromarray(shown).resize((THUMBNAIL, THUMBNAIL), Image.BILINEAR)
        views[view] = np.asarray(thumbnail, np.float32) / 255.0
    return views


# --- reading what the fast probes need --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ProbeTable:
    """Per image of one split: label, source, stored size, source file format, conversion, intensity, thumbnails."""

    labels: np.ndarray
    sources: tuple[str, ...]
    widths: np.ndarray
    heights: np.ndarray
    formats: tuple[str, ...]
    conversions: tuple[str, ...] | None
    means: np.ndarray
    stds: np.ndarray
    thumbnails: np.ndarray  # (n, THUMBNAIL, THUMBNAIL) float32 in [0, 1]: the whole film
    views: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # view -> (n, THUMBNAIL, THUMBNAIL)
    gray_levels: np.ndarray | None = None  # distinct gray levels used (at decode resolution)
    dark_shares: np.ndarray | None = None  # share of pixels at or below 5
    bright_shares: np.ndarray | None = None  # share of pixels at or above 250

    def view(self, name: str) -> np.ndarray:
        return self.thumbnails if name == "film" and name not in self.views else self.views[name]

    def subset(self, keep: np.ndarray) -> "ProbeTable":
        """The rows where ``keep`` is True."""
        keep = np.asarray(keep, bool)

        def pick(value: Any) -> Any:
            if value is None:
                return None
            if isinstance(value, tuple):
                return tuple(v for v, k in zip(value, keep) if k)
            if isinstance(value, dict):
                return {key: array[keep] for key, array in value.items()}
            return value[keep]

        return ProbeTable(**{field.name: pick(getattr(self, field.name)) for field in dataclasses.fields(self)})


def _describe_image(data: bytes) -> tuple[int, int, float, float, int, float, float, dict[str, np.ndarray]]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        image.draft("L", (DECODE_SIDE, DECODE_SIDE))  # JPEG DCT scaling: a fast, reduced decode
        gray = image.convert("L")
    factor = min(gray.size) // DECODE_SIDE
    if factor >= 2:  # a PNG (no draft) or a huge JPEG: shrink before the views are made
        gray = gray.reduce(factor)
    pixels = np.asarray(gray, np.uint8)
    return (width, height, float(pixels.mean()), float(pixels.std()), int(np.unique(pixels).size),
            float(np.mean(pixels <= 5)), float(np.mean(pixels >= 250)), thumbnail_views(pixels))


def source_format(source_path: str) -> str:
    """The file format of the source file, from its name (``jpeg``, ``png``, ``dcm``, ...)."""
    suffix = Path(source_path).suffix.lower().lstrip(".")
    return {"jpg": "jpeg", "dicom": "dcm"}.get(suffix, suffix or "none")


def read_probe_table(shards: Sequence[Path], *, workers: int | None = None) -> ProbeTable:
    """Everything the fast probes need from one split's shards, in row order."""
    import pyarrow.parquet as pq

    images: list[bytes] = []
    labels: list[int] = []
    sources: list[str] = []
    formats: list[str] = []
    conversions: list[str] | None = []
    for path in shards:
        parquet = pq.ParquetFile(path)
        has_conversion = "conversion" in parquet.schema_arrow.names
        if not has_conversion:
            conversions = None
        columns = ["image", "label", "source", "source_path"] + (["conversion"] if has_conversion else [])
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group, columns=columns)
            images += table.column("image").combine_chunks().field("bytes").to_pylist()
            labels += table.column("label").to_pylist()
            sources += table.column("source").to_pylist()
            formats += [source_format(p) for p in table.column("source_path").to_pylist()]
            if conversions is not None and has_conversion:
                conversions += [str(value) for value in table.column("conversion").to_pylist()]
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:  # Pillow releases the GIL while decoding
        described = list(pool.map(_describe_image, images, chunksize=32))
    empty = np.zeros((0, THUMBNAIL, THUMBNAIL), np.float32)
    views = {view: np.stack([d[7][view] for d in described]) if described else empty for view in VIEWS}

    def column(index: int) -> np.ndarray:
        return np.asarray([d[index] for d in described], np.float64)

    return ProbeTable(
        labels=np.asarray(labels, np.int64), sources=tuple(sources), widths=column(0), heights=column(1),
        formats=tuple(formats), conversions=tuple(conversions) if conversions is not None else None,
        means=column(2), stds=column(3), thumbnails=views["film"], views=views, gray_levels=column(4),
        dark_shares=column(5), bright_shares=column(6),
    )


# --- probes -------------------------------------------------------------------------------------------


def _flat(table: ProbeTable, view: str) -> np.ndarray:
    images = table.view(view)
    return images.reshape(len(images), -1)


def _fit_view(train: ProbeTable, view: str) -> SoftmaxRegression:
    return fit_balanced(_flat(train, view), train.labels, len(CLASS_NAMES), l2=THUMBNAIL_L2)


def view_probe(train: ProbeTable, test: ProbeTable, view: str, *, reference: dict[str, Any] | None = None,
               full_model: dict[str, Any] | None = None, confidence: float = 0.95, seed: int = 0,
               model: SoftmaxRegression | None = None) -> dict[str, Any]:
    """The linear probe of one view, predicting the label; ``reference``/``full_model``: their per-class evidence."""
    name = f"linear-{view}"
    if len(set(train.labels.tolist())) < 2 or not len(test.labels):
        return skipped(name, "the train split has fewer than two classes or the test split is empty", model_kind="linear")
    model = model or _fit_view(train, view)
    return probe_result(name, test.labels, model.probabilities(_flat(test, view)), train_labels=train.labels,
                        class_names=CLASS_NAMES, model_kind="linear", confidence=confidence, seed=seed,
                        role="reference" if view == "film" else "probe",
                        references={"full model": full_model, "linear film": reference},
                        model=LINEAR_MODEL, view=view)


def metadata_features(train: ProbeTable, test: ProbeTable) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The metadata probe's design matrices (train, test) and the feature names."""
    def categories(values_train: Iterable[str] | None) -> list[str]:
        return sorted(set(values_train)) if values_train is not None else []

    format_names = categories(train.formats)
    conversion_names = categories(train.conversions) if train.conversions is not None and test.conversions is not None else []
    extra = train.gray_levels is not None and test.gray_levels is not None
    names = ["width", "height", "aspect", "log_pixels", "mean_intensity", "std_intensity"]
    names += ["gray_levels_log2", "dark_share", "bright_share"] if extra else []
    names += [f"format={name}" for name in format_names] + [f"conversion={name}" for name in conversion_names]

    def design(table: ProbeTable) -> np.ndarray:
        numeric = [table.widths, table.heights, table.widths / np.maximum(table.heights, 1),
                   np.log(np.maximum(table.widths * table.heights, 1)), table.means, table.stds]
        if extra:
            numeric += [np.log2(np.maximum(table.gray_levels, 1)), table.dark_shares, table.bright_shares]
        onehot = [np.asarray([value == name for value in table.formats], np.float64) for name in format_names]
        if conversion_names:
            onehot += [np.asarray([value == name for value in table.conversions], np.float64) for name in conversion_names]
        return np.stack(numeric + onehot, axis=1) if len(table.labels) else np.zeros((0, len(names)))

    return design(train), design(test), names


def _group_columns(names: list[str], group: str) -> list[int]:
    entries = FEATURE_GROUPS[group]
    return [index for index, name in enumerate(names)
            if any(name.startswith(entry) if entry.endswith("=") else name == entry for entry in entries)]


def metadata_probe(train: ProbeTable, test: ProbeTable, *, full_model: dict[str, Any] | None = None,
                   confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Logistic regression on image metadata alone, predicting the label; then each feature group alone."""
    if len(set(train.labels.tolist())) < 2 or not len(test.labels):
        return skipped("metadata", "the train split has fewer than two classes or the test split is empty", model_kind="linear")
    x_train, x_test, names = metadata_features(train, test)
    model = fit_balanced(x_train, train.labels, len(CLASS_NAMES))
    groups = {}
    for group in FEATURE_GROUPS:
        columns = _group_columns(names, group)
        if not columns:
            continue
        alone = fit_balanced(x_train[:, columns], train.labels, len(CLASS_NAMES))
        result = probe_result(group, test.labels, alone.probabilities(x_test[:, columns]), train_labels=train.labels,
                              class_names=CLASS_NAMES, model_kind="linear", confidence=confidence, seed=seed)
        groups[group] = {"features": [names[i] for i in columns], "per_class": result["per_class"],
                         "separated_classes": result["separated_classes"], "flagged": result["flagged"]}
    return probe_result("metadata", test.labels, model.probabilities(x_test), train_labels=train.labels,
                        class_names=CLASS_NAMES, model_kind="linear", confidence=confidence, seed=seed,
                        references={"full model": full_model}, model="multinomial logistic regression "
                        "(L2, balanced class weights)", features=names, feature_groups=groups)


def source_probe(train: ProbeTable, test: ProbeTable, *, confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Within COVID-19 images only: a linear model on whole-film thumbnails predicting the source."""
    train_mask, test_mask = train.labels == COVID19, test.labels == COVID19
    train_sources = [s for s, keep in zip(train.sources, train_mask) if keep]
    test_sources = [s for s, keep in zip(test.sources, test_mask) if keep]
    names = sorted(set(train_sources))
    if len(names) < 2:
        return skipped("source", f"the train split's COVID-19 images come from {len(names)} source(s); "
                                 "the probe needs at least two", model_kind="linear")
    known = [s in names for s in test_sources]
    if not any(known):
        return skipped("source", "no COVID-19 test image comes from a source of the train split", model_kind="linear")
    index = {name: i for i, name in enumerate(names)}
    y_train = np.asarray([index[s] for s in train_sources], np.int64)
    y_test = np.asarray([index[s] for s, k in zip(test_sources, known) if k], np.int64)
    x_train = _flat(train.subset(train_mask), "film")
    x_test = _flat(test.subset(test_mask), "film")[np.asarray(known)]
    model = fit_balanced(x_train, y_train, len(names), l2=THUMBNAIL_L2)
    return probe_result("source", y_test, model.probabilities(x_test), train_labels=y_train, class_names=names,
                        model_kind="linear", confidence=confidence, seed=seed, model=LINEAR_MODEL + " (a linear lower bound "
                        "on what a CNN can learn)", test_images_of_unseen_sources=int(len(known) - sum(known)))


def linear_holdout_probe(train: ProbeTable, test: ProbeTable, *, seen_model: SoftmaxRegression | None = None,
                         confidence: float = 0.95) -> dict[str, Any]:
    """The source hold-out with the whole-film linear model: each COVID-19 source held out of training in
    turn; its COVID-19 films of both splits (none was seen) against the other sources' COVID-19 test films."""
    sources = holdout_sources(train.labels, train.sources)
    if not sources:
        return skipped("linear-holdout", "the train split's COVID-19 films come from fewer than two sources",
                       model_kind="linear")
    x_train, x_test = _flat(train, "film"), _flat(test, "film")
    seen_model = seen_model or _fit_view(train, "film")
    seen_hits = seen_model.predict(x_test) == COVID19
    test_sources = np.asarray(test.sources)
    test_covid = test.labels == COVID19
    entries = {}
    for source in sources:
        keep = holdout_train_mask(train.labels, train.sources, source)
        model = fit_balanced(x_train[keep], train.labels[keep], len(CLASS_NAMES), l2=THUMBNAIL_L2)
        held_train = ~keep  # the COVID-19 films of this source in the train split
        held_test = test_covid & (test_sources == source)
        test_hits = model.predict(x_test) == COVID19
        held_hits = np.concatenate([model.predict(x_train[held_train]) == COVID19, test_hits[held_test]])
        others = test_covid & ~held_test
        entries[source] = holdout_entry(
            source, held=(int(held_hits.sum()), int(held_hits.size)),
            in_distribution=(int(test_hits[others].sum()), int(others.sum())),
            seen=(int(seen_hits[held_test].sum()), int(held_test.sum())),
            other_sources=sorted(set(test_sources[others].tolist())), confidence=confidence)
    return holdout_result("linear-holdout", "linear", entries, model=LINEAR_MODEL + ", whole film",
                          held_out_films="the held-out source's COVID-19 films of both splits (none was trained on)")


def fast_probes(train: ProbeTable, test: ProbeTable, *, full_model: dict[str, Any] | None = None,
                confidence: float = 0.95, seed: int = 0,
                say: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Every fast probe: the four views, the source and metadata probes and the linear source hold-out.

    ``full_model``: the full model's per-class evidence (``class_evidence``), for the share of its AUC
    each probe reaches.
    """
    results: dict[str, dict[str, Any]] = {}
    film_model = _fit_view(train, "film") if len(set(train.labels.tolist())) >= 2 else None
    results["linear-film"] = view_probe(train, test, "film", full_model=full_model, confidence=confidence,
                                        seed=seed, model=film_model)
    reference = results["linear-film"].get("per_class")
    for view in VIEWS[1:]:
        results[f"linear-{view}"] = view_probe(train, test, view, reference=reference, full_model=full_model,
                                               confidence=confidence, seed=seed)
    results["source"] = source_probe(train, test, confidence=confidence, seed=seed)
    results["metadata"] = metadata_probe(train, test, full_model=full_model, confidence=confidence, seed=seed)
    results["linear-holdout"] = linear_holdout_probe(train, test, seen_model=film_model, confidence=confidence)
    if say:
        for name, result in results.items():
            if result.get("status") == "ran" and result.get("flagged"):
                say(f"{name} probe: FLAGGED ({', '.join(result.get('separated_classes') or result.get('flagged_sources', []))})")
    return results
