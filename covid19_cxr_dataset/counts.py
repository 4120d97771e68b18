"""Count tables: images per split and class, what a manifest expects, and how the two differ.

``count_table`` ({split: {class: n}}, every class listed), ``source_label_table``, ``flag_summary`` and
``exclusion_summary`` describe rows; ``expected_counts``/``expected_by_config`` read what a manifest
expects; ``check_counts`` and ``count_differences`` compare them; ``counts_yaml`` is the one writer
of an ``expected_counts`` block as a maintainer pastes it into manifest.yaml.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from . import CLASS_NAMES
from .filters import in_config
from .records import split_rank

if TYPE_CHECKING:
    from .manifest import Manifest

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


def flag_summary(rows: pd.DataFrame) -> dict[str, int]:
    """{flag: rows carrying it}, in flag order (a row with two flags counts under both)."""
    counts: dict[str, int] = {}
    for flags in rows["flags"]:
        for flag in flags:
            counts[flag] = counts.get(flag, 0) + 1
    return dict(sorted(counts.items()))


def exclusion_summary(excluded: pd.DataFrame) -> dict[str, int]:
    return {str(k): int(v) for k, v in excluded["reason"].value_counts().sort_index().items()}


def check_counts(manifest: "Manifest", kept: pd.DataFrame, *, shortfall_only: bool = False, config: str | None = None) -> list[str]:
    """Differences between the kept rows and each configuration's expected counts (empty when exact).

    ``kept`` is the default configuration's selection; each configuration's rows are taken from it
    (``filters.in_config``). Messages name the configuration when the release has more than one.
    ``shortfall_only``: report only cells with too few images (later stages can still remove some).
    """
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


def expected_counts(manifest: Manifest) -> dict[str, dict[str, int]]:
    """The counts a manifest expects for its default configuration."""
    return next(iter(expected_by_config(manifest).values()), {})


def expected_by_config(manifest: Manifest) -> dict[str | None, dict[str, dict[str, int]]]:
    """``{configuration: expected counts}``, the default first; ``{None: ...}`` for a manifest
    without a ``configs`` section (its top-level ``expected_counts``)."""
    if manifest.has_configs:
        return {config.name: config.expected_counts for config in manifest.configs}
    return {None: manifest.default_config.expected_counts}


def planned_counts(resolution, config: str | None) -> dict[str, dict[str, int]]:
    """What ``plan`` resolves for one configuration (None: the manifest's only one), every class listed."""
    rows = resolution.rows(config) if config is not None and hasattr(resolution, "rows") else resolution.kept
    counts = count_table(rows)
    return {split_name: {label: int(counts[split_name].get(label, 0)) for label in CLASS_NAMES}
            for split_name in sorted(counts, key=lambda s: (split_rank(s), s))}


def count_differences(published: dict[str, dict[str, int]], actual: dict[str, dict[str, int]]) -> list[str]:
    """``"train/COVID-19 390 (published 398)"`` for every cell that differs."""
    out = []
    for split_name in sorted(set(published) | set(actual), key=lambda s: (split_rank(s), s)):
        for label in CLASS_NAMES:
            want = published.get(split_name, {}).get(label, 0)
            got = actual.get(split_name, {}).get(label, 0)
            if want != got:
                out.append(f"{split_name}/{label} {got:,} (published {want:,})")
    return out


def counts_yaml(counts: dict[str, dict[str, int]], indent: str = "    ") -> str:
    """``counts`` as the lines of an ``expected_counts`` block (``train: {COVID-19: 1, ...}``), train first."""
    ordered = {s: counts[s] for s in sorted(counts, key=lambda s: (split_rank(s), s))}
    return "".join(f"{indent}{s}: {{" + ", ".join(f"{label}: {n}" for label, n in c.items()) + "}\n" for s, c in ordered.items()).rstrip()
