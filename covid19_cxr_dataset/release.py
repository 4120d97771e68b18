"""A release folder as every reader sees it: the one module that knows its layout.

    <out>/README.md            the dataset card (``CARD_NAME``)
    <out>/build_report.json    the build report (``REPORT_NAME``; ``read_report``/``write_report``)
    <out>/data/<folder>/<split>-NNNNN-of-MMMMM.parquet   the shards (``DATA_DIR``, ``shard_paths``)

Its configurations come from the report (``configs``: ``available_configs``, ``resolve_config``):
a release written before configurations existed has none and is read as one configuration, the
default, named ``LEGACY_CONFIG``, over every shard under ``data/``. Rows are read with their images
(``iter_rows_of``) or without (``read_row_table``). The fingerprint over DECODED pixels and labels
identifies the content a model sees, whatever the parquet layout: each row contributes
``sha256(split, source, source_path, label name, width, height, 8-bit pixels)``; the fingerprint is
the sha256 of the sorted row digests, so it depends neither on shard boundaries nor on row order.

``verify``, ``hub``, ``card``, ``report`` and ``baseline`` read a release through this module.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from PIL import Image

from . import CLASS_NAMES
from .download.hashes import file_sha256
from .errors import CxrDatasetError, VerificationError
from .records import SPLITS

if TYPE_CHECKING:
    import pandas as pd

CARD_NAME = "README.md"
REPORT_NAME = "build_report.json"
DATA_DIR = "data"
FLAGGED_FOLDER = "flagged"
"""The shard folder of a subset release's rows that carry a flag (only in the default configuration)."""

LEGACY_CONFIG = "paper"
"""The name a release without ``configs`` in its build report is read (and certified) under."""


# ---- files ----------------------------------------------------------------------------------------

