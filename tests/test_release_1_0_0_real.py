"""Release 1.0.0 against the real upstream files in ../shared/fixtures/real, served on 127.0.0.1.

* ``plan`` on the real metadata tables with the real manifest and decisions: Table 1 for ``paper``,
  the curation numbers, and ``curated`` as the same split without the flagged films.
* A build of a variant of 1.0.0 whose locks hold only the real images the fixtures carry: the hard
  cases land where they must (lateral, CT, annotated, out-of-class excluded; coloured text kept).
"""

from __future__ import annotations

import collections
import csv
import io
import json
import shutil
import zipfile
from pathlib import Path

import datasets
import mlcroissant
import numpy as np
import pytest
import yaml
from PIL import Image

from covid19_cxr_dataset import CLASS_NAMES, card, evidence, manifest as manifest_module, release as release_format, report as report_module, shards, split
from covid19_cxr_dataset.build import Options, build, check_counts, plan
from covid19_cxr_dataset.plan import absent_from_release
from covid19_cxr_dataset.counts import exclusion_summary, flag_summary
from covid19_cxr_dataset.generated import write_generated
from covid19_cxr_dataset.records import SPLITS
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


@pytest.fixture(scope="module")
def fixture_build(fixture_variant, server, tmp_path_factory):
    """The fixture variant built from the real images: (release folder, build report)."""
    folder, archive = fixture_variant
    root = tmp_path_factory.mktemp("fixture-build")
    options = Options(cache_dir=root / "cache", mirror=server.base_url, workers=2, progress=False, kaggle_archive=archive)
    return root / "out", build(manifest_module.load(folder), root / "out", options)


def test_build_from_the_real_images(fixture_build):
    out, report = fixture_build
    assert report["checks"]["unverified_files"] == 0  # GitHub files by blob id, Kaggle files by sha256
    assert report["checks"]["near_duplicate_pairs_across_splits"] == []
    assert {name: c["counts"] for name, c in report["configs"].items()} == {"paper": FIXTURE_COUNTS, "curated": FIXTURE_COUNTS}
    assert verify_release(out).ok
    loaded = datasets.load_dataset(str(out))
    curated = datasets.load_dataset(str(out), "curated")
    # no fixture image carries a flag in the real decisions, so curated holds the same rows here
    assert {s: sorted(curated[s]["source_path"]) for s in curated} == {s: sorted(loaded[s]["source_path"]) for s in loaded}
    rows = {r["source_path"]: r for split in loaded for r in loaded[split]}
    assert all(r["flags"] == [] and r["duplicate_of"] == "" for r in rows.values())
    palette, rgba = rows["images/tpmd200203f2-a.png"], rows["images/covid-19-caso-95-1-15.png"]
    assert palette["image"].mode == rgba["image"].mode == "L"
    assert palette["license"] == "" and rows["images/COVID-00001.jpg"]["patient_id"] == "figure1:COVID-00001"
    assert {r["source"] for r in rows.values()} == {"cohen", "figure1", "actualmed", "kaggle"}
    # croissant.json: mlcroissant reads every configuration back, split by split, class by class
    assert croissant_counts(out, ["paper", "curated"]) == {"paper": FIXTURE_COUNTS, "curated": FIXTURE_COUNTS}


def croissant_counts(out: Path, configs: list[str]) -> dict[str, dict[str, dict[str, int]]]:
    """{configuration: {split: {class: records}}} as mlcroissant reads them from out/croissant.json."""
    dataset = mlcroissant.Dataset(jsonld=str(out / "croissant.json"))
    assert not dataset.metadata.ctx.issues.errors, dataset.metadata.ctx.issues.report()
    found = {}
    for name in configs:
        counted = collections.Counter((r[f"{name}/split"].decode(), CLASS_NAMES[r[f"{name}/label"]])
                                      for r in dataset.records(record_set=name))
        found[name] = {s: {c: counted[(s, c)] for c in CLASS_NAMES} for s in sorted({s for s, _ in counted}, reverse=True)}
    return found


