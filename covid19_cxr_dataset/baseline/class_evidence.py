"""Per-class evidence of a classifier: one-vs-rest AUC with a bootstrap interval, recall, balanced accuracy.

Pure numpy, so it serves the full model, the DCNN probes and the linear probes alike, with any
training backend. Why per class: a shortcut that only one class uses (every COVID-19 film found from
its border, in a test set where COVID-19 is one image in seven) leaves the overall accuracy near or
below the majority-class rate, yet that class's one-vs-rest AUC is near 1.

- ``auc``: P(score of a positive > score of a negative) + 1/2 P(tie), from rank statistics (the
  Mann-Whitney U), for any scores: a probability column, a feature value.
- ``class_evidence``: per class its AUC with a percentile bootstrap interval, its recall with a
  Wilson interval, and the balanced accuracy (mean recall) with a bootstrap interval. The bootstrap is
  stratified by true class (each resample keeps every class's test count: the question is how well
  these classes are told apart, not how common they are), seeded by ``numpy.random.default_rng(seed)``,
  and each resample is a vector of counts (how often each image was drawn), so no image array is copied.
- ``flagged_classes``: the flag rule. A class is flagged when the lower end of its AUC interval clears
  0.5 by ``FLAG_MARGIN`` and it has at least ``MIN_FLAG_SUPPORT`` test images on each side (with fewer,
  a percentile bootstrap is too narrow to trust).
- ``recovery``: how much of a reference model's AUC a probe reaches, per class.
- ``difference_interval``: Newcombe's interval of the difference of two independent proportions (from
  their Wilson intervals), for the source hold-out's recall drop.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..evidence import FLAG_MARGIN, MIN_FLAG_SUPPORT
from .evaluate import wilson_interval

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_METHOD = "percentile bootstrap, stratified by true class"
_CHUNK_CELLS = 4_000_000  # resamples x images held at once


def auc(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """One-vs-rest AUC of ``scores`` for the ``positive`` images; None without positives or negatives."""
    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    if positive.all() or not positive.any():
        return None
    return float(_weighted_auc(scores, positive, np.ones((1, scores.size)))[0])


def _weighted_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC under each row of ``weights`` (resamples, n): the weighted Mann-Whitney U, ties counted half."""
    order = np.argsort(scores, kind="mergesort")
    sorted_scores, sorted_positive = scores[order], positive[order]
    w = weights[:, order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])  # groups of tied scores
    positive_weight = np.add.reduceat(w * sorted_positive, starts, axis=1)
    negative_weight = np.add.reduceat(w * ~sorted_positive, starts, axis=1)
    below = np.cumsum(negative_weight, axis=1) - negative_weight
    wins = (positive_weight * (below + 0.5 * negative_weight)).sum(axis=1)
    pairs = positive_weight.sum(axis=1) * negative_weight.sum(axis=1)
    return np.divide(wins, pairs, out=np.full(wins.shape, np.nan), where=pairs > 0)


def _stratified_weights(labels: np.ndarray, rng: np.random.Generator, resamples: int) -> np.ndarray:
    """(resamples, n) counts: each class's images drawn with replacement, its count kept."""
    weights = np.zeros((resamples, labels.size))
    for value in np.unique(labels):
        members = np.flatnonzero(labels == value)
        draws = rng.integers(0, members.size, size=(resamples, members.size))
        offsets = np.arange(resamples)[:, None] * members.size
        counts = np.bincount((draws + offsets).ravel(), minlength=resamples * members.size)
        weights[:, members] = counts.reshape(resamples, members.size)
    return weights


def _interval(values: np.ndarray, confidence: float) -> dict[str, float] | None:
    values = values[np.isfinite(values)]
    if not values.size:
        return None
    alpha = 1 - confidence
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return {"low": float(low), "high": float(high)}


