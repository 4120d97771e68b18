"""Plan: resolve a release from metadata, locks and decisions alone (no image downloads).

manifest -> sources (``sources/``) -> metadata filters (``filters``) -> quota and split (``split``).
``resolve`` runs the first two, ``finish_selection`` the last (the build runs it again after
conversion), ``plan`` both. ``summary_lines`` and ``plan_document`` are what ``cxr-dataset plan``
prints and writes with ``--json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import CLASS_NAMES, filters, release, split
from .counts import check_counts, count_table, counts_yaml, exclusion_summary, flag_summary, source_label_table
from .download import Downloader
from .errors import CxrDatasetError
from .manifest import Manifest
from .options import Options
from .records import seeded_hash, split_rank


@dataclass
class Resolution:
    """What a manifest resolves to: every candidate, the kept rows and the exclusions so far."""

    manifest: Manifest
    candidates: pd.DataFrame
    kept: pd.DataFrame
    excluded: pd.DataFrame
    decisions: filters.Decisions

    def counts(self, config: str | None = None) -> dict[str, dict[str, int]]:
        """{split: {class: n}} of one configuration (default: the default configuration)."""
        return count_table(self.rows(config))

    def rows(self, config: str | None = None) -> pd.DataFrame:
        """The kept rows that belong to ``config`` (default: the default configuration: all of them)."""
        chosen = self.manifest.config(config) if config else self.manifest.default_config
        return self.kept[filters.in_config(self.kept, chosen)]


def resolve(manifest: Manifest, options: Options, downloader: Downloader | None = None) -> Resolution:
    """Sources + every metadata-level filter (what needs no image bytes)."""
    inputs = options.inputs(downloader or options.downloader())
    candidates = pd.concat([source.records(manifest, inputs) for source in manifest.sources], ignore_index=True)
    decisions = filters.load_decisions(manifest, candidates)
    kept, excluded = filters.metadata_filters(manifest, candidates, decisions)
    return Resolution(manifest, candidates, kept, excluded, decisions)


def finish_selection(resolution: Resolution, *, use_assignment: bool = True) -> Resolution:
    """Quota and split: the last steps, run by plan on metadata and by build after conversion.

    The release's recorded split (``split.assignment``) places every record it names;
    ``use_assignment=False`` applies the rules alone (``cxr-dataset lock splits`` writes the file so).
    """
    manifest = resolution.manifest
    kept, dropped = filters.apply_quota(manifest, resolution.kept)
    excluded = pd.concat([resolution.excluded, dropped], ignore_index=True) if len(dropped) else resolution.excluded
    # Duplicate links are the duplicate_of column: flagged copies among the kept rows, dropped copies among the excluded.
    links = split.duplicate_patient_links(pd.concat([kept, excluded], ignore_index=True), resolution.candidates)
    links += resolution.decisions.patient_links()
    rules = manifest.split
    assignment = recorded_assignment(manifest) if use_assignment else None
    kept = split.assign_splits(kept, list(rules.rules), rules.seed, links, assignment)
    return Resolution(manifest, resolution.candidates, publish_order(kept, rules.seed), excluded, resolution.decisions)


def publish_order(kept: pd.DataFrame, seed: str) -> pd.DataFrame:
    """Train before test; inside a split a seeded shuffle (sha256 of seed and record id), not grouped
    by class or source, and independent of download or file-system order."""
    order = kept["record_id"].map(lambda rid: seeded_hash(seed, "row-order", rid))
    side = kept["split"].map(split_rank)
    return kept.assign(_side=side, _order=order).sort_values(["_side", "_order"]).drop(columns=["_side", "_order"]).reset_index(drop=True)


def plan(manifest: Manifest, options: Options, *, use_assignment: bool = True) -> Resolution:
    """Resolve the release from metadata, locks and decisions alone: no image is downloaded."""
    return finish_selection(resolve(manifest, options), use_assignment=use_assignment)


def recorded_assignment(manifest: Manifest) -> pd.DataFrame | None:
    """The release's split file (``split.read_assignment``), or None when the manifest records none."""
    relative = manifest.split.assignment
    return split.read_assignment(manifest.file(relative)) if relative else None


def assignment_table(resolution: Resolution) -> pd.DataFrame:
    """The split file this selection gives: one row per kept record with its configurations."""
    kept = resolution.kept
    member = {config.name: filters.in_config(kept, config) for config in resolution.manifest.configs}
    return split.assignment_of(kept, member)


def assignment_from_build(out_dir) -> pd.DataFrame:
    """The split file of a built release folder (rows, sides, patient groups and configurations as
    written): for releases whose build finds what a plan cannot (pixel duplicates)."""
    out_dir = Path(out_dir)
    report = release.read_report(out_dir)
    rows = release.read_row_table(out_dir)
    if "patient_group" not in rows.columns or rows["patient_group"].isna().any() or rows["patient_group"].eq("").any():
        raise CxrDatasetError(f"{out_dir}: its shards carry no patient_group column (built by an older package); rebuild it first")
    member = {}
    for name in release.available_configs(report):
        config = release.resolve_config(out_dir, report, name)
        member[name] = rows["shard"].isin(config.shards) if config.shards is not None else pd.Series(True, index=rows.index)
    return split.assignment_of(rows, member)


def absent_from_release(resolution: Resolution) -> dict[str, dict[str, dict[str, int]]]:
    """{configuration: {split: {class: n}}} of the images the release's split file records that this
    selection lacks (a variant that leaves files out); {} without a split file."""
    assignment = recorded_assignment(resolution.manifest)
    return {} if assignment is None else split.absent_counts(assignment, resolution.kept)


