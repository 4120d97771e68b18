"""Verify stage: check a release folder (built here or downloaded) against its ``build_report.json``.

The build report is the reference. ``verify_release`` re-reads the folder and compares:

- every shard the report lists (``report["shards"]``) exists with its sha256 and size;
- a shard's rows are read only when its parquet footer allows it (``release.readable_shards``): no more
  rows than its bytes can hold, no more rows in its split than the report counts, a regular file (not
  a FIFO); any other shard is named and never decoded, so memory stays bounded whatever a footer says;
- no other ``*.parquet`` file sits under ``data/`` (``load_dataset`` would read it as data);
- every configuration's fingerprint, recomputed under the report's definition (``release``: every
  column of every row with its decoded pixels, and the configuration's name, default and data files;
  schema-1 reports: pixels, label, split, source and path, with a note saying so), equals the one the
  report states; ``report["fingerprint"]`` is the default configuration's;
- the images per split and class, recounted from the shards' ``label`` column, equal ``report["counts"]``;
- README.md's YAML header parses, names the class labels the shards use (``CLASS_NAMES``), and
  states the split sizes the shards hold; each shard's embedded ``datasets`` features name them too;
- every configuration of the report (``report["configs"]``): its shard list is exactly the shards
  in its folders, its counts recount from them, exactly one is the default, a subset's rows carry no flag and
  the ``flagged`` folder's rows carry one; the card's ``configs`` resolve, per configuration and
  split, to exactly that configuration's shards of that split (``card-data-files``), and its
  ``dataset_info`` states every split's size;
- README.md is exactly what ``card.render_card`` generates from the report and the shards, byte
  for byte (``card-generated``): the card is generated, so any edit is a difference; so are
  ``croissant.json`` and ``unpinned-files.csv`` (``generated``: ``generated.generated_files``).

The shard hashes catch any change of bytes. The fingerprint and the counts come from decoded content,
so an edited column, a switched default or a re-encoded image is caught even where someone also rewrote
the shard hashes in the report and regenerated the card; only a report whose fingerprints were
recomputed as well could hide it, which is why the recomputed fingerprints are also checked against
ones held outside the folder (``anchors``: ``--fingerprint`` values, a manifest's ``fingerprints``), and
printed in citations, the Hub tag message and the baseline certificate.

Every difference is one ``Problem`` naming the file, what was expected and what was found.
``require_verified`` raises ``VerificationError`` listing them all.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

import pyarrow.parquet as pq
import yaml

from . import CLASS_NAMES
from . import anchors as anchors_module
from . import progress, report_shape, safe_load
from .report_shape import card_header, card_label_names, dataset_infos as _dataset_infos  # noqa: F401 (public here too)
from .card_sections import release_url
from .anchors import Anchor
from .citation import format_citations
from .errors import CxrDatasetError, NotARegularFile, VerificationError
from .download.hashes import file_sha256
from .generated import CROISSANT_NAME, NAMES as GENERATED_NAMES, generated_files
from .manifest import Manifest
from .release import (
    CARD_NAME, DATA_DIR, FINGERPRINT_DEFINITION, FLAGGED_FOLDER, REPORT_NAME, combine, fingerprint_definition, open_shard,
    read_report, read_row_table, readable_shards, release_configs, shard_digests, shard_paths, split_of,
)
NEXT_STEP = (
    "Rebuild the release with `cxr-dataset build` or download it again; "
    "do not train on or publish a release that fails verification."
)


@dataclass(frozen=True)
class Problem:
    """One difference between a release folder and its build report."""

    file: str  # path relative to the release folder, e.g. "data/test-00000-of-00001.parquet"
    check: str  # short code: report, shard-missing, shard-extra, shard-sha256, shard-bytes, ...
    expected: str
    actual: str
    hint: str = ""  # what to do about this one problem, when it differs from NEXT_STEP

    def __str__(self) -> str:
        hint = f" ({self.hint})" if self.hint else ""
        return f"{self.file}: {self.check}: expected {self.expected}, found {self.actual}{hint}"


@dataclass
class VerifyResult:
    """What ``verify_release`` checked and every problem it found (none: the release is intact)."""

    out_dir: Path
    problems: list[Problem] = field(default_factory=list)
    dataset: str = ""
    version: str = ""
    shards: int = 0  # shards read
    rows: int = 0  # rows recounted
    fingerprint: str = ""  # recomputed (the default configuration's); "" when it could not be computed
    fingerprints: dict[str, str] = field(default_factory=dict)  # recomputed {configuration: fingerprint}
    definition: int = FINGERPRINT_DEFINITION  # the report's fingerprint definition (release.fingerprint_definition)
    notes: list[str] = field(default_factory=list)  # what the user should know even when nothing failed
    anchored: list[str] = field(default_factory=list)  # fingerprints from outside the folder that matched
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # recounted {split: {class: n}}
    configs: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)  # recounted per configuration

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, file: str, check: str, expected: Any, actual: Any, hint: str = "") -> None:
        self.problems.append(Problem(file, check, str(expected), str(actual), hint))

    def summary(self) -> str:
        """A few lines for people: what was verified, or every problem."""
        name = f"{self.dataset} {self.version}".strip() or "release"
        if self.ok:
            per_split = ", ".join(f"{split} {sum(c.values()):,}" for split, c in self.counts.items())
            configs = "".join(
                f"\n  configuration {config}: " + ", ".join(f"{split} {sum(c.values()):,}" for split, c in counts.items())
                + (f"; fingerprint {self.fingerprints[config]}" if config in self.fingerprints else "")
                for config, counts in self.configs.items()
            )
            return (
                f"{self.out_dir}: {name} verified: {self.shards} shard(s), {self.rows:,} images ({per_split}); "
                f"fingerprint {self.fingerprint} matches build_report.json; the card and the other generated files "
                "(croissant.json, unpinned-files.csv) are the ones the build generates" + configs
                + "".join(f"\n  {line}" for line in self.anchored) + "".join(f"\n  note: {note}" for note in self.notes)
            )
        lines = [f"{self.out_dir}: {name} FAILED verification: {len(self.problems)} problem(s)"]
        lines += [f"  - {problem}" for problem in self.problems]
        lines += [f"  note: {note}" for note in self.notes]
        lines.append(f"  {NEXT_STEP}")
        return "\n".join(lines)


def verify_release(out_dir: Path | str, *, workers: int = 1, fingerprints: Iterable[Anchor | str] = ()) -> VerifyResult:
    """Check a release folder against its build report and against fingerprints from outside it
    (``fingerprints``: ``[CONFIG=]HEX`` anchors, and those this package's manifest records for the
    release the report names, ``anchors.recorded``); returns every problem (none: intact)."""
    out_dir = Path(out_dir)
    given = [a if isinstance(a, Anchor) else anchors_module.parse(a) for a in fingerprints]
    result = VerifyResult(out_dir=out_dir)
    if not out_dir.is_dir():
        result.add(str(out_dir), "release", "a release folder (README.md, build_report.json, data/)",
                   "no such folder" if not out_dir.exists() else "a file")
        return result
    report = _read_report(out_dir, result)
    sound = not result.problems  # a report that failed its shape check cannot generate the card to compare
    result.dataset, result.version = str(report.get("dataset", "")), str(report.get("version", ""))
    if "shards" in report:
        _check_shard_files(out_dir, report["shards"], result, workers)
    readable, refused = readable_shards(out_dir, report.get("counts"))
    for problem in refused:
        result.add(*problem)
    label_names = _recount(out_dir, readable, result)
    if "counts" in report:
        _check_counts(report["counts"], result)
    configs = report.get("configs") if isinstance(report.get("configs"), dict) else {}
    if configs:
        _check_configs(out_dir, configs, readable, result)
    if "fingerprint" in report:
        _check_fingerprint(out_dir, report, readable, result, workers)
        _check_anchors(report, given, result)
    header = _check_card(out_dir, result, label_names)
    if header is not None and configs:
        _check_card_configs(out_dir, header, configs, result)
    if report and sound:  # README.md, croissant.json, unpinned-files.csv (not from a report that failed its shape check)
        _check_generated(out_dir, report, readable, result, card=header is not None)
    return result


def require_verified(out_dir: Path | str, *, workers: int = 1, fingerprints: Iterable[Anchor | str] = ()) -> VerifyResult:
    """``verify_release``, raising ``VerificationError`` (listing every problem) unless the release is intact."""
    result = verify_release(out_dir, workers=workers, fingerprints=fingerprints)
    if not result.ok:
        error = VerificationError(result.summary())
        error.problems = list(result.problems)  # type: ignore[attr-defined]
        raise error
    return result


# ---- the report ------------------------------------------------------------------------------

def _read_report(out_dir: Path, result: VerifyResult) -> dict[str, Any]:
    path = out_dir / REPORT_NAME
    expected = "the build report `cxr-dataset build` writes"
    try:
        report = read_report(out_dir)
    except FileNotFoundError:
        result.add(REPORT_NAME, "report", expected, "no such file")
        return {}
    except NotARegularFile as error:
        result.add(REPORT_NAME, "report", expected, str(error).removeprefix(f"{path}: "))
        return {}
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        result.add(REPORT_NAME, "report", "valid JSON", f"unreadable JSON ({error})")
        return {}
    if not isinstance(report, dict):
        result.add(REPORT_NAME, "report", "a JSON object", type(report).__name__)
        return {}
    for key, kind in (("shards", dict), ("fingerprint", str), ("counts", dict)):
        if key not in report:
            result.add(REPORT_NAME, "report", f"key {key!r} ({kind.__name__})", "missing")
    # Types and paths before anything acts on them: a hostile report names no file outside the folder.
    report, problems = report_shape.checked_report(report)
    for where, expected, actual in problems:
        result.add(REPORT_NAME, "report", f"{where}: {expected}", actual,
                   hint="the report was edited or damaged; rebuild the release or download it again")
    return report


# ---- shard files -----------------------------------------------------------------------------

def _check_shard_files(out_dir: Path, listed: dict[str, Any], result: VerifyResult, workers: int) -> None:
    """Every listed shard is a regular file with its size and sha256; nothing else named like a shard
    sits under data/. Nothing here reads more than the bytes to hash."""
    present: list[tuple[str, Path, dict[str, Any]]] = []
    for relpath in sorted(listed):
        entry = listed[relpath] if isinstance(listed[relpath], dict) else {}
        expected = f"sha256 {entry.get('sha256', '?')}, {entry.get('bytes', '?')} bytes"
        if not _inside_data_dir(relpath):
            result.add(REPORT_NAME, "shard-path", f"shard paths under {DATA_DIR}/", repr(relpath))
            continue
        path = out_dir / relpath
        kind = safe_load.file_kind(path)
        if kind:
            result.add(relpath, "shard-missing", expected, kind, hint="" if kind == "no such file" else "not read")
        else:
            present.append((relpath, path, entry))

    def digest(item: tuple[str, Path, dict[str, Any]]) -> tuple[str, dict[str, Any], int, str]:
        relpath, path, entry = item
        return relpath, entry, path.stat().st_size, file_sha256(path)

    with ThreadPoolExecutor(max(1, workers)) as pool:  # hashlib releases the GIL on large blocks
        for relpath, entry, size, sha256 in progress.track(pool.map(digest, present), total=len(present), unit="shard",
                                                           desc="hash shards (against build_report.json)"):
            if size != entry.get("bytes"):
                result.add(relpath, "shard-bytes", f"{entry.get('bytes')} bytes", f"{size} bytes")
            if sha256 != entry.get("sha256"):
                result.add(relpath, "shard-sha256", f"sha256 {entry.get('sha256')}", f"sha256 {sha256}")

    on_disk = sorted(str(p.relative_to(out_dir).as_posix()) for p in (out_dir / DATA_DIR).rglob("*.parquet"))
    for relpath in on_disk:
        if relpath not in listed:
            kind = safe_load.file_kind(out_dir / relpath)
            result.add(relpath, "shard-extra", f"only the {len(listed)} shard(s) build_report.json lists",
                       f"a shard it does not list{f' ({kind})' if kind else ''}",
                       hint="load_dataset would read it as data; remove it")


def _inside_data_dir(relpath: str) -> bool:
    parts = PurePosixPath(relpath).parts
    return len(parts) >= 2 and parts[0] == DATA_DIR and ".." not in parts and not PurePosixPath(relpath).is_absolute()


# ---- decoded content -------------------------------------------------------------------------

def _recount(out_dir: Path, readable: list[str], result: VerifyResult) -> list[str] | None:
    """Count images per split and class from the label column of every shard that may be read
    (``release.readable_shards``); returns the embedded label names."""
    counts: dict[str, dict[str, int]] = {}
    embedded: list[str] | None = None
    for relpath in readable:
        path = out_dir / relpath
        split = split_of(path)
        try:
            with open_shard(path) as handle:
                parquet = pq.ParquetFile(handle)
                metadata = parquet.schema_arrow.metadata or {}
                labels = parquet.read(columns=["label"]).column("label").to_pylist()
        except Exception as error:  # any pyarrow failure means the same thing here: unreadable
            result.add(relpath, "shard-unreadable", "a parquet file with a label column", f"{type(error).__name__}: {error}")
            continue
        result.shards += 1
        result.rows += len(labels)
        names = _embedded_label_names(metadata)
        if names != list(CLASS_NAMES):
            result.add(relpath, "shard-labels", f"embedded features with label names {list(CLASS_NAMES)}",
                       names if names is not None else "no datasets features in the parquet metadata")
        embedded = embedded or names
        per_class = counts.setdefault(split, {name: 0 for name in CLASS_NAMES})
        bad = [value for value in labels if not (isinstance(value, int) and 0 <= value < len(CLASS_NAMES))]
        if bad:
            result.add(relpath, "labels", f"label values 0..{len(CLASS_NAMES) - 1}",
                       f"{len(bad)} other value(s), e.g. {bad[:3]}")
        for value in labels:
            if isinstance(value, int) and 0 <= value < len(CLASS_NAMES):
                per_class[CLASS_NAMES[value]] += 1
    result.counts = {split: counts[split] for split in sorted(counts, key=_split_order)}
    return embedded


def _embedded_label_names(metadata: dict[bytes, bytes]) -> list[str] | None:
    try:
        features = json.loads(metadata[b"huggingface"])["info"]["features"]
        return list(features["label"]["names"])
    except (KeyError, TypeError, ValueError):
        return None


def _check_counts(expected: dict[str, Any], result: VerifyResult) -> None:
    for split in sorted(set(expected) | set(result.counts), key=_split_order):
        want = expected.get(split)
        have = result.counts.get(split)
        file = f"{DATA_DIR}/{split}-*.parquet"
        if not isinstance(want, dict):
            result.add(file, "counts", f"no split {split!r} (build_report.json lists {sorted(expected)})", _format_counts(have))
            continue
        if have is None:
            result.add(file, "counts", _format_counts(want), "no shards for this split")
            continue
        classes = list(CLASS_NAMES) + sorted(set(want) - set(CLASS_NAMES))
        if any(int(want.get(c, 0)) != have.get(c, 0) for c in classes):
            result.add(file, "counts", _format_counts(want, classes), _format_counts(have, classes))


def _split_order(split: str) -> tuple[int, str]:
    order = ("train", "validation", "test")
    return (order.index(split) if split in order else len(order), split)


def _format_counts(counts: dict[str, Any] | None, classes: list[str] | None = None) -> str:
    if counts is None:
        return "none"
    return ", ".join(f"{c} {int(counts.get(c, 0)):,}" for c in (classes or list(counts)))


def _check_fingerprint(out_dir: Path, report: dict[str, Any], readable: list[str], result: VerifyResult, workers: int) -> None:
    """Every configuration's fingerprint, recomputed under the report's definition (each image decoded
    once), equals the one the report states; the top-level one is the default configuration's."""
    expected = str(report["fingerprint"])
    result.definition = definition = fingerprint_definition(report)
    if definition != FINGERPRINT_DEFINITION:
        result.notes.append(
            f"build_report.json has report schema {report.get('report_schema')}: its fingerprints use the old definition "
            f"{definition} (decoded pixels, label, split, source and source_path) and are checked as such; an edit of any "
            "other column, of the default configuration or of a configuration's data files is not covered. Rebuild it "
            f"with this package for definition {FINGERPRINT_DEFINITION} (every column and each configuration's definition)")
    try:
        configs = release_configs(out_dir, report)
        digests = shard_digests(out_dir, workers=workers, only=set(readable), definition=definition)
    except Exception as error:  # an undecodable image or a broken shard: report it, do not crash
        result.add(f"{DATA_DIR}/*.parquet", "fingerprint", f"fingerprint {expected}",
                   f"none: it could not be computed ({type(error).__name__}: {error})")
        return
    differ = ("decoded pixels or labels differ" if definition == 1 else
              "the rows (pixels or any column) or the configuration's name, default or data files differ")
    for config in configs:
        result.fingerprints[config.name] = combine(config, out_dir, (d for p in config.shard_names(out_dir) for d in digests.get(p, [])))
    result.fingerprint = result.fingerprints[configs[0].name]
    if result.fingerprint != expected:
        result.add(f"{DATA_DIR}/*.parquet", "fingerprint", f"fingerprint {expected} (the default configuration's)",
                   f"fingerprint {result.fingerprint} of {configs[0].name!r} ({differ})")
    for name, config in (report.get("configs") or {}).items():
        actual = result.fingerprints.get(name)
        if isinstance(config, dict) and actual != config.get("fingerprint"):
            result.add(f"{DATA_DIR}/ ({name})", "config-fingerprint", f"configuration {name!r}: fingerprint {config.get('fingerprint')}",
                       f"fingerprint {actual} ({differ})")


