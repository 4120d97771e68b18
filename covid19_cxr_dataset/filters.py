"""Filters stage: every way a record can leave the release, each with its reason code.

Each filter is a pure function ``table -> (kept, excluded)``; excluded rows carry ``stage``,
``reason`` and ``detail`` (records.exclude). ``metadata_filters`` runs every filter that needs no
image bytes (what ``plan`` can resolve); ``exclude_exact_duplicates`` on ``sha256`` and
``apply_quota`` run in the build after download and conversion.

The manifest's reviewed decisions (views, annotations, duplicates, exclusions) are CSV files
(see docs/ARCHITECTURE.md); ``load_decisions`` checks that each names a real candidate.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import pandas as pd

from . import safe_load
from .errors import ManifestError
from .manifest import Manifest
from .records import REASONS, empty_exclusions, exclude

STAGE = "filters"
DECISION_COLUMNS = {
    "views": ["source", "source_path", "view", "note"],
    "annotations": ["source", "source_path", "decision", "reason", "note"],
    "duplicates": ["source", "source_path", "duplicate_of_source", "duplicate_of_path", "method", "distance", "note"],
    "exclusions": ["source", "source_path", "reason", "note"],
    "patients": ["patient_id", "same_as", "note"],
}


@dataclass
class Decisions:
    """The manifest's reviewed per-file decisions, one DataFrame per kind (empty when absent)."""

    views: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=DECISION_COLUMNS["views"]))
    annotations: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=DECISION_COLUMNS["annotations"]))
    duplicates: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=DECISION_COLUMNS["duplicates"]))
    exclusions: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=DECISION_COLUMNS["exclusions"]))
    patients: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=DECISION_COLUMNS["patients"]))

    def patient_links(self) -> list[tuple[str, str]]:
        """Reviewed 'same person' pairs of patient ids (patients.csv)."""
        return list(zip(self.patients["patient_id"], self.patients["same_as"]))


def load_decisions(manifest: Manifest, candidates: pd.DataFrame | None = None) -> Decisions:
    """Read the decision files the manifest names; with ``candidates``, check every row names one."""
    decisions = Decisions()
    known = set(candidates["record_id"]) if candidates is not None else None
    for kind, relative in manifest.data["filters"].get("decisions", {}).items():
        path = manifest.file(relative)
        table = safe_load.csv_table(path, comment=None)
        missing = set(DECISION_COLUMNS[kind]) - set(table.columns)
        if missing:
            raise ManifestError(f"{path}: missing columns {sorted(missing)}; expected {','.join(DECISION_COLUMNS[kind])}")
        if kind == "patients":
            _check_patient_links(path, table, candidates)
            decisions.patients = table
            continue
        table["record_id"] = table["source"] + ":" + table["source_path"]
        repeated = table[table["record_id"].duplicated()]
        if len(repeated):
            raise ManifestError(f"{path}: {repeated.iloc[0]['record_id']} is decided twice (line {repeated.index[0] + 2}); keep one row")
        if kind in ("annotations", "exclusions"):
            reasons = table.loc[table.get("decision", pd.Series("exclude", index=table.index)).ne("keep"), "reason"]
            unknown = sorted(set(reasons) - set(REASONS))
            if unknown:
                raise ManifestError(f"{path}: unknown reason codes {unknown}; use one of {sorted(REASONS)}")
        if kind == "annotations":
            bad = sorted(set(table["decision"]) - {"keep", "exclude"})
            if bad:
                raise ManifestError(f"{path}: decision must be 'keep' or 'exclude', found {bad}")
        if known is not None:
            names = set(table["record_id"])
            if kind == "duplicates":
                names |= set(table["duplicate_of_source"] + ":" + table["duplicate_of_path"])
            stray = sorted(names - known)
            if stray:
                raise ManifestError(
                    f"{path}: names {len(stray)} file(s) that are not candidates of this manifest, e.g. {stray[0]!r}; "
                    "fix the path or remove the row"
                )
        setattr(decisions, kind, table)
    return decisions


def _check_patient_links(path, table: pd.DataFrame, candidates: pd.DataFrame | None) -> None:
    if candidates is None:
        return
    known = set(candidates["patient_id"])
    stray = sorted((set(table["patient_id"]) | set(table["same_as"])) - known)
    if stray:
        raise ManifestError(f"{path}: names patient id(s) no candidate has, e.g. {stray[0]!r}; ids look like 'cohen:196' or 'figure1:COVID-00001'")


