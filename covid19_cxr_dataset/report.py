"""Report stage: ``build_report.json`` and the fingerprint that proves what a release holds.

The fingerprint is computed over DECODED pixels and labels, so it identifies the content a model
sees, whatever the parquet layout. Each row contributes
``sha256(split, source, source_path, label name, width, height, 8-bit pixels)``; the fingerprint is
the sha256 of the sorted row digests, so it does not depend on shard boundaries or row order.
"""

from __future__ import annotations

import hashlib
import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import pandas as pd
from PIL import Image

from . import CLASS_NAMES, progress
from .download.hashes import file_sha256
from .publish import shard_paths
from .staging import REPORT_NAME  # defined where the output-folder checks read it; report.REPORT_NAME for everyone else

if TYPE_CHECKING:
    from .manifest import Manifest

REPORT_SCHEMA_VERSION = 1


def row_digest(split: str, source: str, source_path: str, label: str, jpeg: bytes) -> str:
    with Image.open(io.BytesIO(jpeg)) as image:
        image = image.convert("L") if image.mode != "L" else image
        width, height = image.size
        pixels = image.tobytes()
    header = f"{split}\0{source}\0{source_path}\0{label}\0{width}x{height}\0".encode()
    return hashlib.sha256(header + pixels).hexdigest()


