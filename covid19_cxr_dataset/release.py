"""A release folder as every reader sees it: the one module that knows its layout.

    <out>/README.md            the dataset card (``CARD_NAME``)
    <out>/build_report.json    the build report (``REPORT_NAME``; ``read_report``/``write_report``)
    <out>/data/<folder>/<split>-NNNNN-of-MMMMM.parquet   the shards (``DATA_DIR``, ``shard_paths``)

Its configurations come from the report (``configs``: ``available_configs``, ``resolve_config``,
``release_configs``): a release written before configurations existed has none and is read as one
configuration, the default, named ``LEGACY_CONFIG``, over every shard under ``data/``. Rows are read
without their images by ``read_row_table``.

The fingerprint identifies everything a user of one configuration reads (``FINGERPRINT_DEFINITION``
2): each row contributes ``row_digest``, the sha256 of its split, every column of the shard in a
canonical JSON (so a column added later is covered without a change here) and its image's decoded
pixels; a configuration's fingerprint is the sha256 of its identity (name, default or not, the data
files its card entry gives ``load_dataset``: ``config_identity``) and its sorted row digests, so it
depends neither on shard boundaries nor on row order, and each image is decoded once however many
configurations read it (``config_fingerprints``). Reports of schema 1 carry definition 1 (pixels,
label, split, source and source_path; ``legacy_row_digest``, ``combine_digests``), still checked as such.

``verify``, ``hub``, ``card``, ``report`` and ``baseline`` read a release through this module.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, BinaryIO, Iterable, Iterator

from PIL import Image

from . import CLASS_NAMES, progress, safe_load
from .download.hashes import file_sha256
from .errors import CxrDatasetError, FingerprintMismatch, VerificationError
from .records import SPLITS, split_rank

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

def report_bytes(report: dict[str, Any]) -> bytes:
    """build_report.json's bytes for ``report`` (what ``write_report`` writes; ``publish`` plans with it)."""
    return (json.dumps(report, indent=2, sort_keys=False, ensure_ascii=False) + "\n").encode("utf-8")


def write_report(out_dir: Path, report: dict[str, Any]) -> Path:
    path = Path(out_dir) / REPORT_NAME
    path.write_bytes(report_bytes(report))
    return path


MAX_REPORT_BYTES = 256 * 2**20
"""A build report lists every exclusion and flagged row: a few megabytes; anything far larger is not one."""


def read_report(out_dir: Path) -> dict[str, Any]:
    """The build report of ``out_dir``, refused unless it is a regular file of at most
    ``MAX_REPORT_BYTES`` (``safe_load.NotARegularFile``: a FIFO in its place would hang the reader)."""
    path = Path(out_dir) / REPORT_NAME
    return json.loads(safe_load.read_regular(path, max_bytes=MAX_REPORT_BYTES, what="the build report").decode("utf-8"))


def shard_paths(data_dir: Path, split: str | None = None, folders: list[str] | None = None) -> list[Path]:
    """A release's shards under ``data_dir`` (every shard folder, or only ``folders``), sorted.

    Without ``folders`` this is every shard: the default configuration (and the flat ``data/``
    layout of releases written before configurations). A folder that is not a plain relative path
    (``inside_folder``: no ``..``, not absolute) gives nothing: a report never makes this read elsewhere.
    """
    pattern = f"{split}-*-of-*.parquet" if split else "*-*-of-*.parquet"
    data_dir = Path(data_dir)
    if folders is not None:
        return sorted(p for folder in folders if isinstance(folder, str) and (folder == "" or inside_folder(folder))
                      for p in (data_dir / folder).glob(pattern))
    return sorted(data_dir.rglob(pattern))