def _check_anchors(report: dict[str, Any], given: list[Anchor], result: VerifyResult) -> None:
    """The recomputed fingerprints against fingerprints from outside the folder (``anchors``)."""
    recorded = anchors_module.recorded(report)
    if not recorded.anchors and not given:
        result.notes.append(recorded.note)
    if not result.fingerprints:
        return  # could not be computed: already a problem
    problems, result.anchored = anchors_module.check([*given, *recorded.anchors], result.fingerprints, result.definition)
    for problem in problems:
        result.add(*problem)


def _check_configs(out_dir: Path, configs: dict[str, Any], readable: list[str], result: VerifyResult) -> None:
    """Each configuration's shard list is exactly the shards in its folders; its counts and flags hold."""
    try:
        rows = read_row_table(out_dir, readable)
    except Exception as error:  # shard problems are reported by _recount
        result.add(f"{DATA_DIR}/*.parquet", "configs", "readable shards", f"{type(error).__name__}: {error}")
        return
    subsets = [name for name, c in configs.items() if isinstance(c, dict) and not c.get("default")]
    defaults = sorted(set(configs) - set(subsets))
    if len(defaults) != 1:
        result.add(REPORT_NAME, "configs", "exactly one configuration with default: true", defaults or "none")
    for name, config in configs.items():
        if not isinstance(config, dict):
            result.add(REPORT_NAME, "configs", f"configuration {name!r} as an object", type(config).__name__)
            continue
        folders = config.get("folders") or []
        on_disk = sorted(p.relative_to(out_dir).as_posix() for p in shard_paths(out_dir / DATA_DIR, folders=folders))
        if sorted(config.get("shards", [])) != on_disk:
            result.add(f"{DATA_DIR}/ ({name})", "config-shards", f"configuration {name!r}: shards {sorted(config.get('shards', []))}",
                       on_disk)
        mine = rows[rows["folder"].isin(folders)]
        counts = {split: {c: int(((mine["split"] == split) & (mine["label"] == c)).sum()) for c in CLASS_NAMES}
                  for split in sorted(set(mine["split"]), key=_split_order)}
        result.configs[name] = counts
        expected = config.get("counts", {})
        if {s: {c: int(n) for c, n in v.items()} for s, v in expected.items()} != counts:
            result.add(f"{DATA_DIR}/ ({name})", "config-counts", f"configuration {name!r}: {expected}", counts)
    for name in subsets:
        dirty = rows[rows["folder"].eq(name) & rows["flags"].map(bool)]
        if len(dirty):
            result.add(f"{DATA_DIR}/{name}/", "flags", f"no flagged row in the {name!r} configuration",
                       f"{len(dirty)} flagged row(s), e.g. {dirty.iloc[0]['source']}:{dirty.iloc[0]['source_path']}")
    clean = rows[rows["folder"].eq(FLAGGED_FOLDER) & ~rows["flags"].map(bool)]
    if subsets and len(clean):
        result.add(f"{DATA_DIR}/{FLAGGED_FOLDER}/", "flags", "every row of the flagged folder flagged",
                   f"{len(clean)} row(s) without a flag, e.g. {clean.iloc[0]['source']}:{clean.iloc[0]['source_path']}")