def exclude_unlabelled(table: pd.DataFrame, inconclusive: dict[str, set[str]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Drop rows whose finding maps to no class; a source's inconclusive findings get their own code."""
    is_inconclusive = table.apply(lambda r: r["finding"] in inconclusive.get(r["source"], set()), axis=1).astype(bool)
    kept, dropped_inconclusive = exclude(
        table, is_inconclusive & table["label"].eq(""), stage=STAGE, reason="label-inconclusive",
        detail="finding " + table["finding"].map(repr),
    )
    kept, dropped = exclude(kept, kept["label"].eq(""), stage=STAGE, reason="label-unmapped", detail="finding " + kept["finding"].map(repr))
    return kept, pd.concat([dropped_inconclusive, dropped], ignore_index=True)


def exclude_non_xray(table: pd.DataFrame, modalities: list[str], paths_under: list[str] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Drop CT (slices and volumes) and anything else that is not a listed modality."""
    under = table["source_path"].map(lambda p: any(p.startswith(prefix) for prefix in paths_under))
    mask = ~table["modality"].isin(modalities) | under
    detail = "modality " + table["modality"].map(repr) + under.map(lambda u: ", stored as a volume" if u else "")
    return exclude(table, mask, stage=STAGE, reason="modality-not-xray", detail=detail)


def apply_view_decisions(table: pd.DataFrame, views: pd.DataFrame) -> pd.DataFrame:
    """Fill in the reviewed view of rows whose source leaves it empty (or states it wrongly)."""
    if views.empty:
        return table
    reviewed = dict(zip(views["record_id"], views["view"]))
    table = table.copy()
    table["view"] = [reviewed.get(rid, view) for rid, view in zip(table["record_id"], table["view"])]
    return table


def exclude_non_frontal(table: pd.DataFrame, frontal: list[str], lateral: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    kept, laterals = exclude(table, table["view"].isin(lateral), stage=STAGE, reason="view-lateral", detail="view " + table["view"].map(repr))
    kept, others = exclude(
        kept, ~kept["view"].isin(frontal), stage=STAGE, reason="view-not-frontal",
        detail=kept["view"].map(lambda v: f"view {v!r}" if v else "view not stated and not reviewed"),
    )
    return kept, pd.concat([laterals, others], ignore_index=True)


def exclude_decided(table: pd.DataFrame, decided: pd.DataFrame, kind: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Drop rows the manifest's reviewed list excludes, with the list's reason and note."""
    if decided.empty:
        return table, empty_exclusions()
    chosen = decided[decided.get("decision", pd.Series("exclude", index=decided.index)).eq("exclude")]
    reasons = dict(zip(chosen["record_id"], chosen["reason"]))
    notes = dict(zip(chosen["record_id"], chosen["note"]))
    mask = table["record_id"].isin(reasons)
    return exclude(
        table, mask, stage=STAGE, reason=table["record_id"].map(reasons).fillna(""),
        detail=table["record_id"].map(lambda rid: f"{kind}: {notes.get(rid, '')}"),
    )


def exclude_unpinned(table: pd.DataFrame, pinned_sources: set[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """GitHub rows whose file is not in the lock (metadata names a file the commit does not hold)."""
    mask = table["source"].isin(pinned_sources) & table["git_blob_sha1"].eq("")
    return exclude(table, mask, stage=STAGE, reason="not-in-upstream-files", detail="no git blob pinned for " + table["source_path"])


def exclude_exact_duplicates(table: pd.DataFrame, column: str, source_order: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep one row per identical ``column`` value (git blob id, or sha256 after download).

    The kept copy is the one from the source listed first in the manifest, then the smallest path,
    so the choice never depends on download order.
    """
    rank = table["source"].map({name: i for i, name in enumerate(source_order)})
    ordered = table.assign(_rank=rank).sort_values(["_rank", "source_path"])
    has_key = ordered[column].ne("")
    first = ordered[has_key].groupby(column)["record_id"].transform("first")
    duplicate_of = pd.Series("", index=ordered.index)
    duplicate_of[has_key] = first
    mask = has_key & duplicate_of.ne(ordered["record_id"])
    kept, dropped = exclude(
        ordered.drop(columns="_rank"), mask, stage=STAGE, reason="duplicate-exact",
        detail=f"same {column} as " + duplicate_of,
    )
    return kept.loc[table.index.intersection(kept.index)], dropped


def exclude_listed_duplicates(table: pd.DataFrame, duplicates: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    if duplicates.empty:
        return table, empty_exclusions()
    twin = dict(zip(duplicates["record_id"], duplicates["duplicate_of_source"] + ":" + duplicates["duplicate_of_path"]))
    method = dict(zip(duplicates["record_id"], duplicates["method"]))
    mask = table["record_id"].isin(twin)
    reason = table["record_id"].map(lambda rid: "duplicate-exact" if method.get(rid) == "exact" else "duplicate-near")
    return exclude(table, mask, stage=STAGE, reason=reason, detail=table["record_id"].map(lambda rid: f"same radiograph as {twin.get(rid, '')}"))


def metadata_filters(manifest: Manifest, table: pd.DataFrame, decisions: Decisions) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every filter that needs only metadata, locks and decisions, in the order the report lists them."""
    spec = manifest.data["filters"]
    inconclusive = {s["name"]: set(s.get("inconclusive_findings", [])) for s in manifest.sources}
    pinned = {s["name"] for s in manifest.sources if s["kind"] == "github"}
    source_order = [s["name"] for s in manifest.sources]
    excluded = []
    steps = [
        lambda t: exclude_unlabelled(t, inconclusive),
        lambda t: exclude_non_xray(t, spec["modalities"], spec.get("exclude_paths_under", [])),
        lambda t: exclude_non_frontal(apply_view_decisions(t, decisions.views), spec["frontal_views"], spec["lateral_views"]),
        lambda t: exclude_unpinned(t, pinned),
        lambda t: exclude_decided(t, decisions.annotations, "annotation review"),
        lambda t: exclude_decided(t, decisions.exclusions, "manual exclusion"),
        lambda t: exclude_listed_duplicates(t, decisions.duplicates),
    ]
    if spec.get("exact_duplicates", True):
        steps.append(lambda t: exclude_exact_duplicates(t, "git_blob_sha1", source_order))
    for step in steps:
        table, dropped = step(table)
        excluded.append(dropped)
    return table.reset_index(drop=True), _concat(excluded)


def apply_quota(manifest: Manifest, table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep at most ``keep`` rows of a class, in the manifest's documented order.

    ``order`` lists sort keys applied in turn: a column name (``-column`` for descending),
    ``source:<a>,<b>,...`` (sources in that priority) or ``hash`` (sha256 of seed + record_id, a
    stable pseudo-random order).
    """
    quota = manifest.data["filters"].get("quota", {})
    seed = manifest.data["split"]["seed"]
    excluded = []
    for label, rule in quota.items():
        rows = table[table["label"] == label]
        if len(rows) <= rule["keep"]:
            continue
        keys = _order_keys(rows, rule["order"], seed)
        surplus = keys.sort_values(list(keys.columns), kind="stable").index[rule["keep"]:]
        table, dropped = exclude(
            table, table.index.isin(surplus), stage=STAGE, reason="over-quota",
            detail=f"{label}: beyond the {rule['keep']} kept by order {rule['order']}",
        )
        excluded.append(dropped)
    return table, _concat(excluded)


def _order_keys(rows: pd.DataFrame, order: list[str], seed: str) -> pd.DataFrame:
    keys = []
    for key in order:
        if key == "hash":
            keys.append(rows["record_id"].map(lambda rid: hashlib.sha256(f"{seed}\0{rid}".encode()).hexdigest()))
        elif key.startswith("source:"):
            priority = {name: i for i, name in enumerate(key.split(":", 1)[1].split(","))}
            keys.append(rows["source"].map(priority).fillna(len(priority)))
        elif key.lstrip("-") in rows.columns:
            column = rows[key.lstrip("-")]
            keys.append(column if not key.startswith("-") else _descending(column))
        else:
            raise ManifestError(f"quota order key {key!r} is not a column, 'hash' or 'source:a,b'")
    return pd.DataFrame({f"k{i}": k for i, k in enumerate(keys)}, index=rows.index)


def _descending(column: pd.Series) -> pd.Series:
    if pd.api.types.is_numeric_dtype(column):
        return -column
    return column.rank(method="dense", ascending=False)


def _concat(parts: list[pd.DataFrame]) -> pd.DataFrame:
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else empty_exclusions()
