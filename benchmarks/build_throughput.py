"""Throughput and memory of the build's own work against the image codec itself.

    python benchmarks/build_throughput.py [--n 1000] [--rounds 3] [--workers N] [--fixtures DIR]

Inputs: ``--n`` images from a warm cache (files on disk). With the real fixtures
(``$COVID19_CXR_REAL_FIXTURES`` or ``--fixtures``) they are the real images replicated in release
proportions (9 in 10 from Kaggle, the rest from the GitHub sources), each copy made unique by a few
trailing bytes (which decoders ignore) so no cache can short-cut it; without fixtures, generated
films of realistic sizes.

Measured, each in a fresh subprocess so peak RSS is its own:
  (a) the project's convert + publish stages (``build.convert_and_write_shards``: conversion into an
      empty conversion cache, each image written to its parquet shard as it arrives) with 1 worker
      and with all cores;
  (b) a bare Pillow loop doing the same decode -> grayscale -> JPEG encode over the same files.
Printed: images/s for each, the ratios (targets: (a, 1 worker) >= 0.85 x (b); all cores >= 1.8 x one
worker on 2 cores) and peak RSS (target: under 1 GiB for 6,354 images).
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


def make_inputs(folder: Path, n: int, fixtures: Path | None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    paths = []
    if fixtures and fixtures.is_dir():
        kaggle = sorted((fixtures / "kaggle" / "chest_xray").rglob("*.jpeg"))
        others = sorted(p for s in ("cohen", "figure1", "actualmed") for p in (fixtures / s / "images").glob("*"))
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


def run_project(paths: list[Path], workers: int, work: Path) -> dict:
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
    kept, failed, _ = convert_and_write_shards(kept, work / "data", options, ConvertSettings(quality=95))
    return {"seconds": time.perf_counter() - start, "images": len(kept), "failed": len(failed)}


def run_bare(paths: list[Path], _workers: int, _work: Path) -> dict:
    start = time.perf_counter()
    for path in paths:
        buffer = io.BytesIO()
        Image.open(path).convert("L").save(buffer, "JPEG", quality=95)
    return {"seconds": time.perf_counter() - start, "images": len(paths), "failed": 0}


def child(mode: str, listing: Path, workers: int) -> None:
    paths = [Path(line) for line in listing.read_text().splitlines()]
    with tempfile.TemporaryDirectory() as work:
        result = {"project": run_project, "bare": run_bare}[mode](paths, workers, Path(work))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="number of images (6354 = a whole release)")
    parser.add_argument("--rounds", type=int, default=3, help="measure each contender this many times, keep the best")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="workers for the all-cores run")
    parser.add_argument("--fixtures", type=Path, default=os.environ.get("COVID19_CXR_REAL_FIXTURES"))
    parser.add_argument("--child", choices=["project", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--listing", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.listing, args.workers)
        return
    with tempfile.TemporaryDirectory() as folder:
        paths = make_inputs(Path(folder) / "inputs", args.n, Path(args.fixtures) if args.fixtures else None)
        listing = Path(folder) / "inputs.txt"
        listing.write_text("\n".join(map(str, paths)))
        size_mb = sum(p.stat().st_size for p in paths) / 1e6
        print(f"{len(paths)} images, {size_mb:.0f} MB, {'real fixtures' if args.fixtures else 'generated'}; cores: {os.cpu_count()}")
        # Rounds take turns, so load from elsewhere hits every contender alike; the best round counts.
        runs = {"bare": [], "one": [], "many": []}
        for _ in range(args.rounds):
            runs["bare"].append(measure("bare", listing, 1))
            runs["one"].append(measure("project", listing, 1))
            runs["many"].append(measure("project", listing, args.workers))
        bare, one, many = (min(runs[k], key=lambda r: r["seconds"]) for k in ("bare", "one", "many"))
    rate = {name: r["images"] / r["seconds"] for name, r in (("bare", bare), ("one", one), ("many", many))}
    print(f"(b) bare Pillow loop          {rate['bare']:7.1f} img/s   peak RSS {bare['peak_rss_mib']:6.0f} MiB")
    print(f"(a) project, 1 worker         {rate['one']:7.1f} img/s   peak RSS {one['peak_rss_mib']:6.0f} MiB (workers {one['peak_child_rss_mib']:.0f} MiB)")
    print(f"(a) project, {args.workers} workers        {rate['many']:7.1f} img/s   peak RSS {many['peak_rss_mib']:6.0f} MiB (workers {many['peak_child_rss_mib']:.0f} MiB)")
    print(f"ratio 1 worker / bare:        {rate['one'] / rate['bare']:.2f}   (target >= 0.85)")
    print(f"ratio {args.workers} workers / 1 worker:   {rate['many'] / rate['one']:.2f}   (target >= 1.8 on 2 cores)")


if __name__ == "__main__":
    main()
