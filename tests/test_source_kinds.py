"""A new source kind is one class: registered, it is validated, planned, built and loaded with no
other module changed (tests/test_layout.py checks that no other module asks for a kind name)."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from covid19_cxr_dataset import manifest as manifest_module, safe_load, sources
from covid19_cxr_dataset.build import Options, build, plan
from covid19_cxr_dataset.errors import CxrDatasetError, ManifestError
from covid19_cxr_dataset.records import new_record_table
from covid19_cxr_dataset.sources.base import Source, section_schema

from synthetic import manifest_text

@dataclass(frozen=True)
class FolderSource(Source):
    """A folder of PNGs beside the manifest, listed as ``path,label,patient_id``: the whole kind."""

    kind = "folder"
    SCHEMA = section_schema("folder", ["files", "folder", "license"], {"files": {"type": "string"}, "folder": {"type": "string"}})

    files: str = ""
    folder: str = ""

    @classmethod
    def own_fields(cls, section):
        return {"files": section.get("files", ""), "folder": section.get("folder", "")}

    def list_files(self):
        return (self.files,)

    def records(self, manifest, inputs=None):
        listed = safe_load.csv_table(manifest.file(self.files))
        return new_record_table([
            {"record_id": f"{self.name}:{r.path}", "source": self.name, "source_path": r.path,
             "patient_id": f"{self.name}:{r.patient_id}", "finding": r.label, "label": r.label, "view": "PA",
             "modality": "X-ray", "license": self.license, "sha256_expected": r.sha256}
            for r in listed.itertuples()
        ])

    def local_root(self, manifest, inputs):
        return manifest.folder / self.folder

    def local_folders(self, manifest):
        return [(f"the folder of source {self.name!r}", manifest.folder / self.folder)]


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 48), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


FILES = [("a.png", "COVID-19", "p1"), ("b.png", "Normal", "p2"), ("c.png", "Pneumonia", "p3"), ("d.png", "Normal", "p4")]


@pytest.fixture
def folder_kind(monkeypatch):
    monkeypatch.setitem(sources.KINDS, "folder", FolderSource)
    return FolderSource


def _manifest(root: Path) -> Path:
    folder, images = root / "manifest", root / "clinic-images"
    folder.mkdir()
    images.mkdir()
    rows = ["path,label,patient_id,sha256"]
    for index, (path, label, patient) in enumerate(FILES):
        data = _png(index)
        (images / path).write_bytes(data)
        rows.append(f"{path},{label},{patient},{hashlib.sha256(data).hexdigest()}")
    (folder / "files.csv").write_text("\n".join(rows) + "\n")
    (folder / "manifest.yaml").write_text(manifest_text(
        name="folder-kind", version="0.1.0", title="A release from a new source kind",
        sources=f"- {{name: clinic, kind: folder, files: files.csv, folder: {images}, license: CC0-1.0}}",
        filters="{modalities: [X-ray], frontal_views: [PA], lateral_views: [L]}", convert="{quality: 90}",
        split="{seed: s, rules: [{method: patient-hash, test_images: 1}]}",
        expected_counts="train: {COVID-19: 1, Normal: 1, Pneumonia: 1}\ntest: {COVID-19: 0, Normal: 1, Pneumonia: 0}",
    ))
    return folder


def test_a_registered_kind_plans_builds_and_loads(folder_kind, tmp_path):
    folder = _manifest(tmp_path)
    manifest = manifest_module.load(folder)
    assert [type(s) for s in manifest.sources] == [FolderSource]
    options = Options(cache_dir=tmp_path / "cache", workers=1, progress=False)
    assert plan(manifest, options).counts() == {"test": {"COVID-19": 0, "Normal": 1, "Pneumonia": 0},
                                                "train": {"COVID-19": 1, "Normal": 1, "Pneumonia": 1}}
    report = build(manifest, tmp_path / "out", options)
    assert report["checks"]["unverified_files"] == 0 and report["sources"] == {"clinic": {"kind": "folder"}}
    loaded = datasets.load_dataset(str(tmp_path / "out"))
    assert sorted(r["source_path"] for split in loaded for r in loaded[split]) == ["a.png", "b.png", "c.png", "d.png"]
    # the kind's local folder is protected like the built-in kinds' folders
    with pytest.raises(CxrDatasetError, match="the folder of source 'clinic'"):
        build(manifest, tmp_path / "clinic-images" / "out", options)


def test_an_unregistered_kind_is_refused_naming_the_kinds(tmp_path):
    folder = _manifest(tmp_path)
    with pytest.raises(ManifestError, match=r"sources\[0\]\.kind"):
        manifest_module.load(folder)


def test_the_kind_schema_checks_its_own_keys(folder_kind, tmp_path):
    folder = _manifest(tmp_path)
    text = (folder / "manifest.yaml").read_text().replace("license: CC0-1.0}", "license: CC0-1.0, colour: blue}")
    (folder / "manifest.yaml").write_text(text)
    with pytest.raises(ManifestError, match="unknown key 'sources\\[0\\].colour'"):
        manifest_module.load(folder)