def write_report(out_dir: Path, report: dict[str, Any]) -> Path:
    path = Path(out_dir) / REPORT_NAME
    path.write_text(json.dumps(report, indent=2, sort_keys=False, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def read_report(out_dir: Path) -> dict[str, Any]:
    path = Path(out_dir) / REPORT_NAME
    return json.loads(path.read_text(encoding="utf-8"))


def shard_paths(data_dir: Path, split: str | None = None, folders: list[str] | None = None) -> list[Path]:
    """A release's shards under ``data_dir`` (every shard folder, or only ``folders``), sorted.

    Without ``folders`` this is every shard: the default configuration (and the flat ``data/``
    layout of releases written before configurations).
    """
    pattern = f"{split}-*-of-*.parquet" if split else "*-*-of-*.parquet"
    data_dir = Path(data_dir)
    if folders is not None:
        return sorted(p for folder in folders for p in (data_dir / folder).glob(pattern))
    return sorted(data_dir.rglob(pattern))


def split_of(shard: str | Path) -> str:
    """The split a shard file holds (its name up to the first ``-``)."""
    return Path(shard).name.split("-", 1)[0]


def config_shard_paths(out_dir: Path, config: str | None = None, split: str | None = None) -> list[Path]:
    """The shards of one configuration of a release folder, from its build report (default config: all)."""
    out_dir = Path(out_dir)
    report = read_report(out_dir)
    configs = report.get("configs") or {}
    if config is None or not configs:
        if config not in (None, "default") and not configs:
            raise CxrDatasetError(f"{out_dir}: this release has one configuration; it has no configuration {config!r}")
        return shard_paths(out_dir / DATA_DIR, split)
    if config not in configs:
        raise CxrDatasetError(f"{out_dir}: no configuration {config!r}; build_report.json lists {sorted(configs)}")
    listed = [out_dir / p for p in configs[config]["shards"]]
    return sorted(p for p in listed if split is None or p.name.startswith(f"{split}-"))


def shard_hashes(out_dir: Path) -> dict[str, dict[str, Any]]:
    """{shard path relative to ``out_dir``: {sha256, bytes}} of every shard."""
    out_dir = Path(out_dir)
    return {
        str(path.relative_to(out_dir)): {"sha256": file_sha256(path), "bytes": path.stat().st_size}
        for path in shard_paths(out_dir / DATA_DIR)
    }


# ---- configurations ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReleaseConfig:
    """One configuration of a release: its name, fingerprint, counts and shard files."""

    name: str
    default: bool
    fingerprint: str
    counts: dict[str, dict[str, int]]
    shards: tuple[str, ...] | None  # paths relative to the release folder; None: every shard under data/ (legacy)

    @property
    def legacy(self) -> bool:
        """A release written before configurations: one configuration over every shard."""
        return self.shards is None

    def shard_paths(self, data_dir: Path, split: str) -> list[Path]:
        """The config's ``split`` shards, in a stable order."""
        data_dir = Path(data_dir)
        if self.shards is None:
            return shard_paths(data_dir / DATA_DIR, split)
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


def stated_fingerprints(report: dict[str, Any]) -> dict[str, str]:
    """{configuration: fingerprint} a build report states, the default first (legacy: ``LEGACY_CONFIG``)."""
    configs = report.get("configs") or {}
    if not configs:
        return {LEGACY_CONFIG: report["fingerprint"]} if report.get("fingerprint") else {}
    return {name: configs[name]["fingerprint"] for name in available_configs(report) if configs[name].get("fingerprint")}


# ---- rows ----------------------------------------------------------------------------------------

def iter_rows_of(path: Path) -> Iterable[tuple[str, dict]]:
    """(split, row) of one shard with its image, one row group at a time."""
    import pyarrow.parquet as pq

    split = split_of(path)
    parquet = pq.ParquetFile(path)
    for group in range(parquet.num_row_groups):
        for row in parquet.read_row_group(group, columns=["image", "label", "source", "source_path"]).to_pylist():
            yield split, row


def read_row_table(out_dir: Path) -> "pd.DataFrame":
    """Every row of a release without its image: shard, folder, split, source, source_path, label
    (class name), license, flags (tuple), duplicate_of. What the card counts and verify checks."""
    import pandas as pd
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    parts = []
    columns = ["source", "source_path", "label", "license", "flags", "duplicate_of", "patient_group"]
    for path in shard_paths(out_dir / DATA_DIR):
        schema = pq.read_schema(path)
        table = pq.read_table(path, columns=[c for c in columns if c in schema.names]).to_pandas()
        relpath = path.relative_to(out_dir).as_posix()
        folder = path.parent.relative_to(out_dir / DATA_DIR).as_posix()
        parts.append(table.assign(shard=relpath, folder="" if folder == "." else folder, split=split_of(path)))
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns + ["shard", "folder", "split"])
    if "flags" not in frame.columns:
        frame["flags"] = [()] * len(frame)
    frame["flags"] = [tuple(f) if f is not None else () for f in frame["flags"]]
    if "duplicate_of" not in frame.columns:
        frame["duplicate_of"] = ""
    frame["label"] = [CLASS_NAMES[int(i)] if 0 <= int(i) < len(CLASS_NAMES) else f"label {int(i)}" for i in frame["label"]]
    return frame


# ---- the fingerprint -----------------------------------------------------------------------------

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
    with ThreadPoolExecutor(max(1, workers)) as pool:  # Pillow releases the GIL while decoding
        for path in shard_paths(out_dir / DATA_DIR):
            if only is not None and path.relative_to(out_dir).as_posix() not in only:
                continue
            rows = iter_rows_of(path)
            found[path.relative_to(out_dir).as_posix()] = list(pool.map(digest, rows, chunksize=16) if workers > 1 else map(digest, rows))
    return found


def config_fingerprints(out_dir: Path, shards: dict[str, list[str]], *, workers: int = 1) -> dict[str, str]:
    """{configuration: fingerprint} from {configuration: its shard paths}, decoding every image once."""
    digests = shard_digests(out_dir, workers=workers, only={shard for paths in shards.values() for shard in paths})
    return {name: combine_digests(d for shard in paths for d in digests.get(shard, [])) for name, paths in shards.items()}


def config_fingerprint(data_dir: Path, config: ReleaseConfig, *, workers: int | None = None) -> str:
    """Recompute a configuration's fingerprint over its own shards: ``fingerprint(data_dir)`` for a
    legacy release, else ``config_fingerprints`` over the shards ``config`` (as resolved from the
    report in hand, which may differ from the one on disk) lists."""
    workers = workers or os.cpu_count() or 1
    if config.shards is None:
        return fingerprint(data_dir, workers=workers)
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
