"""The certificate of one baseline run: what was trained on what, how, with which result and verdict.

A run's output folder holds:

- ``certificate.json``: dataset version and fingerprint, package version, the full recipe, seeds,
  hardware, wall time, per-epoch history, every test metric, the paper's reference figures and the
  verdict against the recipe's tolerance bands;
- ``confusion_matrix.png`` and ``training_curves.png`` (accuracy and loss per epoch);
- ``certificate.md``: the verdict and main figures in a few lines, for a release's notes;
- ``predictions.csv``: every test image's probabilities, so any metric can be recomputed.

Verdict: each reference figure with a stated value is ``within`` its band (value +- tolerance,
clipped to [0, 1]), ``below`` or ``above`` it; with several seeds the seeds' mean is compared.
``pass``: all within; ``fail``: any below (unless, with several seeds, the paper's value lies inside
the seeds' min-max range: then it is seed noise, and the verdict is ``review``); ``review``: none
failing but some not within (better than the paper is not a failure, but unexplained gains, e.g. a
leak between splits, deserve a look); ``no-reference``: the recipe states no figure;
``quick-check``: the recipe was overridden at run time (``--epochs`` ...), so the run certifies
nothing. ``verdict_notes`` says when the verdict is about something other than the recipe as
written on a verified release, and that one seed cannot tell a recipe difference from seed noise.

Beside the verdict: every figure of the paper's Tables 3-5 (``reference.tables`` of the recipe)
next to ours with its interval (``reference.tables_comparison``), each seed's run (``runs``) and
their spread (``spread``), the shortcut probes (``probes``, see ``probes.py``), and ``backend``:
which Keras backend (name and version) trained, on which device, with which precision, whether the
step was compiled, and the determinism switches in effect. Certificates of schema version 1 (the
TensorFlow-only baseline, ``run_info``) are not reproduced bit for bit by this one (CHANGELOG).
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

CERTIFICATE_SCHEMA_VERSION = 2
CERTIFICATE_NAME = "certificate.json"
SUMMARY_NAME = "certificate.md"
CONFUSION_MATRIX_NAME = "confusion_matrix.png"
CURVES_NAME = "training_curves.png"
PREDICTIONS_NAME = "predictions.csv"


QUICK_CHECK = "quick-check"
SINGLE_SEED_NOTE = ("one seed: this certificate cannot tell a recipe difference from seed noise; "
                    "run with --seeds N (N >= 3) to measure the run-to-run spread")


def _clip(value: float) -> float:
    return min(1.0, max(0.0, value))


def _run_interval(metrics: dict[str, Any], name: str) -> dict[str, float] | None:
    """The bootstrap interval of a reference figure in one run's metrics, when there is one."""
    interval = metrics.get("bootstrap", {}).get(name)
    return {"low": interval["low"], "high": interval["high"]} if interval else None


def compare_with_reference(
    metrics: dict[str, Any], reference: dict[str, Any], *, runs: list[dict[str, Any]] | None = None,
    overridden: bool = False,
) -> tuple[list[dict[str, Any]], str]:
    """One row per reference figure (value, band, status, seed spread) and the overall verdict.

    ``metrics`` is the first run's; ``runs`` every seed's metrics (default: just ``metrics``). With
    several seeds the status compares the seeds' mean with the band (clipped to [0, 1]); a figure
    below its band whose paper value still lies inside the seeds' min-max range is ``below`` but
    ``within_seed_spread``, and does not fail the verdict. ``overridden``: the recipe was changed at
    run time, so the verdict is ``quick-check`` whatever the numbers.
    """
    runs = runs or [metrics]
    rows = []
    for name, figure in reference["figures"].items():
        row: dict[str, Any] = {"metric": name, "reference": figure["value"], "source": figure["source"]}
        if figure["value"] is None:
            row["status"] = "not-stated"
            rows.append(row)
            continue
        values = [reference_value(run, name) for run in runs]
        value = float(np.mean(values))
        low, high = _clip(figure["value"] - figure["tolerance"]), _clip(figure["value"] + figure["tolerance"])
        status = "within" if low <= value <= high else ("below" if value < low else "above")
        intervals = [_run_interval(run, name) for run in runs]
        row.update(value=value, tolerance=figure["tolerance"], band=[low, high], status=status,
                   seeds={"n": len(values), "values": values, "mean": value, "min": min(values), "max": max(values),
                          "run_intervals": intervals,
                          "paper_inside_run_intervals": sum(1 for i in intervals
                                                            if i and i["low"] <= figure["value"] <= i["high"])})
        row["within_seed_spread"] = len(values) > 1 and min(values) <= figure["value"] <= max(values)
        rows.append(row)
    stated = [row for row in rows if row["status"] != "not-stated"]
    if overridden:
        verdict = QUICK_CHECK
    elif not stated:
        verdict = "no-reference"
    elif any(row["status"] == "below" and not row["within_seed_spread"] for row in stated):
        verdict = "fail"
    elif any(row["status"] != "within" for row in stated):
        verdict = "review"
    else:
        verdict = "pass"
    return rows, verdict


