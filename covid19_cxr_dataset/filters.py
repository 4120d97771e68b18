"""Filters stage: every way a record can leave the release, each with its reason code.

Each filter is a pure function ``table -> (kept, excluded)``; excluded rows carry ``stage``,
``reason`` and ``detail`` (records.exclude). ``metadata_filters`` runs every filter that needs no
image bytes (what ``plan`` can resolve); ``exact_duplicates_after_download`` (on ``sha256``) and
``apply_quota`` run in the build after download.

Flags instead of exclusions: the default configuration's ``flag_instead_of_excluding`` names reason
codes whose rows stay in the release with the code in their ``flags`` column (``keep_as_flags``);
a subset configuration (``leave_out_flagged``) is the rows without flags (``in_config``). A filter
that finds a duplicate writes the kept copy's record id into ``duplicate_of``: the split joins the
two copies' patients through that column, never through message text.

The manifest's reviewed decisions (views, annotations, duplicates, exclusions) are CSV files
(see docs/ARCHITECTURE.md); ``load_decisions`` checks that each names a real candidate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from . import safe_load
from .errors import ManifestError
from .manifest import Manifest
from .manifest import Config
from .records import REASONS, add_flag, empty_exclusions, exclude, seeded_hash

STAGE = "filters"
DECISION_COLUMNS = {
    "views": ["source", "source_path", "view", "note"],
    "annotations": ["source", "source_path", "decision", "reason", "note"],
    "duplicates": ["source", "source_path", "duplicate_of_source", "duplicate_of_path", "method", "distance", "note"],
    "exclusions": ["source", "source_path", "reason", "note"],
    "patients": ["patient_id", "same_as", "note"],
    "unreviewed": ["source", "source_path", "note"],
    # A variant's documented deviation: files whose bytes differ from the release's sha256 pin, with the hash accepted instead.
    "accepted_hashes": ["source", "source_path", "pinned_sha256", "accepted_sha256", "note"],
}


@dataclass
class Decisions:
    """The manifest's reviewed per-file decisions, one DataFrame per kind (empty when absent)."""

    views: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=DECISION_COLUMNS["views"]))
    annotations: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=DECISION_COLUMNS["annotations"]))
    duplicates: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=DECISION_COLUMNS["duplicates"]))
    exclusions: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=DECISION_COLUMNS["exclusions"]))
    patients: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=DECISION_COLUMNS["patients"]))
    unreviewed: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=DECISION_COLUMNS["unreviewed"] + ["record_id"]))
    accepted_hashes: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=DECISION_COLUMNS["accepted_hashes"] + ["record_id"]))

    def patient_links(self) -> list[tuple[str, str]]:
        """Reviewed 'same person' pairs of patient ids (patients.csv)."""
        return list(zip(self.patients["patient_id"], self.patients["same_as"]))


def load_decisions(manifest: Manifest, candidates: pd.DataFrame | None = None) -> Decisions:
    """Read the decision files the manifest names; with ``candidates``, check every row names one."""
    decisions = Decisions()
    known = set(candidates["record_id"]) if candidates is not None else None
    for kind, relative in manifest.filters.decisions.items():
        path = manifest.file(relative)
        table = safe_load.csv_table(path, comment=None)
        missing = set(DECISION_COLUMNS[kind]) - set(table.columns)
        if missing:
            raise ManifestError(f"{path}: missing columns {sorted(missing)}; expected {','.join(DECISION_COLUMNS[kind])}")
        if kind == "patients":
            _check_patient_links(path, table, candidates)
            decisions.patients = table
            continue
        table = _archive_paths(manifest, table)
        table["record_id"] = table["source"] + ":" + table["source_path"]
        repeated = table[table["record_id"].duplicated()]
        if len(repeated):
            raise ManifestError(f"{path}: {repeated.iloc[0]['record_id']} is decided twice (line {repeated.index[0] + 2}); keep one row")
        if kind in ("annotations", "exclusions"):
            reasons = table.loc[table.get("decision", pd.Series("exclude", index=table.index)).ne("keep"), "reason"]
            unknown = sorted(set(reasons) - set(REASONS))
            if unknown:
                raise ManifestError(f"{path}: unknown reason codes {unknown}; use one of {sorted(REASONS)}")
        if kind == "accepted_hashes":
            malformed = table[~(table["pinned_sha256"].str.fullmatch("[0-9a-f]{64}") & table["accepted_sha256"].str.fullmatch("[0-9a-f]{64}"))]
            if len(malformed):
                raise ManifestError(f"{path}: line {malformed.index[0] + 2}: pinned_sha256 and accepted_sha256 must be 64 lowercase hex digits")
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


