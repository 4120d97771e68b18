"""Test-set metrics as the paper reports them, from true labels and predicted probabilities.

Pure numpy (no TensorFlow), so the numbers can be checked by hand and recomputed from a
certificate's predictions.csv. Labels are class indices in ``CLASS_NAMES`` order
(COVID-19 = 0, Normal = 1, Pneumonia = 2); ``probs`` is (n, 3) softmax output.

- ``keras_style_metrics``: what ``model.evaluate`` prints with the paper's metrics:
  ``CategoricalAccuracy`` (argmax), and ``Precision``/``Recall`` at threshold 0.5 computed over every
  entry of the one-hot matrix (each image x class is a binary decision), not per class.
- ``per_class_metrics``: precision, recall, F1 and support of each class from the confusion matrix.
- ``confusion_matrix``: Table 5's layout, rows = true class, columns = predicted class.
- ``covid19_subset_metrics``: the Keras-style metrics on the COVID-19 test images only (the paper
  evaluates that subset separately).
- ``true_class_probability``: Table 4, the mean predicted probability of the true class per class,
  with a normal-approximation confidence interval of the mean (the paper does not say which
  interval it used).
- ``bootstrap_intervals``: seeded percentile bootstrap intervals over test images (test loss and the
  COVID-19 subset's figures included), which cannot leave [0, 1] for a ratio.
- ``wilson_interval``: the Wilson score interval of a proportion (k of n), inside [0, 1] by construction;
  used for confusion-matrix cells and probe accuracies.
- ``per_image_loss``: label-smoothed categorical cross-entropy of each image, as Keras averages it.
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Any, Sequence

import numpy as np

from .. import CLASS_NAMES

COVID19 = CLASS_NAMES.index("COVID-19")


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int = len(CLASS_NAMES)) -> np.ndarray:
    """(num_classes, num_classes) counts; entry [t, p] = images of true class t predicted as p."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return matrix


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator else 0.0


def per_class_metrics(matrix: np.ndarray, class_names: Sequence[str] = CLASS_NAMES) -> dict[str, dict[str, Any]]:
    """{class: {precision, recall, f1, support}}; an undefined ratio (0/0) counts as 0."""
    result = {}
    for index, name in enumerate(class_names):
        true_positive = matrix[index, index]
        precision = _ratio(true_positive, matrix[:, index].sum())
        recall = _ratio(true_positive, matrix[index, :].sum())
        result[name] = {
            "precision": precision,
            "recall": recall,
            "f1": _ratio(2 * precision * recall, precision + recall),
            "support": int(matrix[index, :].sum()),
        }
    return result


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> dict[str, float | None]:
    """Wilson score interval of ``successes / n``; {"low": None, "high": None} when ``n`` is 0."""
    if n <= 0:
        return {"low": None, "high": None}
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends: float rounding must not leave them
    high = 1.0 if successes == n else min(1.0, centre + half)
    return {"low": float(low), "high": float(high)}


def per_image_loss(y_true: Sequence[int], probs: np.ndarray, *, label_smoothing: float = 0.0) -> np.ndarray:
    """Categorical cross-entropy of each image with smoothed one-hot targets (Keras clips p to [1e-7, 1 - 1e-7])."""
    y_true = np.asarray(y_true, np.int64)
    probs = np.clip(np.asarray(probs, np.float64), 1e-7, 1 - 1e-7)
    classes = probs.shape[1]
    target = np.eye(classes)[y_true] * (1 - label_smoothing) + label_smoothing / classes
    # Keras normalises each row of probabilities to sum 1 before the log
    return -(target * np.log(probs / probs.sum(axis=1, keepdims=True))).sum(axis=1)