def _table_value(table: str, row: str, column: str, metrics: dict[str, Any],
                 history: list[dict[str, Any]]) -> tuple[float | None, dict[str, float] | None]:
    """Our value and interval of one cell of the paper's Tables 3-5, from one run."""
    if table == "table3":
        if row == "train":
            last = history[-1] if history else {}
            return (float(last[column]) if column in last else None), None
        if row == "test":
            return (float(metrics[column]) if metrics.get(column) is not None else None), _run_interval(metrics, column)
        value = metrics.get("covid19", {}).get(column)
        return (float(value) if value is not None else None), _run_interval(metrics, f"covid19_{column}")
    if table == "table4":
        entry = metrics["true_class_probability"][row]
        interval = {"low": entry["ci_low"], "high": entry["ci_high"]} if entry["ci_low"] is not None else None
        return entry["mean"], interval
    matrix = metrics["confusion_matrix"]
    classes = matrix["classes"]
    t, p = classes.index(row), classes.index(column)
    interval = matrix.get("row_fraction_intervals", [[None] * len(classes)] * len(classes))[t][p]
    return matrix["row_fractions"][t][p], (interval if interval and interval.get("low") is not None else None)


def compare_paper_tables(tables: dict[str, Any], runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every figure of the paper's Tables 3 (loss, accuracy, precision, recall), 4 and 5, beside ours.

    ``runs``: one {"seed", "metrics", "history"} per seed. Each row holds the paper's value, the first
    run's value and interval, every run's, their mean/min/max, and how many runs' intervals hold the
    paper's value. Train figures are the last epoch's running means as Keras reports them (augmented
    images, class-weighted loss), like the paper's; they have no interval.
    """
    rows = []
    for table in ("table3", "table4", "table5"):
        if table not in tables:
            continue
        for row_name, cells in tables[table]["rows"].items():
            if table == "table4":
                cells = {"mean": cells}
            for column, paper in cells.items():
                per_run = []
                for run in runs:
                    value, interval = _table_value(table, row_name, column, run["metrics"], run["history"])
                    per_run.append({"seed": run["seed"], "value": value, "interval": interval})
                values = [r["value"] for r in per_run if r["value"] is not None]
                paper_value = paper["mean"] if table == "table4" else paper
                entry: dict[str, Any] = {
                    "table": table, "row": row_name, "column": column, "paper": paper_value,
                    "value": per_run[0]["value"], "interval": per_run[0]["interval"], "runs": per_run,
                    "mean": float(np.mean(values)) if values else None,
                    "min": min(values) if values else None, "max": max(values) if values else None,
                    "paper_inside_run_intervals": sum(1 for r in per_run if r["interval"] and
                                                      r["interval"]["low"] <= paper_value <= r["interval"]["high"]),
                    "runs_with_interval": sum(1 for r in per_run if r["interval"]),
                }
                if table == "table4":
                    entry["paper_interval"] = {"low": paper["low"], "high": paper["high"]}
                rows.append(entry)
    return rows


def spread_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, min and max over seeds of the headline test figures."""
    names = ("accuracy", "precision", "recall", "macro_f1")
    summary: dict[str, Any] = {"n_seeds": len(runs), "seeds": [run["seed"] for run in runs]}
    for name in names:
        values = [float(run["metrics"][name]) for run in runs]
        summary[name] = {"mean": float(np.mean(values)), "min": min(values), "max": max(values),
                         "std": float(np.std(values, ddof=1)) if len(values) > 1 else None}
    correct = [run["metrics"]["covid19"]["correct"] for run in runs]
    summary["covid19_correct"] = {"values": correct, "min": min(correct), "max": max(correct)}
    return summary


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
    runs: list[dict[str, Any]] | None = None,
    config: dict[str, Any] | None = None,
    probes: dict[str, Any] | None = None,
    probes_info: dict[str, Any] | None = None,
    backend: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The certificate dict. ``runs``: every seed's {"seed", "metrics", "history"} (default: the one given);
    ``config``: ``ReleaseConfig.describe()``; ``probes``: {name: result} of ``probes``; ``backend``:
    ``train.describe_run`` (backend, device, precision, compilation, determinism)."""
    runs = runs or [{"seed": seed, "metrics": metrics, "history": history}]
    overridden = bool(recipe.overrides)
    comparison, verdict = compare_with_reference(metrics, recipe["reference"], runs=[r["metrics"] for r in runs],
                                                 overridden=overridden)
    notes = []
    if overridden:
        notes.append(f"quick check: run-time overrides {recipe.overrides} change recipe '{recipe.name}', so this "
                     "run certifies nothing; it shows that the pipeline runs end to end. Run the recipe as written "
                     "(no --epochs, --batch-size or --image-size) for a certificate")
    if not fingerprint_verified:
        notes.append("the release's fingerprint was not recomputed: the data may differ from its build report")
    if len(runs) == 1:
        notes.append(SINGLE_SEED_NOTE)
    config = config or {"name": "paper", "default": True, "fingerprint": report["fingerprint"],
                        "declared_in_report": False}
    return {
        "certificate_schema_version": CERTIFICATE_SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "verdict": verdict,
        "verdict_notes": notes,
        "dataset": {
            "name": report.get("dataset"),
            "version": report.get("version"),
            "config": config,
            "fingerprint": config["fingerprint"],
            "fingerprint_verified": fingerprint_verified,
            "built_with_package_version": report.get("package_version"),
            "path": str(Path(data_dir).resolve()),
            "counts": counts,
        },
        "package_version": __version__,
        "recipe": recipe.to_dict(),
        "seeds": {
            "seed": seed,
            "all": [run["seed"] for run in runs],
            "python_numpy_backend": f"keras.utils.set_random_seed({seed})",
            "epoch_order": f"numpy Philox keyed ({seed}, epoch, 2 ** 32 - 1): permutation(n_train)",
            "augmentation": f"numpy Philox keyed ({seed}, epoch, batch), drawn on the host, applied in the step",
            "bootstrap": f"numpy.random.default_rng({seed})",
            "op_determinism": deterministic,
        },
        "hardware": hardware,
        "backend": dict(backend or {}),
        "timing": {name: round(seconds, 3) for name, seconds in timing.items()},
        "history": history,
        "metrics": metrics,
        "runs": [{"seed": run["seed"], "metrics": run["metrics"], "history": run["history"]} for run in runs[1:]],
        "spread": spread_summary(runs),
        "reference": {**recipe["reference"], "comparison": comparison,
                      "tables_comparison": compare_paper_tables(recipe["reference"].get("tables", {}), runs)},
        "probes": probes or {},
        "probes_info": probes_info or {},
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
    """Accuracy and loss per epoch, train (augmented, class-weighted loss) and test.

    Accuracy is drawn on [0, 1] and loss from 0, so one or two epochs still read on a sensible axis;
    with a single epoch the values are points (no line) and the figure says that a curve needs two.
    """
    figure = import_figure()(figsize=(9, 3.6), dpi=120)
    from matplotlib.ticker import MaxNLocator  # matplotlib is there: import_figure checked it
    accuracy_axes, loss_axes = figure.subplots(1, 2)
    epochs = [row["epoch"] for row in history]
    style = {"marker": "o", "linestyle": "-" if len(epochs) > 1 else "none", "markersize": 6 if len(epochs) > 1 else 9}
    for axes, key, title in ((accuracy_axes, "accuracy", "Accuracy"), (loss_axes, "loss", "Loss")):
        train_label = "train (class-weighted)" if key == "loss" else "train (augmented)"
        values = [row[key] for row in history if key in row]
        axes.plot(epochs[:len(values)], values, label=train_label, **style)
        if history and f"val_{key}" in history[0]:
            test_values = [row[f"val_{key}"] for row in history]
            axes.plot(epochs, test_values, label="test", **style)
            values = values + test_values
        axes.set_xlabel("epoch")
        axes.set_xlim(0.5, max(epochs or [1]) + 0.5)
        if 0 < len(epochs) <= 12:
            axes.set_xticks(epochs)
        else:
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        if key == "accuracy":
            axes.set_ylim(0, 1.02)
        else:
            axes.set_ylim(0, 1.1 * max(values or [1.0]) or 1.0)
        axes.set_title(title if len(epochs) > 1 else f"{title} (1 epoch: points; a curve needs 2)")
        axes.grid(alpha=0.3)
        axes.legend(loc="best")
    figure.tight_layout()
    figure.savefig(path)


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def _number(value: float | None, column: str) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}" if column == "loss" else _percent(value)


def _bracket(interval: dict[str, Any] | None, column: str = "") -> str:
    if not interval or interval.get("low") is None:
        return ""
    return f" [{_number(interval['low'], column)}, {_number(interval['high'], column)}]"


_TABLE_TITLES = {
    "table3": "Table 3 (metrics): train, test and the COVID-19 test images",
    "table4": "Table 4: mean predicted probability of the true class, 95% interval",
    "table5": "Table 5 (confusion matrix): share of each true class predicted as each class",
}
_ROW_NAMES = {"train": "train", "test": "test", "covid19": "COVID-19 (test)"}


def paper_tables_markdown(certificate: dict[str, Any]) -> list[str]:
    """The paper's Tables 3-5 beside this run (and the seeds' spread), one Markdown table each."""
    rows = certificate["reference"].get("tables_comparison") or []
    if not rows:
        return []
    several = certificate.get("spread", {}).get("n_seeds", 1) > 1
    lines = []
    for table in ("table3", "table4", "table5"):
        table_rows = [row for row in rows if row["table"] == table]
        if not table_rows:
            continue
        header = "| row | figure | paper | this run [95% interval] |"
        rule = "| --- | --- | --- | --- |"
        if several:
            header += " seeds: mean (min–max) | paper inside interval of |"
            rule += " --- | --- |"
        lines += ["", f"**{_TABLE_TITLES[table]}**", "", header, rule]
        for row in table_rows:
            column = row["column"]
            paper = _number(row["paper"], column)
            if table == "table4":
                paper += _bracket(row.get("paper_interval"))
                figure = "mean p(true class)"
            elif table == "table5":
                figure = f"predicted {column}"
            else:
                figure = column
            line = (f"| {_ROW_NAMES.get(row['row'], row['row'])} | {figure} | {paper} "
                    f"| {_number(row['value'], column)}{_bracket(row['interval'], column)} |")
            if several:
                spread = (f"{_number(row['mean'], column)} ({_number(row['min'], column)}–{_number(row['max'], column)})"
                          if row["mean"] is not None else "–")
                inside = (f"{row['paper_inside_run_intervals']} of {row['runs_with_interval']} runs"
                          if row["runs_with_interval"] else "no interval")
                line += f" {spread} | {inside} |"
            lines.append(line)
    lines += ["", "Intervals: test and COVID-19 figures, percentile bootstrap over test images; Table 4, "
                  "mean ± 1.96 s/√n clipped to [0, 1]; Table 5, Wilson score. Train figures are the last "
                  "epoch's running means (augmented images, class-weighted loss), as Keras reports them."]
    return lines


def _backend_line(certificate: dict[str, Any]) -> str:
    backend = certificate.get("backend") or {}
    if not backend:  # schema version 1: TensorFlow only
        return f"TensorFlow {certificate['hardware'].get('tensorflow', '?')}"
    compiled = "compiled step" if backend.get("jit_compile") else "step not compiled"
    deterministic = "deterministic kernels" if backend.get("deterministic") else "nondeterministic kernels"
    return f"Keras {backend['keras']} on {backend['name']} {backend['version']} ({compiled}, {deterministic})"


def summary_markdown(certificate: dict[str, Any]) -> str:
    """A short Markdown summary: verdict, dataset, recipe, main figures, the comparison, the paper's tables, probes."""
    from ..evidence import shortcut_markdown

    dataset, metrics, hardware = certificate["dataset"], certificate["metrics"], certificate["hardware"]
    recipe = certificate["recipe"]
    config = dataset.get("config") or {"name": "paper"}
    overrides = f" (overrides: {recipe['overrides']})" if recipe["overrides"] else ""
    bootstrap = metrics["bootstrap"].get("accuracy")
    interval = f" (95% bootstrap {_percent(bootstrap['low'])}–{_percent(bootstrap['high'])})" if bootstrap else ""
    spread = certificate.get("spread", {})
    seeds = certificate["seeds"].get("all", [certificate["seeds"]["seed"]])
    verdict = certificate["verdict"]
    verdict_line = (f"**Verdict: {verdict}** — this run certifies nothing (the recipe was overridden)"
                    if verdict == QUICK_CHECK else f"**Verdict: {verdict}**")
    lines = [
        f"# Baseline certificate: {dataset['name']} {dataset['version']} (configuration `{config['name']}`)",
        "",
        verdict_line,
        *(f"\n> {note}" for note in certificate["verdict_notes"]),
        "",
        f"- Dataset configuration `{config['name']}`, fingerprint `{dataset['fingerprint']}` "
        f"({'recomputed and matched' if dataset['fingerprint_verified'] else 'NOT recomputed'})",
        f"- Recipe `{recipe['name']}`{overrides}, sha256 `{recipe['sha256'][:16]}…`, "
        f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}",
        f"- Hardware: {hardware['name']} ({hardware['device']}, {hardware['dtype_policy']}), "
        f"{_backend_line(certificate)}; wall time {certificate['timing']['total_seconds']:.0f} s",
        f"- Test images: {metrics['n']}; accuracy {_percent(metrics['accuracy'])}{interval}, "
        f"precision {_percent(metrics['precision'])}, recall {_percent(metrics['recall'])}",
        f"- COVID-19 test images: {metrics['covid19']['correct']} of {metrics['covid19']['n']} correct",
    ]
    if len(seeds) > 1:
        accuracy = spread["accuracy"]
        correct = spread["covid19_correct"]
        lines.append(f"- Over {len(seeds)} seeds: accuracy mean {_percent(accuracy['mean'])} "
                     f"(min {_percent(accuracy['min'])}, max {_percent(accuracy['max'])}); COVID-19 correct "
                     f"{correct['min']}–{correct['max']} of {metrics['covid19']['n']}")
    lines += [
        "",
        "| class | precision | recall | F1 | mean p(true class) [CI] |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, row in metrics["per_class"].items():
        table4 = metrics["true_class_probability"][name]
        ci = f" [{_percent(table4['ci_low'])}, {_percent(table4['ci_high'])}]" if table4["ci_low"] is not None else ""
        lines.append(f"| {name} | {_percent(row['precision'])} | {_percent(row['recall'])} | {_percent(row['f1'])} "
                     f"| {_percent(table4['mean'])}{ci} |")
    this_run = "mean of seeds" if len(seeds) > 1 else "this run"
    lines += ["", f"| reference figure | paper | {this_run} | band | status |", "| --- | --- | --- | --- | --- |"]
    for row in certificate["reference"]["comparison"]:
        if row["status"] == "not-stated":
            lines.append(f"| {row['metric']} | not stated | – | – | – |")
        else:
            band = f"{_percent(row['band'][0])}–{_percent(row['band'][1])}"
            status = row["status"] + (" (paper inside the seeds' range)" if row.get("within_seed_spread") else "")
            lines.append(f"| {row['metric']} | {_percent(row['reference'])} | {_percent(row['value'])} | {band} "
                         f"| {status} |")
    lines += paper_tables_markdown(certificate)
    evidence = shortcut_markdown(certificate)
    if evidence:
        lines += ["", evidence.rstrip("\n")]
    lines += ["", f"Confusion matrix: `{CONFUSION_MATRIX_NAME}`; curves: `{CURVES_NAME}`; "
                  f"full record: `{CERTIFICATE_NAME}`."]
    return "\n".join(lines) + "\n"