def _archive_paths(manifest: Manifest, table: pd.DataFrame) -> pd.DataFrame:
    """Kaggle rows may name a file by its path inside the archive root (``train/NORMAL/x.jpeg``) or
    with the root (``chest_xray/train/NORMAL/x.jpeg``, the record's ``source_path``): one form inside."""
    by_name = {s.name: s for s in manifest.sources}
    table = table.copy()
    for column_source, column_path in (("source", "source_path"), ("duplicate_of_source", "duplicate_of_path")):
        if column_source not in table.columns:
            continue
        table[column_path] = pd.Series([by_name[name].decision_path(path) if name in by_name else path
                                        for name, path in zip(table[column_source], table[column_path])],
                                       index=table.index, dtype=table[column_path].dtype)
    return table


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
    return kept, pd.concat([dropped_inconclusive, dropped])


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
    return kept, pd.concat([laterals, others])


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

    The kept copy is an unflagged one where there is one, then the one from the source listed
    first in the manifest, then the smallest path, so the choice never depends on download order.
    The others get ``duplicate_of`` = the kept copy's record id (unless an earlier filter set it).
    """
    rank = table["source"].map({name: i for i, name in enumerate(source_order)})
    flagged = table["flags"].map(bool).astype(int)
    ordered = table.assign(_flagged=flagged, _rank=rank).sort_values(["_flagged", "_rank", "source_path"])
    has_key = ordered[column].ne("")
    first = ordered[has_key].groupby(column)["record_id"].transform("first")
    kept_copy = pd.Series("", index=ordered.index)
    kept_copy[has_key] = first
    mask = has_key & kept_copy.ne(ordered["record_id"])
    ordered = ordered.drop(columns=["_flagged", "_rank"])
    ordered["duplicate_of"] = ordered["duplicate_of"].where(~mask | ordered["duplicate_of"].ne(""), kept_copy)
    kept, dropped = exclude(ordered, mask, stage=STAGE, reason="duplicate-exact", detail=f"same {column} as " + kept_copy)
    return kept.loc[table.index.intersection(kept.index)], dropped


def exclude_listed_duplicates(table: pd.DataFrame, duplicates: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Drop (or flag) the files duplicates.csv names as copies; ``duplicate_of`` names the kept copy."""
    if duplicates.empty:
        return table, empty_exclusions()
    twin = dict(zip(duplicates["record_id"], duplicates["duplicate_of_source"] + ":" + duplicates["duplicate_of_path"]))
    method = dict(zip(duplicates["record_id"], duplicates["method"]))
    mask = table["record_id"].isin(twin)
    table = table.copy()
    table.loc[mask, "duplicate_of"] = table.loc[mask, "record_id"].map(twin)
    reason = table["record_id"].map(lambda rid: "duplicate-exact" if method.get(rid) == "exact" else "duplicate-near")
    return exclude(table, mask, stage=STAGE, reason=reason, detail=table["record_id"].map(lambda rid: f"same radiograph as {twin.get(rid, '')}"))


