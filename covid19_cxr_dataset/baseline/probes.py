"""Shortcut probes: how much of the label can a model read from what is not the lungs?

This release joins adult COVID-19 films from many hospitals and papers with paediatric Normal and
Pneumonia films from one hospital; DeGrave et al. (Nature Machine Intelligence 2021) showed that
models trained on such composites learn the source, not the disease. Each probe trains or fits a
model on one thing that should not tell the disease. Two kinds (every result says which, ``model_kind``):

- ``linear`` (``linear_probes.py``, on every certificate, seconds on a CPU): logistic regression on
  thumbnails of the whole film (the reference), of the border only, of the film with the lung region
  blanked and of its corners; on metadata; on COVID-19 thumbnails predicting the source; and the
  source hold-out's linear twin (``holdout.py``);
- ``dcnn`` (opt-in, ``--probes``): the recipe's DCNN trained and tested with the centre of every image
  blanked, ``border`` (a centred box of ``CENTRE_FRACTION`` of each side set to the mean of what
  remains: only borders, burned-in text, markers and collimation are left) and ``lung`` (a centred
  ellipse of that size), and ``holdout``, the source hold-out with the DCNN (by default on a GPU only).

Every probe's numbers come from ``probe_result``: per class the one-vs-rest AUC with a bootstrap
interval, the recall, and the balanced accuracy (``class_evidence.py``); the share of the full model's
AUC (and the linear reference's) it reaches per class. A probe is ``flagged`` when, for some class, the
lower end of its AUC interval clears 0.5 by ``FLAG_MARGIN``: the probe tells that class from the others
by a margin that sampling noise does not explain. The older rule (overall accuracy against the
majority-class rate) is kept beside it (``accuracy_rule``): it cannot see a shortcut that only a
minority class uses. The blanking works on the decoded uint8 arrays (``SplitArrays``) before they enter
the training pipeline: the same fraction of every decoded image, so a train image (at
``data.train_resize``) is blanked before its random crop, and a crop shows the box a few pixels off
centre, as it shows the film.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Sequence

import numpy as np

from .. import CLASS_NAMES
from ..errors import CxrDatasetError
from ..evidence import FLAG_MARGIN, MIN_FLAG_SUPPORT
from .class_evidence import BOOTSTRAP_RESAMPLES, class_evidence, flagged_classes, recovery
from .evaluate import wilson_interval

IMAGE_PROBES = ("border", "lung")  # the DCNN probes that blank the image
DCNN_PROBES = ("border", "lung", "holdout")
PROBE_NAMES = DCNN_PROBES
DEFAULT_PROBES = ("border", "lung")
"""``--probes``: the DCNN probes on any device; on a GPU the DCNN hold-out too."""
FAST_PROBE_NAMES = ("linear-film", "linear-border", "linear-lung", "linear-corners", "source", "metadata",
                    "linear-holdout")
"""Run on every certificate (``linear_probes.fast_probes``); naming one of them asks for nothing more."""
CENTRE_FRACTION = 0.7
CPU_PROBE_EPOCHS = 3
"""Epochs of an image probe when no GPU is there and none are asked for (the recipe's own on a GPU)."""

PROBE_TITLES = {
    "border": "border only (centre box blanked)",
    "lung": "lungs blanked (centre ellipse)",
    "holdout": "source hold-out, COVID-19",
    "linear-film": "whole film (the linear reference)",
    "linear-border": "border only (centre box blanked)",
    "linear-lung": "lungs blanked (centre ellipse)",
    "linear-corners": "corners only (burned-in text and markers)",
    "linear-holdout": "source hold-out, COVID-19",
    "source": "source, within COVID-19 (thumbnails)",
    "metadata": "size, format, bit depth and intensity metadata",
}
ACCURACY_RULE = (f"overall accuracy's 95% Wilson interval's lower end above the majority-class rate by more than "
                 f"{100 * FLAG_MARGIN:.0f} percentage points")
FLAG_RULE = (f"flagged when, for some class, the lower end of its one-vs-rest AUC's 95% bootstrap interval exceeds "
             f"{0.5 + FLAG_MARGIN:.2f} (0.5 + {FLAG_MARGIN:.2f}), with at least {MIN_FLAG_SUPPORT} test images in and "
             "out of that class")


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


# --- results ---------------------------------------------------------------------------------------


def majority_rate(train_labels: np.ndarray, test_labels: np.ndarray) -> tuple[int, float]:
    """(the train split's most common class, the share of test images of that class)."""
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    if not train_labels.size or not test_labels.size:
        return 0, 0.0
    values, counts = np.unique(train_labels, return_counts=True)
    majority = int(values[np.argmax(counts)])
    return majority, float(np.mean(test_labels == majority))


def probe_result(name: str, y_true: np.ndarray, probs: np.ndarray, *, train_labels: np.ndarray,
                 class_names: Sequence[str], model_kind: str, confidence: float = 0.95, seed: int = 0, role: str = "probe",
                 references: dict[str, dict[str, Any] | None] | None = None, **details: Any) -> dict[str, Any]:
    """A probe's numbers from its test probabilities ``probs`` (n, classes).

    Per class: AUC [bootstrap], recall [Wilson] (``per_class``); the classes whose AUC clears chance by
    the flag's margin (``separated_classes``); ``flagged`` unless ``role`` is ``"reference"`` (a model
    meant to see the lungs, which separates the classes by design). ``references``: {name: per-class
    evidence of another model} (the full model, the linear whole-film reference), for ``recovery``: the
    share of their AUC this probe reaches. The accuracy against the majority-class rate is kept with the
    old rule's verdict (``accuracy_rule``).
    """
    y_true, probs = np.asarray(y_true, np.int64), np.asarray(probs, np.float64)
    y_pred = np.argmax(probs, axis=1) if len(probs) else np.zeros(0, np.int64)
    n = int(y_true.size)
    correct = int((y_true == y_pred).sum())
    majority, rate = majority_rate(train_labels, y_true)
    interval = wilson_interval(correct, n, confidence)
    evidence = class_evidence(y_true, probs, class_names, resamples=BOOTSTRAP_RESAMPLES, confidence=confidence,
                              seed=seed)
    separated = flagged_classes(evidence)
    return {
        "probe": name,
        "status": "ran",
        "model_kind": model_kind,
        "role": role,
        "title": PROBE_TITLES.get(name, name),
        "n_test": n,
        "accuracy": correct / n if n else None,
        "accuracy_interval": {**interval, "method": "Wilson score", "confidence": confidence},
        "per_class_recall": {cls: row["recall"] for cls, row in evidence["classes"].items() if row["support"]},
        "per_class": evidence,
        "balanced_accuracy": evidence["balanced_accuracy"],
        "classes": list(class_names),
        "majority_class": class_names[majority] if n else None,
        "majority_rate": rate,
        "separated_classes": separated,
        "flagged": bool(separated) and role != "reference",
        "flag_rule": FLAG_RULE,
        "accuracy_rule": {"rule": ACCURACY_RULE,
                          "flagged": bool(n and interval["low"] is not None and interval["low"] > rate + FLAG_MARGIN)},
        "recovery": {ref: recovery(evidence, other) for ref, other in (references or {}).items() if other},
        **details,
    }


def skipped(name: str, reason: str, model_kind: str = "linear") -> dict[str, Any]:
    return {"probe": name, "status": "skipped", "model_kind": model_kind, "title": PROBE_TITLES.get(name, name), "reason": reason,
            "flagged": False}


def image_probe_result(name: str, shape: str, y_true: np.ndarray, probs: np.ndarray, *, train_labels: np.ndarray,
                       epochs: int, recipe_epochs: int, full_model: dict[str, Any] | None = None,
                       confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """The DCNN border or lung probe's numbers from the probe model's test probabilities."""
    return probe_result(name, y_true, probs, train_labels=train_labels, class_names=CLASS_NAMES, model_kind="dcnn",
                        confidence=confidence, seed=seed, references={"full model": full_model},
                        model="the recipe's DCNN", blanked={"shape": shape, "fraction": CENTRE_FRACTION,
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


def resolve_probes(probes: bool | Iterable[str] | None, *, gpu: bool = False) -> tuple[str, ...]:
    """Which DCNN probes to train (the fast ones always run): ``True`` -> ``DEFAULT_PROBES`` (and the
    hold-out on a GPU); names -> those, checked (fast probe names ask for nothing more); ``"all"`` -> every
    DCNN probe; falsy -> none."""
    if not probes:
        return ()
    if probes is True:
        return DEFAULT_PROBES + (("holdout",) if gpu else ())
    names = [probes] if isinstance(probes, str) else list(probes)
    if "all" in names:
        return DCNN_PROBES
    unknown = [name for name in names if name not in DCNN_PROBES + FAST_PROBE_NAMES]
    if unknown:
        raise CxrDatasetError(f"unknown probe(s) {', '.join(unknown)}; known: {', '.join(DCNN_PROBES)}, all "
                              f"(the fast probes {', '.join(FAST_PROBE_NAMES)} run on every certificate)")
    return tuple(name for name in DCNN_PROBES if name in names)
