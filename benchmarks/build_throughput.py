"""Throughput and memory of the build's own work against the image codecs themselves.

    python benchmarks/build_throughput.py [--n 1000] [--rounds 3] [--workers N] [--fixtures DIR]
                                          [--inputs jpeg|mix|both]

Inputs: ``--n`` images from a warm cache (files on disk). With the real fixtures
(``$COVID19_CXR_REAL_FIXTURES`` or ``--fixtures``) they are the real images replicated: ``jpeg``
takes only the JPEG files (Kaggle and the GitHub JPEGs), ``mix`` the release's proportions (9 in 10
from Kaggle, the rest from the GitHub sources, PNGs included); each copy is made unique by a few
trailing bytes (which decoders ignore) so no cache can short-cut it. Without fixtures: generated
JPEG films of realistic sizes.

Measured side by side on the same files, each in a fresh subprocess so peak RSS is its own, in
interleaved rounds (load from other processes hits every contender alike; the best round counts):
  (b) bare Pillow: decode -> grayscale -> JPEG encode (quality 95), the old conversion's floor;
  (c) bare lossless transcode: libjpeg-turbo's transform (Y coefficients copied; optimized or
      standard Huffman tables) on the JPEG files, Pillow as in (b) on the others;
  (a) the project's convert + publish stages (``build.convert_and_write_shards``: conversion into
      an empty conversion cache, each image written to its parquet shard as it arrives) with 1
      worker and with ``--workers``, for optimized and for standard Huffman tables.
Targets: (a, 1 worker) >= 1.0 x (b) on JPEG inputs; ``--workers`` 2 >= 1.8 x 1 worker; peak RSS
per worker under 1 GiB (run ``--n 6354`` for a whole release).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_inputs(folder: Path, n: int, fixtures: Path | None, inputs: str = "mix") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    paths = []
    if fixtures and fixtures.is_dir():
        kaggle = sorted((fixtures / "kaggle" / "chest_xray").rglob("*.jpeg"))
        others = sorted(p for s in ("cohen", "figure1", "actualmed") for p in (fixtures / s / "images").glob("*"))
        if inputs == "jpeg":
            others = [p for p in others if p.read_bytes()[:3] == b"\xff\xd8\xff"]
        for i in range(n):
            source = rng.choice(kaggle) if i % 10 else rng.choice(others)
            target = folder / f"{i:05d}{source.suffix}"
            target.write_bytes(source.read_bytes() + b"\0" * 16 + i.to_bytes(4, "big"))
            paths.append(target)
        return paths
    nrng = np.random.default_rng(0)
    for i in range(n):
        w, h = rng.randint(1100, 2000), rng.randint(900, 1700)
        coarse = Image.fromarray(nrng.integers(30, 220, (12, 16), dtype=np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
        film = np.clip(np.asarray(coarse, dtype=np.int16) + nrng.normal(0, 8, (h, w)).astype(np.int16), 0, 255).astype(np.uint8)
        target = folder / f"{i:05d}.jpeg"
        Image.fromarray(film).save(target, "JPEG", quality=90)
        paths.append(target)
    return paths


def run_project(paths: list[Path], workers: int, work: Path, optimize: bool = True) -> dict:
    from covid19_cxr_dataset.build import Options, convert_and_write_shards
    from covid19_cxr_dataset.convert import ConvertSettings
    from covid19_cxr_dataset.records import new_record_table

    kept = new_record_table([
        {"record_id": f"bench:{p.name}", "source": "bench", "source_path": p.name, "patient_id": f"bench:{i}",
         "label": "Normal", "view": "PA", "modality": "X-ray", "local_path": str(p), "sha256": f"{i:064x}", "split": "train"}
        for i, p in enumerate(paths)
    ])
    options = Options(cache_dir=work / "cache", workers=workers, progress=False)
    start = time.perf_counter()
    kept, failed, _ = convert_and_write_shards(kept, work / "data", options, ConvertSettings(quality=95, optimize_huffman=optimize))
    return {"seconds": time.perf_counter() - start, "images": len(kept), "failed": len(failed)}


def run_bare(paths: list[Path], _workers: int, _work: Path) -> dict:
    start = time.perf_counter()
    for path in paths:
        buffer = io.BytesIO()
        Image.open(path).convert("L").save(buffer, "JPEG", quality=95)
    return {"seconds": time.perf_counter() - start, "images": len(paths), "failed": 0}


def run_transcode(paths: list[Path], _workers: int, _work: Path, optimize: bool = True) -> dict:
    import turbojpeg

    start = time.perf_counter()
    for path in paths:
        data = path.read_bytes()
        if data[:3] == b"\xff\xd8\xff":
            turbojpeg.transform(data, gray=True, copynone=True, optimize=optimize)
        else:
            buffer = io.BytesIO()
            Image.open(io.BytesIO(data)).convert("L").save(buffer, "JPEG", quality=95)
    return {"seconds": time.perf_counter() - start, "images": len(paths), "failed": 0}


MODES = {
    "bare": run_bare,
    "transcode": run_transcode,
    "transcode-std": lambda p, w, k: run_transcode(p, w, k, optimize=False),
    "project": run_project,
    "project-std": lambda p, w, k: run_project(p, w, k, optimize=False),
}


def child(mode: str, listing: Path, workers: int) -> None:
    paths = [Path(line) for line in listing.read_text().splitlines()]
    with tempfile.TemporaryDirectory() as work:
        result = MODES[mode](paths, workers, Path(work))
    self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result.update(peak_rss_mib=self_kib / 1024, peak_child_rss_mib=children_kib / 1024)
    print(json.dumps(result))


def measure(mode: str, listing: Path, workers: int) -> dict:
    output = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--listing", str(listing), "--workers", str(workers)],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


CONTENDERS = (  # (label, mode, workers: None = --workers)
    ("(b) bare Pillow decode-encode", "bare", 1),
    ("(c) bare transcode, optimized", "transcode", 1),
    ("(c) bare transcode, standard", "transcode-std", 1),
    ("(a) project, 1 worker, optimized", "project", 1),
    ("(a) project, N workers, optimized", "project", None),
    ("(a) project, 1 worker, standard", "project-std", 1),
    ("(a) project, N workers, standard", "project-std", None),
)


def bench(paths: list[Path], listing: Path, rounds: int, workers: int, only: str = "") -> dict[str, dict]:
    chosen = [c for c in CONTENDERS if only in c[0]]
    runs: dict[str, list[dict]] = {label: [] for label, _, _ in chosen}
    for _ in range(rounds):  # rounds take turns: drifting load from elsewhere hits every contender alike
        for label, mode, count in chosen:
            runs[label].append(measure(mode, listing, count or workers))
    return {label: min(results, key=lambda r: r["seconds"]) for label, results in runs.items()}


def report(best: dict[str, dict], workers: int) -> None:
    rate = {label: r["images"] / r["seconds"] for label, r in best.items()}
    bare = rate.get("(b) bare Pillow decode-encode", float("nan"))
    for label, r in best.items():
        shown = label.replace("N workers", f"{workers} workers")
        rss = f"peak RSS {r['peak_rss_mib']:5.0f} MiB" + (f", workers {r['peak_child_rss_mib']:.0f} MiB" if r["peak_child_rss_mib"] else "")
        print(f"  {shown:38s} {rate[label]:7.1f} img/s  {rate[label] / bare:5.2f} x bare   {rss}")
    for kind in ("optimized", "standard"):
        if f"(a) project, 1 worker, {kind}" not in rate or f"(a) project, N workers, {kind}" not in rate:
            continue
        one, many = rate[f"(a) project, 1 worker, {kind}"], rate[f"(a) project, N workers, {kind}"]
        print(f"  {kind}: project 1 worker / bare = {one / bare:.2f} (target >= 1.0 on JPEG inputs); "
              f"{workers} workers / 1 worker = {many / one:.2f} (target >= 1.8 on 2 cores)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="number of images (6354 = a whole release)")
    parser.add_argument("--rounds", type=int, default=3, help="measure each contender this many times, keep the best")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="workers for the all-cores run")
    parser.add_argument("--fixtures", type=Path, default=os.environ.get("COVID19_CXR_REAL_FIXTURES"))
    parser.add_argument("--inputs", choices=["jpeg", "mix", "both"], default="both")
    parser.add_argument("--only", default="", help="run only the contenders whose label contains this text, e.g. 'N workers, optimized'")
    parser.add_argument("--child", choices=sorted(MODES), help=argparse.SUPPRESS)
    parser.add_argument("--listing", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.listing, args.workers)
        return
    fixtures = Path(args.fixtures) if args.fixtures else None
    for inputs in (("jpeg", "mix") if args.inputs == "both" else (args.inputs,)):
        with tempfile.TemporaryDirectory() as folder:
            paths = make_inputs(Path(folder) / "inputs", args.n, fixtures, inputs)
            listing = Path(folder) / "inputs.txt"
            listing.write_text("\n".join(map(str, paths)))
            size_mb = sum(p.stat().st_size for p in paths) / 1e6
            kind = f"real fixtures, {'JPEG files only' if inputs == 'jpeg' else 'release mix'}" if fixtures else "generated JPEGs"
            print(f"{len(paths)} images, {size_mb:.0f} MB, {kind}; cores: {os.cpu_count()}; best of {args.rounds} interleaved rounds")
            report(bench(paths, listing, args.rounds, args.workers, args.only), args.workers)
        if not fixtures:
            break


if __name__ == "__main__":
    main()
