"""``github`` sources: a repository pinned at a commit (ieee8023/covid-chestxray-dataset, agchung's
Figure1 and Actualmed repositories).

The metadata table is downloaded (pinned by git blob id in the manifest's lock file) and parsed with
one of two layouts: ``cohen`` (``folder``/``filename`` columns) or ``chung`` (``imagename`` column,
or the image named after ``patientid``). Files are fetched one by one from raw-content URLs at the
commit, never as a generated zip, and each is verified against its pinned blob id.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Mapping
from urllib.parse import quote

import pandas as pd

from ..download import FileSpec
from ..errors import ManifestError
from ..records import new_record_table
from .base import Inputs, Source, check_relative_path, section_schema

if TYPE_CHECKING:
    from ..manifest import Manifest

GITHUB_RAW_BASE = "https://raw.githubusercontent.com"


@dataclass(frozen=True)
class MetadataTable:
    """The ``metadata`` key of a GitHub source: the table's path at the commit and how to read it."""

    path: str
    layout: str  # "cohen" or "chung"
    encoding: str = "utf-8"


@dataclass(frozen=True)
class GitHubSource(Source):
    kind = "github"
    SCHEMA = section_schema(
        "github",
        ["repository", "commit", "metadata", "image_folder", "lock", "labels", "license"],
        {
            "repository": {"type": "string", "pattern": r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$"},
            "commit": {"type": "string", "pattern": "^[0-9a-f]{40}$"},
            "metadata": {
                "type": "object",
                "additionalProperties": False,
                "required": ["path", "layout"],
                "properties": {"path": {"type": "string"}, "encoding": {"type": "string"}, "layout": {"enum": ["cohen", "chung"]}},
            },
            "image_folder": {"type": "string"},
            "lock": {"type": "string"},
            "inconclusive_findings": {"type": "array", "items": {"type": "string"}},
        }
    )

    repository: str = ""
    commit: str = ""
    metadata: MetadataTable = MetadataTable("", "cohen")
    image_folder: str = ""
    lock: str = ""
    inconclusive: frozenset[str] = frozenset()

    @classmethod
    def own_fields(cls, section: Mapping[str, Any]) -> dict[str, Any]:
        meta = section.get("metadata", {})
        return {
            "repository": section.get("repository", ""), "commit": section.get("commit", ""),
            "metadata": MetadataTable(meta.get("path", ""), meta.get("layout", "cohen"), meta.get("encoding", "utf-8")),
            "image_folder": section.get("image_folder", ""), "lock": section.get("lock", ""),
            "inconclusive": frozenset(section.get("inconclusive_findings", ())),
        }

    def list_files(self) -> tuple[str, ...]:
        return (self.lock,) if self.lock else ()

    @property
    def inconclusive_findings(self) -> frozenset[str]:
        return self.inconclusive

    @property
    def pinned_individually(self) -> bool:
        return True

    def url(self, path: str, base: str = "") -> str:
        return f"{(base or GITHUB_RAW_BASE).rstrip('/')}/{self.repository}/{self.commit}/{quote(path)}"

    def cache_key(self, path: str) -> str:
        return f"github/{self.repository}/{self.commit}/{path}"

    def row_cache_key(self, row) -> str:
        return self.cache_key(row.source_path) if row.git_blob_sha1 else super().row_cache_key(row)

    def read_lock(self, manifest: "Manifest") -> dict[str, tuple[str, int]]:
        return read_lock(manifest.file(self.lock))

    def records(self, manifest: "Manifest", inputs: Inputs) -> pd.DataFrame:
        """Download the pinned metadata table and parse it into rows (the lock is read once for both)."""
        lock, path = self.read_lock(manifest), self.metadata.path
        if path not in lock:
            raise ManifestError(f"{manifest.file(self.lock)}: the metadata file {path!r} of source {self.name!r} is not pinned; add its git blob id")
        blob, size = lock[path]
        spec = FileSpec(url=self.url(path, inputs.github_base), cache_key=self.cache_key(path), git_blob_sha1=blob, size=size)
        metadata = read_metadata_csv(inputs.downloader.fetch(spec), self.metadata.encoding)
        return github_records(manifest, self, metadata, inputs.github_base or GITHUB_RAW_BASE, lock=lock)

    def pins(self) -> dict[str, Any]:
        return {"kind": self.kind, "repository": self.repository, "commit": self.commit}

    def card_pin(self) -> str:
        return f"`{self.repository}` at commit `{self.commit}`"


# ---- the lock file and the metadata table ------------------------------------------------------

def read_lock(path: Path) -> dict[str, tuple[str, int]]:
    """A GitHub lock file (``path<TAB>git_blob_sha1<TAB>size``) as {path: (blob, size or -1)}."""
    lock: dict[str, tuple[str, int]] = {}
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle, delimiter="\t")
            header = next(reader, None)
            if header is None:
                raise ManifestError(f"{path}: the lock file is empty; expected a header 'path<TAB>git_blob_sha1<TAB>size' "
                                    "and one row per file (`cxr-dataset lock github` writes it)")
            if header[:2] != ["path", "git_blob_sha1"]:
                raise ManifestError(f"{path}: expected a header 'path<TAB>git_blob_sha1<TAB>size', found {header}")
            for number, row in enumerate(reader, start=2):
                if len(row) < 2 or not re.fullmatch(r"[0-9a-f]{40}", row[1]):
                    raise ManifestError(f"{path}:{number}: expected a path and a 40-character git blob id, found {row}")
                check_relative_path(row[0], f"{path}:{number}")
                size = int(row[2]) if len(row) > 2 and row[2].isdigit() else -1
                lock[row[0]] = (row[1], size)
    except (UnicodeDecodeError, csv.Error) as error:
        raise ManifestError(f"{path}: not a UTF-8 tab-separated lock file ({error}); regenerate it with `cxr-dataset lock github`") from None
    return lock


