"""Release 1.0.0 against the real upstream files in ../shared/fixtures/real, served on 127.0.0.1.

* ``plan`` on the real metadata tables with the real manifest and decisions: Table 1 for ``paper``,
  the curation numbers, and ``curated`` as the same split without the flagged films.
* A build of a variant of 1.0.0 whose locks hold only the real images the fixtures carry: the hard
  cases land where they must (lateral, CT, annotated, out-of-class excluded; coloured text kept).
"""

from __future__ import annotations

import csv
import json
import shutil
import zipfile
from pathlib import Path

import datasets
import pytest
import yaml

from covid19_cxr_dataset import manifest as manifest_module, split
from covid19_cxr_dataset.build import Options, build, check_counts, plan
from covid19_cxr_dataset.counts import exclusion_summary, flag_summary
from covid19_cxr_dataset.verify import verify_release

from loopback import LoopbackServer, github_raw_path

pytestmark = pytest.mark.real

RELEASE = manifest_module.find("1.0.0")
GITHUB = ("cohen", "figure1", "actualmed")


def _serve(real_fixtures: Path, release) -> dict[str, bytes]:
    files = {}
    for name in GITHUB:
        source = release.source(name)
        owner, repo = source["repository"].split("/")
        folder = real_fixtures / name
        files[github_raw_path(owner, repo, source["commit"], "metadata.csv")] = (folder / "metadata.csv").read_bytes()
        for image in (folder / "images").iterdir():
            files[github_raw_path(owner, repo, source["commit"], f"images/{image.name}")] = image.read_bytes()
    return files


@pytest.fixture(scope="module")
def release():
    return manifest_module.load(RELEASE)


@pytest.fixture(scope="module")
def server(real_fixtures, release):
    with LoopbackServer(_serve(real_fixtures, release)) as running:
        yield running


@pytest.fixture(scope="module")
def planned(release, server, tmp_path_factory):
    options = Options(cache_dir=tmp_path_factory.mktemp("cache"), mirror=server.base_url, workers=1, progress=False)
    return plan(release, options)


TABLE_1 = {"train": {"COVID-19": 398, "Normal": 1341, "Pneumonia": 3875}, "test": {"COVID-19": 100, "Normal": 242, "Pneumonia": 398}}


def test_plan_curation_numbers_on_the_real_metadata(planned):
    covid_candidates = planned.candidates[planned.candidates["label"] == "COVID-19"]
    assert covid_candidates["source"].value_counts().to_dict() == {"cohen": 538, "actualmed": 58, "figure1": 35}
    # paper excludes only CT, laterals, out-of-class findings and arrow/box marks ...
    excluded = exclusion_summary(planned.excluded[planned.excluded["label"] == "COVID-19"])
    assert excluded == {"annotation-arrow": 27, "annotation-box": 2, "modality-not-xray": 80, "view-lateral": 24}
    # ... and keeps every other mark, duplicate and unreviewed file, flagged (Kaggle duplicates,
    # recorded separately, only add Normal/Pneumonia flags).
    paper = planned.rows("paper")
    covid = paper[paper["label"] == "COVID-19"]
    assert flag_summary(covid) == {"annotation-other": 1, "annotation-text": 7, "duplicate-near": 14, "not-reviewed": 39}
    assert covid["source"].value_counts().to_dict() == {"cohen": 405, "actualmed": 58, "figure1": 35}
    assert (covid["duplicate_of"] != "").sum() == 14
    curated = planned.rows("curated")
    assert curated[curated["label"] == "COVID-19"]["source"].value_counts().to_dict() == {"cohen": 378, "actualmed": 25, "figure1": 34}


def test_paper_configuration_is_table_1_from_the_real_manifest(planned, release):
    assert planned.counts("paper") == TABLE_1
    assert check_counts(release, planned.kept) == []  # both configurations, as the real manifest states them
    curated = planned.counts("curated")
    assert curated == release.config("curated").expected_counts
    assert curated["train"]["COVID-19"] + curated["test"]["COVID-19"] == 498 - 61
    flagged = planned.rows("paper")["flags"].map(bool).sum()
    assert sum(sum(c.values()) for c in curated.values()) == sum(sum(c.values()) for c in TABLE_1.values()) - flagged


