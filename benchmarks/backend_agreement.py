"""Certify one release on every installed Keras backend and put their metrics side by side.

    python3 benchmarks/backend_agreement.py OUT_DIR [--release DIR | --images 600 --size 256]
        [--backends tensorflow,jax,torch] [--seeds 3] [--recipe paper] [--epochs N] [--image-size N] [--reuse]

Runs ``cxr-dataset baseline --backend B --seeds N`` for each backend on the same release (generated
by benchmarks/synthetic_release.py unless ``--release`` is given), each in its own process, then
prints per backend the test metrics over its seeds (mean, min–max) and whether the backends agree
within the seed spread: for each metric, every backend's mean lies inside the min–max range of the
other backends' seeds. Backends start from other initial weights and dropout masks (each draws them
with its own generator) and round differently, so they are not expected to agree bit for bit; the
host side (decoded pixels, order, augmentation parameters) is the same for all. Writes
``OUT_DIR/<backend>/`` (each certificate) and ``OUT_DIR/agreement.json`` / ``agreement.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from covid19_cxr_dataset.baseline._backend import BACKENDS, installed_backends  # noqa: E402

METRICS = ("accuracy", "precision", "recall", "macro_f1", "loss")


def seed_values(certificate: dict, name: str) -> list[float]:
    runs = [certificate["metrics"]] + [run["metrics"] for run in certificate.get("runs", [])]
    return [float(run[name]) for run in runs]


def agreement(certificates: dict[str, dict]) -> dict[str, dict]:
    """Per metric: each backend's mean and min–max over seeds, and whether every mean lies in the range
    of the other backends' seeds."""
    table = {}
    for name in (*METRICS, "covid19_correct"):
        rows = {}
        for backend, certificate in certificates.items():
            values = ([float(r["covid19"]["correct"]) for r in [certificate["metrics"]] +
                       [run["metrics"] for run in certificate.get("runs", [])]]
                      if name == "covid19_correct" else seed_values(certificate, name))
            rows[backend] = {"values": values, "mean": float(np.mean(values)), "min": min(values), "max": max(values)}
        inside = {}
        for backend, row in rows.items():
            others = [v for other, r in rows.items() if other != backend for v in r["values"]]
            inside[backend] = bool(others) and min(others) <= row["mean"] <= max(others)
        table[name] = {"backends": rows, "mean_inside_others_seed_range": inside, "agree": all(inside.values())}
    return table


def markdown(certificates: dict[str, dict], table: dict[str, dict], seeds: int) -> str:
    backends = list(certificates)
    lines = [f"| metric ({seeds} seeds: mean (min–max)) | " + " | ".join(
        f"{b} {certificates[b]['backend']['version']}" for b in backends) + " | agree |",
             "| --- |" + " --- |" * (len(backends) + 1)]
    for name, entry in table.items():
        cells = []
        for backend in backends:
            row = entry["backends"][backend]
            fmt = "{:.0f}" if name == "covid19_correct" else "{:.4f}"
            cells.append(f"{fmt.format(row['mean'])} ({fmt.format(row['min'])}–{fmt.format(row['max'])})")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'yes' if entry['agree'] else 'no'} |")
    lines.append("| compiled step / device | " + " | ".join(
        f"{'yes' if certificates[b]['backend']['jit_compile'] else 'no'} / {certificates[b]['backend']['device']}"
        for b in backends) + " | |")
    lines.append("| train seconds (all seeds) | " + " | ".join(
        f"{certificates[b]['timing']['train_seconds']:.0f}" for b in backends) + " | |")
    lines.append("| verdict | " + " | ".join(certificates[b]["verdict"] for b in backends) + " | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--release", type=Path, help="a release folder (default: generate a synthetic one)")
    parser.add_argument("--images", type=int, default=600, help="images of the generated release (default 600)")
    parser.add_argument("--size", type=int, default=256, help="side of each generated JPEG (default 256)")
    parser.add_argument("--backends", default=None, help="comma-separated (default: every installed one)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--recipe", default="paper")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe (a quick check)")
    parser.add_argument("--image-size", type=int, default=None, help="override the recipe (a quick check)")
    parser.add_argument("--reuse", action="store_true", help="keep a backend's certificate already in OUT_DIR")
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",")] if args.backends else installed_backends()
    if not backends or set(backends) - set(BACKENDS):
        parser.error(f"--backends: choose from {', '.join(BACKENDS)} (installed: {', '.join(installed_backends())})")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    release = args.release
    if release is None:
        from synthetic_release import write_synthetic_release

        release = args.out_dir / "release"
        if not release.exists():
            write_synthetic_release(release, images=args.images, size=args.size)
    certificates = {}
    for backend in backends:
        out = args.out_dir / backend
        if args.reuse and (out / "certificate.json").is_file():
            certificates[backend] = json.loads((out / "certificate.json").read_text(encoding="utf-8"))
            continue
        command = [sys.executable, "-c", "from covid19_cxr_dataset.cli import main; main()", "baseline",
                   "--data", str(release), "--out", str(out), "--recipe", args.recipe, "--backend", backend,
                   "--seeds", str(args.seeds), "--quiet"]
        for flag, value in (("--epochs", args.epochs), ("--image-size", args.image_size)):
            if value is not None:
                command += [flag, str(value)]
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True,
                                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
                                     "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
        print(f"{backend}: exit {result.returncode} after {time.perf_counter() - started:.0f} s "
              f"{result.stdout.strip().splitlines()[-3:] if result.stdout else ''}", flush=True)
        if (out / "certificate.json").is_file() and result.returncode in (0, 3):  # 3: verdict fail
            certificates[backend] = json.loads((out / "certificate.json").read_text(encoding="utf-8"))
        else:
            print(result.stderr[-2000:], file=sys.stderr)
    table = agreement(certificates)
    text = markdown(certificates, table, args.seeds)
    (args.out_dir / "agreement.json").write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    (args.out_dir / "agreement.md").write_text(text, encoding="utf-8")
    print(text, end="")


if __name__ == "__main__":
    main()