def inside_folder(relpath: str, first: str | None = None) -> bool:
    """True when ``relpath`` (as a report or card writes it) names a place inside the folder it is relative
    to: relative, POSIX, no ``..`` or ``.`` part, no NUL or backslash; with ``first``, under that folder
    (``data``). What keeps a hostile report or card from making a reader look outside a release."""
    if not isinstance(relpath, str) or not relpath or "\0" in relpath or "\\" in relpath:
        return False
    path = PurePosixPath(relpath)
    if path.is_absolute() or any(part in ("..", ".") for part in relpath.split("/")) or relpath.startswith("~"):
        return False
    return first is None or (len(path.parts) >= 2 and path.parts[0] == first)


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
    listed = [out_dir / p for p in _config_shards(out_dir, config, configs[config])]
    return sorted(p for p in listed if split is None or p.name.startswith(f"{split}-"))


MIN_ROW_BYTES = 100
"""The fewest bytes a row of a shard takes on disk: each holds a distinct image (no JPEG or PNG of a
film is smaller) and the 64 hex digits of its source's sha256, which no compression shrinks. A shard
whose footer states more rows than its size allows (``rows_fit``) is not read: millions of identical
tiny rows compress to almost nothing on disk and would take gigabytes once decoded."""

ROW_BATCH = 64
"""Rows decoded at a time (images included) while a shard is read: memory stays bounded by a few
images whatever the shard's row groups hold (``iter_rows``)."""


def open_shard(path: Path) -> BinaryIO:
    """A shard opened for reading, refused unless it is a regular file (``safe_load.open_regular``:
    a FIFO named like a shard would hang its reader)."""
    return safe_load.open_regular(path, what="the shard")


def shard_rows(path: Path) -> int:
    """The rows a shard's parquet footer states, read from the footer alone (nothing is decoded)."""
    import pyarrow.parquet as pq

    with open_shard(path) as handle:
        return pq.ParquetFile(handle).metadata.num_rows


def rows_fit(rows: int, size: int) -> bool:
    """Whether ``rows`` rows can be genuine in a shard of ``size`` bytes (``MIN_ROW_BYTES``)."""
    return rows * MIN_ROW_BYTES <= size


def readable_shards(out_dir: Path, counts: Any) -> tuple[list[str], list[tuple[str, str, str, str, str]]]:
    """(the shards whose rows may be read and decoded, the problems of the others as ``(file, check,
    expected, actual, hint)``), decided from the parquet footers alone: a regular file named like a
    shard, whose rows fit its size (``rows_fit``), in a split whose shards hold no more rows than the
    build report's ``counts`` state. Anything else could hold millions of tiny rows: memory is bounded
    by what is on disk and what the report states, never by what a footer claims."""
    out_dir = Path(out_dir)
    rows: dict[str, int] = {}
    problems: list[tuple[str, str, str, str, str]] = []
    for path in shard_paths(out_dir / DATA_DIR):
        if safe_load.file_kind(path):
            continue  # named by verify's file checks; never opened
        relpath = path.relative_to(out_dir).as_posix()
        try:
            found = shard_rows(path)
        except Exception as error:  # any pyarrow failure means the same thing here: unreadable
            problems.append((relpath, "shard-unreadable", "a parquet file", f"{type(error).__name__}: {error}", ""))
            continue
        size = path.stat().st_size
        if rows_fit(found, size):
            rows[relpath] = found
        else:
            problems.append((relpath, "shard-rows", f"at most {size // MIN_ROW_BYTES:,} rows in its {size:,} bytes (each row "
                             f"holds an image and a sha256, {MIN_ROW_BYTES} bytes at least)",
                             f"{found:,} rows in its parquet footer", "not read: no build writes such a shard"))
    for split in sorted({split_of(p) for p in rows}, key=lambda s: (split_rank(s), s)):
        stated = counts.get(split) if isinstance(counts, dict) else None
        try:
            expected = sum(int(n) for n in stated.values())  # type: ignore[union-attr]
        except (AttributeError, TypeError, ValueError):
            continue  # no count to hold it to: the rows-to-bytes bound alone
        mine = [p for p in rows if split_of(p) == split]
        if sum(rows[p] for p in mine) > expected:
            problems.append((f"{DATA_DIR}/ ({split})", "shard-rows", f"{expected:,} {split} rows (build_report.json counts)",
                             f"{sum(rows[p] for p in mine):,} rows in the parquet footers of its {len(mine)} shard(s)", "not read"))
            for p in mine:
                del rows[p]
    return sorted(rows), problems


