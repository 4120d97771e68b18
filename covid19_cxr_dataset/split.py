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
"""

from __future__ import annotations

import pandas as pd

from .errors import CxrDatasetError
from .records import seeded_hash


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


def assign_splits(table: pd.DataFrame, rules: list[dict], seed: str, links: list[tuple[str, str]] = ()) -> pd.DataFrame:
    """Return ``table`` with ``split`` and ``patient_group`` filled; raise if a row stays unassigned."""
    table = table.copy()
    table["patient_group"] = patient_groups(table, links)
    table["split"] = ""
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
    return table


def _patient_hash_split(rows: pd.DataFrame, rule: dict, seed: str, table: pd.DataFrame) -> pd.Series:
    # A group already placed by an earlier rule keeps that side for all its rows.
    placed = table[table["split"].ne("")].groupby("patient_group")["split"].first()
    target = rule.get("test_images")
    if target is None:
        target = round(len(rows) * rule.get("test_fraction", 0.0))
    sizes = rows.groupby("patient_group").size()
    side = {group: placed[group] for group in sizes.index if group in placed.index}
    in_test = sum(sizes[g] for g, s in side.items() if s == "test")
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
