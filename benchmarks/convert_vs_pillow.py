"""Images per second of ``convert.convert_file`` against a bare Pillow loop.

The bare loop is what the old conversion did at the least: ``Image.open -> convert("L") -> save
JPEG`` at the same quality. JPEG sources now take the lossless transcode (no DCT at all), so the
project's target is a ratio (project / bare) of at least 1.0 on JPEG inputs; ``convert_file
standard Huffman`` shows the same path without Huffman optimization (speed targets live here,
never in timed tests).

    python benchmarks/convert_vs_pillow.py [--fixtures DIR] [--copies N] [--rounds R] [--max-side S]

Images are the real fixtures (``$COVID19_CXR_REAL_FIXTURES`` or ``--fixtures``), each listed
``--copies`` times; the loops take turns image by image (so that load from other processes
hits both alike) for ``--rounds`` rounds, and the best round of each is reported, for all images and per subset (grayscale JPEGs, colour JPEGs, PNGs).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from covid19_cxr_dataset.convert import ConvertSettings, convert_file  # noqa: E402

SUFFIXES = {".png", ".jpg", ".jpeg"}
TARGET_RATIO = 1.0


def bare_pillow(path: Path, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.open(path).convert("L").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def interleaved_rates(contenders: dict[str, Callable[[Path], object]], paths: list[Path]) -> dict[str, float]:
    """One round: every contender converts each image in turn, so load drift hits all alike."""
    spent = dict.fromkeys(contenders, 0.0)
    for path in paths:
        for label, convert in contenders.items():
            start = time.perf_counter()
            convert(path)
            spent[label] += time.perf_counter() - start
    return {label: len(paths) / seconds for label, seconds in spent.items()}


def subsets(images: list[Path]) -> dict[str, list[Path]]:
    groups: dict[str, list[Path]] = {"all": images}
    for path in images:
        with Image.open(path) as image:
            kind = f"{image.format} {'L' if image.mode == 'L' else 'colour'}"
        groups.setdefault(kind, []).append(path)
    return groups


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fixtures", type=Path, default=Path(os.environ.get("COVID19_CXR_REAL_FIXTURES", "")))
    parser.add_argument("--copies", type=int, default=3, help="times each image is listed")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best is kept")
    parser.add_argument("--quality", type=int, default=95)
    parser.add_argument("--max-side", type=int, default=None, help="also time convert_file with this cap")
    args = parser.parse_args()
    if not args.fixtures.is_dir():
        parser.error("no fixture folder: set COVID19_CXR_REAL_FIXTURES or pass --fixtures")
    images = sorted(p for p in args.fixtures.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    settings = ConvertSettings(quality=args.quality)
    standard = ConvertSettings(quality=args.quality, optimize_huffman=False)
    contenders: dict[str, Callable[[Path], object]] = {
        "bare pillow": lambda p: bare_pillow(p, args.quality),
        "convert_file": lambda p: convert_file(p, settings),
        "convert_file standard Huffman": lambda p: convert_file(p, standard),
    }
    if args.max_side:
        capped = ConvertSettings(quality=args.quality, max_side=args.max_side)
        contenders[f"convert_file max_side={args.max_side}"] = lambda p: convert_file(p, capped)

    print(f"Pillow {Image.__version__}; {len(images)} images x {args.copies} copies; best of {args.rounds} rounds")
    worst_ratio = float("inf")
    for name, group in subsets(images).items():
        paths = group * args.copies
        best = {label: 0.0 for label in contenders}
        for _ in range(args.rounds):
            for label, rate in interleaved_rates(contenders, paths).items():
                best[label] = max(best[label], rate)
        ratio = best["convert_file"] / best["bare pillow"]
        worst_ratio = min(worst_ratio, ratio) if name.startswith("JPEG") else worst_ratio
        rates = ", ".join(f"{label} {rate:7.1f} img/s" for label, rate in best.items())
        print(f"{name:<12} n={len(group):>3}  {rates}  ratio {ratio:.2f}")
    print(f"target ratio >= {TARGET_RATIO}: {'met' if worst_ratio >= TARGET_RATIO else 'NOT met'} "
          f"(worst of the JPEG subsets: {worst_ratio:.2f})")
    return 0 if worst_ratio >= TARGET_RATIO else 1


if __name__ == "__main__":
    raise SystemExit(main())
