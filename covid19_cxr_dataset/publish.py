"""Publish stage: write kept, converted records as parquet shards plus a generated dataset card.

The card's YAML (``configs`` and ``dataset_info``) is generated from ``FEATURES``, the same object
whose Arrow schema the shards are written with, so the card can never disagree with the data.

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
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from datasets import ClassLabel, DatasetInfo, Features, Image, Sequence, Value
from datasets.splits import SplitDict, SplitInfo

from . import CLASS_NAMES
from .manifest import Config

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
        "flags": Sequence(Value("string")),
        "duplicate_of": Value("string"),
        "conversion": Value("string"),
    }
)
"""The release's columns. ``sha256`` is the hash of the upstream source file, not of the JPEG.
``flags`` (records.FLAGS codes) and ``duplicate_of`` (record id ``source:source_path`` of the kept
copy, "" if none) let a user of the default configuration filter without rebuilding; ``conversion``
is the path its image took (a key of ``convert.CONVERSIONS``)."""

FLAGGED_FOLDER = "flagged"

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


def dataset_info_yaml(split_sizes: dict[str, tuple[int, int]], config_name: str | None = None) -> dict[str, Any]:
    """``dataset_info`` for the card, from FEATURES and {split: (num_examples, num_bytes)}."""
    splits = SplitDict()
    for name, (examples, nbytes) in split_sizes.items():
        splits.add(SplitInfo(name=name, num_examples=examples, num_bytes=nbytes))
    info = DatasetInfo(features=FEATURES, splits=splits, config_name=config_name)._to_yaml_dict()
    return {"config_name": config_name, **{k: v for k, v in info.items() if k != "config_name"}} if config_name else info


def card_yaml(
    *, split_sizes: dict[str, tuple[int, int]] | None = None, license_id: str, pretty_name: str, version: str,
    configs: list[dict[str, Any]] | None = None, metadata: dict[str, Any] | None = None,
) -> str:
    """The YAML header of README.md: the contract with ``datasets.load_dataset``.

    ``metadata``: more keys the Hub reads (``task_ids``, ``annotations_creators``, ``source_datasets``),
    written after ``task_categories``.

    ``configs``: one dict per configuration, the default first: ``name``, ``default``, ``folders``
    {split: the shard folders under ``data/`` holding rows of that split, "" for shards directly in
    ``data/``} and ``split_sizes`` {split: (num_examples, num_bytes)}. Without it, one default
    configuration over ``data/`` of ``split_sizes`` (the layout of releases written before configurations).
    """
    if configs is None:
        configs = [{"name": "default", "default": True, "folders": {s: [""] for s in split_sizes or {}}, "split_sizes": split_sizes or {}}]
    default = configs[0]
    total = sum(n for n, _ in default["split_sizes"].values())

    def paths(folders: list[str], split: str) -> str | list[str]:
        globs = [f"data/{folder}/{split}-*.parquet" if folder else f"data/{split}-*.parquet" for folder in folders]
        return globs[0] if len(globs) == 1 else globs

    header = {
        "pretty_name": pretty_name,
        "license": license_id,
        **({"license_name": "per-image-source-licenses", "license_link": "README.md#licenses"} if license_id == "other" else {}),
        "task_categories": ["image-classification"],
        **(metadata or {}),
        "tags": ["medical", "chest-x-ray", "covid-19", f"release-{version}"],
        "size_categories": [_size_category(total)],
        "configs": [
            {
                "config_name": c["name"],
                **({"default": True} if c["default"] else {}),
                "data_files": [{"split": s, "path": paths(c["folders"][s], s)} for s in c["split_sizes"] if c["folders"].get(s)],
            }
            for c in configs
        ],
        "dataset_info": (
            dataset_info_yaml(default["split_sizes"]) if len(configs) == 1 and default["name"] == "default"
            else [dataset_info_yaml(c["split_sizes"], c["name"]) for c in configs]
        ),
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


def config_shard_paths(out_dir: Path, config: str | None = None, split: str | None = None) -> list[Path]:
    """The shards of one configuration of a release folder, from its build report (default config: all)."""
    from .report import read_report

    out_dir = Path(out_dir)
    report = read_report(out_dir)
    configs = report.get("configs") or {}
    if config is None or not configs:
        if config not in (None, "default") and not configs:
            from .errors import CxrDatasetError
            raise CxrDatasetError(f"{out_dir}: this release has one configuration; it has no configuration {config!r}")
        return shard_paths(out_dir / "data", split)
    if config not in configs:
        from .errors import CxrDatasetError
        raise CxrDatasetError(f"{out_dir}: no configuration {config!r}; build_report.json lists {sorted(configs)}")
    listed = [out_dir / p for p in configs[config]["shards"]]
    return sorted(p for p in listed if split is None or p.name.startswith(f"{split}-"))


def read_row_table(out_dir: Path) -> "pd.DataFrame":
    """Every row of a release without its image: shard, folder, split, source, source_path, label
    (class name), license, flags (tuple), duplicate_of. What the card counts and verify checks."""
    import pandas as pd

    out_dir = Path(out_dir)
    parts = []
    columns = ["source", "source_path", "label", "license", "flags", "duplicate_of"]
    for path in shard_paths(out_dir / "data"):
        schema = pq.read_schema(path)
        table = pq.read_table(path, columns=[c for c in columns if c in schema.names]).to_pandas()
        relpath = path.relative_to(out_dir).as_posix()
        folder = path.parent.relative_to(out_dir / "data").as_posix()
        parts.append(table.assign(shard=relpath, folder="" if folder == "." else folder, split=path.name.split("-", 1)[0]))
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns + ["shard", "folder", "split"])
    if "flags" not in frame.columns:
        frame["flags"] = [()] * len(frame)
    frame["flags"] = [tuple(f) if f is not None else () for f in frame["flags"]]
    if "duplicate_of" not in frame.columns:
        frame["duplicate_of"] = ""
    frame["label"] = [CLASS_NAMES[int(i)] if 0 <= int(i) < len(CLASS_NAMES) else f"label {int(i)}" for i in frame["label"]]
    return frame
