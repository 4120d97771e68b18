"""Write small, valid release folders (docs/ARCHITECTURE.md "Release format") for tests.

    from release_factory import make_release
    release = make_release(tmp_path / "release", per_class={"train": 8, "test": 4})

The release is written with the project's own writers, in the build's order (``write_report_and_card``):
shards.SplitShardWriter, then report.assemble for a manifest that describes exactly these rows (written
with the tests' manifest template), the shortcut-evidence section, generated.write_generated (README.md,
croissant.json, unpinned-files.csv) and release.write_report. So its shards, card and build report are
what `build` would write for the same rows (keys and schema included), ``release_format.fingerprint(release) == build_report["fingerprint"]`` and the
card is the one ``verify`` regenerates. benchmarks/synthetic_release.py writes its report the same way.

Images come from ``image_fn(label, split, index, size) -> image``: ``label`` is the class index
(``CLASS_NAMES``), ``index`` the image's number within its split and class, ``size`` (width, height);
it returns a PIL image or a uint8 array (H, W) or (H, W, 3). The default makes the class visible as
brightness (dark COVID-19, mid Normal, bright Pneumonia) with seeded noise, so a classifier can
learn it. Every image is stored as an 8-bit grayscale JPEG, like the convert package's output.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from covid19_cxr_dataset import CLASS_NAMES, card, evidence, manifest as manifest_module
from covid19_cxr_dataset import release as release_format, report, shards
from covid19_cxr_dataset.counts import count_table
from covid19_cxr_dataset.generated import write_generated
from covid19_cxr_dataset.records import empty_exclusions, new_record_table

from synthetic import manifest_text

ImageFn = Callable[[int, str, int, tuple[int, int]], Any]

DATASET_NAME = "covid19-cxr-test"
TITLE = "COVID-19 CXR (synthetic test release)"
CLASS_LEVELS = (60, 128, 196)  # mean gray level per class in the default images


def brightness_image(label: int, split: str, index: int, size: tuple[int, int]) -> np.ndarray:
    """The default image: the class's gray level plus seeded noise and a soft vertical gradient."""
    width, height = size
    rng = np.random.default_rng([label, index, 0 if split == "train" else 1])
    gradient = np.linspace(-12, 12, height)[:, None]
    noise = rng.normal(0, 18, (height, width))
    return np.clip(CLASS_LEVELS[label] + gradient + noise, 0, 255).astype(np.uint8)


def shape_image(label: int, split: str, index: int, size: tuple[int, int]) -> np.ndarray:
    """Same brightness for every class; the class is a shape: disc, horizontal bar, vertical bar."""
    width, height = size
    rng = np.random.default_rng([label, index, 2 if split == "train" else 3])
    image = rng.normal(110, 20, (height, width))
    yy, xx = np.mgrid[0:height, 0:width]
    cy, cx = height / 2 + rng.uniform(-4, 4), width / 2 + rng.uniform(-4, 4)
    if label == 0:
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < (min(size) / 4) ** 2
    elif label == 1:
        mask = (abs(yy - cy) < height / 10) & (abs(xx - cx) < width / 3)
    else:
        mask = (abs(xx - cx) < width / 10) & (abs(yy - cy) < height / 3)
    image[mask] += 90
    return np.clip(image, 0, 255).astype(np.uint8)


