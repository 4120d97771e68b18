"""Shards stage (the build's last writer before the report): kept, converted records as parquet shards.

``FEATURES`` is the release's schema: the shards are written with its Arrow schema and the card's
YAML (``card.card_yaml``: ``configs`` and ``dataset_info``) is generated from it, so the card can
never disagree with the data. Reading a release back is ``release``'s job.

Shards are written as they fill (``SplitShardWriter``), never holding a split in memory, and get
their final ``<split>-NNNNN-of-MMMMM.parquet`` names when the split is closed.

One folder holds every configuration of a release, no image twice: rows are partitioned into shard
folders under ``data/`` (``partition_of``). With a subset configuration (``curated``) its rows go to
``data/<subset>/`` and the default's other rows to ``data/flagged/``; the default configuration
reads both folders, the subset only its own. A release with one configuration writes
``data/<name>/``. ``config_folders`` says which folders make up a configuration.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import ClassLabel, Features, Image, Sequence, Value

from . import CLASS_NAMES
from .manifest import Config
from .release import FLAGGED_FOLDER

FEATURES = Features(
    {
        "image": Image(),
        "label": ClassLabel(names=list(CLASS_NAMES)),
        "source": Value("string"),
        "source_path": Value("string"),
        "patient_id": Value("string"),
        "patient_group": Value("string"),
        "view": Value("string"),
        "finding": Value("string"),
        "license": Value("string"),
        "sha256": Value("string"),
        "flags": Sequence(Value("string")),
        "duplicate_of": Value("string"),
        "conversion": Value("string"),
    }
)
"""The release's columns. ``sha256`` is the hash of the upstream source file, not of the JPEG.
``flags`` (records.FLAGS codes) and ``duplicate_of`` (record id ``source:source_path`` of the kept
copy, "" if none) let a user of the default configuration filter without rebuilding; ``conversion``
is the path its image took (a key of ``convert.CONVERSIONS``). ``patient_group`` joins every patient id
linked to the same person (duplicates across sources, reviewed links): the unit no split may cut, for
users who carve their own folds (a validation split without leakage)."""

DEFAULT_MAX_SHARD_BYTES = 256 * 1024 * 1024
ROW_GROUP_ROWS = 64  # small row groups keep random access to images cheap for readers
_SCHEMA = FEATURES.arrow_schema
_DICTIONARY_COLUMNS = ["source", "view", "finding", "license", "conversion"]


def publish_row(record: dict, jpeg: bytes, conversion: str = "") -> dict:
    """One parquet row from a record (see records.py), its converted image bytes (JPEG, or PNG
    for ``normalized-png``) and its conversion path."""
    return {
        "image": {"bytes": jpeg, "path": _image_name(record, ".png" if conversion == "normalized-png" else ".jpg")},
        "label": CLASS_NAMES.index(record["label"]),
        "source": record["source"],
        "source_path": record["source_path"],
        "patient_id": record["patient_id"],
        "patient_group": record.get("patient_group", ""),
        "view": record["view"],
        "finding": record["finding"],
        "license": record["license"],
        "sha256": record["sha256"],
        "flags": list(record.get("flags", ())),
        "duplicate_of": record.get("duplicate_of", ""),
        "conversion": conversion,
    }


def partition_of(flags: tuple[str, ...] | list[str], configs: list[Config]) -> str:
    """The shard folder (under ``data/``) of a row with these flags."""
    subsets = [c for c in configs if c.leave_out_flagged]
    if not subsets:
        return configs[0].name
    return FLAGGED_FOLDER if flags else subsets[0].name


def partitions(configs: list[Config]) -> list[str]:
    """Every shard folder of a release, the subset's first."""
    subsets = [c.name for c in configs if c.leave_out_flagged]
    return [subsets[0], FLAGGED_FOLDER] if subsets else [configs[0].name]


def config_folders(config: Config, configs: list[Config]) -> list[str]:
    """The shard folders a configuration reads: the default all of them, a subset its own."""
    return [config.name] if config.leave_out_flagged else partitions(configs)


def _image_name(record: dict, suffix: str = ".jpg") -> str:
    """A stable, unique file name for the image inside the release (.jpg, or .png for PNG output)."""
    stem = Path(record["source_path"]).stem
    return f"{record['source']}/{stem}{suffix}"


class SplitShardWriter:
    """Stream rows of one split into parquet shards of at most ``max_shard_bytes`` each."""

    def __init__(self, data_dir: Path, split: str, *, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES):
        self.data_dir = Path(data_dir)
        self.split = split
        self.max_shard_bytes = max_shard_bytes
        self._pending: list[dict] = []
        self._pending_bytes = 0
        self._writer: pq.ParquetWriter | None = None
        self._shard_bytes = 0
        self._temp_paths: list[Path] = []
        self.num_rows = 0
        self.num_bytes = 0

    def add(self, row: dict) -> None:
        size = len(row["image"]["bytes"])
        if self._writer is not None and self._shard_bytes + self._pending_bytes + size > self.max_shard_bytes:
            self._flush()
            self._close_shard()
        self._pending.append(row)
        self._pending_bytes += size
        self.num_rows += 1
        self.num_bytes += size
        if len(self._pending) >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        if self._writer is None:
            path = self.data_dir / f".{self.split}-{len(self._temp_paths):05d}.parquet.tmp"
            self._temp_paths.append(path)
            # JPEG bytes neither compress nor repeat: no compression and no dictionary for them (the
            # dictionary attempt alone hashes every image); the small text columns do repeat.
            self._writer = pq.ParquetWriter(
                path, _SCHEMA, compression="none", write_statistics=False, use_dictionary=_DICTIONARY_COLUMNS,
            )
            self._shard_bytes = 0
        self._writer.write_table(_columnar(self._pending), row_group_size=ROW_GROUP_ROWS)
        self._shard_bytes += self._pending_bytes
        self._pending, self._pending_bytes = [], 0

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def close(self) -> list[Path]:
        """Finish the split and give the shards their final names; returns them in order."""
        self._flush()
        self._close_shard()
        # An empty split writes no shard: a parquet file without rows makes load_dataset fail, so
        # the card's data_files name only the folders that hold rows of the split.
        total = len(self._temp_paths)
        final = []
        for index, temp in enumerate(self._temp_paths):
            target = self.data_dir / f"{self.split}-{index:05d}-of-{total:05d}.parquet"
            os.replace(temp, target)
            final.append(target)
        return final


def _columnar(rows: list[dict]) -> pa.Table:
    """Rows -> Arrow table, built column by column (several times cheaper than from_pylist)."""
    columns = []
    for field in _SCHEMA:
        if field.name == "image":
            columns.append(pa.StructArray.from_arrays(
                [pa.array([r["image"]["bytes"] for r in rows], pa.binary()), pa.array([r["image"]["path"] for r in rows], pa.string())],
                fields=list(field.type),
            ))
        else:
            columns.append(pa.array([r[field.name] for r in rows], field.type))
    return pa.Table.from_arrays(columns, schema=_SCHEMA)