def _binary_counts(
    y_true: np.ndarray, probs: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image: true positives, false positives and false negatives over its one-hot row."""
    onehot = np.eye(probs.shape[1], dtype=bool)[y_true]
    positive = probs > threshold  # Keras: strictly above the threshold
    true_positive = (positive & onehot).sum(axis=1)
    false_positive = (positive & ~onehot).sum(axis=1)
    false_negative = (~positive & onehot).sum(axis=1)
    return true_positive, false_positive, false_negative


def keras_style_metrics(y_true: Sequence[int], probs: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, precision and recall exactly as Keras computes them over one-hot outputs."""
    y_true = np.asarray(y_true, np.int64)
    probs = np.asarray(probs, np.float64)
    if y_true.size == 0:
        return {"accuracy": 0.0, "precision": 0.0, "recall": 0.0}
    true_positive, false_positive, false_negative = _binary_counts(y_true, probs, threshold)
    return {
        "accuracy": float(np.mean(np.argmax(probs, axis=1) == y_true)),
        "precision": _ratio(true_positive.sum(), true_positive.sum() + false_positive.sum()),
        "recall": _ratio(true_positive.sum(), true_positive.sum() + false_negative.sum()),
    }


def covid19_subset_metrics(y_true: Sequence[int], probs: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """Keras-style metrics on the COVID-19 test images alone, plus how many were classified correctly."""
    y_true = np.asarray(y_true, np.int64)
    probs = np.asarray(probs, np.float64)
    subset = y_true == COVID19
    metrics: dict[str, Any] = keras_style_metrics(y_true[subset], probs[subset], threshold)
    metrics["n"] = int(subset.sum())
    metrics["correct"] = int((np.argmax(probs[subset], axis=1) == COVID19).sum())
    return metrics


def true_class_probability(
    y_true: Sequence[int], probs: np.ndarray, *, confidence: float = 0.95, class_names: Sequence[str] = CLASS_NAMES
) -> dict[str, dict[str, Any]]:
    """Table 4: per class, the mean predicted probability of the true class and its confidence interval.

    Interval: mean +- z * s / sqrt(n) (s: sample standard deviation, z: the normal quantile for
    ``confidence``), clipped to [0, 1]; None when a class has fewer than two test images.
    """
    y_true = np.asarray(y_true, np.int64)
    probs = np.asarray(probs, np.float64)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    table = {}
    for index, name in enumerate(class_names):
        p = probs[y_true == index, index]
        n = int(p.size)
        mean = float(p.mean()) if n else None
        std = float(p.std(ddof=1)) if n > 1 else None
        half = z * std / np.sqrt(n) if std is not None else None
        table[name] = {
            "n": n,
            "correct": int((np.argmax(probs[y_true == index], axis=1) == index).sum()) if n else 0,
            "mean": mean,
            "std": std,
            "ci_low": max(0.0, mean - half) if half is not None else None,
            "ci_high": min(1.0, mean + half) if half is not None else None,
        }
    return table


def bootstrap_intervals(
    y_true: Sequence[int],
    probs: np.ndarray,
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    threshold: float = 0.5,
    label_smoothing: float | None = None,
) -> dict[str, Any]:
    """Percentile bootstrap intervals of the Keras-style accuracy, precision and recall.

    Test images are resampled with replacement ``resamples`` times from ``numpy.random.default_rng(seed)``.
    With ``label_smoothing`` given, the mean per-image loss (``loss``) is bootstrapped too. The
    COVID-19 subset's figures (``covid19_accuracy``, ``covid19_precision``, ``covid19_recall``,
    ``covid19_loss``) are bootstrapped over that subset alone, from the same generator afterwards.
    """
    y_true = np.asarray(y_true, np.int64)
    probs = np.asarray(probs, np.float64)
    result: dict[str, Any] = {"resamples": int(resamples), "confidence": confidence, "seed": seed}
    if resamples <= 0 or y_true.size == 0:
        return result
    rng = np.random.default_rng(seed)
    result.update(_bootstrap(y_true, probs, rng, resamples, confidence, threshold, label_smoothing))
    subset = y_true == COVID19
    if subset.any():
        covid = _bootstrap(y_true[subset], probs[subset], rng, resamples, confidence, threshold, label_smoothing)
        result.update({f"covid19_{name}": interval for name, interval in covid.items()})
    return result


def _bootstrap(y_true: np.ndarray, probs: np.ndarray, rng: np.random.Generator, resamples: int,
               confidence: float, threshold: float, label_smoothing: float | None) -> dict[str, dict[str, float]]:
    n = y_true.size
    correct = (np.argmax(probs, axis=1) == y_true).astype(np.int64)
    true_positive, false_positive, false_negative = _binary_counts(y_true, probs, threshold)
    losses = per_image_loss(y_true, probs, label_smoothing=label_smoothing) if label_smoothing is not None else None
    values: dict[str, list[np.ndarray]] = {"accuracy": [], "precision": [], "recall": []}
    if losses is not None:
        values["loss"] = []
    chunk = max(1, 4_000_000 // n)  # bounded memory: chunk x n indices at a time
    for start in range(0, resamples, chunk):
        index = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        tp, fp, fn = true_positive[index].sum(1), false_positive[index].sum(1), false_negative[index].sum(1)
        values["accuracy"].append(correct[index].mean(1))
        values["precision"].append(np.divide(tp, tp + fp, out=np.zeros(tp.shape), where=(tp + fp) > 0))
        values["recall"].append(np.divide(tp, tp + fn, out=np.zeros(tp.shape), where=(tp + fn) > 0))
        if losses is not None:
            values["loss"].append(losses[index].mean(1))
    alpha = 1 - confidence
    result = {}
    for name, parts in values.items():
        low, high = np.quantile(np.concatenate(parts), [alpha / 2, 1 - alpha / 2])
        result[name] = {"low": float(low), "high": float(high)}
    return result


def evaluate_predictions(
    y_true: Sequence[int],
    probs: np.ndarray,
    *,
    threshold: float = 0.5,
    confidence: float = 0.95,
    bootstrap_resamples: int = 2000,
    seed: int = 0,
    class_names: Sequence[str] = CLASS_NAMES,
    label_smoothing: float | None = None,
) -> dict[str, Any]:
    """Every test metric of a certificate, as plain JSON-ready values.

    With ``label_smoothing`` (the recipe's), the per-image losses give the COVID-19 subset's loss and
    bootstrap intervals of the test and COVID-19 losses (Table 3's loss column; the test loss itself
    is ``model.evaluate``'s, which is the mean of the same per-image losses).
    """
    y_true = np.asarray(y_true, np.int64)
    probs = np.asarray(probs, np.float64)
    matrix = confusion_matrix(y_true, np.argmax(probs, axis=1), len(class_names))
    per_class = per_class_metrics(matrix, class_names)
    covid19 = covid19_subset_metrics(y_true, probs, threshold)
    if label_smoothing is not None:
        losses = per_image_loss(y_true, probs, label_smoothing=label_smoothing)
        subset = y_true == COVID19
        covid19["loss"] = float(losses[subset].mean()) if subset.any() else None
    row_totals = matrix.sum(axis=1)
    return {
        "n": int(y_true.size),
        **keras_style_metrics(y_true, probs, threshold),
        "macro_f1": float(np.mean([m["f1"] for m in per_class.values()])),
        "per_class": per_class,
        "confusion_matrix": {
            "layout": "rows: true class, columns: predicted class",
            "classes": list(class_names),
            "counts": matrix.tolist(),
            "row_fractions": [[float(c / row_totals[t]) if row_totals[t] else None for c in matrix[t]]
                              for t in range(len(class_names))],
            "row_fraction_intervals": [[wilson_interval(int(c), int(row_totals[t]), confidence) for c in matrix[t]]
                                       for t in range(len(class_names))],
            "interval": "Wilson score",
        },
        "covid19": covid19,
        "true_class_probability": true_class_probability(y_true, probs, confidence=confidence, class_names=class_names),
        "bootstrap": bootstrap_intervals(y_true, probs, resamples=bootstrap_resamples, confidence=confidence,
                                         seed=seed, threshold=threshold, label_smoothing=label_smoothing),
        "threshold": threshold,
    }


def reference_value(metrics: dict[str, Any], name: str) -> float:
    """The value of a reference figure name (``recipe.REFERENCE_METRICS``) in ``evaluate_predictions`` output."""
    if name in ("accuracy", "precision", "recall", "macro_f1"):
        return float(metrics[name])
    if name.startswith("covid19_"):
        return float(metrics["covid19"][name.removeprefix("covid19_")])
    class_name, measure = name.rsplit("_", 1)
    return float(metrics["per_class"][class_name][measure])
