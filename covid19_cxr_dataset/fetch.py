"""Download stage: every kept row's file into the cache, or found where its source keeps it.

Each source says how its rows are fetched (``Source.file_spec``) or where they lie
(``Source.local_root``: an extracted archive, a local folder); one ``Downloader.fetch_all`` gets
every remote file. Files that cannot be had are collected and raised once, after every other file
was fetched, with their list written beside ``--out``; ``check_files`` asks the same question with
HEAD requests only (``plan --check-files``). ``hash_and_verify`` then checks every file's sha256
against its pin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd

from . import progress as progress_bars
from .download import Downloader, file_sha256
from .errors import CxrDatasetError, MissingUpstreamFiles
from .manifest import Manifest
from .missing import missing_files_error
from .options import Options
from .plan import Resolution


def fetch_images(
    resolution: Resolution, options: Options, downloader: Downloader, *, out: Path | None = None,
    planned_splits: Callable[[], dict[str, str]] = dict,
) -> pd.DataFrame:
    """Download stage: put every kept row's file in the cache; fill ``local_path``.

    Every file that can be fetched is fetched; the ones that cannot (absent upstream or on the
    mirror, other bytes than pinned, not in the Kaggle archive or local folder) are collected and
    raised once as :class:`~covid19_cxr_dataset.errors.MissingUpstreamFiles`, after writing their
    list beside ``out`` (``<out>.missing-files.csv``; see missing.MISSING_COLUMNS), with the split
    each file would have gone to (``planned_splits()``: {record_id: split}).
    """
    kept = resolution.kept.copy()
    manifest = resolution.manifest
    remote = kept["download_url"].ne("")
    specs = _file_specs(manifest, kept[remote])
    absent: dict[str, dict] = {}  # record_id -> what the downloader said
    if specs:
        try:
            paths = downloader.fetch_all(list(specs.values()), desc="download images", keep_going=True)
        except MissingUpstreamFiles as error:
            by_key = {entry["cache_key"]: entry for entry in error.missing}
            absent = {rid: by_key[spec.cache_key] for rid, spec in specs.items() if spec.cache_key in by_key}
            paths = {spec.cache_key: downloader.path_for(spec) for rid, spec in specs.items() if rid not in absent}
        fetched = remote & ~kept["record_id"].isin(absent)
        kept.loc[fetched, "local_path"] = [str(paths[specs[rid].cache_key]) for rid in kept.loc[fetched, "record_id"]]
        # The downloader hashed each file as it verified it; hash_and_verify reuses that sha256.
        kept.loc[fetched, "sha256"] = [downloader.stored_hashes(specs[rid]).sha256 for rid in kept.loc[fetched, "record_id"]]
    inputs = options.inputs(downloader)
    for source in manifest.sources:
        local = kept["source"].eq(source.name) & ~remote
        if local.any():
            found = source.local_files(manifest, inputs)
            if found is not None:
                kept.loc[local, "local_path"] = [str(found.root / p) for p in kept.loc[local, "source_path"]]
                # Hashes the source took of the bytes on disk just now (an extracted archive checks every file).
                kept.loc[local, "sha256"] = [found.sha256.get(p, "") for p in kept.loc[local, "source_path"]]
    unfound = kept[~kept["record_id"].isin(absent) & ~kept["local_path"].map(lambda p: bool(p) and Path(p).is_file())]
    # Every file in hand is hashed and held to its sha256 pin before anything fails, so that one error
    # names every file that cannot be used: missing ones and those with other bytes than pinned.
    found = ~kept["record_id"].isin(absent) & ~kept.index.isin(unfound.index)
    kept.loc[found, "sha256"] = _sha256_of(kept.loc[found], progress=options.progress)
    mismatched = kept[found & kept["sha256_expected"].ne("") & kept["sha256_expected"].ne(kept["sha256"])]
    if absent or len(unfound) or len(mismatched):
        raise missing_files_error(resolution.manifest, options, kept, absent, unfound, out, planned_splits(), mismatched)
    return kept


def _sha256_of(rows: pd.DataFrame, *, progress: bool = False) -> list[str]:
    """The sha256 of each row's file: the hash already taken (downloader, extracted archive) or a new one."""
    todo = int(rows["sha256"].eq("").sum())
    with progress_bars.bar(todo, desc="hash source files (sha256 of files not hashed as they arrived)", unit="file",
                           enabled=progress and todo >= 100, leave=False) as bar:
        def one(path: str, known: str) -> str:
            if known:
                return known
            bar.update()
            return file_sha256(Path(path))
        return [one(p, s) for p, s in zip(rows["local_path"], rows["sha256"])]


def hash_and_verify(kept: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """sha256 of every source file (hashing only those not hashed yet); a pinned sha256 that differs
    is an error naming the file. ``fetch_images`` already held every file to its pin."""
    kept = kept.copy()
    kept["sha256"] = _sha256_of(kept, progress=True)
    pinned = kept["sha256_expected"].ne("")
    wrong = kept[pinned & kept["sha256_expected"].ne(kept["sha256"])]
    if len(wrong):
        row = wrong.iloc[0]
        raise CxrDatasetError(
            f"{row['local_path']} ({row['record_id']}): sha256 {row['sha256']} differs from the pinned "
            f"{row['sha256_expected']}; the file changed upstream or the archive is not the pinned version "
            f"({len(wrong)} file(s) differ)"
        )
    unverified = sorted(kept.loc[~pinned & kept["git_blob_sha1"].eq(""), "record_id"])
    return kept, unverified


def check_files(resolution: Resolution, options: Options, downloader: Downloader | None = None) -> tuple[int, list[dict]]:
    """HEAD every file a build of ``resolution`` (what ``plan`` returned) would download; download
    nothing. Returns (files checked, one missing-files row per unreachable file). Files from a
    Kaggle archive or a local folder are not checked (they are not fetched one by one)."""
    over_quota = resolution.excluded[resolution.excluded["reason"].eq("over-quota")]
    rows = pd.concat([resolution.kept, over_quota], ignore_index=True).fillna({"split": ""})
    rows = rows[rows["download_url"].ne("")]
    specs = _file_specs(resolution.manifest, rows)
    answers = (downloader or options.downloader()).check_reachable(list(specs.values()), desc="check files (HEAD)")
    unreachable = []
    for row in rows.itertuples():
        answer = answers[specs[row.record_id].cache_key]
        if not answer["reachable"]:
            unreachable.append({"source": row.source, "source_path": row.source_path, "split": row.split, "label": row.label,
                                # A 200 is unreachable only when the announced size differs from the pin.
                                "status": "size" if answer["status"] == 200 else str(answer["status"]),
                                "url": answer["url"], "detail": answer["detail"]})
    return len(specs), unreachable


def _file_specs(manifest: Manifest, rows: pd.DataFrame) -> dict:
    """{record_id: download.FileSpec} of rows with a ``download_url``, each from its source."""
    by_name = {source.name: source for source in manifest.sources}
    return {row.record_id: by_name[row.source].file_spec(row) for row in rows.itertuples()}
