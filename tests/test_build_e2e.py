"""End to end: the synthetic sources served on 127.0.0.1, built into a dataset ``load_dataset`` reads."""

from __future__ import annotations

import io
import json

import datasets
import numpy as np
import pytest
from PIL import Image

from covid19_cxr_dataset import CLASS_NAMES, manifest as manifest_module
from covid19_cxr_dataset.build import Options, build, plan
from covid19_cxr_dataset.convert import ConvertSettings, convert_file
from covid19_cxr_dataset.errors import CountMismatch, CredentialsError, CxrDatasetError
from covid19_cxr_dataset.release import fingerprint, read_report

from loopback import LoopbackServer
from synthetic import EXPECTED, EXPECTED_EXCLUSIONS, KAGGLE_FILES


@pytest.fixture(scope="module")
def server(world):
    with LoopbackServer(dict(world.served)) as running:
        yield running


@pytest.fixture(scope="module")
def built(world, server, tmp_path_factory):
    """One build through the Kaggle API path (no --kaggle-archive), shared by the read-only tests."""
    root = tmp_path_factory.mktemp("built")
    options = Options(cache_dir=root / "cache", mirror=server.base_url, kaggle_api=server.base_url,
                      workers=2, progress=False, kaggle_archive=world.kaggle_zip)
    manifest = manifest_module.load(world.manifest_dir)
    report = build(manifest, root / "out", options)
    return root / "out", report, options


def test_build_gives_expected_counts_and_exclusion_reasons(built):
    out, report, _ = built
    assert report["counts"] == EXPECTED
    reasons = {f"{e['source']}:{e['source_path']}": e["reason"] for e in report["exclusions"]}
    assert reasons == EXPECTED_EXCLUSIONS
    assert report["checks"]["patients_in_both_splits"] == []
    assert report["checks"]["counts_match_manifest"] is True
    # Kaggle files carry no pinned sha256 in this manifest: the report says which were not verified.
    assert report["checks"]["unverified_files"] == len(KAGGLE_FILES)


def test_load_dataset_reads_the_release(built):
    out, report, _ = built
    loaded = datasets.load_dataset(str(out))
    assert set(loaded) == {"train", "test"}
    assert loaded["train"].features["label"].names == list(CLASS_NAMES)
    for split, per_class in EXPECTED.items():
        labels = loaded[split]["label"]
        assert {name: labels.count(i) for i, name in enumerate(CLASS_NAMES)} == per_class
    row = next(r for r in loaded["train"] if r["source_path"] == "images/c2.png")
    assert row["source"] == "cohen" and row["patient_id"] == "cohen:2" and row["view"] == "PA"
    assert row["license"] == "CC BY-NC-SA" and len(row["sha256"]) == 64
    assert row["image"].mode == "L"


def test_pixels_are_the_normalized_conversion_of_the_source(built, world, tmp_path):
    out, _, options = built
    loaded = datasets.load_dataset(str(out), split="train")
    row = next(r for r in loaded if r["source_path"] == "images/COVID-00002b.png")
    source_file = tmp_path / "source.png"
    source_file.write_bytes(world.served["/agchung/Figure1-COVID-chestxray-dataset/" + "f1" * 20 + "/images/COVID-00002b.png"])
    expected = convert_file(source_file, ConvertSettings(quality=95))
    stored = row["image"]
    assert stored.size == (expected.width, expected.height)
    assert np.array_equal(np.asarray(stored), np.asarray(Image.open(io.BytesIO(expected.jpeg))))


def test_no_patient_on_both_sides_including_duplicate_twins(built):
    out, _, _ = built
    loaded = datasets.load_dataset(str(out))
    train_patients = set(loaded["train"]["patient_id"])
    test_patients = set(loaded["test"]["patient_id"])
    assert not train_patients & test_patients
    # cohen:8's file is byte-identical to cohen:7's: both ids are one person, on one side.
    assert "cohen:8" not in train_patients | test_patients


def test_card_is_generated_from_the_features(built):
    out, report, _ = built
    card = (out / "README.md").read_text()
    assert card.startswith("---\n")
    header = card.split("---\n")[1]
    assert "class_label" in header and "COVID-19" in header and "data/default/train-*.parquet" in header
    assert "DeGrave" in card and "CC BY-NC-SA" in card and "NonCommercial" in card
    assert report["fingerprint"] in card


def test_rebuild_is_byte_identical_and_reuses_the_cache(built, world, server, tmp_path):
    out, report, options = built
    server.clear_requests()
    manifest = manifest_module.load(world.manifest_dir)
    again = build(manifest, tmp_path / "again", options)
    assert again["fingerprint"] == report["fingerprint"]
    for shard in sorted((out / "data").rglob("*.parquet")):
        assert (tmp_path / "again" / shard.relative_to(out)).read_bytes() == shard.read_bytes()
    assert server.requests == []  # every file came from the verified cache
    assert fingerprint(out) == report["fingerprint"]


