"""The real metadata tables of the three GitHub sources parse into the records we expect."""

from __future__ import annotations

import pytest

from covid19_cxr_dataset import manifest
from covid19_cxr_dataset.sources import github_records, kaggle_patient, kaggle_records, read_metadata_csv

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def release():
    return manifest.load(manifest.find("1.0.0"))


def _records(release, real_fixtures, name):
    source = release.source(name)
    metadata = read_metadata_csv(real_fixtures / name / "metadata.csv", source["metadata"]["encoding"])
    return github_records(release, source, metadata)


def test_cohen_metadata(release, real_fixtures):
    table = _records(release, real_fixtures, "cohen")
    covid = table[table["label"] == "COVID-19"]
    assert len(covid) == 538
    frontal_xray = covid[(covid["modality"] == "X-ray") & covid["view"].isin(["PA", "AP", "AP Supine"])]
    assert len(frontal_xray) == 434
    assert (covid["source_path"].str.startswith("volumes/")).sum() == 21
    pair = table.set_index("source_path").loc[["images/nejmoa2001191_f1-L.jpeg", "images/nejmoa2001191_f1-PA.jpeg"]]
    assert list(pair["view"]) == ["L", "PA"]
    assert pair["patient_id"].nunique() == 1 and pair["patient_id"].iloc[0].startswith("cohen:")
    assert table["record_id"].is_unique


def test_figure1_metadata_latin1_and_patient_suffixes(release, real_fixtures):
    table = _records(release, real_fixtures, "figure1").set_index("source_path")
    assert (table["label"] == "COVID-19").sum() == 35
    assert table.loc["images/COVID-00003a.jpg", "patient_id"] == "figure1:COVID-00003"
    assert table.loc["images/COVID-00015a.png", "patient_id"] == table.loc["images/COVID-00015b.png", "patient_id"]
    covid = table[table["label"] == "COVID-19"]
    assert (covid["view"] == "").sum() == 27
    assert covid["git_blob_sha1"].ne("").all()  # every COVID-19 image resolves to a pinned file


def test_actualmed_metadata(release, real_fixtures):
    table = _records(release, real_fixtures, "actualmed")
    assert len(table) == 238
    assert (table["label"] == "COVID-19").sum() == 58
    assert (table["finding"] == "").sum() == 53  # inconclusive: excluded by rule
    assert table.loc[table["label"] == "COVID-19", "patient_id"].nunique() == 51


def test_kaggle_patients_never_cross_the_upstream_split(release):
    table = kaggle_records(release, release.source("kaggle"))
    assert len(table) == 5856
    sides = table.assign(side=table["upstream_split"].map({"train": "train", "val": "test", "test": "test"}))
    assert (sides.groupby("patient_id")["side"].nunique() == 1).all()
    assert kaggle_patient("person1946_bacteria_4874.jpeg") == "person1946_bacteria"
    assert kaggle_patient("NORMAL2-IM-1427-0001.jpeg") == "NORMAL2-IM-1427"
