"""Split stage: assign every kept record to ``train`` or ``test``, deterministically.

Rules come from the manifest and apply in order to the rows they select (by ``source`` and/or
``label``) that no earlier rule assigned:

* ``upstream`` — keep the source's own split through ``map`` (Kaggle train -> train, val/test -> test).
* ``patient-hash`` — order patient groups by sha256(seed, group) and move whole groups to test
  until exactly ``test_images`` images (or ``test_fraction`` of them) are there; a group that would
  overshoot is skipped, so the count is exact whenever single-image patients remain.

A patient group joins every patient id linked by a duplicate (the same radiograph under two
sources' ids is the same person: the ``duplicate_of`` column the filters write, on kept and on
excluded rows) and every reviewed link (patients.csv), so no person ends up on both sides where the
manifest's rules choose the side. A source that brings its own split (``upstream``) keeps it: a
group that source's split puts on both sides is reported (``upstream_groups_in_both``), not moved.
Nothing depends on file system or download order.

A release records its split as data: the manifest's ``split.assignment`` file (``splits.csv``,
columns ``ASSIGNMENT_COLUMNS``), generated once from the rules (``cxr-dataset lock splits``). Every
plan and build reads it: a record it names keeps that side and patient group (its label must agree),
and the rules assign only the records it does not name (a variant's added sources). A record it names
that the selection lacks is *absent* (``absent_counts``): a variant that leaves files out keeps every
other record where the release put it, and says how many of the release's images it lacks.
"""

from __future__ import annotations

import os
from pathlib import Path
import pandas as pd

from . import CLASS_NAMES
from .errors import CxrDatasetError, ManifestError
from .records import SPLITS, seeded_hash, split_rank
from .safe_load import csv_table

ASSIGNMENT_COLUMNS = ("source", "source_path", "label", "split", "patient_group", "configs")
"""A release's split file: one row per image; ``configs`` lists the configurations holding it (``;``)."""


def patient_groups(table: pd.DataFrame, links: list[tuple[str, str]] = ()) -> pd.Series:
    """A group key per row: the smallest patient id of its connected component (union-find)."""
    parent: dict[str, str] = {}

    def root(node: str) -> str:
        parent.setdefault(node, node)
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for patient in table["patient_id"]:
        root(patient)
    for a, b in links:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return table["patient_id"].map(root)


def duplicate_patient_links(rows: pd.DataFrame, candidates: pd.DataFrame) -> list[tuple[str, str]]:
    """Patient-id pairs joined by duplicates: each row's patient and its ``duplicate_of`` copy's patient.

    ``rows`` are any rows with a ``duplicate_of`` column (kept rows flagged as copies, excluded copies).
    """
    if rows.empty or "duplicate_of" not in rows.columns:
        return []
    patient_of = dict(zip(candidates["record_id"], candidates["patient_id"]))
    linked = rows[rows["duplicate_of"].ne("")]
    pairs = zip(linked["record_id"], linked["duplicate_of"])
    return [(patient_of[a], patient_of[b]) for a, b in pairs if a in patient_of and b in patient_of]