def jpeg_bytes(image: Any) -> bytes:
    """An 8-bit grayscale JPEG (quality 95, no metadata) from a PIL image or uint8 array."""
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    buffer = io.BytesIO()
    image.convert("L").save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def make_release(
    out_dir: Path,
    *,
    per_class: dict[str, int] | None = None,
    size: tuple[int, int] = (96, 96),
    image_fn: ImageFn | None = None,
    version: str = "0.0.0-test",
    max_shard_bytes: int = shards.DEFAULT_MAX_SHARD_BYTES,
    configs: bool = False,
    counts: dict[str, dict[str, int]] | None = None,
    source_fn: Callable[[int, str, int], str] | None = None,
    license_of: Callable[[str, int, int], str] | None = None,
) -> Path:
    """Write a release with ``per_class[split]`` images of every class in each split; returns ``out_dir``.

    A small ``max_shard_bytes`` (e.g. 20_000) gives several shards per split once a split has more
    than ``shards.ROW_GROUP_ROWS`` rows (the writer starts a new shard only between row groups).

    ``configs=True`` writes 1.0.0's layout: a default ``paper`` configuration over ``data/curated/``
    and ``data/flagged/`` and a ``curated`` one over ``data/curated/``; every fourth image of a class
    (index 3, 7, ...) carries the flag ``annotation-text`` and sits in ``data/flagged/``. Without it,
    one configuration over ``data/`` (the layout of releases written before configurations).

    ``counts`` ({split: {class name: n}}) gives each class its own number of images (instead of
    ``per_class``); ``source_fn(label, split, index)`` names each image's source (default: ``synthetic``).

    ``license_of(split, label, index)`` gives each image's license text (default ``CC0-1.0``).
    """
    per_class = {"train": 8, "test": 4} if per_class is None else per_class
    if counts is None:
        counts = {split: {name: n for name in CLASS_NAMES} for split, n in per_class.items()}
    counts = {split: {name: int(by_class.get(name, 0)) for name in CLASS_NAMES} for split, by_class in counts.items()}
    image_fn = image_fn or brightness_image
    out_dir = Path(out_dir)
    data_dir = out_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    folders = ["curated", "flagged"] if configs else [""]

    records = []
    for split, by_class in counts.items():
        writers = {f: shards.SplitShardWriter(_made(data_dir / f), split, max_shard_bytes=max_shard_bytes) for f in folders}
        for index in range(max(by_class.values(), default=0)):
            for label, name in enumerate(CLASS_NAMES):  # interleaved, so every shard holds every class
                if index >= by_class[name]:
                    continue
                jpeg = jpeg_bytes(image_fn(label, split, index, size))
                source = source_fn(label, split, index) if source_fn else "synthetic"
                record = _record(split, label, name, index, jpeg, source)
                if license_of is not None:
                    record["license"] = license_of(split, label, index)
                flagged = configs and index % 4 == 3
                record["flags"] = ("annotation-text",) if flagged else ()
                writers["flagged" if flagged else folders[0]].add(shards.publish_row(record, jpeg))
                records.append({**record, "split": split})
        for writer in writers.values():
            writer.close()
    write_report_and_card(out_dir, records, version=version, configs=configs)
    return out_dir


def write_report_and_card(
    out_dir: Path, records: list[dict[str, Any]], *, version: str, configs: bool, name: str = DATASET_NAME,
    title: str = TITLE, description: str = "Generated by tests/release_factory.py.", seed: str = "release-factory",
    workers: int = 1,
) -> dict[str, Any]:
    """Write ``build_report.json`` and the generated files (README.md, croissant.json) beside the shards
    already under ``out_dir/data``, the way ``build`` does after its shards (build._build_locked):
    ``report.assemble`` with the card's inputs (``card.card_inputs``) of a manifest that describes these
    rows, the shortcut-evidence section, then ``generated.write_generated`` from the report and the
    shards. Returns the report.

    ``records``: every row written, as handed to ``shards.publish_row`` (source, source_path,
    patient_id, view, finding, label as a class name, license, sha256), plus ``split`` and ``flags``.
    ``configs=True``: the shards are in 1.0.0's layout (``data/curated/``, ``data/flagged/``) and the
    manifest has a default ``paper`` that keeps flagged rows and a ``curated`` subset without them;
    ``configs=False``: the shards are directly in ``data/``, a release written before configurations.
    """
    out_dir = Path(out_dir)
    kept = new_record_table([{**r, "record_id": f"{r['source']}:{r['source_path']}", "modality": "X-ray",
                              "upstream_split": r["split"]} for r in records])
    kept["patient_group"] = kept["patient_id"]  # one image per patient: no patient spans the split
    with tempfile.TemporaryDirectory() as temp:
        # named like the dataset: the card names the manifest by its folder (``--manifest <name>``)
        manifest = manifest_module.load(_describing_manifest(Path(temp) / name, kept, name=name, version=version,
                                                             title=title, description=description, seed=seed,
                                                             configs=configs))
        built = report.assemble(manifest, kept, kept, empty_exclusions(), out_dir, unverified=[], workers=workers,
                                card_inputs=card.card_inputs(manifest))
        if not configs:
            # The one case assemble cannot write: a release from before configurations (shards directly in
            # data/, no `configs` in its report), which readers must still read and verify. Today's build
            # writes even a one-configuration release in data/<name>/, so assemble gave `configs` and
            # `default_config` for that layout (its per-configuration shard list is empty here, and the
            # fingerprint over it wrong); they are dropped, and the fingerprint taken over every shard, as
            # an old build stated it. Every other key is assemble's.
            del built["configs"], built["default_config"]
            built["fingerprint"] = release_format.fingerprint(out_dir, workers=workers, report=built)
        built["card"]["extra_sections"].append(evidence.card_extra_section(built, manifest.folder / evidence.CERTIFICATES_FOLDER))
    write_generated(out_dir, built)  # README.md, croissant.json (and unpinned-files.csv), as the build writes them
    release_format.write_report(out_dir, built)
    return built