# ---- the card --------------------------------------------------------------------------------

MAX_CARD_BYTES = 64 * 2**20
"""A dataset card is tens of kilobytes; a larger README.md is not one this package wrote."""


def _card_text(out_dir: Path) -> str:
    """README.md, refused unless a regular file of at most ``MAX_CARD_BYTES`` (``NotARegularFile``)."""
    return safe_load.read_regular(out_dir / CARD_NAME, max_bytes=MAX_CARD_BYTES, what="the dataset card").decode("utf-8")


def _check_card(out_dir: Path, result: VerifyResult, embedded: list[str] | None) -> dict[str, Any] | None:
    path = out_dir / CARD_NAME
    try:
        header = card_header(_card_text(out_dir))
    except FileNotFoundError:
        result.add(CARD_NAME, "card", "the dataset card with a YAML header", "no such file")
        return None
    except NotARegularFile as error:
        result.add(CARD_NAME, "card", "the dataset card with a YAML header", str(error).removeprefix(f"{path}: "))
        return None
    except (UnicodeDecodeError, ValueError, yaml.YAMLError) as error:
        result.add(CARD_NAME, "card", "a YAML header that parses", f"{type(error).__name__}: {error}")
        return None
    label_lists = card_label_names(header)
    if not label_lists:
        result.add(CARD_NAME, "card-labels", f"dataset_info naming class labels {list(CLASS_NAMES)}",
                   "no label feature with class_label names")
    for names in label_lists:
        if names != list(CLASS_NAMES):
            result.add(CARD_NAME, "card-labels", f"class labels {list(CLASS_NAMES)}"
                       + (" (as the shards' embedded features)" if embedded == list(CLASS_NAMES) else ""), names)
    for info in _dataset_infos(header):
        for split in info.get("splits") or []:
            if not isinstance(split, dict):
                continue
            name, stated = split.get("name"), split.get("num_examples")
            if not isinstance(name, str) or not isinstance(info.get("config_name", ""), str):
                result.add(CARD_NAME, "card-splits", "dataset_info entries naming their configuration and splits by name",
                           f"{report_shape.found(info.get('config_name'))}, split {report_shape.found(name)}")
                continue
            counts = result.configs.get(info.get("config_name"), result.counts) if info.get("config_name") else result.counts
            if name in counts and stated != sum(counts[name].values()):
                where = f" of configuration {info['config_name']!r}" if info.get("config_name") else ""
                result.add(CARD_NAME, "card-splits", f"{name}{where}: {sum(counts[name].values()):,} examples (as in the shards)",
                           f"{stated} examples")
    return header