def class_evidence(y_true: Sequence[int], probs: np.ndarray, class_names: Sequence[str], *,
                   resamples: int = BOOTSTRAP_RESAMPLES, confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Per class: AUC [bootstrap], recall [Wilson], support; balanced accuracy [bootstrap]; JSON-ready.

    ``probs`` is (n, classes): each column is the score of its class (softmax output; any score works
    for the AUC). A class with no test image, or the only class present, has AUC None.
    """
    y_true = np.asarray(y_true, np.int64)
    probs = np.asarray(probs, np.float64)
    n = int(y_true.size)
    predicted = np.argmax(probs, axis=1) if n else np.zeros(0, np.int64)
    present = [index for index in range(len(class_names)) if (y_true == index).any()]
    rng = np.random.default_rng(seed)
    resample_auc: dict[int, list[np.ndarray]] = {index: [] for index in present}
    resample_recall: list[np.ndarray] = []
    chunk = max(1, _CHUNK_CELLS // max(n, 1))
    for start in range(0, resamples if n else 0, chunk):
        weights = _stratified_weights(y_true, rng, min(chunk, resamples - start))
        correct = weights * (predicted == y_true)
        recalls = [correct[:, y_true == index].sum(1) / (y_true == index).sum() for index in present]
        resample_recall.append(np.mean(recalls, axis=0))
        for index in present:
            resample_auc[index].append(_weighted_auc(probs[:, index], y_true == index, weights))
    classes: dict[str, Any] = {}
    for index, name in enumerate(class_names):
        positive = y_true == index
        support = int(positive.sum())
        hits = int((predicted[positive] == index).sum())
        row: dict[str, Any] = {
            "support": support,
            "auc": auc(probs[:, index], positive) if n else None,
            "auc_interval": None,
            "recall": hits / support if support else None,
            "recall_interval": wilson_interval(hits, support, confidence) if support else None,
        }
        if row["auc"] is not None and resample_auc.get(index):
            row["auc_interval"] = _interval(np.concatenate(resample_auc[index]), confidence)
        classes[name] = row
    recalls = [classes[class_names[index]]["recall"] for index in present]
    return {
        "classes": classes,
        "balanced_accuracy": float(np.mean(recalls)) if recalls else None,
        "balanced_accuracy_interval": _interval(np.concatenate(resample_recall), confidence) if resample_recall else None,
        "n": n,
        "bootstrap": {"method": BOOTSTRAP_METHOD, "resamples": int(resamples), "confidence": confidence, "seed": seed},
    }


def flagged_classes(evidence: dict[str, Any], margin: float = FLAG_MARGIN,
                    min_support: int = MIN_FLAG_SUPPORT) -> list[str]:
    """The classes whose AUC interval's lower end exceeds 0.5 + ``margin`` (enough test images on each side)."""
    n = evidence.get("n", 0)
    flagged = []
    for name, row in evidence["classes"].items():
        interval = row.get("auc_interval")
        enough = row["support"] >= min_support and n - row["support"] >= min_support
        if interval and enough and interval["low"] > 0.5 + margin:
            flagged.append(name)
    return flagged


def recovery(probe: dict[str, Any], reference: dict[str, Any] | None) -> dict[str, dict[str, float | None]]:
    """Per class: the probe's AUC as a share of the reference's (``auc_ratio``), and of the reference's
    margin above chance (``share_above_chance``: (probe - 0.5) / (reference - 0.5), None when the
    reference is within 0.05 of chance). Classes either side lacks are left out."""
    if not reference:
        return {}
    out = {}
    for name, row in probe["classes"].items():
        mine, theirs = row.get("auc"), (reference["classes"].get(name) or {}).get("auc")
        if mine is None or theirs is None:
            continue
        out[name] = {
            "probe_auc": mine,
            "reference_auc": theirs,
            "auc_ratio": mine / theirs if theirs > 0 else None,
            "share_above_chance": (mine - 0.5) / (theirs - 0.5) if theirs - 0.5 > 0.05 else None,
        }
    return out


def difference_interval(first: tuple[int, int], second: tuple[int, int], confidence: float = 0.95) -> dict[str, float] | None:
    """Newcombe's hybrid score interval of p1 - p2 for k1 of n1 and k2 of n2 (independent samples)."""
    (k1, n1), (k2, n2) = first, second
    if n1 <= 0 or n2 <= 0:
        return None
    p1, p2 = k1 / n1, k2 / n2
    one, two = wilson_interval(k1, n1, confidence), wilson_interval(k2, n2, confidence)
    low = (p1 - p2) - np.sqrt((p1 - one["low"]) ** 2 + (two["high"] - p2) ** 2)
    high = (p1 - p2) + np.sqrt((one["high"] - p1) ** 2 + (p2 - two["low"]) ** 2)
    return {"low": float(max(-1.0, low)), "high": float(min(1.0, high))}


def probe_line(name: str, probe: dict) -> str:
    """One line per probe: flagged or not, and for which classes (or held-out sources)."""
    head = f"probe {name} ({probe.get('model_kind', '?')})"
    if probe.get("status") != "ran":
        return f"{head}: not run ({probe.get('reason')})"
    if "sources" in probe:  # the source hold-out
        drops = ", ".join(f"{source} {entry['held_out']['recall']:.2f} vs {entry['in_distribution']['recall']:.2f}"
                          for source, entry in probe["sources"].items() if entry.get("drop") is not None)
        verdict = f"SHORTCUT: {', '.join(probe['flagged_sources'])}" if probe["flagged"] else "not flagged"
        return f"{head}: {verdict} (COVID-19 recall held out vs in distribution: {drops or 'not measured'})"
    aucs = ", ".join(f"{cls} {row['auc']:.2f}" for cls, row in probe["per_class"]["classes"].items() if row["auc"] is not None)
    if probe.get("role") == "reference":
        verdict = "reference"
    else:
        verdict = f"SHORTCUT: {', '.join(probe['separated_classes'])}" if probe["flagged"] else "not flagged"
    return f"{head}: {verdict} (AUC {aucs}; accuracy {probe['accuracy']:.4f} vs majority-class rate {probe['majority_rate']:.4f})"
