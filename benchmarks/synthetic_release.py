"""Write a synthetic release with the real release's counts (6,354 images), fast, for timing runs.

    python3 benchmarks/synthetic_release.py OUT_DIR [--images 6354] [--size 1024] [--workers N]

The real release 1.0.0 holds train 5,614 (COVID-19 398 / Normal 1,341 / Pneumonia 3,875) and test
740 (100 / 242 / 398). ``--images N`` scales those counts to about N images in the same proportions
(at least one per class and split), for a quick run. Images are radiograph-like grayscale JPEGs
of ``--size`` pixels a side whose class is faintly visible (a brighter patch whose size depends on
the class), generated in parallel worker processes. The shards are written with the project's own
writer, in the layout this script has always written (shards directly in ``data/``: a release from
before configurations, which ``baseline`` reads as configuration ``paper``); the build report, card and
croissant.json come from tests/release_factory.write_report_and_card, which writes them as ``build`` does
(``report.assemble``, the shortcut-evidence section, ``generated.write_generated``), so ``cxr-dataset baseline`` verifies and trains
on it like on a built release.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # release_factory: the build's report and card for written shards

from covid19_cxr_dataset import CLASS_NAMES, shards  # noqa: E402
from release_factory import write_report_and_card  # noqa: E402

REAL_COUNTS = {
    "train": {"COVID-19": 398, "Normal": 1341, "Pneumonia": 3875},
    "test": {"COVID-19": 100, "Normal": 242, "Pneumonia": 398},
}
REAL_TOTAL = sum(sum(split.values()) for split in REAL_COUNTS.values())  # 6,354


def scaled_counts(images: int) -> dict[str, dict[str, int]]:
    """The real per-split, per-class counts scaled to about ``images`` in all (>= 1 each)."""
    if images == REAL_TOTAL:
        return {split: dict(counts) for split, counts in REAL_COUNTS.items()}
    return {split: {name: max(1, round(n * images / REAL_TOTAL)) for name, n in counts.items()}
            for split, counts in REAL_COUNTS.items()}


@lru_cache(maxsize=4)
def _film(size: int) -> np.ndarray:
    """The smooth part every film shares: two dark lung fields beside a brighter mediastinum."""
    yy, xx = np.ogrid[0:size, 0:size]
    yy, xx = yy / size, xx / size
    image = 170 - 60 * np.exp(-(((xx - 0.32) / 0.14) ** 2 + ((yy - 0.5) / 0.28) ** 2))
    return (image - 60 * np.exp(-(((xx - 0.68) / 0.14) ** 2 + ((yy - 0.5) / 0.28) ** 2))).astype(np.float32)


def radiograph_jpeg(task: tuple[str, int, int, int]) -> bytes:
    """One film: the shared lung fields, grain, and a bright patch whose size tells the class."""
    split, label, index, size = task
    rng = np.random.default_rng([label, index, 0 if split == "train" else 1])
    image = _film(size) + rng.standard_normal((size, size), dtype=np.float32) * 3
    radius = int(size * (0.06 + 0.05 * label))
    cy, cx = int(size * 0.55), int(size * (0.5 + rng.uniform(-0.15, 0.15)))
    top, left = max(0, cy - 2 * radius), max(0, cx - 2 * radius)
    yy, xx = np.ogrid[top:min(size, cy + 2 * radius), left:min(size, cx + 2 * radius)]
    patch = 30 * np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / radius ** 2))
    image[top:top + patch.shape[0], left:left + patch.shape[1]] += patch.astype(np.float32)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_synthetic_release(out_dir: Path, *, images: int = REAL_TOTAL, size: int = 1024,
                            workers: int | None = None, version: str = "0.0.0-synthetic") -> dict:
    """Write the release into ``out_dir`` (which must not exist); returns its build report."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise SystemExit(f"{out_dir}: already exists; give a new folder")
    counts = scaled_counts(images)
    data_dir = out_dir / "data"
    data_dir.mkdir(parents=True)
    records = []
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        for split, per_class in counts.items():
            tasks = [(split, label, index, size) for label, name in enumerate(CLASS_NAMES)
                     for index in range(per_class[name])]
            order = np.random.default_rng(0 if split == "train" else 1).permutation(len(tasks))  # classes mixed
            tasks = [tasks[i] for i in order]
            writer = shards.SplitShardWriter(data_dir, split)
            for (split_, label, index, _), jpeg in zip(tasks, pool.map(radiograph_jpeg, tasks, chunksize=16)):
                name = CLASS_NAMES[label]
                record = {"source": "synthetic", "source_path": f"{split_}/{name}/{index:05d}.png",
                          "patient_id": f"synthetic:{split_}-{label}-{index:05d}", "view": "PA", "finding": name,
                          "label": name, "license": "CC0-1.0", "sha256": hashlib.sha256(jpeg).hexdigest()}
                writer.add(shards.publish_row(record, jpeg))
                records.append({**record, "split": split_, "flags": ()})
            writer.close()
    return write_report_and_card(
        out_dir, records, version=version, configs=False, name="covid19-cxr-synthetic",
        title="COVID-19 CXR (synthetic release for timing runs)", description="Generated by benchmarks/synthetic_release.py.",
        seed="synthetic-release", workers=workers or os.cpu_count() or 1,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="folder to create")
    parser.add_argument("--images", type=int, default=REAL_TOTAL, help=f"about this many images (default {REAL_TOTAL})")
    parser.add_argument("--size", type=int, default=1024, help="side of each JPEG in pixels (default 1024)")
    parser.add_argument("--workers", type=int, default=None, help="generator processes (default: all cores)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    built = write_synthetic_release(args.out_dir, images=args.images, size=args.size, workers=args.workers)
    total = sum(sum(split.values()) for split in built["counts"].values())
    megabytes = sum(p.stat().st_size for p in (args.out_dir / "data").glob("*.parquet")) / 1e6
    print(f"wrote {args.out_dir}: {total} images ({built['counts']}), {args.size}x{args.size} JPEG, "
          f"{megabytes:.0f} MB of shards, in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