def _check_card_configs(out_dir: Path, header: dict[str, Any], configs: dict[str, Any], result: VerifyResult) -> None:
    """The card's configs resolve, per configuration and split, to exactly that configuration's shards."""
    entries = [c for c in header.get("configs") or [] if isinstance(c, dict)] if isinstance(header.get("configs"), list) else []
    for entry in entries:
        if not isinstance(entry.get("config_name"), str):
            result.add(CARD_NAME, "card-configs", "configs entries each with a config_name (a string)",
                       report_shape.found(entry.get("config_name")))
    stated = {c.get("config_name"): c for c in entries if isinstance(c.get("config_name"), str)}
    for name in sorted(set(stated) - set(configs), key=str):
        result.add(CARD_NAME, "card-configs", f"only the configurations build_report.json lists ({sorted(configs)})",
                   f"configuration {name!r}")
    infos = {info.get("config_name"): info for info in _dataset_infos(header) if isinstance(info.get("config_name"), (str, type(None)))}
    for name, config in configs.items():
        entry = stated.get(name)
        if entry is None:
            result.add(CARD_NAME, "card-configs", f"a configs entry for configuration {name!r}", "none")
            continue
        if bool(entry.get("default")) != bool(config.get("default")):
            result.add(CARD_NAME, "card-configs", f"configuration {name!r} {'marked' if config.get('default') else 'not marked'} default: true",
                       f"default: {entry.get('default', False)}")
        shards = [p for p in config.get("shards", []) if isinstance(p, str)]
        splits = sorted({PurePosixPath(p).name.split("-", 1)[0] for p in shards}, key=_split_order)
        listed = entry.get("data_files") if isinstance(entry.get("data_files"), list) else []
        for e in listed:
            if not (isinstance(e, dict) and isinstance(e.get("split"), str)):
                result.add(CARD_NAME, "card-data-files", f"configuration {name!r}: data_files entries naming a split (a "
                           "string) and its path", report_shape.found(e), hint="the card is generated: rebuild instead of editing it")
        files = {e.get("split"): e.get("path") for e in listed if isinstance(e, dict) and isinstance(e.get("split"), str)}
        for split in sorted(set(files) | set(splits), key=lambda s: _split_order(str(s))):
            want = sorted(p for p in shards if PurePosixPath(p).name.startswith(f"{split}-"))
            patterns = files.get(split)
            patterns = [] if patterns is None else [patterns] if isinstance(patterns, str) else \
                patterns if isinstance(patterns, list) else [patterns]
            refused = [why for why in map(report_shape.data_file_problem, patterns) if why]
            if refused:  # never globbed: a card must not make verify list files outside the release
                result.add(CARD_NAME, "card-data-files", f"configuration {name!r}, split {split!r}: data_files paths that are "
                           f"relative globs under {DATA_DIR}/ inside the release folder", "; ".join(refused),
                           hint="the card is generated: rebuild instead of editing it")
                continue
            got = sorted({p.relative_to(out_dir).as_posix() for pattern in patterns for p in out_dir.glob(pattern) if p.is_file()})
            if got != want:
                result.add(CARD_NAME, "card-data-files",
                           f"configuration {name!r}, split {split!r}: data_files resolving to {want or 'no split'}",
                           f"{patterns} resolving to {got or 'no file'}")
        info = infos.get(name) if len(configs) > 1 or name in infos else (infos.get(None) or next(iter(infos.values()), None))
        stated_splits = {s.get("name") for s in (info or {}).get("splits") or [] if isinstance(s, dict)}
        missing = [s for s in splits if s not in stated_splits]
        if missing:
            result.add(CARD_NAME, "card-splits", f"dataset_info of configuration {name!r} stating the splits {splits}",
                       f"{sorted(stated_splits) or 'no splits'} (missing {missing})")