def test_curated_is_the_paper_split_without_flagged_films(planned):
    paper, curated = planned.rows("paper"), planned.rows("curated")
    assert set(curated["record_id"]) <= set(paper["record_id"])
    assert curated["flags"].map(len).eq(0).all()
    assert len(paper) - len(curated) == paper["flags"].map(bool).sum() >= 61
    side = dict(zip(paper["record_id"], paper["split"]))
    assert all(side[rid] == s for rid, s in zip(curated["record_id"], curated["split"]))


def test_every_duplicate_pair_and_patient_link_on_one_side(planned):
    assert split.duplicate_pairs_across_splits(planned.kept) == []
    assert split.patients_in_both(planned.kept) == []
    side = dict(zip(planned.kept["record_id"], planned.kept["split"]))
    for rid, twin in zip(planned.kept["record_id"], planned.kept["duplicate_of"]):
        if twin:
            assert side[twin] == side[rid], (rid, twin)


def test_no_patient_on_both_sides_after_merging_reviewed_links(planned):
    sides = planned.kept.groupby("patient_group")["split"].nunique()
    assert (sides == 1).all()
    group = planned.kept.drop_duplicates("patient_id").set_index("patient_id")["patient_group"]
    # Cohen re-published Figure1's COVID-00001 as patient 79: one person, one group.
    assert group["figure1:COVID-00001"] == "cohen:79"
    for a, b in planned.decisions.patient_links():
        if a in group and b in group:
            assert group[a] == group[b], (a, b)


def test_hard_fixture_cases_are_excluded_for_the_right_reason(planned):
    reasons = dict(zip(planned.excluded["source_path"], planned.excluded["reason"]))
    assert reasons["images/nejmoa2001191_f1-L.jpeg"] == "view-lateral"
    assert reasons["images/16751_3_1.jpg"] == reasons["images/16744_2_1.jpg"] == "modality-not-xray"
    for marked in ("images/extubation-13.jpg", "images/radiol.2020200490.fig3.jpeg", "images/2-chest-filmc.jpg"):
        assert reasons[marked] == "annotation-arrow"
    assert reasons["images/ARDSSevere.png"] == "label-unmapped"
    kept = set(planned.kept["source_path"])
    for coloured_text in ("images/covid-19-caso-95-1-15.png", "images/tpmd200203f2-a.png", "images/F2DE909F-E19C-4900-92F5-8F435B031AC6.jpeg"):
        assert coloured_text in kept


