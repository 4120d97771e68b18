"""Sources stage: where a record is born.

Each source kind is one class in its own module, registered here by its ``kind`` name:

* ``github`` (``github.py``) — a repository pinned at a commit; metadata table + files by git blob id.
* ``kaggle`` (``kaggle.py``) — paultimothymooney/chest-xray-pneumonia, one archive, files pinned by name.
* ``dicom`` (``dicom.py``) — a list of DICOM files with checksums, from URLs or a local folder.

The interface every kind implements is ``base.Source``. A new kind is one new module with one
``Source`` subclass (its ``kind``, ``SCHEMA`` and ``records``), listed in ``KINDS`` (or added with
``register``); nothing outside
this package tests a kind name. Patient ids are normalized by each kind, so that one patient has one
id across the whole build.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..errors import ManifestError
from .base import Inputs, Source, check_relative_path
from .dicom import DicomSource, dicom_records
from .github import GITHUB_RAW_BASE, GitHubSource, github_records, read_lock, read_metadata_csv
from .kaggle import KAGGLE_SUBTYPES, KaggleSource, kaggle_patient, kaggle_records, read_kaggle_files

KINDS: dict[str, type[Source]] = {cls.kind: cls for cls in (GitHubSource, KaggleSource, DicomSource)}
"""Every source kind a manifest may use, by its ``kind`` name."""


def register(cls: type[Source]) -> type[Source]:
    """Add a source kind (a ``Source`` subclass with its ``kind`` and ``SCHEMA``); usable as a decorator."""
    if not cls.kind or not cls.SCHEMA:
        raise TypeError(f"{cls.__name__}: a source kind needs a 'kind' name and a 'SCHEMA'")
    KINDS[cls.kind] = cls
    return cls


def sources_schema() -> dict[str, Any]:
    """The JSON schema of a manifest's ``sources`` list: one section schema per registered kind."""
    return {
        "type": "array",
        "minItems": 1,
        "items": {
            "type": "object",
            "required": ["kind"],
            "properties": {"kind": {"enum": list(KINDS)}},
            "allOf": [{"if": {"properties": {"kind": {"const": kind}}}, "then": cls.SCHEMA} for kind, cls in KINDS.items()],
        },
    }


def from_section(section: Mapping[str, Any]) -> Source:
    """The typed source of one manifest section."""
    try:
        cls = KINDS[section["kind"]]
    except KeyError:
        raise ManifestError(f"source {section.get('name', '?')!r}: unknown kind {section.get('kind')!r}; kinds are {list(KINDS)}") from None
    return cls.from_section(section)


__all__ = [
    "GITHUB_RAW_BASE", "KAGGLE_SUBTYPES", "KINDS", "DicomSource", "GitHubSource", "Inputs", "KaggleSource", "Source",
    "check_relative_path", "dicom_records", "from_section", "register", "github_records", "kaggle_patient", "kaggle_records",
    "read_kaggle_files", "read_lock", "read_metadata_csv", "sources_schema",
]
