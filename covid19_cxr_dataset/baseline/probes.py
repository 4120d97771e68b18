"""Shortcut probes: how much of the label can a model read from what is not the lungs?

This release joins adult COVID-19 films from many hospitals and papers with paediatric Normal and
Pneumonia films from one hospital; DeGrave et al. (Nature Machine Intelligence 2021) showed that
models trained on such composites learn the source, not the disease. Each probe trains or fits a
model on one thing that should not tell the disease and reports its test accuracy against the
majority-class rate (always answering the train split's most common class):

- ``border``: the recipe's DCNN trained and tested with the centre of every image blanked (a centred
  box of ``CENTRE_FRACTION`` of each side set to the mean of what remains), so only borders, burned-in
  text, markers and collimation are left;
- ``lung``: the same with a centred ellipse of that size (opt-in: it keeps the corners too; run it
  when the box's result needs a second opinion);
- ``source``: within COVID-19 only, a linear model on 24 x 24 thumbnails predicting the source
  (Cohen / Figure1 / Actualmed), a lower bound on what a CNN could do;
- ``metadata``: a logistic regression on image metadata alone (width, height, aspect, pixel count,
  file format of the source file, the conversion path when the release records it, mean and
  standard deviation of intensity) predicting the label. Seconds on a CPU.

A probe is ``flagged`` when the lower end of its accuracy's 95% Wilson interval is more than
``FLAG_MARGIN`` above the majority-class rate: the shortcut alone beats guessing by a margin that
sampling noise does not explain. The blanking works on the decoded uint8 arrays (``SplitArrays``)
before they enter the training pipeline: the same fraction of every decoded image, so a train image
(at ``data.train_resize``) is blanked before its random crop, and a crop shows the box a few pixels
off centre, as it shows the film. Everything here but the DCNN training is numpy and Pillow.
"""

from __future__ import annotations

import dataclasses
import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .. import CLASS_NAMES
from ..errors import CxrDatasetError
from ..evidence import FLAG_MARGIN
from .evaluate import COVID19, confusion_matrix, per_class_metrics, wilson_interval

PROBE_NAMES = ("border", "lung", "source", "metadata")
DEFAULT_PROBES = ("border", "source", "metadata")
IMAGE_PROBES = ("border", "lung")  # the ones that train the recipe's DCNN
CENTRE_FRACTION = 0.7
CPU_PROBE_EPOCHS = 3
"""Epochs of an image probe when no GPU is there and none are asked for (the recipe's own on a GPU)."""
THUMBNAIL = 24

PROBE_TITLES = {
    "border": "border only (centre box blanked)",
    "lung": "lungs blanked (centre ellipse)",
    "source": "source, within COVID-19 (thumbnails)",
    "metadata": "size, format and intensity metadata",
}


# --- blanking ------------------------------------------------------------------------------------


def centre_mask(height: int, width: int, shape: str = "box", fraction: float = CENTRE_FRACTION) -> np.ndarray:
    """(height, width) bool, True inside the centred box or ellipse whose sides are ``fraction`` of the image's."""
    if shape not in ("box", "ellipse"):
        raise ValueError(f"shape {shape!r}: expected 'box' or 'ellipse'")
    yy, xx = np.mgrid[0:height, 0:width]
    cy, cx = (height - 1) / 2, (width - 1) / 2
    ry, rx = fraction * height / 2, fraction * width / 2
    if shape == "box":
        return (np.abs(yy - cy) < ry) & (np.abs(xx - cx) < rx)
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1


def blank_centre(images: np.ndarray, shape: str = "box", fraction: float = CENTRE_FRACTION) -> np.ndarray:
    """A copy of ``images`` (n, h, w, c) uint8 with the centre of each set to the mean of its own border.

    The fill is each image's mean outside the blanked region, so nothing of the centre leaks into it.
    """
    images = np.asarray(images)
    mask = centre_mask(images.shape[1], images.shape[2], shape, fraction)
    out = images.copy()
    if len(images) == 0 or mask.all():
        return out
    fill = np.rint(images[:, ~mask, :].mean(axis=1))  # (n, c)
    out[:, mask, :] = fill[:, None, :].astype(images.dtype)
    return out