@pytest.fixture(scope="module")
def fixture_variant(real_fixtures, release, tmp_path_factory):
    """1.0.0 with locks cut down to the real images the fixtures carry, and a zip of the Kaggle ones."""
    root = tmp_path_factory.mktemp("variant")
    folder = root / "manifest"
    shutil.copytree(RELEASE, folder)
    exclusions = ["source,source_path,reason,note"]
    for name in GITHUB:
        present = {"metadata.csv"} | {f"images/{p.name}" for p in (real_fixtures / name / "images").iterdir()}
        for line in (folder / "locks" / f"{name}.tsv").read_text().splitlines()[1:]:
            path = line.split("\t")[0]
            if path not in present:
                exclusions.append(f"{name},{path},manual-exclusion,not among the fixture images")
    (folder / "decisions" / "exclusions.csv").write_text("\n".join(exclusions) + "\n")
    kaggle_root = real_fixtures / "kaggle" / "chest_xray"
    images = sorted(kaggle_root.rglob("*.jpeg"))
    rows = ["split,class,filename,subtype,sha256"]
    checksums = {}
    for line in (real_fixtures / "kaggle" / "images_index.csv").read_text().splitlines()[1:]:
        split, cls, filename, _size, sha256, *_ = line.split(",")
        checksums[(split, cls, filename)] = sha256
    archive = root / "kaggle.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for image in images:
            split, cls = image.parent.parent.name, image.parent.name
            subtype = "normal" if cls == "NORMAL" else ("virus" if "virus" in image.name else "bacteria")
            rows.append(f"{split},{cls},{image.name},{subtype},{checksums[(split, cls, image.name)]}")
            handle.write(image, f"chest_xray/{split}/{cls}/{image.name}")
    (folder / "locks" / "kaggle.csv").write_text("\n".join(rows) + "\n")
    # Kaggle duplicate decisions naming files outside the fixture's cut-down Kaggle list are dropped.
    zipped = {f"chest_xray/{i.parent.parent.name}/{i.parent.name}/{i.name}" for i in images}
    decisions = folder / "decisions" / "duplicates.csv"
    with open(decisions, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fields, kept_rows = reader.fieldnames, [r for r in reader if r["source"] != "kaggle"
                                                 or {r["source_path"], r["duplicate_of_path"]} <= zipped]
    with open(decisions, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fields)
        writer.writeheader()
        writer.writerows(kept_rows)
    # The real manifest's configurations and rules; only the counts fit the fixture images.
    data = yaml.safe_load((folder / "manifest.yaml").read_text())
    data["split"]["rules"][1]["test_images"] = 4
    for config in data["configs"].values():
        config["expected_counts"] = FIXTURE_COUNTS
    # json round trip: no shared objects, so no YAML aliases (which the manifest reader refuses)
    (folder / "manifest.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(data)), sort_keys=False))
    return folder, archive


FIXTURE_COUNTS = {"train": {"COVID-19": 9, "Normal": 5, "Pneumonia": 9}, "test": {"COVID-19": 4, "Normal": 8, "Pneumonia": 8}}


def test_build_from_the_real_images(fixture_variant, server, tmp_path):
    folder, archive = fixture_variant
    options = Options(cache_dir=tmp_path / "cache", mirror=server.base_url, workers=2, progress=False, kaggle_archive=archive)
    report = build(manifest_module.load(folder), tmp_path / "out", options)
    assert report["checks"]["unverified_files"] == 0  # GitHub files by blob id, Kaggle files by sha256
    assert report["checks"]["near_duplicate_pairs_across_splits"] == []
    assert {name: c["counts"] for name, c in report["configs"].items()} == {"paper": FIXTURE_COUNTS, "curated": FIXTURE_COUNTS}
    assert verify_release(tmp_path / "out").ok
    loaded = datasets.load_dataset(str(tmp_path / "out"))
    curated = datasets.load_dataset(str(tmp_path / "out"), "curated")
    # no fixture image carries a flag in the real decisions, so curated holds the same rows here
    assert {s: sorted(curated[s]["source_path"]) for s in curated} == {s: sorted(loaded[s]["source_path"]) for s in loaded}
    rows = {r["source_path"]: r for split in loaded for r in loaded[split]}
    assert all(r["flags"] == [] and r["duplicate_of"] == "" for r in rows.values())
    palette, rgba = rows["images/tpmd200203f2-a.png"], rows["images/covid-19-caso-95-1-15.png"]
    assert palette["image"].mode == rgba["image"].mode == "L"
    assert palette["license"] == "" and rows["images/COVID-00001.jpg"]["patient_id"] == "figure1:COVID-00001"
    assert {r["source"] for r in rows.values()} == {"cohen", "figure1", "actualmed", "kaggle"}


def test_plan_command_prints_both_configurations_matching(server, tmp_path):
    from click.testing import CliRunner

    from covid19_cxr_dataset.cli import main

    result = CliRunner().invoke(main, ["plan", "--version", "1.0.0", "--mirror", server.base_url, "--cache-dir",
                                       str(tmp_path / "cache"), "-q", "--json", str(tmp_path / "plan.json")])
    assert result.exit_code == 0, result.output
    assert "configuration paper (default): 6,354 images, " in result.output
    assert "  train        398       1,341       3,875    5,614   expected 398 / 1,341 / 3,875" in result.output
    assert "  test         100         242         398      740   expected 100 / 242 / 398" in result.output
    curated = sum(sum(c.values()) for c in manifest_module.load(RELEASE).config("curated").expected_counts.values())
    assert f"configuration curated: {curated:,} images" in result.output
    assert result.output.count("counts match the manifest") == 2
    document = json.loads((tmp_path / "plan.json").read_text())
    assert set(document) >= {"configs", "files"}
    assert document["configs"]["paper"]["actual"] == document["configs"]["paper"]["expected"] == TABLE_1
    assert document["configs"]["curated"]["matches"] is True
    row = next(f for f in document["files"] if f["source_path"] == "images/16660_2_1.jpg")
    assert row["flags"] == ["duplicate-near"] and row["in_curated"] is False and row["excluded"] == ""
    assert row["duplicate_of"] == "cohen:images/covid-19-rapidly-progressive-acute-respiratory-distress-syndrome-ards-admission.jpg"
