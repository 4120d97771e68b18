"""The source hold-out (Ahmed et al. 2021): does COVID-19 detection survive a source the model has not seen?

For each source of the train split's COVID-19 films in turn (cohen, figure1, actualmed in release
1.0.0), a model is trained without that source's COVID-19 films, every other image unchanged; the
held-out source's COVID-19 recall is set against the *in-distribution* recall, the same model's recall
on the COVID-19 test films of the sources it was trained on, and against ``seen``, the recall of the
model trained on everything on the held-out source's test films. A model that detects the disease
keeps its recall on a new source; one that learned each source's look (a marker, a border, an
exposure) loses it.

The recall drop (in-distribution minus held-out) comes with Newcombe's interval; a source is
``flagged`` when that interval's lower end exceeds ``FLAG_MARGIN``. Used twice: by the linear twin
(``linear_probes.linear_holdout_probe``, seconds, on every certificate) and by the DCNN hold-out
(``run.py``, the recipe's DCNN, opt-in). Pure numpy.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from ..evidence import FLAG_MARGIN
from .class_evidence import difference_interval
from .evaluate import COVID19, wilson_interval

HOLDOUT_CLASS = "COVID-19"


def holdout_sources(train_labels: Sequence[int], train_sources: Sequence[str]) -> list[str]:
    """The sources of the train split's COVID-19 films, when there are at least two (else there is nothing
    to learn COVID-19 from with one held out)."""
    labels = np.asarray(train_labels)
    sources = sorted({s for s, label in zip(train_sources, labels) if label == COVID19})
    return sources if len(sources) >= 2 else []


def holdout_train_mask(train_labels: Sequence[int], train_sources: Sequence[str], source: str) -> np.ndarray:
    """True for every train image but the COVID-19 films of ``source``."""
    labels = np.asarray(train_labels)
    return ~((labels == COVID19) & (np.asarray(train_sources) == source))


def subset_split(split_arrays: Any, keep: np.ndarray) -> Any:
    """A decoded split (``data.SplitArrays``) with only the rows where ``keep`` is True."""
    keep = np.asarray(keep, bool)
    return dataclasses.replace(split_arrays, images=split_arrays.images[keep], labels=split_arrays.labels[keep],
                               sources=tuple(s for s, k in zip(split_arrays.sources, keep) if k),
                               source_paths=tuple(p for p, k in zip(split_arrays.source_paths, keep) if k))


def _recall(hits: int, n: int, confidence: float) -> dict[str, Any]:
    return {"n": n, "correct": hits, "recall": hits / n if n else None,
            "interval": wilson_interval(hits, n, confidence) if n else None}


def holdout_entry(source: str, *, held: tuple[int, int], in_distribution: tuple[int, int],
                  seen: tuple[int, int] | None = None, other_sources: Sequence[str] = (),
                  confidence: float = 0.95) -> dict[str, Any]:
    """One held-out source: (correct, n) of its held-out films, of the in-distribution films, of ``seen``."""
    entry: dict[str, Any] = {
        "source": source,
        "held_out": _recall(*held, confidence),
        "in_distribution": {**_recall(*in_distribution, confidence), "sources": list(other_sources)},
        "seen": _recall(*seen, confidence) if seen is not None else None,
        "drop": None, "drop_interval": None, "flagged": False,
    }
    if held[1] and in_distribution[1]:
        entry["drop"] = in_distribution[0] / in_distribution[1] - held[0] / held[1]
        entry["drop_interval"] = difference_interval(in_distribution, held, confidence)
        entry["flagged"] = bool(entry["drop_interval"]["low"] > FLAG_MARGIN)
    else:
        entry["note"] = ("no held-out COVID-19 film to test" if not held[1]
                         else "no COVID-19 test film of another source to compare with")
    return entry


def holdout_result(name: str, model_kind: str, entries: dict[str, dict[str, Any]], **details: Any) -> dict[str, Any]:
    """The hold-out probe's result: one entry per held-out source; flagged if any source's drop is."""
    flagged = [source for source, entry in entries.items() if entry["flagged"]]
    return {
        "probe": name,
        "status": "ran",
        "model_kind": model_kind,
        "title": f"source hold-out, {HOLDOUT_CLASS} ({'linear twin' if model_kind == 'linear' else 'the recipe DCNN'})",
        "class": HOLDOUT_CLASS,
        "sources": entries,
        "flagged_sources": flagged,
        "flagged": bool(flagged),
        "flag_rule": (f"a held-out source is flagged when the lower end of the 95% interval (Newcombe) of its "
                      f"{HOLDOUT_CLASS} recall drop exceeds {100 * FLAG_MARGIN:.0f} percentage points"),
        **details,
    }


def dcnn_holdout_entry(source: str, test_labels: np.ndarray, test_sources: Sequence[str], held_probs: np.ndarray,
                       full_probs: np.ndarray, confidence: float = 0.95) -> dict[str, Any]:
    """One source's entry from the DCNN trained without it (``held_probs``) and the full model (``full_probs``),
    both on the test split: the DCNN hold-out reads the held-out source's test films only."""
    labels = np.asarray(test_labels)
    covid = labels == COVID19
    of_source = covid & (np.asarray(test_sources) == source)
    others = covid & ~of_source
    held_hits = np.argmax(held_probs, axis=1) == COVID19
    full_hits = np.argmax(full_probs, axis=1) == COVID19
    return holdout_entry(source, held=(int(held_hits[of_source].sum()), int(of_source.sum())),
                         in_distribution=(int(held_hits[others].sum()), int(others.sum())),
                         seen=(int(full_hits[of_source].sum()), int(of_source.sum())),
                         other_sources=sorted({s for s, o in zip(test_sources, others) if o}), confidence=confidence)
