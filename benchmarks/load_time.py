"""Cold ``datasets.load_dataset(dir)`` time, size on disk and memory of a release-sized output,
for each form of the release side by side.

    python benchmarks/load_time.py [--train 5614] [--test 740] [--side 1024] [--fixtures DIR]

Writes a release of the given size with the project's own shards, card and release code, then, in a fresh
subprocess with an empty Hugging Face cache, times ``load_dataset`` (parquet -> Arrow cache) and one
full pass decoding every image, and prints peak RSS. With the real fixtures
(``$COVID19_CXR_REAL_FIXTURES`` or ``--fixtures``) the images are the real files converted by
``convert.convert_file``, COVID-19 rows from the GitHub sources and the others from Kaggle as in
release 1.0.0, in three forms: ``old`` (every image decoded and re-encoded as JPEG q95),
``lossless+jpeg`` (JPEG sources transcoded losslessly, others JPEG q95) and ``lossless+png``
(others 8-bit PNG). Without fixtures: generated films of ``--side`` pixels, encoded as the old
form. Targets live here, never in timed tests.
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


COVID_SHARE = 498 / 6354  # release 1.0.0: COVID-19 images (GitHub sources) among all


def generated_films(side: int) -> tuple[list[bytes], list[bytes], list[str]]:
    rng = np.random.default_rng(0)
    films = []
    for k in range(16):  # a few distinct films, re-used: encoding cost is not what is measured here
        coarse = Image.fromarray(rng.integers(30, 220, (12, 12), dtype=np.uint8)).resize((side, side), Image.Resampling.BICUBIC)
        film = np.clip(np.asarray(coarse, dtype=np.int16) + rng.normal(0, 8, (side, side)).astype(np.int16), 0, 255)
        buffer = io.BytesIO()
        Image.fromarray(film.astype(np.uint8)).save(buffer, "JPEG", quality=95)
        films.append(buffer.getvalue())
    return films[:4], films[4:], ["normalized-jpeg"] * 16


FORMS = {
    "old": {"lossless_jpeg": False, "fallback_format": "jpeg"},
    "lossless+jpeg": {"lossless_jpeg": True, "fallback_format": "jpeg"},
    "lossless+png": {"lossless_jpeg": True, "fallback_format": "png"},
}


def fixture_films(fixtures: Path, form: str) -> tuple[list[tuple[bytes, str]], list[tuple[bytes, str]]]:
    """(GitHub-source outputs, Kaggle outputs) of the real fixtures, converted in ``form``."""
    from covid19_cxr_dataset.convert import ConvertSettings, convert_file
    from covid19_cxr_dataset.errors import ConversionError

    settings = ConvertSettings(quality=95, **FORMS[form])
    github = sorted(p for s in ("cohen", "figure1", "actualmed") for p in (fixtures / s / "images").glob("*"))
    kaggle = sorted((fixtures / "kaggle" / "chest_xray").rglob("*.jpeg"))

    def outputs(paths):
        converted = []
        for path in paths:
            try:
                result = convert_file(path, settings)
            except ConversionError:
                continue
            converted.append((result.data, result.conversion))
        return converted

    return outputs(github), outputs(kaggle)


def write_release(out: Path, counts: dict[str, int], covid: list[tuple[bytes, str]], others: list[tuple[bytes, str]]) -> None:
    from covid19_cxr_dataset import CLASS_NAMES, card, release as release_format, shards

    (out / "data").mkdir(parents=True)
    sizes = {}
    for split, n in counts.items():
        writer = shards.SplitShardWriter(out / "data", split)
        for i in range(n):
            is_covid = (i * COVID_SHARE) % 1 + COVID_SHARE >= 1  # spread COVID rows evenly
            data, conversion = covid[i % len(covid)] if is_covid else others[i % len(others)]
            record = {"source": "bench", "source_path": f"{split}/{i:05d}.jpg", "patient_id": f"bench:{split}{i}",
                      "label": "COVID-19" if is_covid else CLASS_NAMES[1 + i % 2], "view": "PA", "finding": "",
                      "license": "", "sha256": f"{i:064x}"}
            writer.add(shards.publish_row(record, data, conversion))
        writer.close()
        sizes[split] = (writer.num_rows, writer.num_bytes)
    header = card.card_yaml(split_sizes=sizes, license_id="other", pretty_name="bench", version="0.0.0")
    card.write_card(out, header_yaml=header, body_markdown="# bench")
    release_format.write_report(out, {"dataset": "bench", "version": "0.0.0", "shards": release_format.shard_hashes(out)})


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
    parser.add_argument("--fixtures", type=Path, default=os.environ.get("COVID19_CXR_REAL_FIXTURES"))
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    fixtures = Path(args.fixtures) if args.fixtures else None
    forms = list(FORMS) if fixtures else ["generated"]
    print(f"release: {args.train + args.test:,} images ({'real fixtures, replicated' if fixtures else f'generated {args.side} px films'})")
    print(f"  {'form':15s} {'parquet MB':>10s} {'cold load s':>11s} {'decode pass s':>13s} {'img/s':>6s} {'peak RSS MiB':>12s}")
    for form in forms:
        if fixtures:
            covid, others = fixture_films(fixtures, form)
        else:
            films = generated_films(args.side)
            covid, others = [(f, "normalized-jpeg") for f in films[0]], [(f, "normalized-jpeg") for f in films[1]]
        with tempfile.TemporaryDirectory() as folder:
            release = Path(folder) / "release"
            write_release(release, {"train": args.train, "test": args.test}, covid, others)
            size_mb = sum(p.stat().st_size for p in (release / "data").glob("*.parquet")) / 1e6
            output = subprocess.run([sys.executable, __file__, "--child", str(release)], check=True, capture_output=True, text=True).stdout
        r = json.loads(output.strip().splitlines()[-1])
        print(f"  {form:15s} {size_mb:10.0f} {r['load_seconds']:11.1f} {r['pass_seconds']:13.1f} "
              f"{r['rows'] / r['pass_seconds']:6.0f} {r['peak_rss_mib']:12.0f}")


if __name__ == "__main__":
    main()