def iter_rows(path: Path, columns: list[str] | None = None, batch_size: int = ROW_BATCH) -> Iterator[list[dict[str, Any]]]:
    """A shard's rows (dicts of ``columns``, None: all), ``batch_size`` at a time: one batch in memory."""
    import pyarrow.parquet as pq

    with open_shard(path) as handle:
        for batch in pq.ParquetFile(handle).iter_batches(batch_size=batch_size, columns=columns):
            yield batch.to_pylist()


def shard_hashes(out_dir: Path) -> dict[str, dict[str, Any]]:
    """{shard path relative to ``out_dir``: {sha256, bytes}} of every shard."""
    out_dir = Path(out_dir)
    return {
        str(path.relative_to(out_dir)): {"sha256": file_sha256(path), "bytes": path.stat().st_size}
        for path in progress.track(shard_paths(out_dir / DATA_DIR), desc="hash shards (sha256 for the build report)", unit="shard")
    }


# ---- configurations ------------------------------------------------------------------------------

FINGERPRINT_DEFINITION = 2
"""What a fingerprint covers (docs/VERSIONING.md). 2 (report schema 2 on): every column of every row and
the configuration's definition (name, default, data files); 1 (report schema 1): decoded pixels,
label, split, source and source_path only. A report's fingerprints are checked under its own."""


def fingerprint_definition(report: dict[str, Any]) -> int:
    """The fingerprint definition of a build report: 1 for report schema 1, else the current one (a
    report not written yet, e.g. while a test or benchmark assembles one, gets the current one)."""
    schema = report.get("report_schema", FINGERPRINT_DEFINITION)
    return 1 if isinstance(schema, int) and schema < 2 else FINGERPRINT_DEFINITION


def shard_glob(folder: str, split: str) -> str:
    """The data_files pattern of one split's shards in one shard folder ("" for data/ itself)."""
    return f"{DATA_DIR}/{folder}/{split}-*.parquet" if folder else f"{DATA_DIR}/{split}-*.parquet"


def folders_by_split(shards: Iterable[str], order: Iterable[str] | None = None) -> dict[str, list[str]]:
    """{split: shard folders under data/ holding that split's shards} ("" for data/ itself), each in
    ``order`` (a configuration's ``folders``), the others after it."""
    found: dict[str, list[str]] = {}
    for path in sorted(shards):
        parts = path.split("/")
        folder, split = "/".join(parts[1:-1]), split_of(parts[-1])
        if folder not in found.setdefault(split, []):
            found[split].append(folder)
    order = list(order or [""])
    return {s: sorted(f, key=lambda x: order.index(x) if x in order else len(order)) for s, f in found.items()}


def data_files(shards: Iterable[str], order: Iterable[str] | None = None) -> dict[str, list[str]]:
    """{split: shard globs}: what a configuration over ``shards`` (paths relative to the release folder)
    gives ``load_dataset`` in the card's YAML ``configs`` entry."""
    return {split: [shard_glob(folder, split) for folder in folders] for split, folders in folders_by_split(shards, order).items()}


@dataclass(frozen=True)
class ReleaseConfig:
    """One configuration of a release: its name, fingerprint, counts and shard files."""

    name: str
    default: bool
    fingerprint: str
    counts: dict[str, dict[str, int]]
    shards: tuple[str, ...] | None  # paths relative to the release folder; None: every shard under data/ (legacy)
    definition: int = FINGERPRINT_DEFINITION  # what its fingerprint covers (FINGERPRINT_DEFINITION)

    @property
    def legacy(self) -> bool:
        """A release written before configurations: one configuration over every shard."""
        return self.shards is None

    def shard_names(self, data_dir: Path) -> list[str]:
        """Its shards, relative to the release folder ``data_dir`` (legacy: every shard there)."""
        if self.shards is None:
            return [p.relative_to(Path(data_dir)).as_posix() for p in shard_paths(Path(data_dir) / DATA_DIR)]
        return list(self.shards)

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
                "fingerprint_definition": self.definition, "declared_in_report": self.shards is not None}