def combine_digests(digests: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest()


def fingerprint(out_dir: Path, *, workers: int = 1, config: str | None = None) -> str:
    """Recompute a release's fingerprint from its shards: every shard folder (the default
    configuration), or the shards ``build_report.json`` lists for ``config``."""
    if config is None:
        return combine_digests(d for rows in shard_digests(out_dir, workers=workers).values() for d in rows)
    from .publish import config_shard_paths

    wanted = [p.relative_to(Path(out_dir)).as_posix() for p in config_shard_paths(out_dir, config)]
    return config_fingerprints(out_dir, {config: wanted}, workers=workers)[config]


def shard_digests(out_dir: Path, *, workers: int = 1, only: set[str] | None = None) -> dict[str, list[str]]:
    """{shard path relative to ``out_dir``: row digests}: decoded once, combined per configuration.
    ``only``: decode just these shards (paths relative to ``out_dir``)."""
    def digest(item: tuple[str, dict]) -> str:
        split, row = item
        return row_digest(split, row["source"], row["source_path"], CLASS_NAMES[row["label"]], row["image"]["bytes"])

    out_dir = Path(out_dir)
    found: dict[str, list[str]] = {}
    paths = [p for p in shard_paths(out_dir / "data") if only is None or p.relative_to(out_dir).as_posix() in only]
    total = sum(_num_rows(p) for p in paths)
    with ThreadPoolExecutor(max(1, workers)) as pool, \
            progress.bar(total, desc="fingerprint (decode every image: pixels and labels)", unit="img") as shown:
        for path in paths:  # Pillow releases the GIL while decoding
            rows = iter_rows_of(path)
            digests = []
            for row_digest_ in (pool.map(digest, rows, chunksize=16) if workers > 1 else map(digest, rows)):
                digests.append(row_digest_)
                shown.update()
            found[path.relative_to(out_dir).as_posix()] = digests
    return found


def _num_rows(path: Path) -> int:
    """Rows of a parquet shard, from its footer (0 when unreadable: the reader reports that)."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception:  # noqa: BLE001 - a broken shard is reported where it is read
        return 0


def config_fingerprints(out_dir: Path, shards: dict[str, list[str]], *, workers: int = 1) -> dict[str, str]:
    """{configuration: fingerprint} from {configuration: its shard paths}, decoding every image once."""
    digests = shard_digests(out_dir, workers=workers, only={shard for paths in shards.values() for shard in paths})
    return {name: combine_digests(d for shard in paths for d in digests.get(shard, [])) for name, paths in shards.items()}


def iter_rows_of(path: Path) -> Iterable[tuple[str, dict]]:
    """(split, row) of one shard, one row group at a time."""
    import pyarrow.parquet as pq

    split = Path(path).name.split("-", 1)[0]
    parquet = pq.ParquetFile(path)
    for group in range(parquet.num_row_groups):
        for row in parquet.read_row_group(group, columns=["image", "label", "source", "source_path"]).to_pylist():
            yield split, row


def shard_hashes(out_dir: Path) -> dict[str, dict[str, Any]]:
    out_dir = Path(out_dir)
    return {
        str(path.relative_to(out_dir)): {"sha256": file_sha256(path), "bytes": path.stat().st_size}
        for path in progress.track(shard_paths(out_dir / "data"), desc="hash shards (sha256 for the build report)", unit="shard")
    }


def count_table(kept: pd.DataFrame) -> dict[str, dict[str, int]]:
    """{split: {class: n}} with every class present (zeros included)."""
    counts: dict[str, dict[str, int]] = {}
    for split in sorted(set(kept["split"])):
        part = kept[kept["split"] == split]
        counts[split] = {name: int((part["label"] == name).sum()) for name in CLASS_NAMES}
    return counts


def source_label_table(kept: pd.DataFrame) -> dict[str, dict[str, dict[str, int]]]:
    """{split: {source: {class: n}}} — the source x label table the card shows."""
    table: dict[str, dict[str, dict[str, int]]] = {}
    for (split, source, label), group in kept.groupby(["split", "source", "label"]):
        table.setdefault(split, {}).setdefault(source, {})[label] = int(len(group))
    return table


def flagged_list(kept: pd.DataFrame) -> list[dict[str, Any]]:
    """Every kept row that carries a flag: source, source_path, label, split, flags, duplicate_of."""
    rows = kept[kept["flags"].map(bool)].sort_values(["source", "source_path"])
    return [
        {"source": r.source, "source_path": r.source_path, "label": r.label, "split": r.split,
         "flags": list(r.flags), "duplicate_of": r.duplicate_of}
        for r in rows.itertuples()
    ]


def exclusion_list(excluded: pd.DataFrame) -> list[dict[str, str]]:
    columns = ["source", "source_path", "label", "stage", "reason", "detail"]
    rows = excluded[columns].sort_values(["source", "source_path", "stage"]).to_dict("records")
    return [{k: str(v) for k, v in row.items()} for row in rows]


def flag_summary(rows: pd.DataFrame) -> dict[str, int]:
    """{flag: rows carrying it}, in flag order (a row with two flags counts under both)."""
    counts: dict[str, int] = {}
    for flags in rows["flags"]:
        for flag in flags:
            counts[flag] = counts.get(flag, 0) + 1
    return dict(sorted(counts.items()))


def exclusion_summary(excluded: pd.DataFrame) -> dict[str, int]:
    return {str(k): int(v) for k, v in excluded["reason"].value_counts().sort_index().items()}


def report_bytes(report: dict[str, Any]) -> bytes:
    """build_report.json's bytes for ``report`` (what ``write_report`` writes; ``publish`` plans with it)."""
    return (json.dumps(report, indent=2, sort_keys=False, ensure_ascii=False) + "\n").encode("utf-8")


def write_report(out_dir: Path, report: dict[str, Any]) -> Path:
    path = Path(out_dir) / REPORT_NAME
    path.write_bytes(report_bytes(report))
    return path


def read_report(out_dir: Path) -> dict[str, Any]:
    path = Path(out_dir) / REPORT_NAME
    return json.loads(path.read_text(encoding="utf-8"))


def cross_split_near_duplicates(kept: pd.DataFrame, *, workers: int = 1, threshold: float | None = None) -> list[dict]:
    """Near-duplicate pairs (near_duplicates.find_pairs) that straddle the split this package made.

    Scope: images whose split the manifest's own rules assign (``upstream_split`` empty), each
    test image against every other such image. A source that brings its own split (Kaggle) keeps
    it by design, so its internal pairs are not ours to move; and comparing thousands of
    look-alike paediatric films pairwise costs far more than a build (docs/curation-1.0.0.md).
    Runs over the converted JPEGs (``converted_path``).
    """
    from . import near_duplicates

    if "converted_path" not in kept.columns:
        return []
    ours = kept[kept["upstream_split"].eq("")]
    if ours["split"].nunique() < 2:
        return []
    paths = dict(zip(ours["record_id"], ours["converted_path"]))
    side = dict(zip(ours["record_id"], ours["split"]))
    with ThreadPoolExecutor(max(1, workers)) as pool:
        signatures = dict(zip(paths, progress.track(pool.map(near_duplicates.image_signature, paths.values()), total=len(paths),
                                                    desc="near duplicates across the split (image signatures)", unit="img")))
    kwargs = {} if threshold is None else {"threshold": threshold}
    test_keys = [key for key in paths if side[key] == "test"]
    pairs = near_duplicates.find_pairs(signatures, keys_a=test_keys, **kwargs)
    return [
        {"a": a, "b": b, "distance": float(d), "splits": [side[a], side[b]]}
        for a, b, d in pairs
        if side[a] != side[b]
    ]


# ---- the build report --------------------------------------------------------------------------

def check_counts(manifest: "Manifest", kept: pd.DataFrame, *, shortfall_only: bool = False, config: str | None = None) -> list[str]:
    """Differences between the kept rows and each configuration's expected counts (empty when exact).

    ``kept`` is the default configuration's selection; each configuration's rows are taken from it
    (``filters.in_config``). Messages name the configuration when the release has more than one.
    ``shortfall_only``: report only cells with too few images (later stages can still remove some).
    """
    from .filters import in_config

    configs = [manifest.config(config)] if config else manifest.configs
    named = len(manifest.configs) > 1
    problems = []
    for chosen in configs:
        actual = count_table(kept[in_config(kept, chosen)])
        for split_name, expected in chosen.expected_counts.items():
            for label, count in expected.items():
                got = actual.get(split_name, {}).get(label, 0)
                if got < count or (got > count and not shortfall_only):
                    problems.append((f"{chosen.name}: " if named else "") + f"{split_name}/{label}: expected {count}, got {got}")
    return problems


def assemble(
    manifest: "Manifest", candidates: pd.DataFrame, kept: pd.DataFrame, excluded: pd.DataFrame, out_dir: Path, *,
    unverified: list[str], workers: int = 1,
) -> dict[str, Any]:
    """The build report of the release whose shards are in ``out_dir`` (``kept`` as written, with
    ``converted_path``), per configuration and for the default one; its ``card`` holds what the card
    needs besides the shards (``card.card_inputs`` plus the shortcut evidence of a committed
    certificate whose fingerprint matches), so ``verify`` regenerates the same card later."""
    from . import __version__, convert, publish, split
    from .baseline.evidence import HEADING as EVIDENCE_HEADING, card_section
    from .card import card_inputs
    from .filters import in_config

    shards = shard_hashes(out_dir)
    config_shards = {
        c.name: [p for p in shards if p.split("/")[1] in publish.config_folders(c, manifest.configs)] for c in manifest.configs
    }
    fingerprints = config_fingerprints(out_dir, config_shards, workers=workers)
    configs = {}
    for config in manifest.configs:
        rows = kept[in_config(kept, config)]
        configs[config.name] = {
            "default": config.default,
            "description": config.description,
            "folders": publish.config_folders(config, manifest.configs),
            "counts": count_table(rows),
            "expected_counts": config.expected_counts,
            "counts_match_manifest": not check_counts(manifest, kept, config=config.name),
            "source_label_counts": source_label_table(rows),
            "flags": flag_summary(rows),
            "duplicate_pairs_across_splits": split.duplicate_pairs_across_splits(rows),
            "patients_in_both_splits": split.patients_in_both(rows),
            "upstream_groups_in_both_splits": split.upstream_groups_in_both(rows),
            "fingerprint": fingerprints[config.name],
            "shards": config_shards[config.name],
        }
    default = manifest.default_config.name
    report = {
        "report_schema": REPORT_SCHEMA_VERSION,
        "dataset": manifest.name,
        "version": manifest.version,
        "package_version": __version__,
        "manifest_sha256": manifest.sha256(),
        "sources": {s.name: s.pins() for s in manifest.sources},
        "convert": manifest.convert,
        "conversions": convert.conversion_summary(kept.get("converted_path", pd.Series(dtype=str))),
        "default_config": default,
        "counts": configs[default]["counts"],
        "expected_counts": configs[default]["expected_counts"],
        "source_label_counts": configs[default]["source_label_counts"],
        "candidates": int(len(candidates)),
        "exclusions_by_reason": exclusion_summary(excluded),
        "checks": {
            "counts_match_manifest": not check_counts(manifest, kept),
            "patients_in_both_splits": split.patients_in_both(kept),
            "upstream_groups_in_both_splits": split.upstream_groups_in_both(kept),
            "duplicate_pairs_across_splits": split.duplicate_pairs_across_splits(kept),
            "near_duplicate_pairs_across_splits": cross_split_near_duplicates(kept, workers=workers),
            "unverified_files": len(unverified),
        },
        "configs": configs,
        "unverified_files": unverified,
        "exclusions": exclusion_list(excluded),
        "flagged": flagged_list(kept),
        "card": card_inputs(manifest),
        "shards": shards,
        "fingerprint": fingerprints[default],
    }
    evidence = card_section(report).strip().removeprefix(EVIDENCE_HEADING).strip()
    report["card"]["extra_sections"].append({"title": EVIDENCE_HEADING.removeprefix("## "), "markdown": evidence})
    return report
