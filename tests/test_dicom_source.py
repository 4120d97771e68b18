"""A hospital-style DICOM source added by writing a manifest only: local folder or URLs, sha256 pins."""

from __future__ import annotations

import hashlib

import datasets
import numpy as np
import pytest

from covid19_cxr_dataset import manifest as manifest_module
from covid19_cxr_dataset.build import Options, build

from dicom_factory import make_dataset, to_bytes
from loopback import LoopbackServer
from synthetic import manifest_text


def _dicom(seed: int, *, photometric="MONOCHROME2", frames=1) -> bytes:
    rng = np.random.default_rng(seed)
    shape = (frames, 64, 80) if frames > 1 else (64, 80)
    pixels = rng.integers(0, 4096, shape, dtype=np.uint16)
    return to_bytes(make_dataset(pixels, photometric=photometric, bits_stored=12, frames=frames))


FILES = [  # path, label, patient, bytes
    ("site-a/p1-1.dcm", "COVID-19", "P1", _dicom(1)),
    ("site-a/p1-2.dcm", "COVID-19", "P1", _dicom(2, photometric="MONOCHROME1")),
    ("site-a/p2-1.dcm", "Normal", "P2", _dicom(3)),
    ("site-a/p3-1.dcm", "Pneumonia", "P3", _dicom(4)),
    ("site-a/p4-cine.dcm", "Normal", "P4", _dicom(5, frames=3)),
]


def _manifest(folder, *, where: str) -> None:
    (folder / "locks").mkdir(parents=True)
    rows = ["path,sha256,label,patient_id,view"] + [
        f"{p},{hashlib.sha256(d).hexdigest()},{label},{patient},PA" for p, label, patient, d in FILES
    ]
    (folder / "locks" / "dicom.csv").write_text("\n".join(rows) + "\n")
    (folder / "manifest.yaml").write_text(manifest_text(
        name="hospital", version="0.1.0", title="A DICOM-only variant",
        sources=f"- name: hospital\n  kind: dicom\n  files: locks/dicom.csv\n  {where}\n  license: CC BY 4.0",
        filters="{modalities: [X-ray], frontal_views: [PA], lateral_views: [L]}", convert="{quality: 90}",
        split="seed: s\nrules: [{method: patient-hash, test_images: 1}]",
        expected_counts="train: {COVID-19: 2, Normal: 0, Pneumonia: 1}\ntest: {COVID-19: 0, Normal: 1, Pneumonia: 0}",
    ))


def _check(out, report):
    assert report["counts"]["train"]["COVID-19"] + report["counts"]["test"]["COVID-19"] == 2
    reasons = {e["source_path"]: e["reason"] for e in report["exclusions"]}
    assert reasons == {"site-a/p4-cine.dcm": "dicom-multiframe"}
    loaded = datasets.load_dataset(str(out))
    rows = list(loaded["train"]) + list(loaded["test"])
    assert {r["source_path"] for r in rows} == {p for p, *_ in FILES[:4]}
    assert all(r["image"].mode == "L" and r["image"].size == (80, 64) for r in rows)


def test_dicom_source_from_a_local_folder(tmp_path):
    data = tmp_path / "dicoms"
    for path, _, _, payload in FILES:
        (data / path).parent.mkdir(parents=True, exist_ok=True)
        (data / path).write_bytes(payload)
    folder = tmp_path / "manifest"
    _manifest(folder, where=f"local_dir: {data}")
    manifest = manifest_module.load(folder)
    report = build(manifest, tmp_path / "out", Options(cache_dir=tmp_path / "cache", workers=1, progress=False))
    _check(tmp_path / "out", report)


def test_dicom_source_from_urls_is_verified_by_sha256(tmp_path):
    with LoopbackServer({f"/pacs/{p}": d for p, _, _, d in FILES}) as server:
        folder = tmp_path / "manifest"
        _manifest(folder, where=f"base_url: {server.base_url}/pacs")
        report = build(manifest_module.load(folder), tmp_path / "out",
                       Options(cache_dir=tmp_path / "cache", workers=1, progress=False))
    _check(tmp_path / "out", report)
