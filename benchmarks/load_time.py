"""Cold ``datasets.load_dataset(dir)`` time and memory for a release-sized output.

    python benchmarks/load_time.py [--train 5614] [--test 740] [--side 1024]

Writes a release of the given size with the project's own publish and report code (generated
grayscale films of ``--side`` pixels, encoded like the build encodes), then, in a fresh subprocess
with an empty Hugging Face cache, times ``load_dataset`` (parquet -> Arrow cache) and one full pass
decoding every image, and prints peak RSS. Targets live here, never in timed tests.
"""

from __future__ import annotations

import argparse
import io
import json
import os
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


def write_release(out: Path, counts: dict[str, int], side: int) -> None:
    from covid19_cxr_dataset import CLASS_NAMES, publish, report

    (out / "data").mkdir(parents=True)
    rng = np.random.default_rng(0)
    films = []
    for k in range(16):  # a few distinct films, re-used: encoding cost is not what is measured here
        coarse = Image.fromarray(rng.integers(30, 220, (12, 12), dtype=np.uint8)).resize((side, side), Image.Resampling.BICUBIC)
        film = np.clip(np.asarray(coarse, dtype=np.int16) + rng.normal(0, 8, (side, side)).astype(np.int16), 0, 255)
        buffer = io.BytesIO()
        Image.fromarray(film.astype(np.uint8)).save(buffer, "JPEG", quality=95)
        films.append(buffer.getvalue())
    sizes = {}
    for split, n in counts.items():
        writer = publish.SplitShardWriter(out / "data", split)
        for i in range(n):
            record = {"source": "bench", "source_path": f"{split}/{i:05d}.jpg", "patient_id": f"bench:{split}{i}",
                      "label": CLASS_NAMES[i % 3], "view": "PA", "finding": "", "license": "", "sha256": f"{i:064x}"}
            writer.add(publish.publish_row(record, films[i % len(films)]))
        writer.close()
        sizes[split] = (writer.num_rows, writer.num_bytes)
    header = publish.card_yaml(split_sizes=sizes, license_id="other", pretty_name="bench", version="0.0.0")
    publish.write_card(out, header_yaml=header, body_markdown="# bench")
    report.write_report(out, {"dataset": "bench", "version": "0.0.0", "shards": report.shard_hashes(out)})


def child(release: Path) -> None:
    os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp()
    import datasets

    datasets.disable_progress_bars()
    start = time.perf_counter()
    loaded = datasets.load_dataset(str(release))
    load_seconds = time.perf_counter() - start
    start = time.perf_counter()
    pixels = 0
    for split in loaded:
        for row in loaded[split]:
            pixels += row["image"].size[0]
    pass_seconds = time.perf_counter() - start
    rows = sum(len(loaded[s]) for s in loaded)
    print(json.dumps({"load_seconds": load_seconds, "pass_seconds": pass_seconds, "rows": rows,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=5614)
    parser.add_argument("--test", type=int, default=740)
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    with tempfile.TemporaryDirectory() as folder:
        release = Path(folder) / "release"
        write_release(release, {"train": args.train, "test": args.test}, args.side)
        size_mb = sum(p.stat().st_size for p in (release / "data").glob("*.parquet")) / 1e6
        output = subprocess.run([sys.executable, __file__, "--child", str(release)], check=True, capture_output=True, text=True).stdout
    result = json.loads(output.strip().splitlines()[-1])
    print(f"release: {result['rows']:,} images, {size_mb:.0f} MB of parquet")
    print(f"cold load_dataset:            {result['load_seconds']:.1f} s")
    print(f"one pass decoding every image: {result['pass_seconds']:.1f} s ({result['rows'] / result['pass_seconds']:.0f} img/s)")
    print(f"peak RSS:                     {result['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