def absent_lines(manifest: Manifest, absent: dict[str, dict[str, int]]) -> list[str]:
    """How many of the recorded split's images a configuration lacks, per split and class."""
    if not absent:
        return []
    total = sum(n for per_class in absent.values() for n in per_class.values())
    parts = "; ".join(f"{split_name} " + ", ".join(f"{label} {n:,}" for label, n in per_class.items())
                      for split_name, per_class in absent.items())
    return [f"  absent: {total:,} image(s) of the recorded split ({manifest.split.assignment}) are not in this selection: "
            f"{parts}; every other image keeps its recorded side"]


def summary_lines(resolution: Resolution) -> tuple[list[str], list[str]]:
    """What ``cxr-dataset plan`` prints: per configuration the counts against the expected ones, by
    source and flag, then the exclusions by reason; and every count difference (empty when exact)."""
    manifest, kept, excluded = resolution.manifest, resolution.kept, resolution.excluded
    lines = [f"{manifest.name} {manifest.version}: {len(resolution.candidates):,} candidate files, {len(kept):,} kept"]
    all_problems = []
    absent = absent_from_release(resolution)
    for config in manifest.configs:
        rows = resolution.rows(config.name)
        flagged = int(rows["flags"].map(bool).sum())
        lines.append(f"configuration {config.name}{' (default)' if config.default else ''}: {len(rows):,} images"
                     + (f", {flagged:,} flagged" if flagged else ""))
        lines.append(f"  {'':5s} " + "  ".join(f"{label:>10s}" for label in CLASS_NAMES) + f"  {'total':>7s}")
        actual = count_table(rows)
        for split_name in sorted(config.expected_counts.keys() | actual.keys(), key=lambda s: (split_rank(s), s)):
            got = actual.get(split_name, {})
            want = config.expected_counts.get(split_name, {})
            lines.append(f"  {split_name:5s} " + "  ".join(f"{got.get(label, 0):>10,}" for label in CLASS_NAMES)
                         + f"  {sum(got.values()):>7,}   expected " + " / ".join(f"{want.get(label, 0):,}" for label in CLASS_NAMES))
        lines.append("  by source:")
        for split_name, per_source in sorted(source_label_table(rows).items(), key=lambda item: split_rank(item[0])):
            for source, per_label in sorted(per_source.items()):
                lines.append(f"    {split_name:5s} {source:10s} " + "  ".join(f"{label} {n:,}" for label, n in per_label.items()))
        if flagged:
            lines.append("  flags: " + ", ".join(f"{flag} {n:,}" for flag, n in flag_summary(rows).items()))
        lines += absent_lines(manifest, absent.get(config.name, {}))
        problems = check_counts(manifest, kept, config=config.name)
        lines.append("  counts match the manifest" if not problems else "  COUNTS DIFFER: " + "; ".join(problems))
        if problems:
            where = f"configs.{config.name}.expected_counts" if manifest.has_configs else "expected_counts"
            lines.append(f"  if the difference is intended (a new decision), record these counts in {manifest.path}, {where}:\n"
                         + counts_yaml(actual))
        all_problems += problems
    lines.append("excluded by reason (every configuration):")
    for reason, n in exclusion_summary(excluded).items():
        lines.append(f"    {reason:24s} {n:,}")
    crossing = split.upstream_groups_in_both(kept)
    pairs = split.duplicate_pairs_across_splits(kept)
    if crossing or pairs:
        lines.append(f"kept as the source's own split puts them (not moved): {len(crossing)} patient group(s) and "
                     f"{len(pairs)} duplicate pair(s) on both sides, e.g. {(crossing or [p['record_id'] for p in pairs])[:3]}")
    return lines, all_problems


def plan_document(resolution: Resolution) -> dict:
    """``plan --json``: each configuration's expected and actual counts, and one row per candidate."""
    manifest, kept, excluded = resolution.manifest, resolution.kept, resolution.excluded
    absent = absent_from_release(resolution)
    configs = {
        c.name: {"default": c.default, "expected": c.expected_counts, "actual": count_table(resolution.rows(c.name)),
                 "matches": not check_counts(manifest, kept, config=c.name), "absent_from_split_file": absent.get(c.name, {})}
        for c in manifest.configs
    }
    subsets = [c for c in manifest.configs if not c.default]
    member = {c.name: dict(zip(kept["record_id"], filters.in_config(kept, c))) for c in subsets}
    files = [
        {"source": r.source, "source_path": r.source_path, "label": r.label, "patient_id": r.patient_id, "split": r.split,
         "patient_group": r.patient_group, "excluded": "", "flags": list(r.flags), "duplicate_of": r.duplicate_of,
         **{f"in_{c.name}": bool(member[c.name][r.record_id]) for c in subsets}}
        for r in kept.itertuples()
    ] + [
        {"source": r.source, "source_path": r.source_path, "label": r.label, "patient_id": r.patient_id, "split": "",
         "excluded": r.reason, "flags": list(r.flags) if isinstance(r.flags, tuple) else [], "duplicate_of": r.duplicate_of,
         **{f"in_{c.name}": False for c in subsets}, "detail": r.detail}
        for r in excluded.itertuples()
    ]
    return {"dataset": manifest.name, "version": manifest.version, "configs": configs, "files": files}