def _check_generated(out_dir: Path, report: dict[str, Any], readable: list[str], result: VerifyResult, *, card: bool) -> None:
    """Every generated file must be exactly what the build generates from build_report.json and the shards
    (``generated.generated_files``, from the shards verify may read: ``readable``): README.md
    (``card-generated``; only when ``card``, i.e. its header could be read: ``_check_card`` reported it
    otherwise), croissant.json and unpinned-files.csv (``generated``; a file the report gives no content,
    e.g. no unpinned file, must be absent)."""
    try:
        expected = generated_files(report, read_row_table(out_dir, readable))
    except Exception as error:  # a report or shard broken enough to stop rendering: already reported
        found = f"none: they could not be generated ({type(error).__name__}: {error})"
        if card:
            result.add(CARD_NAME, "card-generated", "the card generated from build_report.json and the shards", found)
        result.add(CROISSANT_NAME, "generated", "the files generated from build_report.json and the shards", found)
        return
    for name in GENERATED_NAMES:
        if name == CARD_NAME and not card:
            continue
        check, hint = (("card-generated", "the card is generated: rebuild instead of editing it") if name == CARD_NAME
                       else ("generated", "it is generated: rebuild instead of editing it"))
        path = out_dir / name
        if name not in expected:
            if path.exists():
                result.add(name, check, "no such file (build_report.json gives it no content)", "a file", hint=hint)
            continue
        try:
            data = safe_load.read_regular(path, max_bytes=MAX_CARD_BYTES, what="a generated file")
        except (OSError, NotARegularFile) as error:
            found = "no such file" if isinstance(error, FileNotFoundError) else str(error).removeprefix(f"{path}: ")
            result.add(name, check, "the file the build generates from build_report.json", found, hint=hint)
            continue
        want_text = expected[name].decode("utf-8")
        have_text = data.decode("utf-8", "replace")
        if data == expected[name] or (name == CARD_NAME and have_text.replace("\r\n", "\n") == want_text):
            continue
        want, have = want_text.splitlines(), have_text.splitlines()
        line = next((i for i, (a, b) in enumerate(zip(want, have)) if a != b), min(len(want), len(have)))
        result.add(name, check, f"the {'card' if name == CARD_NAME else 'file'} generated from build_report.json and the "
                   f"shards; line {line + 1}: {want[line] if line < len(want) else '<end of file>'!r}",
                   f"{have[line] if line < len(have) else '<end of file>'!r}", hint=hint)