def assign_splits(
    table: pd.DataFrame, rules: list[dict], seed: str, links: list[tuple[str, str]] = (),
    assignment: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Return ``table`` with ``split`` and ``patient_group`` filled; raise if a row stays unassigned.

    ``assignment`` (``read_assignment``): rows it names take its side and group; the rules place the rest.
    """
    table = table.copy()
    table["patient_group"] = patient_groups(table, links)
    table["split"] = ""
    if assignment is not None and len(table):
        _apply_assignment(table, assignment)
    for number, rule in enumerate(rules, start=1):
        selected = table["split"].eq("")
        if "source" in rule:
            selected &= table["source"].eq(rule["source"])
        if "label" in rule:
            selected &= table["label"].eq(rule["label"])
        if rule["method"] == "upstream":
            mapped = table.loc[selected, "upstream_split"].map(rule["map"])
            unmapped = mapped[mapped.isna()]
            if len(unmapped):
                upstream = table.loc[unmapped.index[0], "upstream_split"]
                raise CxrDatasetError(f"split rule {number}: upstream split {upstream!r} has no entry in its map {rule['map']}")
            table.loc[selected, "split"] = mapped
        else:
            table.loc[selected, "split"] = _patient_hash_split(table[selected], rule, seed, table)
    unassigned = table[table["split"].eq("")]
    if len(unassigned):
        raise CxrDatasetError(
            f"{len(unassigned)} record(s) match no split rule, e.g. {unassigned.iloc[0]['record_id']}; "
            "add a rule for their source or label to the manifest's split.rules"
        )
    return table.drop(columns="_assigned", errors="ignore")


def _apply_assignment(table: pd.DataFrame, assignment: pd.DataFrame) -> None:
    """Rows ``assignment`` names take its split and patient group (in place); their labels must agree."""
    recorded = assignment.set_index("record_id")
    named = table["record_id"].isin(recorded.index)
    ids = table.loc[named, "record_id"]
    relabelled = table.loc[named & table["label"].ne(table["record_id"].map(recorded["label"]))]
    if len(relabelled):
        row = relabelled.iloc[0]
        raise CxrDatasetError(
            f"{len(relabelled)} record(s) have another label than the release's split file records, e.g. "
            f"{row['record_id']}: {row['label']!r}, recorded {recorded.at[row['record_id'], 'label']!r}. A label change "
            "is a new major release: regenerate the split file (`cxr-dataset lock splits`) in a new manifest version"
        )
    table.loc[named, "split"] = ids.map(recorded["split"])
    # Groups are facts of the release: a group the file names keeps its name for every row linked to it.
    renamed = dict(zip(table.loc[named, "patient_group"], ids.map(recorded["patient_group"])))
    table["patient_group"] = table["patient_group"].map(lambda g: renamed.get(g, g))
    table["_assigned"] = named


def read_assignment(path: Path) -> pd.DataFrame:
    """A release's split file (``ASSIGNMENT_COLUMNS``), checked, with a ``record_id`` column added."""
    table = csv_table(path)
    missing = [c for c in ASSIGNMENT_COLUMNS if c not in table.columns]
    if missing:
        raise ManifestError(f"{path}: missing columns {missing}; expected {','.join(ASSIGNMENT_COLUMNS)} (`cxr-dataset lock splits` writes it)")
    for column, allowed in (("split", SPLITS), ("label", CLASS_NAMES)):
        bad = table[~table[column].isin(allowed)]
        if len(bad):
            raise ManifestError(f"{path}: row {bad.index[0] + 2}: {column} {bad.iloc[0][column]!r} is not one of {list(allowed)}")
    table["record_id"] = table["source"] + ":" + table["source_path"]
    repeated = table[table["record_id"].duplicated()]
    if len(repeated):
        raise ManifestError(f"{path}: row {repeated.index[0] + 2} names {repeated.iloc[0]['record_id']} a second time")
    empty = table[table["configs"].eq("") | table["patient_group"].eq("")]
    if len(empty):
        raise ManifestError(f"{path}: row {empty.index[0] + 2} has an empty configs or patient_group cell")
    return table


def assignment_of(rows: pd.DataFrame, member: dict[str, pd.Series]) -> pd.DataFrame:
    """The split file a selection gives (``rows``: a plan's or build's kept rows; ``member``: {configuration:
    which rows it holds}, in the release's order of configurations), sorted by record."""
    names = [";".join(name for name, rows_in in member.items() if rows_in[i]) for i in rows.index]
    table = rows.assign(configs=names)[list(ASSIGNMENT_COLUMNS)]
    return table.sort_values(["source", "source_path"]).reset_index(drop=True)


def write_assignment(path: Path, table: pd.DataFrame) -> Path:
    """Write a split file (temporary file renamed into place: a failure leaves the old one)."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        table[list(ASSIGNMENT_COLUMNS)].to_csv(temp, index=False, lineterminator="\n")
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path


def absent_counts(assignment: pd.DataFrame, kept: pd.DataFrame) -> dict[str, dict[str, dict[str, int]]]:
    """{config: {split: {class: n}}} of the recorded images the selection ``kept`` lacks (only non-zero)."""
    absent = assignment[~assignment["record_id"].isin(kept["record_id"])]
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for row in absent.itertuples():
        for config in row.configs.split(";"):
            per_split = counts.setdefault(config, {}).setdefault(row.split, {})
            per_split[row.label] = per_split.get(row.label, 0) + 1
    return {c: dict(sorted(s.items(), key=lambda item: split_rank(item[0]))) for c, s in counts.items()}


def _patient_hash_split(rows: pd.DataFrame, rule: dict, seed: str, table: pd.DataFrame) -> pd.Series:
    # A group already placed by an earlier rule (or by the recorded assignment) keeps that side for all its rows.
    placed = table[table["split"].ne("")].groupby("patient_group")["split"].first()
    # Rows of this rule's kind that the recorded assignment already put in test count towards its target.
    recorded = table["split"].eq("test") & table.get("_assigned", pd.Series(False, index=table.index))
    for key in ("source", "label"):
        if key in rule:
            recorded &= table[key].eq(rule[key])
    target = rule.get("test_images")
    if target is None:
        target = round((len(rows) + int(recorded.sum())) * rule.get("test_fraction", 0.0))
    sizes = rows.groupby("patient_group").size()
    side = {group: placed[group] for group in sizes.index if group in placed.index}
    in_test = sum(sizes[g] for g, s in side.items() if s == "test") + int(recorded.sum())
    for group in sorted(sizes.index, key=lambda g: seeded_hash(seed, g)):
        if group in side:
            continue
        if in_test + sizes[group] <= target:
            side[group] = "test"
            in_test += sizes[group]
        else:
            side[group] = "train"
    return rows["patient_group"].map(side)


def patients_in_both(table: pd.DataFrame) -> list[str]:
    """Patient groups on both sides that this package's rules placed (a build error when not empty)."""
    return [g for g in _groups_in_both(table) if not _upstream_only(table, g)]


def upstream_groups_in_both(table: pd.DataFrame) -> list[str]:
    """Patient groups on both sides only because a source's own split (``upstream``) put them there."""
    return [g for g in _groups_in_both(table) if _upstream_only(table, g)]


def _groups_in_both(table: pd.DataFrame) -> list[str]:
    if table.empty:
        return []
    sides = table.groupby("patient_group")["split"].nunique()
    return sorted(sides[sides > 1].index)


def _upstream_only(table: pd.DataFrame, group: str) -> bool:
    return bool(table.loc[table["patient_group"].eq(group), "upstream_split"].ne("").all())


def duplicate_pairs_across_splits(table: pd.DataFrame) -> list[dict[str, str]]:
    """(copy, kept copy) pairs of ``table`` whose two rows sit in different splits."""
    side = dict(zip(table["record_id"], table["split"]))
    return [
        {"record_id": rid, "duplicate_of": twin, "splits": [side[rid], side[twin]]}
        for rid, twin in zip(table["record_id"], table["duplicate_of"])
        if twin and twin in side and side[twin] != side[rid]
    ]
