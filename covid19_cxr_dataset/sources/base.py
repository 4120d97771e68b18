"""What every source kind shares: its typed manifest section and the interface the build calls.

A source kind is one class (a frozen dataclass) registered by its ``kind`` name
(``sources/__init__.py``). The manifest reader validates a section against the kind's
``SCHEMA`` and builds the object with ``from_section``; the stages then ask the object, never the
``kind`` string:

* ``records(manifest, inputs)`` — the rows of the record table this source contributes
  (``records.py`` columns; patient ids normalized here).
* ``file_spec(row)`` — how one row's file is downloaded (a ``download.FileSpec``).
* ``local_root(manifest, inputs)`` — the folder holding the rows that are not downloaded one by one
  (an extracted archive, a local folder), or None; ``local_files`` adds the sha256 of each file the
  source checked there (an extracted archive is held to its extraction record on every use).
* ``pins()`` / ``card_pin()`` — what the build report and the card say pins the source.

A source still reads as the manifest's own mapping (``source["commit"]``, ``source.get(...)``):
that is the YAML as written, for people and tools that want it; the package's code uses the typed
attributes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterator

import pandas as pd

from .. import CLASS_NAMES
from ..download import KAGGLE_BASE_URL, Downloader, FileSpec
from ..errors import ManifestError

if TYPE_CHECKING:  # manifest.py imports this package
    from ..manifest import Manifest

CITATION_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["key", "text", "bibtex"],
    "properties": {"key": {"type": "string"}, "text": {"type": "string"}, "bibtex": {"type": "string"}},
}
COMMON_PROPERTIES: dict[str, Any] = {
    "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]*$"},
    "kind": {"type": "string"},
    "description": {"type": "string"},
    "homepage": {"type": "string"},
    "license": {"type": "string"},
    "citations": {"type": "array", "items": CITATION_SCHEMA},
    "labels": {"type": "object", "additionalProperties": {"enum": list(CLASS_NAMES)}},
}


def section_schema(kind: str, required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema of one kind's manifest section: the common keys plus the kind's own."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "kind", *required],
        "properties": {**COMMON_PROPERTIES, **properties, "kind": {"const": kind}},
    }


@dataclass(frozen=True)
class Inputs:
    """Where a build's files come from besides the manifest (the CLI's source flags)."""

    cache: Path
    downloader: Downloader | None = None  # fetches metadata tables
    github_base: str = ""  # a checked --mirror of raw.githubusercontent.com; "" for the real one
    kaggle_api: str = KAGGLE_BASE_URL
    kaggle_archive: Path | None = None  # --kaggle-archive
    offline: bool = False
    progress: bool = True


@dataclass(frozen=True)
class LocalFiles:
    """Where a source's local rows lie, and the sha256 of each file it checked there just now."""

    root: Path
    sha256: Mapping[str, str] = field(default_factory=dict)  # source_path -> sha256 of the bytes on disk


@dataclass(frozen=True)
class Source(Mapping):
    """The fields every manifest source section has; subclasses add their kind's own."""

    kind: ClassVar[str] = ""
    SCHEMA: ClassVar[dict[str, Any]] = {}
    MISSING_STATUS: ClassVar[str] = "not-in-folder"
    """How the missing-files report names a row whose file is not in ``local_root``."""

    name: str = ""
    license: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    homepage: str = ""
    citations: tuple[Mapping[str, str], ...] = ()
    section: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> "Source":
        """The typed source of a validated manifest section (keys the kind does not know are ignored)."""
        return cls(**cls.common_fields(section), **cls.own_fields(section))

    @staticmethod
    def common_fields(section: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "name": section.get("name", ""), "license": section.get("license", ""), "labels": dict(section.get("labels", {})),
            "description": section.get("description", ""), "homepage": section.get("homepage", ""),
            "citations": tuple(section.get("citations", ())), "section": section,
        }

    @classmethod
    def own_fields(cls, section: Mapping[str, Any]) -> dict[str, Any]:
        return {}

    # ---- the manifest's mapping, as written ----
    def __getitem__(self, key: str) -> Any:
        return self.section[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.section)

    def __len__(self) -> int:
        return len(self.section)

    # ---- what the stages ask ----
    def list_files(self) -> tuple[str, ...]:
        """Files of the manifest folder this source names (checked to exist when the manifest loads)."""
        return ()

    def records(self, manifest: "Manifest", inputs: Inputs) -> pd.DataFrame:
        raise NotImplementedError

    def file_spec(self, row) -> FileSpec:
        """The download of one record-table row (a namedtuple from ``itertuples``) with a ``download_url``."""
        return FileSpec(url=row.download_url, cache_key=self.row_cache_key(row), git_blob_sha1=row.git_blob_sha1,
                        sha256=row.sha256_expected, size=int(row.size))

    def row_cache_key(self, row) -> str:
        return f"{self.name}/{row.source_path}"

    def local_root(self, manifest: "Manifest", inputs: Inputs) -> Path | None:
        """The folder holding this source's rows that have no ``download_url``, or None."""
        return None

    def local_files(self, manifest: "Manifest", inputs: Inputs) -> LocalFiles | None:
        """``local_root`` and the sha256 of the files the source checked in it (none by default: the
        download stage hashes them)."""
        root = self.local_root(manifest, inputs)
        return None if root is None else LocalFiles(root)

    def local_folders(self, manifest: "Manifest") -> list[tuple[str, Path]]:
        """(label, folder) of the source's local input folders, which a build must never write into."""
        return []

    def pins(self) -> dict[str, Any]:
        """What pins the source, as the build report records it."""
        return {"kind": self.kind}

    def card_pin(self) -> str:
        return f"`{self.name}` version -"

    def build_option_example(self) -> str:
        """A ``build`` option this source's files come through, as suggested commands show it (e.g.
        ``--kaggle-archive ./chest-xray-pneumonia.zip``), or "" when it needs none."""
        return ""

    def decision_path(self, path: str) -> str:
        """A decision file's path of one of this source's files, in the record's ``source_path`` form."""
        return path

    @property
    def pinned_individually(self) -> bool:
        """True when every file must be pinned one by one in a lock (rows without a pin are excluded)."""
        return False

    @property
    def inconclusive_findings(self) -> frozenset[str]:
        return frozenset()

    def unpinned_files(self, manifest: "Manifest") -> int:
        """How many listed files have no checksum to verify (``cxr-dataset manifests`` counts them)."""
        return 0


def check_relative_path(name: str, where: str) -> None:
    """``name`` must be a plain relative POSIX path inside its source: no ``..``, no absolute path, no NUL.

    Names in lock files and file lists become cache paths and URLs; one that climbs out would read or
    write outside the cache.
    """
    parts = name.split("/")
    if (
        not name
        or "\0" in name
        or "\\" in name
        or name.startswith("/")
        or re.match(r"^[A-Za-z]:", name)
        or any(part in ("", ".", "..") for part in parts)
        or any(ord(c) < 32 for c in name)
    ):
        raise ManifestError(
            f"{where}: file name {name!r} is not a plain relative path (no '..', '.', empty or absolute parts, "
            "no backslash, NUL or control characters); fix the row or regenerate the list"
        )