def blank_arrays(arrays: dict[str, Any], shape: str, fraction: float = CENTRE_FRACTION) -> dict[str, Any]:
    """Every split of ``data.load_release``'s output with its images' centres blanked."""
    return {split: dataclasses.replace(split_arrays, images=blank_centre(split_arrays.images, shape, fraction))
            for split, split_arrays in arrays.items()}


# --- a small softmax regression (numpy), for the cheap probes --------------------------------------


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


def fit_softmax_regression(features: np.ndarray, labels: np.ndarray, classes: int, *,
                           l2: float = 1e-3, steps: int = 400) -> SoftmaxRegression:
    """Multinomial logistic regression on standardized features, by accelerated gradient descent (deterministic)."""
    x = np.asarray(features, np.float64)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    z = (x - mean) / scale
    n, d = z.shape
    target = np.eye(classes)[np.asarray(labels, np.int64)]
    step = 1.0 / (0.5 * (np.linalg.norm(z, 2) ** 2 / max(n, 1) + 1.0) + l2)  # 1 / Lipschitz constant
    weights, bias = np.zeros((d, classes)), np.zeros(classes)
    previous_w, previous_b = weights, bias
    for iteration in range(1, steps + 1):
        momentum = (iteration - 1) / (iteration + 2)
        look_w = weights + momentum * (weights - previous_w)
        look_b = bias + momentum * (bias - previous_b)
        logits = z @ look_w + look_b
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        error = (probs - target) / n
        previous_w, previous_b = weights, bias
        weights = look_w - step * (z.T @ error + l2 * look_w)
        bias = look_b - step * error.sum(axis=0)
    return SoftmaxRegression(weights, bias, mean, scale)


# --- reading what the cheap probes need ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ProbeTable:
    """Per image of one split: label, source, stored size, source file format, conversion, intensity, thumbnail."""

    labels: np.ndarray
    sources: tuple[str, ...]
    widths: np.ndarray
    heights: np.ndarray
    formats: tuple[str, ...]
    conversions: tuple[str, ...] | None
    means: np.ndarray
    stds: np.ndarray
    thumbnails: np.ndarray  # (n, THUMBNAIL, THUMBNAIL) float32 in [0, 1]


def _describe_image(jpeg: bytes) -> tuple[int, int, float, float, np.ndarray]:
    from PIL import Image

    with Image.open(io.BytesIO(jpeg)) as image:
        width, height = image.size
        image.draft("L", (THUMBNAIL * 8, THUMBNAIL * 8))  # JPEG DCT scaling: a fast, reduced decode
        gray = image.convert("L")
        pixels = np.asarray(gray, np.float32)
        thumbnail = np.asarray(gray.resize((THUMBNAIL, THUMBNAIL), Image.BILINEAR), np.float32) / 255.0
    return width, height, float(pixels.mean()), float(pixels.std()), thumbnail


def source_format(source_path: str) -> str:
    """The file format of the source file, from its name (``jpeg``, ``png``, ``dcm``, ...)."""
    suffix = Path(source_path).suffix.lower().lstrip(".")
    return {"jpg": "jpeg", "dicom": "dcm"}.get(suffix, suffix or "none")


def read_probe_table(shards: Sequence[Path], *, workers: int | None = None) -> ProbeTable:
    """Everything the cheap probes need from one split's shards, in row order."""
    import pyarrow.parquet as pq

    jpegs: list[bytes] = []
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
            jpegs += table.column("image").combine_chunks().field("bytes").to_pylist()
            labels += table.column("label").to_pylist()
            sources += table.column("source").to_pylist()
            formats += [source_format(p) for p in table.column("source_path").to_pylist()]
            if conversions is not None and has_conversion:
                conversions += [str(value) for value in table.column("conversion").to_pylist()]
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:  # Pillow releases the GIL while decoding
        described = list(pool.map(_describe_image, jpegs, chunksize=32))
    n = len(described)
    return ProbeTable(
        labels=np.asarray(labels, np.int64),
        sources=tuple(sources),
        widths=np.asarray([d[0] for d in described], np.float64),
        heights=np.asarray([d[1] for d in described], np.float64),
        formats=tuple(formats),
        conversions=tuple(conversions) if conversions is not None else None,
        means=np.asarray([d[2] for d in described], np.float64),
        stds=np.asarray([d[3] for d in described], np.float64),
        thumbnails=np.stack([d[4] for d in described]) if n else np.zeros((0, THUMBNAIL, THUMBNAIL), np.float32),
    )