def _config_shards(data_dir: Path, name: str, entry: dict[str, Any]) -> tuple[str, ...]:
    """A configuration's shard paths as its report entry lists them, each inside the release's ``data/``
    (``inside_folder``); anything else is a VerificationError naming the report and the entry."""
    listed = entry.get("shards")
    names = [item.get("path") if isinstance(item, dict) else item for item in listed] if isinstance(listed, list) else None
    bad = [n for n in names or [] if not inside_folder(n, DATA_DIR)]
    if names is None or bad:
        found = f"{bad[0]!r}" if bad else f"a {type(listed).__name__}"
        raise VerificationError(
            f"{Path(data_dir) / REPORT_NAME}: configuration {name!r} must list its shards as paths under {DATA_DIR}/ "
            f"inside the release folder; found {found}. The report was edited or damaged: rebuild the release or "
            "download it again")
    return tuple(names)


def available_configs(report: dict[str, Any]) -> list[str]:
    """Configuration names of a build report (the default first); ``[LEGACY_CONFIG]`` when it has none."""
    configs = report.get("configs") or {}
    if not configs or not isinstance(configs, dict):
        return [LEGACY_CONFIG]
    return sorted(configs, key=lambda name: (not (isinstance(configs[name], dict) and configs[name].get("default", False)), name))


def resolve_config(data_dir: Path, report: dict[str, Any], name: str | None = None, *, stated: bool = True) -> ReleaseConfig:
    """The configuration ``name`` (None: the default) of the release whose build report is ``report``.
    ``stated=False``: also when the report states no fingerprint for it (to compute one)."""
    path = Path(data_dir) / REPORT_NAME
    configs = report.get("configs") or {}
    definition = fingerprint_definition(report)
    if not isinstance(configs, dict):
        raise VerificationError(f"{path}: 'configs' is a {type(configs).__name__}, not an object; the report was edited "
                                "or damaged: rebuild the release or download it again")
    if not configs:
        if name not in (None, LEGACY_CONFIG):
            raise VerificationError(
                f"{path}: no configuration {name!r}: this release's build report lists no configurations "
                f"(it was built before they existed) and is read as its only one, {LEGACY_CONFIG!r}; "
                f"rebuild it with this package to get {name!r}, or pass --config {LEGACY_CONFIG}")
        if stated and not report.get("fingerprint"):
            raise VerificationError(f"{path}: no fingerprint; rebuild the release")
        return ReleaseConfig(LEGACY_CONFIG, True, str(report.get("fingerprint", "")), report.get("counts", {}), None, definition)
    if name is None:
        name = available_configs(report)[0]
    if name not in configs:
        raise VerificationError(f"{path}: no configuration {name!r}; it has {', '.join(available_configs(report))}")
    entry = configs[name]
    if not isinstance(entry, dict):
        raise VerificationError(f"{path}: configuration {name!r} is a {type(entry).__name__}, not an object; the report was "
                                "edited or damaged: rebuild the release or download it again")
    fingerprint = entry.get("fingerprint") or (report.get("fingerprint") if entry.get("default") else None)
    if not fingerprint and stated:
        raise VerificationError(f"{path}: configuration {name!r} has no fingerprint; rebuild the release")
    shards = _config_shards(data_dir, name, entry) if "shards" in entry else None
    return ReleaseConfig(name, bool(entry.get("default")), str(fingerprint or ""), entry.get("counts", report.get("counts", {})),
                         shards, definition)


def release_configs(data_dir: Path, report: dict[str, Any]) -> list[ReleaseConfig]:
    """Every configuration ``report`` defines (the default first), whether or not it states a fingerprint."""
    return [resolve_config(data_dir, report, name, stated=False) for name in available_configs(report)]


