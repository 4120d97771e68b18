"""Which configuration of a release to read (``paper`` or ``curated``): its shards, counts and fingerprint.

A release folder holds every configuration of a release (docs/ARCHITECTURE.md, "Release format"):
``build_report.json`` has ``configs: {name: {"default", "counts", "fingerprint", "shards", ...}}``.
A release built before configurations existed has none; it is read as one configuration, the
default, named by ``LEGACY_CONFIG``, with the report's top-level ``counts`` and ``fingerprint``.
Pure Python (pyarrow for the fingerprint); no TensorFlow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import VerificationError
from ..publish import shard_paths
from ..records import SPLITS
from ..report import REPORT_NAME, config_fingerprints
from ..report import fingerprint as release_fingerprint

LEGACY_CONFIG = "paper"
"""The name a release without ``configs`` in its build report is certified under."""


@dataclass(frozen=True)
class ReleaseConfig:
    """One configuration of a release: its name, fingerprint, counts and shard files."""

    name: str
    default: bool
    fingerprint: str
    counts: dict[str, dict[str, int]]
    shards: tuple[str, ...] | None  # paths relative to the release folder; None: every shard under data/

    def shard_paths(self, data_dir: Path, split: str) -> list[Path]:
        """The config's ``split`` shards, in a stable order."""
        data_dir = Path(data_dir)
        if self.shards is None:
            return shard_paths(data_dir / "data", split)
        return sorted((data_dir / path for path in self.shards if Path(path).name.startswith(f"{split}-")),
                      key=lambda p: (p.name, str(p)))

    def shards_by_split(self, data_dir: Path) -> dict[str, list[Path]]:
        return {split: self.shard_paths(data_dir, split) for split in SPLITS}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "default": self.default, "fingerprint": self.fingerprint,
                "declared_in_report": self.shards is not None}


def _shard_names(entries: Any) -> tuple[str, ...]:
    names = []
    for entry in entries or []:
        names.append(entry["path"] if isinstance(entry, dict) else str(entry))
    return tuple(names)


def available_configs(report: dict[str, Any]) -> list[str]:
    """Configuration names of a build report (the default first); ``[LEGACY_CONFIG]`` when it has none."""
    configs = report.get("configs") or {}
    if not configs:
        return [LEGACY_CONFIG]
    return sorted(configs, key=lambda name: (not configs[name].get("default", False), name))


def resolve_config(data_dir: Path, report: dict[str, Any], name: str | None = None) -> ReleaseConfig:
    """The configuration ``name`` (None: the default) of the release whose build report is ``report``."""
    path = Path(data_dir) / REPORT_NAME
    configs = report.get("configs") or {}
    if not configs:
        if name not in (None, LEGACY_CONFIG):
            raise VerificationError(
                f"{path}: no configuration {name!r}: this release's build report lists no configurations "
                f"(it was built before they existed) and is read as its only one, {LEGACY_CONFIG!r}; "
                f"rebuild it with this package to get {name!r}, or pass --config {LEGACY_CONFIG}")
        return ReleaseConfig(LEGACY_CONFIG, True, report["fingerprint"], report["counts"], None)
    if name is None:
        name = available_configs(report)[0]
    if name not in configs:
        raise VerificationError(f"{path}: no configuration {name!r}; it has {', '.join(available_configs(report))}")
    entry = configs[name]
    fingerprint = entry.get("fingerprint") or (report["fingerprint"] if entry.get("default") else None)
    if not fingerprint:
        raise VerificationError(f"{path}: configuration {name!r} has no fingerprint; rebuild the release")
    shards = _shard_names(entry.get("shards")) or None
    return ReleaseConfig(name, bool(entry.get("default")), fingerprint, entry.get("counts", report["counts"]), shards)


def config_fingerprint(data_dir: Path, config: ReleaseConfig, *, workers: int | None = None) -> str:
    """Recompute a configuration's fingerprint over its own shards, as ``report.fingerprint`` does for a release.

    ``report.fingerprint(data_dir)`` for a release without configurations; otherwise
    ``report.config_fingerprints`` over the shards that ``config`` (as resolved from the report in
    hand, which may differ from the one on disk) lists.
    """
    workers = workers or os.cpu_count() or 1
    if config.shards is None:
        return release_fingerprint(data_dir, workers=workers)
    return config_fingerprints(data_dir, {config.name: list(config.shards)}, workers=workers)[config.name]


def verify_config_fingerprint(data_dir: Path, config: ReleaseConfig, *, workers: int | None = None) -> str:
    """Refuse a configuration whose shards no longer give the fingerprint its build report states."""
    actual = config_fingerprint(data_dir, config, workers=workers)
    if actual != config.fingerprint:
        raise VerificationError(
            f"{Path(data_dir) / REPORT_NAME}: configuration {config.name!r} has fingerprint {config.fingerprint}, "
            f"but its shards give {actual}; images or labels changed after the build. Rebuild the release or "
            "fetch it again (or pass verify_fingerprint=False to train on it anyway)"
        )
    return actual
