"""Summarize a device_certify.sh run: wall times, seconds per epoch, two-run variation, throughput.

    python3 benchmarks/certify_summary.py WORK_DIR OUT_DIR

Reads ``WORK_DIR/<run>/certificate.json`` for the runs that finished (``run1``, ``run2``: the same
command twice), ``WORK_DIR/<run>.wall`` (seconds the command took) and ``OUT_DIR/bench.json``
(benchmarks/baseline_throughput.py); writes ``OUT_DIR/summary.json`` and ``OUT_DIR/summary.md`` and
prints what a GPU certification reports: device, backend, images/s of the training step and of the
model alone per backend, seconds per epoch, the certificate's wall time and the two-run variation.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RUNS = ("run1", "run2")
COMPARED = ("accuracy", "precision", "recall", "loss")


def headline(certificate: dict[str, Any]) -> dict[str, Any]:
    metrics, history = certificate["metrics"], certificate["history"]
    return {
        "verdict": certificate["verdict"],
        "backend": certificate.get("backend"),
        "hardware": {k: certificate["hardware"].get(k) for k in ("device", "name", "backend", "dtype_policy")},
        "op_determinism": certificate["seeds"]["op_determinism"],
        "timing": certificate["timing"],
        "epoch_seconds": [round(row["seconds"], 3) for row in history],
        "metrics": {name: metrics[name] for name in COMPARED} | {"covid19_correct": metrics["covid19"]["correct"]},
        "history_loss": [row["loss"] for row in history],
        "history_val_accuracy": [row.get("val_accuracy") for row in history],
    }


def variation(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """How far two runs of the same command are apart: metric differences, and whether they agree at
    the CLI's printed precision (4 decimals)."""
    a, b = first["metrics"], second["metrics"]
    differences = {name: abs(a[name] - b[name]) for name in COMPARED}
    loss_curve = max((abs(x - y) for x, y in zip(first["history_loss"], second["history_loss"])), default=0.0)
    return {
        "abs_difference": differences,
        "max_epoch_loss_difference": loss_curve,
        "covid19_correct": [a["covid19_correct"], b["covid19_correct"]],
        "identical": differences == {name: 0.0 for name in COMPARED} and loss_curve == 0.0,
        "equal_at_printed_precision": all(f"{a[n]:.4f}" == f"{b[n]:.4f}" for n in COMPARED),
    }


def main(argv: list[str]) -> None:
    work, out = Path(argv[0]), Path(argv[1])
    summary: dict[str, Any] = {"runs": {}}
    for run in RUNS:
        path = work / run / "certificate.json"
        if path.is_file():
            summary["runs"][run] = headline(json.loads(path.read_text(encoding="utf-8")))
            wall = work / f"{run}.wall"
            if wall.is_file():
                summary["runs"][run]["command_wall_s"] = float(wall.read_text().strip())
    runs = summary["runs"]
    if "run1" in runs and "run2" in runs:
        summary["two_run_variation"] = variation(runs["run1"], runs["run2"])
    bench_path = out / "bench.json"
    if bench_path.is_file():
        bench = json.loads(bench_path.read_text(encoding="utf-8"))
        summary["throughput"] = {backend: {k: v for k, v in row.items()
                                           if k.endswith(("_img_s", "_s", "_s_real_size", "name", "jit_compile", "error"))}
                                 for backend, row in bench["results"].items()}
        summary["host_batches_img_s"] = bench.get("host_batches_img_s")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")

    lines = ["# device_certify summary", ""]
    for run, row in runs.items():
        info = row["backend"] or {}
        wall = row.get("command_wall_s")
        lines.append(f"- {run}: {row['hardware']['name']} ({row['hardware']['device']}), {info.get('name')} "
                     f"{info.get('version')}, compiled {info.get('jit_compile')}, "
                     f"{(info.get('precision') or {}).get('dtype_policy')}, deterministic kernels "
                     f"{row['op_determinism']}; certificate total {row['timing']['total_seconds']:.1f} s"
                     + (f", command {wall:.1f} s" if wall is not None else "")
                     + f"; epochs {row['epoch_seconds']} s; accuracy {row['metrics']['accuracy']:.4f}, "
                       f"loss {row['metrics']['loss']:.4f}; verdict {row['verdict']}")
    if "two_run_variation" in summary:
        v = summary["two_run_variation"]
        lines.append(f"- two runs: identical {v['identical']}, equal at 4 decimals {v['equal_at_printed_precision']}, "
                     f"|diff| {', '.join(f'{k} {x:.2e}' for k, x in v['abs_difference'].items())}, "
                     f"max epoch-loss diff {v['max_epoch_loss_difference']:.2e}")
    for backend, row in summary.get("throughput", {}).items():
        if "error" in row:
            lines.append(f"- throughput {backend}: failed ({row['error']})")
            continue
        lines.append(f"- throughput {backend} (compiled {row.get('jit_compile')}): training step "
                     f"{row['train_img_s']:.0f} images/s, model alone {row['model_img_s']:.0f} images/s, "
                     f"{row['epoch_s_real_size']:.2f} s per 5,614-image epoch")
    if summary.get("host_batches_img_s"):
        lines.append(f"- host batches alone (numpy, any backend): {summary['host_batches_img_s']:.0f} images/s")
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text, encoding="utf-8")
    print(text, end="")


if __name__ == "__main__":
    main(sys.argv[1:])
