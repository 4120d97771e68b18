"""``dicom`` sources: a list of DICOM files with checksums, from URLs or a local folder.

The manifest's file list has columns ``path,sha256,label,patient_id[,view,license,url]``. A row is
downloaded from its ``url``, else from ``base_url/<path>``; with ``local_dir`` and no URL the file
is read from that folder (beside the manifest), which a build never writes into.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping
from urllib.parse import quote

import pandas as pd

from .. import safe_load
from ..errors import ManifestError
from ..records import new_record_table
from .base import Inputs, Source, check_relative_path, section_schema

if TYPE_CHECKING:
    from ..manifest import Manifest


@dataclass(frozen=True)
class DicomSource(Source):
    kind = "dicom"
    SCHEMA = section_schema(
        "dicom", ["files", "license"],
        {"files": {"type": "string"}, "base_url": {"type": "string"}, "local_dir": {"type": "string"}}
    )

    files: str = ""
    base_url: str = ""
    local_dir: str = ""

    @classmethod
    def own_fields(cls, section: Mapping[str, Any]) -> dict[str, Any]:
        return {"files": section.get("files", ""), "base_url": section.get("base_url", ""), "local_dir": section.get("local_dir", "")}

    def list_files(self) -> tuple[str, ...]:
        return (self.files,) if self.files else ()

    def records(self, manifest: "Manifest", inputs: Inputs | None = None) -> pd.DataFrame:
        return dicom_records(manifest, self)

    def local_root(self, manifest: "Manifest", inputs: Inputs) -> Path | None:
        return (manifest.folder / self.local_dir).resolve() if self.local_dir else None

    def local_folders(self, manifest: "Manifest") -> list[tuple[str, Path]]:
        return [(f"the local folder of source {self.name!r}", manifest.folder / self.local_dir)] if self.local_dir else []

    def card_pin(self) -> str:
        return f"`{self.name}` version -"


def dicom_records(manifest: "Manifest", source: DicomSource) -> pd.DataFrame:
    """Rows from a DICOM file list: ``path,sha256,label,patient_id[,view,license,url]``."""
    listing = manifest.file(source.files)
    files = safe_load.csv_table(listing)
    missing = {"path", "sha256", "label", "patient_id"} - set(files.columns)
    if missing:
        raise ManifestError(f"{listing}: missing columns {sorted(missing)}; expected path,sha256,label,patient_id[,view,license,url]")
    if not source.base_url and not source.local_dir and "url" not in files.columns:
        raise ManifestError(f"{manifest.path}: source {source.name!r} needs base_url, local_dir or a url column in {listing.name}")
    rows = []
    for number, (_, f) in enumerate(files.iterrows(), start=2):
        check_relative_path(f.path, f"{listing}:{number}")
        url = f.get("url", "") or (f"{source.base_url.rstrip('/')}/{quote(f.path)}" if source.base_url else "")
        rows.append(
            {
                "record_id": f"{source.name}:{f.path}",
                "source": source.name,
                "source_path": f.path,
                "patient_id": f"{source.name}:{f.patient_id}",
                "finding": f.label,
                "label": source.labels.get(f.label, f.label),
                "view": f.get("view", ""),
                "modality": "X-ray",
                "license": f.get("license", "") or source.license,
                "download_url": url,
                "sha256_expected": f.sha256,
            }
        )
    return new_record_table(rows)
