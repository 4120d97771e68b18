"""Maintainer script: same-radiograph pairs among the Kaggle chest-xray-pneumonia files.

Runs the project's detector (``covid19_cxr_dataset.near_duplicates``) over a local copy of the
Kaggle files, e.g. a public (possibly resized) copy, and writes every candidate pair with its
distance, so that a maintainer can review them and record the confirmed ones in
``builder_manifests/covid19-cxr/<version>/decisions/duplicates.csv``. Nothing here runs in a build.

    OMP_NUM_THREADS=1 PYTHONPATH=. python tools/kaggle_near_duplicates.py \
        --files builder_manifests/covid19-cxr/1.0.0/locks/kaggle.csv \
        --copy /path/to/copy [--copy /path/to/another] --out pairs.csv \
        --cache sigs.npz --scores scores.npz --band-prefilter 0.08 --threshold 0.25 --workers 2

(the run behind release 1.0.0's Kaggle rows; see docs/curation-1.0.0.md, section 7).

Each ``--copy`` folder holds ``<split>/<class>/<filename>`` (the archive's layout under
``chest_xray/``); for each listed file the first copy that has it is used. Keys in the output are
``chest_xray/<split>/<class>/<filename>``, the ``source_path`` of the Kaggle records. Also written:
byte-identical files (same sha256 of the copy) as distance 0 with ``same_bytes`` = 1.

The stages are those of ``near_duplicates.find_pairs`` (low-pass prefilter, band-pass prefilter,
registered distance), run here with progress output and a signature cache (``--cache``), because
the 5,856 Kaggle films look alike at low resolution and the later stages are the slow part
(about 2 million pairs pass the low-pass prefilter). Run it with ``OMP_NUM_THREADS=1`` on a shared
machine: multithreaded BLAS on small matrices is many times slower under contention.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from covid19_cxr_dataset import near_duplicates as nd

VIEWS = nd.VIEW_COUNT


def _signature(path: str) -> tuple[bytes, str]:
    data = Path(path).read_bytes()
    return nd.image_signature(path).to_bytes(), hashlib.sha256(data).hexdigest()


_SIGNATURES: list[nd.Signature] = []  # set before the stage-3 pool forks, so workers inherit it


def _distances(pairs: list[tuple[int, int]]) -> list[float]:
    return [nd.pair_distance(_SIGNATURES[i], _SIGNATURES[j]) for i, j in pairs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=Path, required=True, help="the release's Kaggle file list (kaggle.csv)")
    parser.add_argument("--copy", type=Path, action="append", required=True, help="folder with <split>/<class>/<filename>")
    parser.add_argument("--root", default="chest_xray", help="archive root used in the keys (default chest_xray)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cache", type=Path, help="signature cache (.npz), reused when present")
    parser.add_argument("--threshold", type=float, default=0.2)
    parser.add_argument("--low-prefilter", type=float, default=nd.DEFAULT_LOW_PREFILTER)
    parser.add_argument("--band-prefilter", type=float, default=nd.DEFAULT_BAND_PREFILTER)
    parser.add_argument("--scores", type=Path, help="stage-1 pairs and their stage-2 scores (.npz), reused when present")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)

    with open(args.files, newline="", encoding="utf-8") as handle:
        listed = [(r["split"], r["class"], r["filename"]) for r in csv.DictReader(handle)]
    paths, missing = {}, []
    for split, cls, filename in listed:
        key = f"{args.root}/{split}/{cls}/{filename}"
        for folder in args.copy:
            candidate = folder / split / cls / filename
            if candidate.is_file():
                paths[key] = str(candidate)
                break
        else:
            missing.append(key)
    print(f"{len(paths)} of {len(listed)} listed files found in the copies; {len(missing)} missing", file=sys.stderr)

    started = time.monotonic()
    keys = sorted(paths)
    cached = {}
    if args.cache and args.cache.exists():
        with np.load(args.cache, allow_pickle=False) as stored:
            cached = {
                str(k): (nd.signature_from_thumbnail(t, int(w), int(h)), str(d))
                for k, t, (w, h), d in zip(stored["keys"], stored["thumbs"], stored["sizes"], stored["sha256"])
            }
    todo = [k for k in keys if k not in cached]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for key, result in zip(todo, pool.map(_signature, [paths[k] for k in todo], chunksize=32)):
            cached[key] = result
    for key in todo:
        data, digest = cached[key]
        cached[key] = (nd.Signature.from_bytes(data), digest)
    sigs = [cached[k][0] for k in keys]
    if args.cache and todo:
        np.savez(args.cache, keys=np.array(keys), thumbs=np.stack([s.thumb for s in sigs]),
                 sizes=np.array([[s.width, s.height] for s in sigs]), sha256=np.array([cached[k][1] for k in keys]))
    print(f"signatures: {len(sigs)} in {time.monotonic() - started:.0f} s", file=sys.stderr)

    rows = []
    by_hash: dict[str, str] = {}
    for key in keys:
        digest = cached[key][1]
        if digest in by_hash:
            rows.append((by_hash[digest], key, 0.0, 1))
        else:
            by_hash[digest] = key

    t = time.monotonic()
    if args.scores and args.scores.exists():
        with np.load(args.scores) as stored:
            first, second, band = stored["first"], stored["second"], stored["band"]
        print(f"stage 2: scores of {len(first)} pairs read from {args.scores}", file=sys.stderr)
    else:
        similar = np.triu(nd.low_pass_similarity(sigs) >= 1.0 - args.low_prefilter, k=1)
        first, second = np.nonzero(similar)
        del similar
        print(f"stage 1: {len(first)} pairs pass the low-pass prefilter ({time.monotonic() - t:.0f} s)", file=sys.stderr)
        t = time.monotonic()
        band = np.empty(len(first), dtype=np.float32)
        bands = np.stack([s.band for s in sigs])  # (N, V, D)
        starts = np.searchsorted(first, np.arange(len(sigs) + 1))
        for i in range(len(sigs)):
            lo, hi = starts[i], starts[i + 1]
            if lo == hi:
                continue
            js = second[lo:hi]
            # best band-pass NCC over all view pairs, for i against all its stage-1 partners at once
            band[lo:hi] = (sigs[i].band @ bands[js].reshape(-1, bands.shape[2]).T).reshape(VIEWS, len(js), VIEWS).max(axis=(0, 2))
            if i % 500 == 0:
                print(f"stage 2: row {i}/{len(sigs)} ({time.monotonic() - t:.0f} s)", file=sys.stderr)
        if args.scores:
            np.savez(args.scores, first=first, second=second, band=band)
    keep = 1.0 - band <= args.band_prefilter
    survivors = [(int(i), int(j)) for i, j in zip(first[keep], second[keep])]
    print(f"stage 2: {len(survivors)} pairs pass the band-pass prefilter ({time.monotonic() - t:.0f} s)", file=sys.stderr)

    t = time.monotonic()
    chunk = 64
    batches = [survivors[s:s + chunk] for s in range(0, len(survivors), chunk)]
    done = 0
    _SIGNATURES[:] = sigs
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=context) as pool:
        for batch, distances in zip(batches, pool.map(_distances, batches)):
            for (i, j), distance in zip(batch, distances):
                if distance <= args.threshold:
                    rows.append((keys[i], keys[j], round(distance, 4), 0))
            done += len(batch)
            if done % (chunk * 50) < chunk:
                print(f"stage 3: {done}/{len(survivors)} ({time.monotonic() - t:.0f} s)", file=sys.stderr)
    print(f"stage 3: {len(rows)} pairs at distance <= {args.threshold} ({time.monotonic() - t:.0f} s)", file=sys.stderr)

    rows.sort(key=lambda r: (r[2], r[0], r[1]))
    with open(args.out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path_a", "path_b", "distance", "same_bytes", "width_a", "height_a", "width_b", "height_b"])
        index = {k: n for n, k in enumerate(keys)}
        for a, b, distance, same in rows:
            sa, sb = sigs[index[a]], sigs[index[b]]
            writer.writerow([a, b, f"{distance:.4f}", same, sa.width, sa.height, sb.width, sb.height])
    for key in missing:
        print(f"missing: {key}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
