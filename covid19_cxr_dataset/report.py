"""Report stage: ``build_report.json`` assembled from the build's selection and the shards it wrote.

``assemble`` gives the report: counts per configuration (``counts``), exclusions, flagged rows,
checks, shard hashes and fingerprints (``release``), and the card's inputs, which the orchestrator
hands in (``card_inputs``: ``card.card_inputs``); the build then adds the shortcut evidence
(``evidence``) to them. ``summary`` is the few lines ``cxr-dataset build`` prints. Reading and
writing the file is ``release.read_report``/``release.write_report``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from . import __version__, convert_cache, progress, split
from .counts import check_counts, count_table, exclusion_summary, flag_summary, source_label_table
from .filters import in_config
from .release import ReleaseConfig, config_fingerprints, shard_hashes
from .shards import config_folders

if TYPE_CHECKING:
    from .manifest import Manifest

REPORT_SCHEMA_VERSION = 2
"""2: the fingerprints cover every column and each configuration's definition (``release.FINGERPRINT_DEFINITION``);
1: decoded pixels, label, split, source and source_path only (still read and checked as such)."""


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


def assemble(
    manifest: "Manifest", candidates: pd.DataFrame, kept: pd.DataFrame, excluded: pd.DataFrame, out_dir: Path, *,
    unverified: list[str], card_inputs: dict[str, Any], workers: int = 1,
    absent: dict[str, dict[str, dict[str, int]]] | None = None,
) -> dict[str, Any]:
    """The build report of the release whose shards are in ``out_dir`` (``kept`` as written, with
    ``converted_path``), per configuration and for the default one. Its ``card`` is ``card_inputs``
    (what the card needs besides the shards: ``card.card_inputs(manifest)``), stored so that
    ``verify`` regenerates the same card later. ``absent``: {configuration: {split: {class: n}}} of the
    images the release's split file records that this build lacks (``plan.absent_from_release``)."""
    shards = shard_hashes(out_dir)
    config_shards = {
        c.name: [p for p in shards if p.split("/")[1] in config_folders(c, manifest.configs)] for c in manifest.configs
    }
    fingerprints = config_fingerprints(
        out_dir, [ReleaseConfig(c.name, c.default, "", {}, tuple(config_shards[c.name])) for c in manifest.configs], workers=workers)
    configs = {}
    for config in manifest.configs:
        rows = kept[in_config(kept, config)]
        configs[config.name] = {
            "default": config.default,
            "description": config.description,
            "folders": config_folders(config, manifest.configs),
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
            "absent_from_split_file": (absent or {}).get(config.name, {}),
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
        "conversions": convert_cache.conversion_summary(kept.get("converted_path", pd.Series(dtype=str))),
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
        "card": card_inputs,
        "shards": shards,
        "fingerprint": fingerprints[default],
    }
    return report


def summary(result: dict) -> str:
    """What ``cxr-dataset build`` prints about the release it wrote: fingerprints, counts, exclusions, checks."""
    lines = [f"{result['dataset']} {result['version']}: fingerprint {result['fingerprint'][:16]}…"]
    configs = result.get("configs") or {"": {"counts": result["counts"], "fingerprint": result["fingerprint"], "default": True}}
    for name, config in configs.items():
        if len(configs) > 1:
            lines.append(f"  configuration {name}{' (default)' if config['default'] else ''}: fingerprint {config['fingerprint'][:16]}…")
        for split_name, per_class in config["counts"].items():
            lines.append(f"  {split_name:5s} " + "  ".join(f"{label} {n:,}" for label, n in per_class.items()) + f"  (total {sum(per_class.values()):,})")
    lines.append("  excluded: " + ", ".join(f"{reason} {n:,}" for reason, n in result["exclusions_by_reason"].items()))
    checks = result["checks"]
    lines.append(
        f"  checks: patients in both splits {len(checks['patients_in_both_splits'])}, near-duplicate pairs across splits "
        f"{len(checks['near_duplicate_pairs_across_splits'])}, unverified files {checks['unverified_files']}"
    )
    crossing = checks.get("duplicate_pairs_across_splits") or []
    if crossing:
        lines.append(f"  {len(crossing)} duplicate pair(s) sit on both sides of a source's own split (kept there; see the card)")
    return "\n".join(lines)