# ---- citing a verified folder ------------------------------------------------------------------

def cite_release(out_dir: Path | str, fmt: str = "bibtex", config: str | None = None, *, manifest: Manifest | None = None,
                 workers: int = 1, fingerprints: Iterable[Anchor | str] = (), url: str | None = None) -> str:
    """The citations of the release in ``out_dir``, carrying the fingerprints recomputed from its shards,
    after verifying it (``require_verified``: a folder that fails is not cited). ``manifest``: the
    manifest it was built from (default: the one this package bundles for the name and version its
    report states; a local variant must be named, as its folder). ``url``: where the release lives
    (default: the Hub repository ``publish`` recorded in the folder, if any)."""
    out_dir = Path(out_dir)
    try:
        report = read_report(out_dir)
    except (OSError, ValueError):
        report = None
    if not isinstance(report, dict):
        require_verified(out_dir, workers=workers)  # fails, naming what is wrong with the report
        raise VerificationError(f"{out_dir / REPORT_NAME}: not a build report")
    name, version = str(report.get("dataset", "")), str(report.get("version", ""))
    manifest = manifest or anchors_module.bundled_manifest(report)
    if manifest is None:
        raise CxrDatasetError(f"{out_dir / REPORT_NAME}: this package bundles no manifest of {name} {version}; pass the "
                              "manifest folder it was built from with --manifest DIR (a local variant's own folder)")
    if (manifest.name, manifest.version) != (name, version):
        raise CxrDatasetError(f"{out_dir / REPORT_NAME}: the folder holds {name} {version}, but the manifest given is "
                              f"{manifest.name} {manifest.version} ({manifest.path}); pass the one it was built from")
    result = require_verified(out_dir, workers=workers, fingerprints=fingerprints)
    if config is not None and config not in result.fingerprints:
        raise CxrDatasetError(f"{out_dir}: no configuration {config!r}; it has {', '.join(result.fingerprints)}")
    where = release_url(report) if url is None else url
    return format_citations(manifest, fmt, config, where, fingerprints=result.fingerprints)
