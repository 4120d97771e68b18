"""``kaggle`` sources: paultimothymooney/chest-xray-pneumonia, one archive of one dataset version.

The files are pinned by name, split and class in the manifest's file list (``split,class,filename,
subtype[,sha256]``); the archive comes from ``--kaggle-archive`` or the Kaggle API and is extracted
into the cache, keyed by its sha256, and every use holds the extracted tree to what extraction recorded
(``archive.check_extracted``): a file changed or deleted in the cache is extracted again, never used.
A file's path is always ``<archive_root>/<split>/<class>/<name>``
(``member_path``), in the record table, in decisions and in the archive.
"""

from __future__ import annotations

import contextlib
import logging
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import pandas as pd
from filelock import FileLock

from .. import archive, progress, safe_load
from ..download import Downloader, FileSpec, fetch_kaggle_archive, file_sha256, kaggle_archive_spec
from ..errors import ArchiveError, ChecksumMismatch, CxrDatasetError, ManifestError
from ..records import new_record_table
from .base import Inputs, LocalFiles, Source, check_relative_path, section_schema

if TYPE_CHECKING:
    from ..manifest import Manifest

log = logging.getLogger(__name__)

KAGGLE_SUBTYPES = ("normal", "bacteria", "virus")
_PATIENT = (
    re.compile(r"^(person\d+_(?:bacteria|virus))_\d+"),  # person numbers run per subtype series
    re.compile(r"^((?:NORMAL2-)?IM-\d+)-"),
)


@dataclass(frozen=True)
class KaggleSource(Source):
    kind = "kaggle"
    SCHEMA = section_schema(
        "kaggle",
        ["dataset", "dataset_version", "archive_root", "files", "labels", "license"],
        {
            "dataset": {"type": "string", "pattern": r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$"},
            "dataset_version": {"type": "integer", "minimum": 1},
            "archive_root": {"type": "string"},
            "archive_sha256": {"type": "string", "pattern": "^([0-9a-f]{64})?$"},
            "files": {"type": "string"},
            "view": {"type": "string"},
        }
    )
    MISSING_STATUS = "not-in-archive"

    dataset: str = ""
    dataset_version: int = 0
    archive_root: str = ""
    archive_sha256: str = ""
    files: str = ""
    view: str = "AP"

    @classmethod
    def own_fields(cls, section: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "dataset": section.get("dataset", ""), "dataset_version": section.get("dataset_version", 0),
            "archive_root": section.get("archive_root", "").strip("/"), "archive_sha256": section.get("archive_sha256", ""),
            "files": section.get("files", ""), "view": section.get("view", "AP"),
        }

    def list_files(self) -> tuple[str, ...]:
        return (self.files,) if self.files else ()

    def member_path(self, split: str, class_name: str, filename: str) -> str:
        """A listed file's path in the archive, which is also its record's ``source_path``."""
        return f"{self.archive_root}/{split}/{class_name}/{filename}"

    def decision_path(self, path: str) -> str:
        """Decisions may name a file inside the archive root (``train/NORMAL/x.jpeg``) or with it."""
        root = self.archive_root + "/"
        return path if path.startswith(root) else root + path

    def read_files(self, manifest: "Manifest") -> pd.DataFrame:
        return read_kaggle_files(manifest.file(self.files))

    def records(self, manifest: "Manifest", inputs: Inputs | None = None) -> pd.DataFrame:
        return kaggle_records(manifest, self)

    def local_root(self, manifest: "Manifest", inputs: Inputs) -> Path:
        return self.local_files(manifest, inputs).root

    def local_files(self, manifest: "Manifest", inputs: Inputs) -> LocalFiles:
        """The extracted archive in the cache, checked file by file against its extraction record.

        ``sha256`` holds every extracted file's hash as it is on disk now; a changed or missing file
        was extracted again first (``archive.check_extracted``).
        """
        archive_path, digest = self._archive(inputs)
        root = self._extracted(inputs.cache, archive_path, digest)
        return LocalFiles(root, archive.check_extracted(root, archive_path, progress=inputs.progress))

    def _archive(self, inputs: Inputs) -> tuple[Path, str]:
        """The archive, from ``--kaggle-archive`` or the Kaggle API, and its sha256.

        The manifest's ``archive_sha256`` binds both ways the archive arrives. A downloaded archive that
        is not a zip (an HTML page answered with 200, a truncated body) is removed from the cache and
        fetched once more; a second failure is an error and leaves nothing in the cache.
        """
        pinned = self.archive_sha256
        if inputs.kaggle_archive:
            archive_path = archive.check_regular_file(Path(inputs.kaggle_archive))
            digest = _archive_sha256(archive_path, inputs.progress)
            if pinned and digest != pinned:
                raise ChecksumMismatch(
                    f"--kaggle-archive {archive_path}: sha256 {digest}, but the manifest pins archive_sha256 {pinned} for "
                    f"{self.dataset} version {self.dataset_version}. Pass the archive of that version (Kaggle's "
                    "dataset page, Download, with that version selected), or drop --kaggle-archive to fetch it."
                )
            return archive_path, digest
        for attempt in (1, 2):
            archive_path = Path(fetch_kaggle_archive(
                self.dataset, version=self.dataset_version, cache_dir=inputs.cache, sha256=pinned,
                base_url=inputs.kaggle_api, offline=inputs.offline, progress=inputs.progress,
                discard_cached=attempt == 2,
            ))
            if zipfile.is_zipfile(archive_path):
                return archive_path, _archive_sha256(archive_path, inputs.progress)
            try:
                archive.list_members(archive_path, root=None)  # the error that says what the file is instead
            except ArchiveError as error:
                problem = str(error)
            else:  # pragma: no cover - is_zipfile and ZipFile disagree
                problem = f"{archive_path} is not a zip archive"
            with contextlib.suppress(CxrDatasetError, OSError):  # a read-only cache keeps it; the error still says why
                Downloader(inputs.cache, offline=True, progress=False).discard(self.archive_spec(inputs))
            if attempt == 2 or inputs.offline:
                again = "" if inputs.offline else " twice"
                raise ArchiveError(
                    f"the Kaggle archive of {self.dataset} was downloaded{again} but is not a zip archive: {problem} "
                    "It was removed from the cache. Check the Kaggle credentials and terms, or download the archive by "
                    "hand and pass --kaggle-archive PATH" + ("; run without --offline to fetch it again." if inputs.offline else ".")
                )
            log.warning("the cached Kaggle archive %s is not a zip archive; removed it, downloading it again", archive_path)
        raise AssertionError("unreachable")

    def archive_spec(self, inputs: Inputs) -> FileSpec:
        return kaggle_archive_spec(self.dataset, self.dataset_version, sha256=self.archive_sha256, base_url=inputs.kaggle_api)

    def _extracted(self, cache: Path, archive_path: Path, digest: str) -> Path:
        # Keyed by the archive's bytes: another archive (or version) never reuses a stale extraction.
        extracted = cache / "kaggle" / self.dataset / "extracted" / digest[:20]
        # Complete: extraction renames the finished tree into place (works on a read-only cache). A tree
        # without an extraction record (an older package) cannot be checked: it is extracted again.
        if extracted.is_dir() and archive.read_extraction_record(extracted) is not None:
            return extracted
        try:
            extracted.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(extracted) + ".lock")
            lock.acquire()
        except OSError as error:
            raise CxrDatasetError(
                f"cannot extract the Kaggle archive into the cache dir {cache} ({error.strerror or error}); pass "
                "--cache-dir (or set COVID19_CXR_CACHE) to a writable folder"
            ) from None
        # Two builds sharing a cache must not both extract: the second would swap the tree under the first.
        try:
            if not extracted.is_dir() or archive.read_extraction_record(extracted) is None:
                archive.extract_zip(archive_path, extracted, root=self.section.get("archive_root", self.archive_root))
        finally:
            lock.release()
        return extracted

    def pins(self) -> dict[str, Any]:
        return {"kind": self.kind, "dataset": self.dataset, "dataset_version": self.dataset_version}

    def card_pin(self) -> str:
        return f"`{self.dataset}` version {self.dataset_version}"

    def build_option_example(self) -> str:
        return f"--kaggle-archive ./{self.dataset.rsplit('/', 1)[-1]}.zip"  # or KAGGLE_USERNAME/KAGGLE_KEY instead

    def unpinned_files(self, manifest: "Manifest") -> int:
        return int(self.read_files(manifest)["sha256"].eq("").sum())


