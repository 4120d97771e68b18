"""Maintainer tools that write a release's pins (lock files); never run during a build.

* ``github_lock_rows`` — from a repository's tree listing (``path, git_blob_sha1, size``, e.g. from
  ``git ls-tree -r -l <commit>``) and its metadata, the pins of every file a manifest needs: the
  metadata table itself and every image its rows name.
* ``record_kaggle_checksums`` — once a maintainer holds the Kaggle archive, add the sha256 of each
  listed file to the file list so later builds verify them.
* ``record_split_file`` — write a release's split as data (``split.assignment``, ``splits.csv``) and
  name it in manifest.yaml, once, when the release is cut.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import zipfile
from pathlib import Path

import pandas as pd

from .archive import check_regular_file
from .errors import ChecksumMismatch, CxrDatasetError, ManifestError
from .manifest import Manifest, load as load_manifest
from .safe_load import csv_table
from .split import write_assignment
from .sources import GitHubSource, KaggleSource, github_records, read_lock, read_metadata_csv


def kaggle_source(manifest: Manifest) -> KaggleSource:
    """The manifest's Kaggle source (the one ``cxr-dataset lock kaggle`` pins)."""
    found = [s for s in manifest.sources if isinstance(s, KaggleSource)]
    if not found:
        raise CxrDatasetError(f"{manifest.path} has no kaggle source")
    return found[0]


def github_lock_rows(manifest: Manifest, source: GitHubSource, tree_tsv: Path, metadata_csv: Path) -> list[tuple[str, str, str]]:
    tree = read_lock(tree_tsv)  # a tree listing has the lock's columns; unknown sizes read as -1
    metadata_path = source.metadata.path
    if metadata_path not in tree:
        raise ManifestError(f"{tree_tsv}: the tree has no {metadata_path!r}; is it the listing of {source.repository}?")
    metadata = read_metadata_csv(metadata_csv, source.metadata.encoding)
    # Parse against the whole tree so every referenced path resolves.
    records = github_records(manifest, source, metadata, lock=tree)
    # Every image the metadata names, labelled or not, so that each row's path resolves exactly
    # (a Figure1 row without a finding still needs its file's extension) and variants can reuse it.
    wanted = sorted(set(records["source_path"]) & set(tree))
    return [(path, tree[path][0], str(tree[path][1]) if tree[path][1] >= 0 else "") for path in [metadata_path, *wanted]]


def write_github_lock(path: Path, rows: list[tuple[str, str, str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["path", "git_blob_sha1", "size"])
        writer.writerows(rows)


def record_kaggle_checksums(
    manifest: Manifest, source: KaggleSource, archive: Path, *, replace: bool = False,
) -> tuple[int, list[str], list[tuple[str, str, str]]]:
    """Fill the sha256 column of the Kaggle file list from ``archive``.

    Returns (recorded, missing, changed): how many files the archive holds, the listed paths it lacks,
    and (path, pinned sha256, archive sha256) of every existing pin the archive contradicts. A pin is
    never replaced silently: with any such contradiction and ``replace`` False, nothing is written and
    the error lists them (a published release's pins are facts; a different archive is a variant).
    """
    check_regular_file(archive)
    files_path = manifest.file(source.files)
    files = source.read_files(manifest)
    wanted = {source.member_path(r.split, r["class"], r.filename): i for i, r in files.iterrows()}
    found = {}
    try:
        with zipfile.ZipFile(archive) as handle:
            for info in handle.infolist():
                if info.filename in wanted:
                    digest = hashlib.sha256()
                    with handle.open(info) as member:
                        while block := member.read(1 << 20):
                            digest.update(block)
                    found[info.filename] = digest.hexdigest()
    except zipfile.BadZipFile:
        raise ManifestError(f"{archive} is not a zip archive; download the Kaggle archive again") from None
    changed = [(name, files.at[wanted[name], "sha256"], digest) for name, digest in sorted(found.items())
               if files.at[wanted[name], "sha256"] not in ("", digest)]
    if changed and not replace:
        shown = "".join(f"\n  {name}: pinned {old}, archive {new}" for name, old, new in changed[:10])
        raise ChecksumMismatch(
            f"{archive}: {len(changed):,} file(s) differ from the sha256 already pinned in {files_path}; nothing was "
            f"written.{shown}{' ...' if len(changed) > 10 else ''}\nA pinned release does not change its pins: build "
            "a local variant that records this archive's hashes (run `cxr-dataset build` with this archive; the "
            "failure prints the commands). To replace the pins of an unreleased manifest, pass --replace-pins."
        )
    for name, index in wanted.items():
        if name in found:
            files.at[index, "sha256"] = found[name]
    temp = files_path.with_name(f".{files_path.name}.{os.getpid()}.tmp")
    try:
        files.to_csv(temp, index=False, lineterminator="\n")
        os.replace(temp, files_path)
    finally:
        temp.unlink(missing_ok=True)
    return len(found), sorted(set(wanted) - set(found)), changed


def kaggle_files_from_listing(listing: Path) -> pd.DataFrame:
    """A Kaggle file list (split,class,filename,subtype,sha256) from a public file listing."""
    table = csv_table(listing)
    if "sha256" not in table.columns:
        table["sha256"] = ""
    return table[["split", "class", "filename", "subtype", "sha256"]]


SPLIT_FILE = "splits.csv"


def record_split_file(manifest: Manifest, table: pd.DataFrame) -> tuple[Path, bool]:
    """Write ``table`` (``split.assignment_of``) as the manifest's split file; returns (path, changed).

    A manifest that names no split file gets ``splits.csv`` and an ``assignment:`` line in its
    ``split:`` section (the file is checked to load back with it).
    """
    relative = manifest.split.assignment or SPLIT_FILE
    target = manifest.folder / relative
    before = target.read_bytes() if target.is_file() else None
    write_assignment(target, table)
    if not manifest.split.assignment:
        text = manifest.path.read_text(encoding="utf-8")
        spliced, found = re.subn(r"^(split:\n(?:[ \t]+[^\n]*\n)*?([ \t]+)seed:[^\n]*\n)", rf"\1\2assignment: {relative}\n",
                                 text, count=1, flags=re.M)
        if not found:
            raise ManifestError(f"{manifest.path}: no 'seed:' line under 'split:' to add 'assignment: {relative}' after; add it by hand")
        manifest.path.write_text(spliced, encoding="utf-8")
        if load_manifest(manifest.folder).split.assignment != relative:
            manifest.path.write_text(text, encoding="utf-8")
            raise ManifestError(f"{manifest.path}: could not record 'assignment: {relative}'; add it under 'split:' by hand")
    return target, before != target.read_bytes()