def require_splits(out_dir: Path, config: str | None = None, *, splits: Iterable[str] = ("train", "test"),
                   option: str = "data_dir") -> ReleaseConfig:
    """The configuration ``config`` (None: the default) of the release in ``out_dir``, if it has shards of
    every split in ``splits``; else a CxrDatasetError naming the folder, the missing split and the fix.
    What a reader that needs both sides (the baseline trains on train, evaluates on test) checks first."""
    out_dir = Path(out_dir)
    try:
        report = read_report(out_dir)
    except FileNotFoundError:
        raise CxrDatasetError(f"{option} {out_dir}: no {REPORT_NAME}, so not a release folder; pass the folder "
                              "`cxr-dataset build` wrote") from None
    except (OSError, ValueError) as error:
        raise VerificationError(f"{out_dir / REPORT_NAME}: cannot be read ({type(error).__name__}: {error}); rebuild the "
                                "release or download it again") from None
    if not isinstance(report, dict):
        raise VerificationError(f"{out_dir / REPORT_NAME}: a JSON {type(report).__name__}, not a build report; rebuild "
                                "the release or download it again")
    chosen = resolve_config(out_dir, report, config, stated=False)
    absent = [split for split in splits if not chosen.shard_paths(out_dir, split)]
    if absent:
        held = [split for split in SPLITS if chosen.shard_paths(out_dir, split)]
        raise CxrDatasetError(
            f"{option} {out_dir}: configuration {chosen.name!r} has no {' or '.join(absent)} split (no "
            f"{' or '.join(f'{s}-*.parquet' for s in absent)} shard; it holds {', '.join(held) or 'no split'}). It needs "
            f"{' and '.join(splits)}: pass a release with both (built from a manifest whose split rules give each a share)")
    return chosen


def stated_fingerprints(report: dict[str, Any]) -> dict[str, str]:
    """{configuration: fingerprint} a build report states, the default first (legacy: ``LEGACY_CONFIG``)."""
    configs = report.get("configs") or {}
    if not configs or not isinstance(configs, dict):
        return {LEGACY_CONFIG: report["fingerprint"]} if report.get("fingerprint") else {}
    return {name: configs[name]["fingerprint"] for name in available_configs(report)
            if isinstance(configs[name], dict) and configs[name].get("fingerprint")}


# ---- rows ----------------------------------------------------------------------------------------

def read_row_table(out_dir: Path, shards: Iterable[str] | None = None) -> "pd.DataFrame":
    """Every row of a release without its image: shard, folder, split, source, source_path, label
    (class name), license, flags (tuple), duplicate_of. What the card counts and verify checks.
    ``shards``: only these (paths relative to ``out_dir``; verify passes the ones it may read)."""
    import pandas as pd
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    parts = []
    columns = ["source", "source_path", "label", "license", "flags", "duplicate_of", "patient_group"]
    paths = shard_paths(out_dir / DATA_DIR) if shards is None else sorted(out_dir / s for s in shards)
    for path in paths:
        with open_shard(path) as handle:
            parquet = pq.ParquetFile(handle)
            table = parquet.read(columns=[c for c in columns if c in parquet.schema_arrow.names]).to_pandas()
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


def rows_of(rows: "pd.DataFrame", config: ReleaseConfig) -> "pd.DataFrame":
    """The rows of ``read_row_table`` that ``config`` reads (its shards; legacy: every row)."""
    return rows if config.shards is None else rows[rows["shard"].isin(config.shards)]


# ---- the fingerprint -----------------------------------------------------------------------------

def _decoded(image_bytes: bytes, *, gray: bool) -> tuple[str, int, int, bytes]:
    """(mode, width, height, pixel bytes) of an encoded image: as decoded (palette images as RGBA), or
    converted to 8-bit gray (``gray``, definition 1)."""
    with Image.open(io.BytesIO(image_bytes)) as image:
        if gray:
            image = image.convert("L") if image.mode != "L" else image
        elif image.mode in ("P", "PA"):
            image = image.convert("RGBA")  # palette indices alone do not say what the pixels look like
        return image.mode, image.size[0], image.size[1], image.tobytes()