def read_metadata_csv(path: Path, encoding: str) -> pd.DataFrame:
    try:
        text = Path(path).read_bytes().decode(encoding)
    except LookupError:
        raise ManifestError(
            f"metadata encoding {encoding!r} (the manifest's metadata.encoding) is not a text encoding Python knows; "
            "use e.g. utf-8 or iso-8859-1"
        ) from None
    except UnicodeDecodeError as error:
        raise ManifestError(
            f"{path}: the metadata table is not {encoding} text (byte 0x{error.object[error.start]:02x} at offset "
            f"{error.start}); set the manifest's metadata.encoding to the file's encoding (e.g. iso-8859-1)"
        ) from None
    try:
        table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, csv.Error) as error:
        raise ManifestError(f"{path}: the metadata table is not parseable CSV ({str(error).strip() or type(error).__name__}); "
                            "the pinned file or the manifest's metadata layout is wrong") from None
    table.columns = [c.strip() for c in table.columns]
    return table.loc[:, [c for c in table.columns if c and not c.startswith("Unnamed")]]


def github_records(
    manifest: "Manifest", source: GitHubSource, metadata: pd.DataFrame, base_url: str = GITHUB_RAW_BASE,
    lock: dict[str, tuple[str, int]] | None = None,
) -> pd.DataFrame:
    """Rows for one GitHub source from its parsed metadata table (``lock`` defaults to the manifest's)."""
    if lock is None:
        lock = source.read_lock(manifest)
    layout = source.metadata.layout
    folder = source.image_folder.strip("/")
    by_stem = {PurePosixPath(p).stem: p for p in lock if p.startswith(folder + "/")}
    rows = []
    for index, meta in metadata.iterrows():
        if layout == "cohen":
            path = f"{meta['folder'].strip() or folder}/{meta['filename'].strip()}"
            patient = meta["patientid"].strip()
            license_text = meta.get("license", "").strip()
        else:  # chung
            name = meta.get("imagename", "").strip()
            patient = meta["patientid"].strip()
            path = f"{folder}/{name}" if name else by_stem.get(patient, f"{folder}/{patient}")
            patient = _chung_patient(patient)
            license_text = source.license
        _check_row(source, index, meta, path)
        finding = meta["finding"].strip()
        blob, size = lock.get(path, ("", -1))
        rows.append(
            {
                "record_id": f"{source.name}:{path}",
                "source": source.name,
                "source_path": path,
                "patient_id": f"{source.name}:{patient}",
                "finding": finding,
                "label": source.labels.get(finding, ""),
                "view": meta.get("view", "").strip(),
                "modality": meta.get("modality", "").strip(),
                "license": license_text,
                "download_url": source.url(path, base_url),
                "git_blob_sha1": blob,
                "size": size,
            }
        )
    table = new_record_table(rows)
    repeated = table[table["record_id"].duplicated()]
    if len(repeated):
        # Cohen lists a few files twice; one image is one record, the first row's metadata wins.
        table = table.drop_duplicates("record_id", keep="first")
    return table.reset_index(drop=True)


def _chung_patient(patient: str) -> str:
    """Figure1 suffixes one patient's studies with letters: COVID-00003a and COVID-00003b are one patient."""
    match = re.fullmatch(r"(COVID-\d+)[a-z]", patient)
    return match.group(1) if match else patient


def _check_row(source: GitHubSource, index: int, meta: pd.Series, path: str) -> None:
    if not meta.get("patientid", "").strip():
        raise ManifestError(
            f"metadata of source {source.name!r} ({source.metadata.path} at {source.commit[:12]}), "
            f"row {index + 2}: empty patientid for {path}; the metadata layout {source.metadata.layout!r} does not fit this file"
        )