def _archive_sha256(path: Path, shown: bool = True) -> str:
    """The archive's sha256 (it names the extraction and checks the pin), with a bar: a gigabyte takes seconds."""
    with progress.bar(path.stat().st_size, desc="hash the Kaggle archive (sha256: its pin, its extraction)", unit="B",
                      enabled=shown) as bar:
        return file_sha256(path, on_bytes=bar.update)


def read_kaggle_files(path: Path) -> pd.DataFrame:
    """The Kaggle file list: ``split,class,filename,subtype[,sha256]`` (sha256 may be empty)."""
    table = safe_load.csv_table(path)
    missing = {"split", "class", "filename", "subtype"} - set(table.columns)
    if missing:
        raise ManifestError(f"{path}: missing columns {sorted(missing)}; expected split,class,filename,subtype,sha256")
    if "sha256" not in table.columns:
        table["sha256"] = ""
    bad = table[~table["sha256"].str.fullmatch(r"([0-9a-f]{64})?")]
    if len(bad):
        raise ManifestError(f"{path}: row {bad.index[0] + 2} has a malformed sha256 {bad.iloc[0]['sha256']!r}")
    for number, (_, row) in enumerate(table.iterrows(), start=2):
        for column in ("split", "class", "filename"):
            value = row[column]
            if "/" in value:
                raise ManifestError(f"{path}:{number}: {column} {value!r} holds a '/'; expected one folder or file name")
            check_relative_path(value, f"{path}:{number}")
    return table


def kaggle_patient(filename: str) -> str:
    """Patient key from a Kermany file name (see docs/MANIFEST.md for why the subtype is part of it)."""
    for pattern in _PATIENT:
        match = pattern.match(filename)
        if match:
            return match.group(1)
    raise ManifestError(f"Kaggle file name {filename!r} does not follow personN_<subtype>_M or [NORMAL2-]IM-NNNN-MMMM")


def kaggle_records(manifest: "Manifest", source: KaggleSource) -> pd.DataFrame:
    files = source.read_files(manifest)
    unknown = sorted(set(files["class"]) - set(source.labels))
    if unknown:
        raise ManifestError(f"{manifest.file(source.files)}: classes {unknown} have no entry in source {source.name!r} labels")
    rows = []
    for _, f in files.iterrows():
        path = source.member_path(f.split, f["class"], f.filename)
        rows.append({
            "record_id": f"{source.name}:{path}",
            "source": source.name,
            "source_path": path,
            "patient_id": f"{source.name}:{kaggle_patient(f.filename)}",
            "finding": f.subtype,
            "label": source.labels[f["class"]],
            "view": source.view,
            "modality": "X-ray",
            "license": source.license,
            "upstream_split": f.split,
            "sha256_expected": f.sha256,
        })
    return new_record_table(rows)