def test_fingerprint_changes_when_a_label_changes(built, tmp_path):
    import pyarrow.parquet as pq

    out, report, _ = built
    shard = sorted((out / "data").rglob("train-*.parquet"))[0]
    table = pq.read_table(shard)
    labels = table.column("label").to_pylist()
    labels[0] = (labels[0] + 1) % 3
    copy = tmp_path / "copy"
    (copy / "data").mkdir(parents=True)
    for other in (out / "data").rglob("*.parquet"):
        (copy / "data" / other.name).write_bytes(other.read_bytes())
    pq.write_table(table.set_column(table.schema.get_field_index("label"), "label", __import__("pyarrow").array(labels)), copy / "data" / shard.name)
    assert fingerprint(copy) != report["fingerprint"]


def test_kaggle_archive_through_the_api_with_credentials(world, server, tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "s3cret-key-value")
    options = Options(cache_dir=tmp_path / "cache", mirror=server.base_url, kaggle_api=server.base_url, workers=1, progress=False)
    report = build(manifest_module.load(world.manifest_dir), tmp_path / "out", options)
    assert report["counts"] == EXPECTED
    assert "s3cret-key-value" not in json.dumps(report) + (tmp_path / "out" / "README.md").read_text()


def test_missing_kaggle_archive_says_how_to_get_it(world, server, tmp_path):
    options = Options(cache_dir=tmp_path / "cache", mirror=server.base_url, kaggle_api=server.base_url, workers=1, progress=False)
    with pytest.raises(CredentialsError) as error:
        build(manifest_module.load(world.manifest_dir), tmp_path / "out", options)
    assert "--kaggle-archive" in str(error.value) and "KAGGLE_USERNAME" in str(error.value)
    assert not (tmp_path / "out").exists()


def test_count_shortfall_fails_before_downloading_images_and_writes_nothing(world, server, tmp_path):
    folder = tmp_path / "variant"
    import shutil

    shutil.copytree(world.manifest_dir, folder)
    text = (folder / "manifest.yaml").read_text().replace("test: {COVID-19: 3,", "test: {COVID-19: 4,")
    (folder / "manifest.yaml").write_text(text)
    options = Options(cache_dir=tmp_path / "cache", mirror=server.base_url, workers=1, progress=False, kaggle_archive=world.kaggle_zip)
    server.clear_requests()
    with pytest.raises(CountMismatch) as error:
        build(manifest_module.load(folder), tmp_path / "out", options)
    # Metadata alone shows the shortfall: the build stops before downloading any image.
    assert "metadata and decisions alone give test/COVID-19: expected 4, got 3" in str(error.value)
    assert {r.path.rsplit("/", 1)[-1] for r in server.requests} <= {"metadata.csv"}
    assert not (tmp_path / "out").exists()
    # Only the (empty) output lock stays beside out: deleting a lock file would let a third build race in.
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == [".out.lock"]


def test_existing_output_is_not_overwritten_without_asking(world, server, tmp_path):
    (tmp_path / "out").mkdir()
    options = Options(cache_dir=tmp_path / "cache", mirror=server.base_url, workers=1, progress=False, kaggle_archive=world.kaggle_zip)
    with pytest.raises(CxrDatasetError, match="already exists"):
        build(manifest_module.load(world.manifest_dir), tmp_path / "out", options)


def test_plan_resolves_counts_without_downloading_images(world, server, tmp_path):
    server.clear_requests()
    options = Options(cache_dir=tmp_path / "cache", mirror=server.base_url, workers=1, progress=False)
    resolution = plan(manifest_module.load(world.manifest_dir), options)
    assert resolution.counts() == EXPECTED
    fetched = {r.path.rsplit("/", 1)[-1] for r in server.requests}
    assert fetched == {"metadata.csv"}


def test_exact_duplicates_setting_is_honoured(world, server, tmp_path):
    import shutil

    folder = tmp_path / "variant"
    shutil.copytree(world.manifest_dir, folder)
    text = (folder / "manifest.yaml").read_text()
    (folder / "manifest.yaml").write_text(text.replace("exact_duplicates: true", "exact_duplicates: false"))
    options = Options(cache_dir=tmp_path / "cache", mirror=server.base_url, workers=1, progress=False)
    kept = plan(manifest_module.load(folder), options).kept
    row = kept[kept["source_path"] == "images/c8-copy-of-c7.png"]
    assert len(row) == 1 and row.iloc[0]["flags"] == () and row.iloc[0]["duplicate_of"] == ""
