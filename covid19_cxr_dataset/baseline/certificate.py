"""The certificate of one baseline run: what was trained on what, how, with which result and verdict.

A run's output folder holds:

- ``certificate.json``: dataset version and fingerprint, package version, the full recipe, seeds,
  hardware, wall time, per-epoch history, every test metric, the paper's reference figures and the
  verdict against the recipe's tolerance bands;
- ``confusion_matrix.png`` and ``training_curves.png`` (accuracy and loss per epoch);
- ``certificate.md``: the verdict and main figures in a few lines, for a release's notes;
- ``predictions.csv``: every test image's probabilities, so any metric can be recomputed.

Verdict: each reference figure with a stated value is ``within`` its band (value +- tolerance),
``below`` or ``above`` it. ``pass``: all within; ``fail``: any below; ``review``: none below but some
above (better than the paper is not a failure, but unexplained gains, e.g. a leak between splits,
deserve a look); ``no-reference``: the recipe states no figure. ``verdict_notes`` says when the
verdict is about something other than the recipe as written on a verified release (run-time
overrides, fingerprint not recomputed).
"""

from __future__ import annotations

import csv
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import CLASS_NAMES, __version__
from ._backend import import_figure
from .evaluate import reference_value

CERTIFICATE_SCHEMA_VERSION = 1
CERTIFICATE_NAME = "certificate.json"
SUMMARY_NAME = "certificate.md"
CONFUSION_MATRIX_NAME = "confusion_matrix.png"
CURVES_NAME = "training_curves.png"
PREDICTIONS_NAME = "predictions.csv"