def flag_unreviewed(table: pd.DataFrame, unreviewed: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Files unreviewed.csv names (not obtained for review): ``not-reviewed``, a flag in a configuration that says so."""
    if unreviewed.empty:
        return table, empty_exclusions()
    notes = dict(zip(unreviewed["record_id"], unreviewed["note"]))
    return exclude(table, table["record_id"].isin(notes), stage=STAGE, reason="not-reviewed",
                   detail=table["record_id"].map(lambda rid: f"unreviewed: {notes.get(rid, '')}"))


def keep_as_flags(kept: pd.DataFrame, dropped: pd.DataFrame, flag: frozenset[str] | set[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Move the ``dropped`` rows whose reason is in ``flag`` back into ``kept``, with the reason as a flag.

    Rows keep their original order (``kept`` and ``dropped`` are split from one table by index).
    """
    back = dropped["reason"].isin(flag) if len(dropped) else pd.Series(False, index=dropped.index)
    if not back.any():
        return kept, dropped
    returned = dropped[back].copy()
    for reason in sorted(set(returned["reason"])):
        returned = add_flag(returned, returned["reason"].eq(reason), reason)
    returned = returned.drop(columns=["stage", "reason", "detail"])
    combined = pd.concat([kept, returned]).sort_index(kind="stable")
    return combined, dropped[~back]


def in_config(table: pd.DataFrame, config: Config) -> pd.Series:
    """Which rows of the default configuration's selection belong to ``config``."""
    if not config.leave_out_flagged:
        return pd.Series(True, index=table.index)
    return table["flags"].map(len).eq(0)


def exact_duplicates_after_download(manifest: Manifest, table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Exact duplicates by the downloaded files' sha256 (any source, Kaggle included), if the manifest
    asks for them (``filters.exact_duplicates``); flagged or excluded as the default configuration says."""
    if not manifest.filters.exact_duplicates:
        return table, empty_exclusions()
    kept, dropped = exclude_exact_duplicates(table, "sha256", [s.name for s in manifest.sources])
    return keep_as_flags(kept, dropped, manifest.default_config.flag)


def exact_duplicates_after_conversion(manifest: Manifest, table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Exact duplicates by decoded pixels: rows whose converted images (``pixels_sha256``, the sha256
    of the deterministic normalized JPEG) are identical although their source files differ."""
    if not manifest.filters.exact_duplicates or "pixels_sha256" not in table.columns:
        return table, empty_exclusions()
    kept, dropped = exclude_exact_duplicates(table, "pixels_sha256", [s.name for s in manifest.sources])
    dropped = dropped.assign(detail=dropped["detail"].str.replace("same pixels_sha256 as", "same decoded pixels as", regex=False))
    return keep_as_flags(kept, dropped, manifest.default_config.flag)


def apply_accepted_hashes(table: pd.DataFrame, accepted: pd.DataFrame) -> pd.DataFrame:
    """A variant's accepted hashes (``decisions/accepted-hashes.csv``) replace the pins they name.

    Each row must name the pin it replaces (``pinned_sha256``): a decision written against other pins
    than the manifest's is refused, never applied to a file it was not made for.
    """
    if accepted.empty:
        return table
    table = table.copy()
    pins = dict(zip(table["record_id"], table["sha256_expected"]))
    for row in accepted.itertuples():
        if row.record_id not in pins:
            continue  # load_decisions names strays; a row for a file outside the candidates changes nothing
        if pins[row.record_id] != row.pinned_sha256:
            raise ManifestError(
                f"accepted hash for {row.record_id}: it replaces the pin {row.pinned_sha256}, but the manifest pins "
                f"{pins[row.record_id] or 'no sha256'}; regenerate the variant from the release (`cxr-dataset new-variant`)"
            )
    replaced = dict(zip(accepted["record_id"], accepted["accepted_sha256"]))
    table["sha256_expected"] = [replaced.get(rid, pin) for rid, pin in zip(table["record_id"], table["sha256_expected"])]
    return table


def metadata_filters(manifest: Manifest, table: pd.DataFrame, decisions: Decisions) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every filter that needs only metadata, locks and decisions, in the order the report lists them."""
    spec = manifest.filters
    inconclusive = {s.name: set(s.inconclusive_findings) for s in manifest.sources}
    pinned = {s.name for s in manifest.sources if s.pinned_individually}
    source_order = [s.name for s in manifest.sources]
    excluded = []
    steps = [
        lambda t: exclude_unlabelled(t, inconclusive),
        lambda t: exclude_non_xray(t, spec.modalities, spec.exclude_paths_under),
        lambda t: exclude_non_frontal(apply_view_decisions(t, decisions.views), spec.frontal_views, spec.lateral_views),
        lambda t: exclude_unpinned(t, pinned),
        lambda t: exclude_decided(t, decisions.annotations, "annotation review"),
        lambda t: exclude_decided(t, decisions.exclusions, "manual exclusion"),
        lambda t: exclude_listed_duplicates(t, decisions.duplicates),
        lambda t: flag_unreviewed(t, decisions.unreviewed),
    ]
    if spec.exact_duplicates:
        # By pinned id before download: git blob ids, and the sha256 pins of the Kaggle files.
        steps.append(lambda t: exclude_exact_duplicates(t, "git_blob_sha1", source_order))
        steps.append(lambda t: exclude_exact_duplicates(t, "sha256_expected", source_order))
    flag = manifest.default_config.flag
    table = apply_accepted_hashes(table.reset_index(drop=True), decisions.accepted_hashes)
    for step in steps:
        kept, dropped = step(table)
        table, dropped = keep_as_flags(kept, dropped, flag)
        excluded.append(dropped)
    return table.reset_index(drop=True), _concat(excluded)


def apply_quota(manifest: Manifest, table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep at most ``keep`` rows of a class, in the manifest's documented order.

    ``order`` lists sort keys applied in turn: a column name (``-column`` for descending),
    ``source:<a>,<b>,...`` (sources in that priority) or ``hash`` (sha256 of seed + record_id, a
    stable pseudo-random order).
    """
    seed = manifest.split.seed
    excluded = []
    for label, rule in manifest.filters.quota.items():
        rows = table[table["label"] == label]
        if len(rows) <= rule.keep:
            continue
        keys = _order_keys(rows, rule.order, seed)
        surplus = keys.sort_values(list(keys.columns), kind="stable").index[rule.keep:]
        table, dropped = exclude(
            table, table.index.isin(surplus), stage=STAGE, reason="over-quota",
            detail=f"{label}: beyond the {rule.keep} kept by order {list(rule.order)}",
        )
        excluded.append(dropped)
    return table, _concat(excluded)


def _order_keys(rows: pd.DataFrame, order: list[str], seed: str) -> pd.DataFrame:
    keys = []
    for key in order:
        if key == "hash":
            keys.append(rows["record_id"].map(lambda rid: seeded_hash(seed, rid)))
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
