"""The missing-files report: pinned files a build (or ``plan --check-files``) could not get, and what to do.

``build`` writes it beside ``--out`` (``<out>.missing-files.csv``, columns ``MISSING_COLUMNS``, one
row per file) inside the one error that names every such file (``missing_files_error``);
``new-variant --exclude-missing`` reads it back (``read_missing_report``). ``missing_files_advice``
says what a user can do, as commands that work for the manifest at hand.
"""

from __future__ import annotations

import csv
import io
import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import pandas as pd

from .errors import CxrDatasetError, MissingUpstreamFiles
from .manifest import Manifest
from .naming import manifest_option, from_argument, next_local_version, shown_path

if TYPE_CHECKING:
    from .options import Options

MISSING_REPORT_SUFFIX = ".missing-files.csv"
"""``build --out X`` writes the list of files it could not get to ``X.missing-files.csv``."""


def missing_files_error(
    manifest: Manifest, options: Options, kept: pd.DataFrame, absent: dict[str, dict], unfound: pd.DataFrame,
    out: Path | None, planned: dict[str, str],
) -> MissingUpstreamFiles:
    """One error naming every file that could not be had, its list written to a CSV beside ``out``."""
    status_of_local = {s.name: s.MISSING_STATUS for s in manifest.sources}
    rows = []
    for row in kept.itertuples():
        if row.record_id in absent:
            entry = absent[row.record_id]
            status, url = entry["status"], entry["url"]
            detail = entry["detail"].removeprefix(f"{url}: ")
        elif row.Index in unfound.index:
            status = status_of_local.get(row.source, "not-in-folder")
            url, detail = row.local_path, f"{row.local_path} does not exist"
        else:
            continue
        rows.append({"source": row.source, "source_path": row.source_path, "split": planned.get(row.record_id, ""),
                     "label": row.label, "status": status, "url": url, "detail": detail})
    target = Path(out).with_name(Path(out).name + MISSING_REPORT_SUFFIX) if out is not None else \
        options.cache / "missing-files" / f"{manifest.name}-{manifest.version}.csv"
    write_missing_report(target, rows)
    where = f"; nothing was written to {out}" if out is not None else ""
    message = "\n".join([
        f"{manifest.path}: {len(rows):,} of {len(kept):,} pinned file(s) could not be fetched; every other file was "
        f"downloaded and is verified in the cache {options.cache}{where}.",
        "Missing per source and split (split: where the file would have gone):",
        *missing_table(rows),
        *missing_lines(rows),
        f"The full list (source, path, split, label, HTTP status, URL) is in {shown_path(target)}",
        missing_files_advice(manifest, target, out=out, mirror=options.mirror, cache_dir=options.cache_dir,
                                     kaggle_archive=options.kaggle_archive),
    ])
    return MissingUpstreamFiles(message, rows, report_path=target)



MISSING_COLUMNS = ("source", "source_path", "split", "label", "status", "url", "detail")
"""Columns of the missing-files report: ``split`` is where the file would have gone (planned split),
``status`` the HTTP status (``404``...), ``checksum`` (other bytes than pinned) or ``not-in-archive``
/ ``not-in-folder`` (a Kaggle archive or local folder without the file)."""


def write_missing_report(path: Path, rows: list[dict]) -> Path:
    """Write the missing-files CSV (atomically); returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(MISSING_COLUMNS), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in sorted(rows, key=lambda r: (r.get("source", ""), r.get("split", ""), r.get("source_path", ""))):
        writer.writerow({c: row.get(c, "") for c in MISSING_COLUMNS})
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(buffer.getvalue(), encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def read_missing_report(path: Path) -> list[dict]:
    path = Path(path)
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            absent = {"source", "source_path", "status"} - set(reader.fieldnames or [])
            if absent:
                raise CxrDatasetError(
                    f"{path}: not a missing-files report (columns {sorted(absent)} absent); expected the CSV that "
                    f"`cxr-dataset build` or `cxr-dataset plan --check-files` writes: {','.join(MISSING_COLUMNS)}"
                )
            return [dict(row) for row in reader]
    except OSError as error:
        raise CxrDatasetError(f"cannot read the missing-files report {path}: {error.strerror or error}") from None


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
    if status == "size":
        return "size differs from the pin"
    return f"HTTP {status}" if status.isdigit() else status


def missing_files_advice(
    manifest: Manifest, report_path: Path, *, out: Path | None = None, mirror: str | None = None,
    cache_dir: Path | None = None, kaggle_archive: Path | None = None,
) -> str:
    """What a user can do about missing files, as commands that work for this manifest."""
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
    again = (f"cxr-dataset build {manifest_option(manifest)} --out {shlex.quote(shown_path(out))}{kaggle}{common}"
             if out is not None else f"cxr-dataset plan {manifest_option(manifest)} --check-files{common}")
    return "\n".join([
        "What you can do:",
        ("  1. Wait and retry: upstream or the mirror may be catching up. Fetched files are cached; a rerun asks only for the rest:"
         if out is not None else "  1. Wait and check again: upstream or the mirror may be catching up:"),
        f"       {again}",
        "  2. Use another mirror (same <owner>/<repo>/<commit>/<path> layout); check what it holds without downloading:",
        f"       cxr-dataset plan {manifest_option(manifest)} --check-files --mirror URL",
        "  3. Make a local variant that leaves these files out (expected counts recomputed), then build it:",
        f"       cxr-dataset new-variant --from {from_argument(manifest)} {shlex.quote(variant_dir)} "
        f"--exclude-missing {shlex.quote(shown_path(report_path))}{common}",
        f"       cxr-dataset build --manifest {shlex.quote(variant_dir)} --out {shlex.quote(variant_out)}{kaggle}{common}",
    ])