def compare_with_reference(metrics: dict[str, Any], reference: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """One row per reference figure (value, band, status) and the overall verdict."""
    rows = []
    for name, figure in reference["figures"].items():
        row: dict[str, Any] = {"metric": name, "reference": figure["value"], "source": figure["source"]}
        if figure["value"] is None:
            row["status"] = "not-stated"
        else:
            value = reference_value(metrics, name)
            low, high = figure["value"] - figure["tolerance"], figure["value"] + figure["tolerance"]
            row.update(value=value, tolerance=figure["tolerance"], band=[low, high],
                       status="within" if low <= value <= high else ("below" if value < low else "above"))
        rows.append(row)
    statuses = {row["status"] for row in rows} - {"not-stated"}
    if not statuses:
        verdict = "no-reference"
    elif "below" in statuses:
        verdict = "fail"
    elif "above" in statuses:
        verdict = "review"
    else:
        verdict = "pass"
    return rows, verdict


def build_certificate(
    *,
    data_dir: Path,
    report: dict[str, Any],
    fingerprint_verified: bool,
    counts: dict[str, dict[str, int]],
    recipe: Any,
    seed: int,
    deterministic: bool,
    hardware: dict[str, Any],
    timing: dict[str, float],
    history: list[dict[str, Any]],
    metrics: dict[str, Any],
) -> dict[str, Any]:
    comparison, verdict = compare_with_reference(metrics, recipe["reference"])
    notes = []
    if recipe.overrides:
        notes.append(f"run-time overrides {recipe.overrides}: these are not the figures of recipe "
                     f"'{recipe.name}' as written")
    if not fingerprint_verified:
        notes.append("the release's fingerprint was not recomputed: the data may differ from its build report")
    return {
        "certificate_schema_version": CERTIFICATE_SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "verdict": verdict,
        "verdict_notes": notes,
        "dataset": {
            "name": report.get("dataset"),
            "version": report.get("version"),
            "fingerprint": report["fingerprint"],
            "fingerprint_verified": fingerprint_verified,
            "built_with_package_version": report.get("package_version"),
            "path": str(Path(data_dir).resolve()),
            "counts": counts,
        },
        "package_version": __version__,
        "recipe": recipe.to_dict(),
        "seeds": {
            "seed": seed,
            "python_numpy_tensorflow": f"keras.utils.set_random_seed({seed})",
            "epoch_order": f"numpy.random.default_rng([{seed}, epoch]).permutation(n_train)",
            "augmentation": f"stateless ops seeded ({seed}, epoch * batches_per_epoch + batch)",
            "bootstrap": f"numpy.random.default_rng({seed})",
            "op_determinism": deterministic,
        },
        "hardware": hardware,
        "timing": {name: round(seconds, 3) for name, seconds in timing.items()},
        "history": history,
        "metrics": metrics,
        "reference": {**recipe["reference"], "comparison": comparison},
        "files": {
            "confusion_matrix": CONFUSION_MATRIX_NAME,
            "training_curves": CURVES_NAME,
            "summary": SUMMARY_NAME,
            "predictions": PREDICTIONS_NAME,
        },
    }


def write_run_outputs(
    out_dir: Path,
    certificate: dict[str, Any],
    *,
    sources: Sequence[str],
    source_paths: Sequence[str],
    labels: np.ndarray,
    probs: np.ndarray,
) -> Path:
    """Write certificate.json (last, atomically), the PNGs, certificate.md and predictions.csv."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    matrix = np.asarray(certificate["metrics"]["confusion_matrix"]["counts"])
    plot_confusion_matrix(matrix, CLASS_NAMES, out_dir / CONFUSION_MATRIX_NAME)
    plot_training_curves(certificate["history"], out_dir / CURVES_NAME)
    write_predictions(out_dir / PREDICTIONS_NAME, sources, source_paths, labels, probs)
    (out_dir / SUMMARY_NAME).write_text(summary_markdown(certificate), encoding="utf-8")
    path = out_dir / CERTIFICATE_NAME
    temp = path.with_suffix(".json.tmp")
    temp.write_text(json.dumps(certificate, indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(temp, path)
    return path


def write_predictions(path: Path, sources: Sequence[str], source_paths: Sequence[str],
                      labels: np.ndarray, probs: np.ndarray) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["source", "source_path", "label", "predicted", *(f"p_{name}" for name in CLASS_NAMES)])
        for source, source_path, label, row in zip(sources, source_paths, labels, probs):
            writer.writerow([source, source_path, CLASS_NAMES[int(label)], CLASS_NAMES[int(np.argmax(row))],
                             *(f"{p:.6f}" for p in row)])


def plot_confusion_matrix(matrix: np.ndarray, classes: Sequence[str], path: Path) -> None:
    """Table 5's layout: rows true class, columns predicted class, counts and row percentages."""
    figure = import_figure()(figsize=(4.8, 4.2), dpi=120)
    axes = figure.subplots()
    axes.imshow(matrix, cmap="Blues")
    totals = matrix.sum(axis=1, keepdims=True)
    for (row, column), count in np.ndenumerate(matrix):
        share = count / totals[row, 0] if totals[row, 0] else 0.0
        dark = count > matrix.max() / 2
        axes.text(column, row, f"{count}\n{share:.1%}", ha="center", va="center",
                  color="white" if dark else "black", fontsize=9)
    axes.set_xticks(range(len(classes)), classes)
    axes.set_yticks(range(len(classes)), classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title("Confusion matrix (test)")
    figure.tight_layout()
    figure.savefig(path)


def plot_training_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Accuracy and loss per epoch, train (augmented, class-weighted loss) and test."""
    figure = import_figure()(figsize=(9, 3.6), dpi=120)
    from matplotlib.ticker import MaxNLocator  # matplotlib is there: import_figure checked it
    accuracy_axes, loss_axes = figure.subplots(1, 2)
    epochs = [row["epoch"] for row in history]
    for axes, key, title in ((accuracy_axes, "accuracy", "Accuracy"), (loss_axes, "loss", "Loss")):
        train_label = "train (class-weighted)" if key == "loss" else "train (augmented)"
        axes.plot(epochs, [row[key] for row in history], marker="o", label=train_label)
        if history and f"val_{key}" in history[0]:
            axes.plot(epochs, [row[f"val_{key}"] for row in history], marker="o", label="test")
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_title(title)
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    figure.savefig(path)


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def summary_markdown(certificate: dict[str, Any]) -> str:
    """A short Markdown summary: verdict, dataset, recipe, main figures and the comparison."""
    dataset, metrics, hardware = certificate["dataset"], certificate["metrics"], certificate["hardware"]
    recipe = certificate["recipe"]
    overrides = f" (overrides: {recipe['overrides']})" if recipe["overrides"] else ""
    bootstrap = metrics["bootstrap"].get("accuracy")
    interval = f" (95% bootstrap {_percent(bootstrap['low'])}–{_percent(bootstrap['high'])})" if bootstrap else ""
    lines = [
        f"# Baseline certificate: {dataset['name']} {dataset['version']}",
        "",
        f"**Verdict: {certificate['verdict']}**",
        *(f"\n> {note}" for note in certificate["verdict_notes"]),
        "",
        f"- Dataset fingerprint `{dataset['fingerprint']}` "
        f"({'recomputed and matched' if dataset['fingerprint_verified'] else 'NOT recomputed'})",
        f"- Recipe `{recipe['name']}`{overrides}, sha256 `{recipe['sha256'][:16]}…`, "
        f"seed {certificate['seeds']['seed']}",
        f"- Hardware: {hardware['name']} ({hardware['device']}, {hardware['dtype_policy']}), "
        f"TensorFlow {hardware['tensorflow']}; wall time {certificate['timing']['total_seconds']:.0f} s",
        f"- Test images: {metrics['n']}; accuracy {_percent(metrics['accuracy'])}{interval}, "
        f"precision {_percent(metrics['precision'])}, recall {_percent(metrics['recall'])}",
        f"- COVID-19 test images: {metrics['covid19']['correct']} of {metrics['covid19']['n']} correct",
        "",
        "| class | precision | recall | F1 | mean p(true class) [CI] |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, row in metrics["per_class"].items():
        table4 = metrics["true_class_probability"][name]
        ci = f" [{_percent(table4['ci_low'])}, {_percent(table4['ci_high'])}]" if table4["ci_low"] is not None else ""
        lines.append(f"| {name} | {_percent(row['precision'])} | {_percent(row['recall'])} | {_percent(row['f1'])} "
                     f"| {_percent(table4['mean'])}{ci} |")
    lines += ["", "| reference figure | paper | this run | band | status |", "| --- | --- | --- | --- | --- |"]
    for row in certificate["reference"]["comparison"]:
        if row["status"] == "not-stated":
            lines.append(f"| {row['metric']} | not stated | – | – | – |")
        else:
            band = f"{_percent(row['band'][0])}–{_percent(row['band'][1])}"
            lines.append(f"| {row['metric']} | {_percent(row['reference'])} | {_percent(row['value'])} | {band} "
                         f"| {row['status']} |")
    lines += ["", f"Confusion matrix: `{CONFUSION_MATRIX_NAME}`; curves: `{CURVES_NAME}`; "
                  f"full record: `{CERTIFICATE_NAME}`."]
    return "\n".join(lines) + "\n"