def _describing_manifest(folder: Path, kept, *, name: str, version: str, title: str, description: str, seed: str,
                         configs: bool) -> Path:
    """A manifest folder whose one source lists exactly ``kept``'s rows and whose expected counts are
    theirs. The ``dicom`` kind's file list (path,sha256,label,patient_id) is the built-in one that fits
    any listed file; nothing is downloaded or decoded through it. The split is the factory's own, as a
    source's own split is (an ``upstream`` rule)."""
    folder.mkdir(parents=True)
    kept[["source_path", "sha256", "label", "patient_id"]].rename(columns={"source_path": "path"}).to_csv(
        folder / "files.csv", index=False)
    sources = {s: f"- {{name: {s}, kind: dicom, files: files.csv, license: CC0-1.0}}" for s in sorted(set(kept["source"]))}
    counts = {"expected_counts": json.dumps(count_table(kept))}
    if configs:
        unflagged = kept[kept["flags"].map(len).eq(0)]
        flags = sorted({f for row in kept["flags"] for f in row})
        counts = {"configs": f"paper:\n  default: true\n  flag_instead_of_excluding: {json.dumps(flags)}\n"
                             f"  expected_counts: {json.dumps(count_table(kept))}\n"
                             f"curated:\n  leave_out_flagged: true\n  expected_counts: {json.dumps(count_table(unflagged))}\n"}
    rules = ", ".join(f"{{source: {s}, method: upstream, map: {{train: train, test: test}}}}" for s in sources)
    (folder / manifest_module.MANIFEST_FILE).write_text(manifest_text(
        name=name, version=version, title=title, description=description, card_license="cc0-1.0",
        sources="\n".join(sources.values()), filters="{modalities: [X-ray], frontal_views: [PA], lateral_views: [L]}",
        convert="{quality: 95}", split=f"{{seed: {seed}, rules: [{rules}]}}", **counts,
    ), encoding="utf-8")
    return folder


def _made(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _record(split: str, label: int, name: str, index: int, jpeg: bytes, source: str = "synthetic") -> dict[str, str]:
    return {
        "source": source,
        "source_path": f"{split}/{name}/{index:05d}.png",
        "patient_id": f"synthetic:{split}-{label}-{index:05d}",
        "view": "PA",
        "finding": name,
        "label": name,
        "license": "CC0-1.0",
        "sha256": hashlib.sha256(jpeg).hexdigest(),
    }


# --- tampering, for tests that a modified release is refused ------------------------------------


def rewrite_first_shard(out_dir: Path, split: str, change: Callable[[list[dict]], None]) -> Path:
    """Apply ``change`` to the rows (dicts) of the first ``split`` shard and write it back in place."""
    path = release_format.shard_paths(Path(out_dir) / "data", split)[0]
    table = pq.read_table(path)
    rows = table.to_pylist()
    change(rows)
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path, compression="none")
    return path


def tamper_label(out_dir: Path, split: str = "test", row: int = 0) -> Path:
    """Move one row to the next class, leaving build_report.json as it was."""
    def change(rows: list[dict]) -> None:
        rows[row]["label"] = (rows[row]["label"] + 1) % len(CLASS_NAMES)
    return rewrite_first_shard(out_dir, split, change)


def tamper_image(out_dir: Path, split: str = "test", row: int = 0) -> Path:
    """Replace one row's image with a different one of the same size."""
    def change(rows: list[dict]) -> None:
        with Image.open(io.BytesIO(rows[row]["image"]["bytes"])) as image:
            inverted = 255 - np.asarray(image.convert("L"))
        rows[row]["image"] = {"bytes": jpeg_bytes(inverted), "path": rows[row]["image"]["path"]}
    return rewrite_first_shard(out_dir, split, change)