def legacy_row_digest(split: str, source: str, source_path: str, label: str, jpeg: bytes) -> str:
    """A row's digest under fingerprint definition 1 (report schema 1): split, source, source_path,
    label name, size and 8-bit gray pixels; no other column, no configuration definition."""
    _, width, height, pixels = _decoded(jpeg, gray=True)
    header = f"{split}\0{source}\0{source_path}\0{label}\0{width}x{height}\0".encode()
    return hashlib.sha256(header + pixels).hexdigest()


def _json_value(value: Any) -> Any:
    """What ``json.dumps`` cannot write, written unambiguously (a column of any Arrow type is covered)."""
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": bytes(value).hex()}
    return {type(value).__name__: str(value)}


def canonical_json(value: Any) -> str:
    """One text per value: sorted keys, no whitespace, UTF-8 kept (what every digest here hashes)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=_json_value)


def row_digest(split: str, row: dict[str, Any]) -> str:
    """A row's digest under the current definition: its split, EVERY column of the shard (the label as
    its class name; the image as its file name, mode, size and decoded pixels), whatever the columns
    are, so a column added later is covered without a change here."""
    columns = {name: value for name, value in row.items() if name != "image"}
    label = columns.get("label")
    if isinstance(label, int) and 0 <= label < len(CLASS_NAMES):
        columns["label"] = CLASS_NAMES[label]
    image = row.get("image") or {}
    mode, width, height, pixels = _decoded(image["bytes"], gray=False)
    header = {"split": split, "columns": columns, "image": {"path": image.get("path"), "mode": mode, "size": [width, height]}}
    return hashlib.sha256(canonical_json(header).encode() + b"\0" + pixels).hexdigest()


def combine_digests(digests: Iterable[str]) -> str:
    """Definition 1: the sha256 of the sorted row digests."""
    return hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest()


def config_identity(config: ReleaseConfig, data_dir: Path) -> dict[str, Any]:
    """What defines a configuration for ``load_dataset``: its name, whether it is the default, and its
    data files (per split, the shard globs the card's ``configs`` entry gives; ``data_files``)."""
    return {"name": config.name, "default": config.default,
            "data_files": {split: sorted(globs) for split, globs in data_files(config.shard_names(data_dir)).items()}}


def combine(config: ReleaseConfig, data_dir: Path, digests: Iterable[str]) -> str:
    """A configuration's fingerprint from its rows' digests, under the configuration's definition: 2
    hashes the configuration's identity (``config_identity``) with the sorted row digests."""
    if config.definition == 1:
        return combine_digests(digests)
    head = f"covid19-cxr-dataset fingerprint {config.definition}\n{canonical_json(config_identity(config, data_dir))}\n"
    return hashlib.sha256((head + "\n".join(sorted(digests))).encode()).hexdigest()


def shard_digests(out_dir: Path, *, workers: int = 1, only: set[str] | None = None,
                  definition: int = FINGERPRINT_DEFINITION) -> dict[str, list[str]]:
    """{shard path relative to ``out_dir``: row digests}, each image decoded once whatever the number of
    configurations that read it; ``ROW_BATCH`` rows in memory at a time. ``only``: just these shards."""
    def digest(item: tuple[str, dict]) -> str:
        split, row = item
        if definition == 1:
            return legacy_row_digest(split, row["source"], row["source_path"], CLASS_NAMES[row["label"]], row["image"]["bytes"])
        return row_digest(split, row)

    out_dir = Path(out_dir)
    found: dict[str, list[str]] = {}
    columns = ["image", "label", "source", "source_path"] if definition == 1 else None
    paths = [p for p in shard_paths(out_dir / DATA_DIR) if only is None or p.relative_to(out_dir).as_posix() in only]
    covers = "pixels and labels" if definition == 1 else "pixels and every column"
    with ThreadPoolExecutor(max(1, workers)) as pool, \
            progress.bar(sum(_num_rows(p) for p in paths), desc=f"fingerprint (decode every image: {covers})", unit="img") as shown:
        for path in paths:  # Pillow releases the GIL while decoding
            split, digests = split_of(path), []
            for batch in iter_rows(path, columns):
                rows = [(split, row) for row in batch]
                digests += pool.map(digest, rows) if workers > 1 else map(digest, rows)
                shown.update(len(rows))
            found[path.relative_to(out_dir).as_posix()] = digests
    return found


def _num_rows(path: Path) -> int:
    """Rows of a parquet shard, from its footer (0 when unreadable: the reader reports that)."""
    try:
        return shard_rows(path)
    except Exception:  # noqa: BLE001 - a broken shard (or a FIFO) is reported where it is read
        return 0


def config_fingerprints(out_dir: Path, configs: Iterable[ReleaseConfig], *, workers: int = 1) -> dict[str, str]:
    """{configuration: fingerprint} recomputed from the shards, decoding every image once. The
    configurations come from one report (``release_configs``), so they share one definition."""
    out_dir, configs = Path(out_dir), list(configs)
    definitions = {c.definition for c in configs} or {FINGERPRINT_DEFINITION}
    if len(definitions) > 1:
        raise CxrDatasetError(f"{out_dir}: configurations of one release under different fingerprint definitions {sorted(definitions)}")
    wanted = {shard for c in configs for shard in c.shard_names(out_dir)}
    digests = shard_digests(out_dir, workers=workers, only=wanted, definition=definitions.pop())
    return {c.name: combine(c, out_dir, (d for shard in c.shard_names(out_dir) for d in digests.get(shard, []))) for c in configs}


def report_fingerprints(out_dir: Path, report: dict[str, Any], *, workers: int = 1) -> dict[str, str]:
    """{configuration: fingerprint} of every configuration ``report`` defines, recomputed from the shards
    under the report's definition (``fingerprint_definition``), the default first."""
    return config_fingerprints(out_dir, release_configs(out_dir, report), workers=workers)


def fingerprint(out_dir: Path, *, workers: int = 1, config: str | None = None, report: dict[str, Any] | None = None,
                definition: int | None = None) -> str:
    """Recompute one configuration's fingerprint (None: the default) of a release folder, as ``report``
    (default: its build_report.json; none yet: one configuration over every shard) defines it.
    ``definition`` overrides the report's (1: pixels, labels, split, source and path only)."""
    out_dir = Path(out_dir)
    if report is None:
        report = read_report(out_dir) if (out_dir / REPORT_NAME).is_file() else {}
    chosen = resolve_config(out_dir, report, config, stated=False)
    if definition is not None:
        chosen = replace(chosen, definition=definition)
    return config_fingerprints(out_dir, [chosen], workers=workers)[chosen.name]


def config_fingerprint(data_dir: Path, config: ReleaseConfig, *, workers: int | None = None) -> str:
    """Recompute a configuration's fingerprint over its own shards (as resolved from the report in
    hand, which may differ from the one on disk), under its definition."""
    return config_fingerprints(data_dir, [config], workers=workers or os.cpu_count() or 1)[config.name]


def verify_config_fingerprint(data_dir: Path, config: ReleaseConfig, *, workers: int | None = None) -> str:
    """Refuse a configuration whose shards no longer give the fingerprint its build report states."""
    actual = config_fingerprint(data_dir, config, workers=workers)
    if actual != config.fingerprint:
        covered = "images or labels" if config.definition == 1 else "images, labels, other columns or the configuration's data files"
        raise FingerprintMismatch(
            f"{Path(data_dir) / REPORT_NAME}: configuration {config.name!r} has fingerprint {config.fingerprint}, "
            f"but its shards give {actual}; {covered} changed after the build. Rebuild the release or "
            "fetch it again"
        )
    return actual
