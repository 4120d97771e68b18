"""The missing-files report: pinned files a build (or ``plan --check-files``) could not get, and what to do.

``build`` writes it beside ``--out`` (``<out>.missing-files.csv``, columns ``MISSING_COLUMNS``, one
row per file) inside the one error that names every such file (``missing_files_error``);
``new-variant --exclude-missing`` reads it back (``read_missing_report``). ``missing_files_advice``
says what a user can do, as commands that work for the manifest at hand.
"""

from __future__ import annotations

import csv
import io
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import pandas as pd

from . import safe_load
from .errors import CxrDatasetError, MissingUpstreamFiles
from .manifest import Manifest
from .naming import manifest_option, from_argument, next_local_version, shown_path
from .staging import NAME_LIMIT_BYTES, short_name, write_output_file

if TYPE_CHECKING:
    from .options import Options

MAX_MISSING_REPORT_BYTES = 64 * 2**20
"""A missing-files report is a few hundred bytes a file; anything larger is not one (``read_missing_report``)."""

MISSING_REPORT_SUFFIX = ".missing-files.csv"
"""``build --out X`` writes the list of files it could not get to ``X.missing-files.csv``."""


def missing_files_error(
    manifest: Manifest, options: Options, kept: pd.DataFrame, absent: dict[str, dict], unfound: pd.DataFrame,
    out: Path | None, planned: dict[str, str], mismatched: pd.DataFrame | None = None,
) -> MissingUpstreamFiles:
    """One error naming every file that could not be had (``absent``: what the downloader said;
    ``unfound``: local rows without their file) or whose bytes differ from their sha256 pin
    (``mismatched``, with ``sha256`` filled), its list written to a CSV beside ``out``."""
    status_of_local = {s.name: s.MISSING_STATUS for s in manifest.sources}
    mismatched = kept.iloc[0:0] if mismatched is None else mismatched
    rows = []
    for row in kept.itertuples():
        if row.record_id in absent:
            entry = absent[row.record_id]
            status, url = entry["status"], entry["url"]
            detail = entry["detail"].removeprefix(f"{url}: ")
            hashes = {}
        elif row.Index in unfound.index:
            status = status_of_local.get(row.source, "not-in-folder")
            url, detail, hashes = row.local_path, f"{row.local_path} does not exist", {}
        elif row.Index in mismatched.index:
            actual = mismatched.at[row.Index, "sha256"]
            status, url = MISMATCH_STATUS, row.local_path
            detail = f"sha256 {actual}, pinned {row.sha256_expected}"
            hashes = {"sha256_expected": row.sha256_expected, "sha256_actual": actual}
        else:
            continue
        rows.append({"source": row.source, "source_path": row.source_path, "split": planned.get(row.record_id, ""),
                     "label": row.label, "status": status, "url": url, "detail": detail, **hashes})
    target = missing_report_path(Path(out)) if out is not None else \
        options.cache / "missing-files" / f"{manifest.name}-{manifest.version}.csv"
    write_missing_report(target, rows)
    where = f"; nothing was written to {out}" if out is not None else ""
    n_mismatched = sum(r["status"] == MISMATCH_STATUS for r in rows)
    checked = kept[~kept["record_id"].isin({f"{r['source']}:{r['source_path']}" for r in rows})]
    pinned = checked["git_blob_sha1"].ne("") | checked["sha256_expected"].ne("")
    n_missing = len(rows) - n_mismatched
    summary = " and ".join(part for part in (
        f"{n_missing:,} of {len(kept):,} pinned file(s) could not be fetched" if n_missing else "",
        f"{n_mismatched:,} of {len(kept):,} file(s) in hand differ from their pinned sha256" if n_mismatched else "",
    ) if part)
    message = "\n".join([
        f"{manifest.where}: {summary}{where}.",
        f"Every file was checked before this stopped. Of the other {len(checked):,}: {int(pinned.sum()):,} are in the cache "
        f"{options.cache} and match their pin (git blob id or sha256); {int((~pinned).sum()):,} have no pin to check them against.",
        "Per source and split (split: where the file would have gone):",
        *missing_table(rows),
        *missing_lines(rows),
        f"The full list (source, path, split, label, status, URL, pinned and actual sha256) is in {shown_path(target)}",
        missing_files_advice(manifest, target, out=out, mirror=options.mirror, cache_dir=options.cache_dir,
                             kaggle_archive=options.kaggle_archive, missing=len(rows) - n_mismatched, mismatched=n_mismatched),
    ])
    return MissingUpstreamFiles(message, rows, report_path=target)