@pytest.fixture(scope="module")
def real_size_release(planned, release, tmp_path_factory) -> Path:
    """Release 1.0.0 as its real plan would build it (every row, flag, exclusion and unpinned Kaggle file),
    written with the build's own writers and report, each image an 8x8 placeholder: the real size of
    everything but the pixels."""
    out = tmp_path_factory.mktemp("real-size") / "out"
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(buffer, "JPEG")
    kept = planned.kept.assign(sha256=planned.kept["sha256_expected"])
    writers = {}
    for folder in shards.partitions(release.configs):
        (out / "data" / folder).mkdir(parents=True)
        writers.update({(folder, s): shards.SplitShardWriter(out / "data" / folder, s) for s in SPLITS})
    for record in kept.to_dict("records"):
        writers[(shards.partition_of(record["flags"], release.configs), record["split"])].add(
            shards.publish_row(record, buffer.getvalue(), "lossless-jpeg"))
    for writer in writers.values():
        writer.close()
    unverified = sorted(kept.loc[kept["sha256_expected"].eq("") & kept["git_blob_sha1"].eq(""), "record_id"])
    built = report_module.assemble(release, planned.candidates, kept, planned.excluded, out, unverified=unverified, workers=2,
                                   card_inputs=card.card_inputs(release), absent=absent_from_release(planned))
    # as the build does: the shortcut evidence joins the card's inputs once the report has the fingerprints
    built["card"]["extra_sections"].append(evidence.card_extra_section(built, release.folder / evidence.CERTIFICATES_FOLDER))
    write_generated(out, built)
    release_format.write_report(out, built)
    return out


def test_the_card_of_release_1_0_0_is_small_and_links_its_unpinned_files(real_size_release):
    out = real_size_release
    card = (out / "README.md").read_text(encoding="utf-8")
    assert len(card.encode("utf-8")) < 50_000  # it was 389 kB with every unpinned Kaggle file listed in it
    assert verify_release(out).ok
    unpinned = (out / "unpinned-files.csv").read_text().splitlines()[1:]
    assert len(unpinned) == 4_264 and all(line.startswith("kaggle,chest_xray/") for line in unpinned)
    assert "4,264 file(s) were used without a recorded sha256" in card and "(unpinned-files.csv)" in card
    for section in ("## Use it with PyTorch / TensorFlow / JAX", "## Personal and sensitive information", "## Point of contact"):
        assert section in card
    assert "Kermany et al. describe paediatric patients" in card  # what the sources did, from the manifest
    assert croissant_counts(out, ["paper", "curated"]) == {
        name: manifest_module.load(RELEASE).config(name).expected_counts for name in ("paper", "curated")}


def test_fast_probes_on_the_real_images(fixture_build):
    """The fast shortcut probes read real pixels and real file formats; with 4 COVID-19 and 8 Normal and
    Pneumonia test films no probe may flag anything, and the card says why, whatever the AUC."""
    from covid19_cxr_dataset.baseline.linear_probes import fast_probes, read_probe_table
    from covid19_cxr_dataset.evidence import shortcut_markdown
    from covid19_cxr_dataset.release import shard_paths

    out, _ = fixture_build
    train, test = (read_probe_table(shard_paths(out / "data", split)) for split in ("train", "test"))
    results = fast_probes(train, test, seed=42)
    metadata = results["metadata"]["feature_groups"]
    assert metadata["file format"]["features"] == ["format=jpeg", "format=png"]  # Cohen's PNGs beside the JPEGs
    assert {"conversion=lossless-jpeg", "conversion=normalized-png"} <= set(metadata["bit depth and encoding"]["features"])
    for name in ("linear-film", "linear-border", "linear-lung", "linear-corners", "metadata"):
        support = {cls: row["support"] for cls, row in results[name]["per_class"]["classes"].items()}
        assert support == FIXTURE_COUNTS["test"], name
        assert results[name]["separated_classes"] == [], name
    assert set(results["linear-holdout"]["sources"]) == {"actualmed", "cohen", "figure1"}
    section = shortcut_markdown({"dataset": {"fingerprint": "real-fixtures"}, "metrics": {}, "probes": results})
    assert "Too few test images to flag COVID-19 (4), Normal (8), Pneumonia (8): at least 10 on each side" in section


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
