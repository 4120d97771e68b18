"""Publish stage: write kept, converted records as parquet shards plus a generated dataset card.

The card's YAML (``configs`` and ``dataset_info``) is generated from ``FEATURES``, the same object
whose Arrow schema the shards are written with, so the card can never disagree with the data.

Shards are written as they fill (``SplitShardWriter``), never holding a split in memory, and get
their final ``<split>-NNNNN-of-MMMMM.parquet`` names when the split is closed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from datasets import ClassLabel, DatasetInfo, Features, Image, Value
from datasets.splits import SplitDict, SplitInfo

from . import CLASS_NAMES

FEATURES = Features(
    {
        "image": Image(),
        "label": ClassLabel(names=list(CLASS_NAMES)),
        "source": Value("string"),
        "source_path": Value("string"),
        "patient_id": Value("string"),
        "view": Value("string"),
        "finding": Value("string"),
        "license": Value("string"),
        "sha256": Value("string"),
        "conversion": Value("string"),
    }
)
"""The release's columns. ``sha256`` is the hash of the upstream source file, not of the JPEG;
``conversion`` the path its image took (a key of ``convert.CONVERSIONS``)."""

SPLITS = ("train", "test")
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
        "view": record["view"],
        "finding": record["finding"],
        "license": record["license"],
        "sha256": record["sha256"],
        "conversion": conversion,
    }


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
        if not self._temp_paths:  # an empty split still gets one (empty) shard so the card's glob matches
            path = self.data_dir / f".{self.split}-00000.parquet.tmp"
            pq.write_table(pa.Table.from_pylist([], schema=_SCHEMA), path, compression="none")
            self._temp_paths.append(path)
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


def dataset_info_yaml(split_sizes: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """``dataset_info`` for the card, from FEATURES and {split: (num_examples, num_bytes)}."""
    splits = SplitDict()
    for name, (examples, nbytes) in split_sizes.items():
        splits.add(SplitInfo(name=name, num_examples=examples, num_bytes=nbytes))
    return DatasetInfo(features=FEATURES, splits=splits)._to_yaml_dict()


def card_yaml(*, split_sizes: dict[str, tuple[int, int]], license_id: str, pretty_name: str, version: str) -> str:
    """The YAML header of README.md: the contract with ``datasets.load_dataset``."""
    header = {
        "pretty_name": pretty_name,
        "license": license_id,
        **({"license_name": "per-image-source-licenses", "license_link": "README.md#licenses"} if license_id == "other" else {}),
        "task_categories": ["image-classification"],
        "tags": ["medical", "chest-x-ray", "covid-19", f"release-{version}"],
        "size_categories": [_size_category(sum(n for n, _ in split_sizes.values()))],
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": s, "path": f"data/{s}-*.parquet"} for s in split_sizes],
            }
        ],
        "dataset_info": dataset_info_yaml(split_sizes),
    }
    return yaml.safe_dump(header, sort_keys=False, allow_unicode=True)


def _size_category(n: int) -> str:
    """The Hub's size bucket for n examples."""
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < limit:
            return label
    return "100K<n<1M"


def write_card(out_dir: Path, *, header_yaml: str, body_markdown: str) -> Path:
    path = Path(out_dir) / "README.md"
    path.write_text(f"---\n{header_yaml}---\n\n{body_markdown.rstrip()}\n", encoding="utf-8")
    return path


def iter_rows(data_dir: Path, split: str | None = None) -> Iterable[tuple[str, dict]]:
    """Yield (split, row) from a release's shards in shard and row order, one row group at a time."""
    for path in shard_paths(data_dir, split):
        shard_split = path.name.split("-", 1)[0]
        parquet = pq.ParquetFile(path)
        for group in range(parquet.num_row_groups):
            for row in parquet.read_row_group(group).to_pylist():
                yield shard_split, row


def shard_paths(data_dir: Path, split: str | None = None) -> list[Path]:
    pattern = f"{split}-*.parquet" if split else "*-*-of-*.parquet"
    return sorted(Path(data_dir).glob(pattern))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