def missing_report_path(out: Path) -> Path:
    """``<out>.missing-files.csv`` beside ``out`` (``out``'s name shortened when the whole would pass the
    file system's 255 bytes: ``staging.short_name``)."""
    limit = NAME_LIMIT_BYTES - len(MISSING_REPORT_SUFFIX.encode())
    return out.with_name(short_name(out.name, limit) + MISSING_REPORT_SUFFIX)


MISSING_COLUMNS = ("source", "source_path", "split", "label", "status", "url", "detail", "sha256_expected", "sha256_actual")
"""Columns of the missing-files report: ``split`` is where the file would have gone (planned split),
``status`` the HTTP status (``404``...), ``checksum`` (a download with other bytes than pinned),
``not-in-archive`` / ``not-in-folder`` (a Kaggle archive or local folder without the file) or
``sha256-mismatch`` (a file in hand, e.g. from the Kaggle archive, whose sha256 differs from its pin:
``sha256_expected`` is the pin, ``sha256_actual`` the file's; ``new-variant --accept-hashes`` records it)."""

MISMATCH_STATUS = "sha256-mismatch"


def write_missing_report(path: Path, rows: list[dict], *, option: str = "the missing-files report") -> Path:
    """Write the missing-files CSV (atomically, ``staging.write_output_file``; ``option`` names it in an
    error); returns ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CxrDatasetError(f"{option} {path}: cannot create {path.parent} ({error.strerror or error}); choose a "
                              "folder you can write") from None
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(MISSING_COLUMNS), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in sorted(rows, key=lambda r: (r.get("source", ""), r.get("split", ""), r.get("source_path", ""))):
        writer.writerow({c: row.get(c, "") for c in MISSING_COLUMNS})
    return write_output_file(path, buffer.getvalue(), option=option)


def read_missing_report(path: Path) -> list[dict]:
    """The rows of a missing-files report (UTF-8, a BOM allowed), each with its source, path and status;
    refused unless it is a regular file of at most ``MAX_MISSING_REPORT_BYTES`` (a FIFO would hang the
    reader, ``/dev/zero`` never end); a CxrDatasetError naming the file, the line and the fix otherwise."""
    path = Path(path)
    try:
        with safe_load.open_regular(path, max_bytes=MAX_MISSING_REPORT_BYTES, what="the missing-files report") as raw, \
                io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            absent = {"source", "source_path", "status"} - set(reader.fieldnames or [])
            if absent:
                raise CxrDatasetError(
                    f"{path}: not a missing-files report (columns {sorted(absent)} absent); expected the CSV that "
                    f"`cxr-dataset build` or `cxr-dataset plan --check-files` writes: {','.join(MISSING_COLUMNS)}"
                )
            return _complete_rows(path, reader)
    except OSError as error:
        raise CxrDatasetError(f"cannot read the missing-files report {path}: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise CxrDatasetError(
            f"{path}: not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset {error.start}); a missing-files "
            "report is the UTF-8 CSV `cxr-dataset build` or `plan --check-files` writes: pass that file, or save this "
            "one as UTF-8") from None
    except csv.Error as error:
        raise CxrDatasetError(f"{path}: not valid CSV ({error}); pass the report `cxr-dataset build` or `plan "
                              "--check-files` wrote") from None


_REQUIRED = ("source", "source_path", "status")


def _complete_rows(path: Path, reader: csv.DictReader) -> list[dict]:
    """Every row of ``reader`` as a dict of strings, if each has a source, a path and a status (and no
    cell beyond the header's columns)."""
    rows = []
    for row in reader:
        empty = [column for column in _REQUIRED if not (row.get(column) or "").strip()]
        if empty or None in row:
            problem = f"no {', '.join(empty)}" if empty else f"{len(row[None])} cell(s) beyond the header's columns"
            raise CxrDatasetError(
                f"{path}, line {reader.line_num}: {problem}; every row of a missing-files report names a file "
                f"(source, source_path) and its status. Fix or remove that row, or pass the report as written")
        rows.append({key: value or "" for key, value in row.items()})
    return rows


def missing_table(rows: Iterable[dict]) -> list[str]:
    """Lines counting the missing files per source and split, with their statuses."""
    groups: dict[tuple[str, str], dict[str, int]] = {}
    for row in rows:
        statuses = groups.setdefault((row.get("source", ""), row.get("split", "") or "-"), {})
        statuses[row.get("status", "")] = statuses.get(row.get("status", ""), 0) + 1
    lines = []
    for (source, split_name), statuses in sorted(groups.items()):
        described = ", ".join(f"{status_words(s)} {n:,}" for s, n in sorted(statuses.items()))
        lines.append(f"  {source:10s} {split_name:5s} {sum(statuses.values()):6,}   ({described})")
    return lines


def missing_lines(rows: list[dict], limit: int = 40) -> list[str]:
    """One line per missing file (status, source, path, planned split), at most ``limit``."""
    ordered = sorted(rows, key=lambda r: (r.get("source", ""), r.get("source_path", "")))
    lines = [f"  {status_words(r.get('status', '')):>14}  {r.get('source', '')}:{r.get('source_path', '')}"
             + (f"  ({r['split']})" if r.get("split") else "") for r in ordered[:limit]]
    if len(ordered) > limit:
        lines.append(f"  ... and {len(ordered) - limit:,} more")
    return lines


def status_words(status: str) -> str:
    if status == "checksum":
        return "bytes differ from the pin"
    if status == MISMATCH_STATUS:
        return "sha256 differs from the pin"
    if status == "size":
        return "size differs from the pin"
    return f"HTTP {status}" if status.isdigit() else status


def missing_files_advice(
    manifest: Manifest, report_path: Path, *, out: Path | None = None, mirror: str | None = None,
    cache_dir: Path | None = None, kaggle_archive: Path | None = None, missing: int = 1, mismatched: int = 0,
) -> str:
    """What a user can do about missing (``missing``) and mismatched (``mismatched``) files, as commands
    that work for this manifest, verbatim."""
    common = ""
    if mirror:
        common += f" --mirror {shlex.quote(mirror)}"
    if cache_dir:
        common += f" --cache-dir {shlex.quote(shown_path(cache_dir))}"
    version = next_local_version(manifest.version)
    base = Path(out).parent if out is not None else Path(".")
    variant_dir = shown_path(base / f"{manifest.name}-{version}-manifest")
    variant_out = shown_path(base / f"{manifest.name}-{version}")
    kaggle = f" --kaggle-archive {shlex.quote(shown_path(kaggle_archive))}" if kaggle_archive else ""
    if out is None and not kaggle_archive:  # plan --check-files: the variant's build needs the archive option too
        kaggle = "".join(f" {s.build_option_example()}" for s in manifest.sources if s.build_option_example())
    again = (f"cxr-dataset build {manifest_option(manifest)} --out {shlex.quote(shown_path(out))}{kaggle}{common}"
             if out is not None else f"cxr-dataset plan {manifest_option(manifest)} --check-files{common}")
    report = shlex.quote(shown_path(report_path))
    flags = (f" --exclude-missing {report}" if missing else "") + (f" --accept-hashes {report}" if mismatched else "")
    what = " and ".join(part for part in (
        "leaves the missing files out (expected counts: the release's minus them)" if missing else "",
        f"records the sha256 of the {mismatched:,} file(s) you hold as a documented deviation (its card says how many "
        f"differ from {manifest.version}'s pins and that it is not release {manifest.version})" if mismatched else "",
    ) if part)
    steps: list[list[str]] = []
    if missing:
        steps.append([
            "Wait and retry: upstream or the mirror may be catching up. Fetched files are cached; a rerun asks only for the rest:"
            if out is not None else "Wait and check again: upstream or the mirror may be catching up:", f"     {again}"])
        steps.append(["Use another mirror (same <owner>/<repo>/<commit>/<path> layout); check what it holds without downloading:",
                      f"     cxr-dataset plan {manifest_option(manifest)} --check-files --mirror URL"])
    if mismatched:
        steps.append([f"Get the archive {manifest.name} {manifest.version} pins (the Kaggle dataset version its manifest names) "
                      "and build again with it."])
    steps.append([f"Make a local variant that {what}, then build it:",
                  f"     cxr-dataset new-variant --from {from_argument(manifest)} {shlex.quote(variant_dir)}{flags}{common}",
                  f"     cxr-dataset build --manifest {shlex.quote(variant_dir)} --out {shlex.quote(variant_out)}{kaggle}{common}"])
    lines = ["What you can do:"]
    for number, (first, *rest) in enumerate(steps, start=1):
        lines += [f"  {number}. {first}", *(f"  {line}" for line in rest)]
    return "\n".join(lines)