def metadata_features(train: ProbeTable, test: ProbeTable) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The metadata probe's design matrices (train, test) and the feature names."""
    def categories(values_train: Iterable[str] | None) -> list[str]:
        return sorted(set(values_train)) if values_train is not None else []

    format_names = categories(train.formats)
    conversion_names = categories(train.conversions) if train.conversions is not None and test.conversions is not None else []
    names = ["width", "height", "aspect", "log_pixels", "mean_intensity", "std_intensity"]
    names += [f"format={name}" for name in format_names] + [f"conversion={name}" for name in conversion_names]

    def design(table: ProbeTable) -> np.ndarray:
        numeric = [table.widths, table.heights, table.widths / np.maximum(table.heights, 1),
                   np.log(np.maximum(table.widths * table.heights, 1)), table.means, table.stds]
        onehot = [np.asarray([value == name for value in table.formats], np.float64) for name in format_names]
        if conversion_names:
            onehot += [np.asarray([value == name for value in table.conversions], np.float64) for name in conversion_names]
        return np.stack(numeric + onehot, axis=1) if len(table.labels) else np.zeros((0, len(names)))

    return design(train), design(test), names


# --- results ---------------------------------------------------------------------------------------


def majority_rate(train_labels: np.ndarray, test_labels: np.ndarray) -> tuple[int, float]:
    """(the train split's most common class, the share of test images of that class)."""
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    if not train_labels.size or not test_labels.size:
        return 0, 0.0
    values, counts = np.unique(train_labels, return_counts=True)
    majority = int(values[np.argmax(counts)])
    return majority, float(np.mean(test_labels == majority))


def probe_result(name: str, y_true: np.ndarray, y_pred: np.ndarray, *, train_labels: np.ndarray,
                 class_names: Sequence[str], confidence: float = 0.95, **details: Any) -> dict[str, Any]:
    """A probe's numbers: accuracy with its Wilson interval, per-class recall, majority-class rate, flag."""
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    n = int(y_true.size)
    correct = int((y_true == y_pred).sum())
    majority, rate = majority_rate(train_labels, y_true)
    interval = wilson_interval(correct, n, confidence)
    per_class = per_class_metrics(confusion_matrix(y_true, y_pred, len(class_names)), class_names)
    flagged = bool(n and interval["low"] is not None and interval["low"] > rate + FLAG_MARGIN)
    return {
        "probe": name,
        "status": "ran",
        "title": PROBE_TITLES.get(name, name),
        "n_test": n,
        "accuracy": correct / n if n else None,
        "accuracy_interval": {**interval, "method": "Wilson score", "confidence": confidence},
        "per_class_recall": {cls: row["recall"] for cls, row in per_class.items() if row["support"]},
        "classes": list(class_names),
        "majority_class": class_names[majority] if n else None,
        "majority_rate": rate,
        "flag_rule": f"flagged when the interval's lower end exceeds the majority-class rate by more than "
                     f"{100 * FLAG_MARGIN:.0f} percentage points",
        "flagged": flagged,
        **details,
    }


def skipped(name: str, reason: str) -> dict[str, Any]:
    return {"probe": name, "status": "skipped", "title": PROBE_TITLES.get(name, name), "reason": reason, "flagged": False}


def metadata_probe(train: ProbeTable, test: ProbeTable, *, confidence: float = 0.95) -> dict[str, Any]:
    """Logistic regression on image metadata alone, predicting the label."""
    if len(set(train.labels.tolist())) < 2 or not len(test.labels):
        return skipped("metadata", "the train split has fewer than two classes or the test split is empty")
    x_train, x_test, names = metadata_features(train, test)
    model = fit_softmax_regression(x_train, train.labels, len(CLASS_NAMES))
    return probe_result("metadata", test.labels, model.predict(x_test), train_labels=train.labels,
                        class_names=CLASS_NAMES, confidence=confidence, model="multinomial logistic regression",
                        features=names)


def source_probe(train: ProbeTable, test: ProbeTable, *, confidence: float = 0.95) -> dict[str, Any]:
    """Within COVID-19 images only: a linear model on thumbnails predicting the source."""
    train_mask, test_mask = train.labels == COVID19, test.labels == COVID19
    train_sources = [s for s, keep in zip(train.sources, train_mask) if keep]
    test_sources = [s for s, keep in zip(test.sources, test_mask) if keep]
    names = sorted(set(train_sources))
    if len(names) < 2:
        return skipped("source", f"the train split's COVID-19 images come from {len(names)} source(s); "
                                 "the probe needs at least two")
    known = [s in names for s in test_sources]
    if not any(known):
        return skipped("source", "no COVID-19 test image comes from a source of the train split")
    index = {name: i for i, name in enumerate(names)}
    y_train = np.asarray([index[s] for s in train_sources], np.int64)
    y_test = np.asarray([index[s] for s, k in zip(test_sources, known) if k], np.int64)
    x_train = train.thumbnails[train_mask].reshape(int(train_mask.sum()), -1)
    x_test = test.thumbnails[test_mask].reshape(int(test_mask.sum()), -1)[np.asarray(known)]
    model = fit_softmax_regression(x_train, y_train, len(names), l2=1e-2)
    return probe_result("source", y_test, model.predict(x_test), train_labels=y_train, class_names=names,
                        confidence=confidence, model=f"multinomial logistic regression on {THUMBNAIL}x{THUMBNAIL} "
                                                     "thumbnails (a linear lower bound on what a CNN can learn)",
                        test_images_of_unseen_sources=int(len(known) - sum(known)))


def image_probe_result(name: str, shape: str, y_true: np.ndarray, probs: np.ndarray, *, train_labels: np.ndarray,
                       epochs: int, recipe_epochs: int, confidence: float = 0.95) -> dict[str, Any]:
    """The border or lung probe's numbers from the probe model's test probabilities."""
    return probe_result(name, y_true, np.argmax(probs, axis=1), train_labels=train_labels, class_names=CLASS_NAMES,
                        confidence=confidence, model="the recipe's DCNN", blanked={"shape": shape,
                                                                                   "fraction": CENTRE_FRACTION,
                                                                                   "fill": "mean of the image's own border"},
                        epochs=epochs, recipe_epochs=recipe_epochs)


def share_of_gain(probe: dict[str, Any], model_accuracy: float | None) -> float | None:
    """(probe accuracy - majority rate) / (model accuracy - majority rate), in [0, 1]; None if undefined."""
    if probe.get("status") != "ran" or model_accuracy is None or probe.get("accuracy") is None:
        return None
    gain = model_accuracy - probe["majority_rate"]
    if gain <= 0:
        return None
    return float(min(1.0, max(0.0, (probe["accuracy"] - probe["majority_rate"]) / gain)))


def resolve_probes(probes: bool | Iterable[str] | None) -> tuple[str, ...]:
    """``True`` -> the default probes; names -> those, checked; ``"all"`` -> every probe; falsy -> none."""
    if not probes:
        return ()
    if probes is True:
        return DEFAULT_PROBES
    names = [probes] if isinstance(probes, str) else list(probes)
    if "all" in names:
        return PROBE_NAMES
    unknown = [name for name in names if name not in PROBE_NAMES]
    if unknown:
        raise CxrDatasetError(f"unknown probe(s) {', '.join(unknown)}; known: {', '.join(PROBE_NAMES)}, all")
    return tuple(name for name in PROBE_NAMES if name in names)
