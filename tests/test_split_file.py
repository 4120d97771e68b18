"""A release's split is data (splits.csv): checked by every plan and build, kept by every variant."""

from __future__ import annotations

import csv
import re
import shlex
import shutil
import zipfile

import pandas as pd
import pytest
from click.testing import CliRunner

from covid19_cxr_dataset import manifest as manifest_module
from covid19_cxr_dataset.build import Options, build
from covid19_cxr_dataset.cli import main
from covid19_cxr_dataset.errors import CxrDatasetError, MissingUpstreamFiles
from covid19_cxr_dataset.plan import plan, recorded_assignment
from covid19_cxr_dataset.release import read_report, read_row_table
from covid19_cxr_dataset.split import ASSIGNMENT_COLUMNS, read_assignment

from loopback import LoopbackServer
from synthetic import ACTUALMED, COHEN, FIGURE1

REPOS = {"cohen": COHEN, "figure1": FIGURE1, "actualmed": ACTUALMED}


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _counts(table: pd.DataFrame) -> dict:
    return {s: {label: int(n) for label, n in group.groupby("label").size().items()} for s, group in table.groupby("split")}


def _nonzero(expected: dict) -> dict:
    return {s: {label: n for label, n in per_class.items() if n} for s, per_class in expected.items()}


# ---- the bundled releases (bare clone) ------------------------------------------------------------

@pytest.mark.parametrize("name, version", [(n, v) for n, v, _ in manifest_module.available()])
def test_a_bundled_split_file_holds_exactly_each_configurations_expected_counts(name, version):
    release = manifest_module.load(manifest_module.find(version, name))
    table = recorded_assignment(release)
    assert table is not None, f"{release.path} records no split file"
    assert list(pd.read_csv(release.file(release.split.assignment), nrows=0).columns) == list(ASSIGNMENT_COLUMNS)
    for config in release.configs:
        rows = table[table["configs"].str.split(";").map(lambda names: config.name in names)]
        assert _counts(rows) == _nonzero(config.expected_counts), config.name
    # No patient group on both sides (the rules place whole groups).
    kaggle = table["source"].eq("kaggle")  # Kaggle keeps its own split (reported, not moved)
    sides = table[~kaggle].groupby("patient_group")["split"].nunique()
    assert sides.max() == 1


# ---- the synthetic world: a release whose build finds pixel duplicates -----------------------------

@pytest.fixture(scope="module")
def world(configs_world):
    """The configurations world (conftest.py; shared, read-only): 1.0.0's shape, with a pixel duplicate."""
    return configs_world


@pytest.fixture(scope="module")
def server(world):
    with LoopbackServer(dict(world.served)) as running:
        yield running


@pytest.fixture(scope="module")
def release(world, server, tmp_path_factory):
    """The configs world as a release: built once, its split recorded from the build (`lock splits --from-build`)."""
    root = tmp_path_factory.mktemp("release")
    manifest_dir = root / "builder_manifests" / "tiny" / "0.0.1"
    shutil.copytree(world.manifest_dir, manifest_dir)
    options = Options(cache_dir=root / "cache", mirror=server.base_url, workers=2, progress=False, kaggle_archive=world.kaggle_zip)
    build(manifest_module.load(manifest_dir), root / "first", options)
    recorded = _run("lock", "splits", "--manifest", manifest_dir, "--from-build", root / "first")
    assert recorded.exit_code == 0, recorded.output
    assert re.search(r"splits\.csv: 28 images \(train \d+, test \d+\)", recorded.output)
    return manifest_module.load(manifest_dir), root


def test_lock_splits_from_a_build_records_what_only_the_build_found(release):
    manifest, _ = release
    assert manifest.split.assignment == "splits.csv"
    table = read_assignment(manifest.file("splits.csv"))
    pixel_copy = table[table["source_path"].eq("images/CR.5.1.png")].iloc[0]
    assert pixel_copy["configs"] == "paper"  # flagged at build time: not in curated
    for config in manifest.configs:
        rows = table[table["configs"].str.split(";").map(lambda names: config.name in names)]
        assert _counts(rows) == _nonzero(config.expected_counts)


def test_a_variant_without_some_files_keeps_every_other_image_on_its_side(world, release, tmp_path, monkeypatch):
    manifest, root = release
    monkeypatch.setenv("COVID19_CXR_MANIFESTS", str(root / "builder_manifests"))
    monkeypatch.chdir(tmp_path)
    recorded = read_assignment(manifest.file("splits.csv"))
    # A test COVID-19 film that is nobody's duplicate: without the split file, the rules would refill the test quota.
    linked = {"CR.1.1.png", "CR.5.1.png", "c7.png", "c8-copy-of-c7.png", "COVID-00006.jpg", "c10-figure1-repost.jpg"}
    candidates = recorded[recorded["split"].eq("test") & recorded["label"].eq("COVID-19") & recorded["source"].ne("kaggle")
                          & ~recorded["source_path"].map(lambda p: p.rsplit("/", 1)[-1] in linked)]
    gone = candidates.iloc[0]
    absent_url = f"/{REPOS[gone['source']][0]}/{REPOS[gone['source']][1]}/{gone['source_path']}"
    common = ["--cache-dir", tmp_path / "cache", "-q"]
    with LoopbackServer({p: d for p, d in world.served.items() if p != absent_url}) as mirror:
        common += ["--mirror", mirror.base_url]
        failed = _run("build", "--version", "0.0.1", "--name", "tiny", "--out", "./tiny", "--kaggle-archive", world.kaggle_zip, *common)
        assert failed.exit_code == 1 and re.search(r"\b1 of \d+ pinned file\(s\) could not be fetched", failed.output)
        variant_cmd = next(line.strip() for line in failed.output.splitlines() if line.strip().startswith("cxr-dataset new-variant"))
        build_cmd = next(line.strip() for line in failed.output.splitlines()
                         if line.strip().startswith("cxr-dataset build --manifest"))
        made = _run(*shlex.split(variant_cmd)[1:])  # the printed commands, verbatim
        assert made.exit_code == 0, made.output
        variant_dir = tmp_path / "tiny-0.0.1+local.1-manifest"
        variant = manifest_module.load(variant_dir)
        # Derived from the release (build findings included), not re-planned: curated keeps the pixel duplicate out.
        want = {c.name: {s: dict(per) for s, per in c.expected_counts.items()} for c in manifest.configs}
        for name in gone["configs"].split(";"):  # only the configurations that held it
            want[name]["test"]["COVID-19"] -= 1
        assert {c.name: c.expected_counts for c in variant.configs} == want
        planned = plan(variant, Options(cache_dir=tmp_path / "cache", mirror=mirror.base_url, progress=False))
        plan_output = _run("plan", "--manifest", variant_dir, *common).output
        assert "absent: 1 image(s) of the recorded split (splits.csv) are not in this selection: test COVID-19 1" in plan_output
        # Without the split file the rules would have moved a train image into the test quota: the file is what holds.
        by_rules = plan(variant, Options(cache_dir=tmp_path / "cache", mirror=mirror.base_url, progress=False), use_assignment=False)
        rules_side = dict(zip(by_rules.kept["record_id"], by_rules.kept["split"]))
        side = dict(zip(recorded["record_id"], recorded["split"]))
        assert any(rules_side[rid] != side[rid] for rid in rules_side)
        assert all(side[rid] == s for rid, s in zip(planned.kept["record_id"], planned.kept["split"]))

        built = _run(*shlex.split(build_cmd)[1:])
        assert built.exit_code == 0, built.output
    out = tmp_path / "tiny-0.0.1+local.1"
    rows = read_row_table(out)
    assert all(side[f"{r.source}:{r.source_path}"] == r.split for r in rows.itertuples())
    group_of = dict(zip(recorded["record_id"], recorded["patient_group"]))
    assert all(group_of[f"{r.source}:{r.source_path}"] == r.patient_group for r in rows.itertuples())
    report = read_report(out)
    assert report["configs"]["paper"]["absent_from_split_file"] == {"test": {"COVID-19": 1}}
    assert report["configs"]["curated"]["absent_from_split_file"] == ({"test": {"COVID-19": 1}} if "curated" in gone["configs"] else {})
    card = (out / "README.md").read_text()
    assert "> `paper` lacks 1 image(s) of release 0.0.1 (test COVID-19 1)" in card
    assert "Configuration `paper` of release 0.0.1, without the 1 file(s) that could not be downloaded" in card
    assert "its maker gave no description" in card and "Edit this" not in card


def test_a_recorded_label_that_changed_stops_the_plan(release, server, tmp_path):
    manifest, _ = release
    copy = tmp_path / "changed"
    shutil.copytree(manifest.folder, copy)
    text = (copy / "splits.csv").read_text()
    row = next(line for line in text.splitlines() if ",Pneumonia," in line)
    (copy / "splits.csv").write_text(text.replace(row, row.replace(",Pneumonia,", ",Normal,")))
    with pytest.raises(CxrDatasetError, match="another label than the release's split file records"):
        plan(manifest_module.load(copy), Options(cache_dir=tmp_path / "cache", mirror=server.base_url, progress=False))


# ---- a Kaggle archive whose bytes differ from the pins ---------------------------------------------

def test_an_archive_with_other_bytes_fails_once_then_the_printed_commands_build_a_declared_deviation(world, server, tmp_path, monkeypatch):
    root = tmp_path / "builder_manifests"
    manifest_dir = root / "tiny" / "0.0.1"
    shutil.copytree(world.manifest_dir, manifest_dir)
    monkeypatch.setenv("COVID19_CXR_MANIFESTS", str(root))
    monkeypatch.chdir(tmp_path)
    assert _run("lock", "kaggle", "--manifest", manifest_dir, "--kaggle-archive", world.kaggle_zip).exit_code == 0
    repacked = tmp_path / "repacked.zip"  # e.g. re-encoded copies: every Pneumonia file has other bytes
    changed = []
    with zipfile.ZipFile(world.kaggle_zip) as source, zipfile.ZipFile(repacked, "w") as target:
        for info in source.infolist():
            payload = source.read(info)
            if info.filename.startswith("chest_xray/") and "/PNEUMONIA/" in info.filename and not info.filename.startswith("chest_xray/chest_xray/"):
                payload += b"\0re-encoded"
                changed.append(info.filename)
            target.writestr(info, payload)
    common = ["--mirror", server.base_url, "--cache-dir", tmp_path / "cache", "-q"]
    failed = _run("build", "--version", "0.0.1", "--name", "tiny", "--out", "./tiny", "--kaggle-archive", repacked, *common)
    assert failed.exit_code == 1
    assert re.search(rf"\b{len(changed)} of \d+ file\(s\) in hand differ from their pinned sha256", failed.output)
    assert "could not be fetched" not in failed.output and not (tmp_path / "tiny").exists()
    with open(tmp_path / "tiny.missing-files.csv", newline="") as handle:
        listed = list(csv.DictReader(handle))
    assert sorted(r["source_path"] for r in listed) == sorted(changed)
    assert all(r["status"] == "sha256-mismatch" and len(r["sha256_expected"]) == 64 and len(r["sha256_actual"]) == 64
               and r["sha256_expected"] != r["sha256_actual"] and r["split"] and r["label"] == "Pneumonia" for r in listed)
    commands = [line.strip() for line in failed.output.splitlines() if line.strip().startswith("cxr-dataset ")]
    variant_cmd = next(c for c in commands if c.startswith("cxr-dataset new-variant"))
    assert "--accept-hashes ./tiny.missing-files.csv" in variant_cmd and "--exclude-missing" not in variant_cmd
    for command in [variant_cmd, next(c for c in commands if c.startswith("cxr-dataset build --manifest"))]:
        result = _run(*shlex.split(command)[1:])  # verbatim
        assert result.exit_code == 0, result.output
    card = (tmp_path / "tiny-0.0.1+local.1" / "README.md").read_text()
    assert f"> **{len(changed)} file(s) differ from release 0.0.1's pinned sha256.**" in card
    assert "it is not release 0.0.1" in card
    # The pins of the release itself are untouched.
    pins = pd.read_csv(manifest_dir / "locks" / "kaggle.csv", dtype=str)
    assert pins["sha256"].str.len().eq(64).all()
    with pytest.raises(MissingUpstreamFiles):
        build(manifest_module.load(manifest_dir), tmp_path / "again",
              Options(cache_dir=tmp_path / "cache", mirror=server.base_url, progress=False, kaggle_archive=repacked))


# ---- release 1.0.0 on the real metadata ------------------------------------------------------------

@pytest.fixture(scope="module")
def real_mirror(real_fixtures):
    from loopback import github_raw_path

    release = manifest_module.load(manifest_module.find("1.0.0"))
    files = {}
    for name in ("cohen", "figure1", "actualmed"):
        source = release.source(name)
        owner, repo = source["repository"].split("/")
        files[github_raw_path(owner, repo, source["commit"], "metadata.csv")] = (real_fixtures / name / "metadata.csv").read_bytes()
    with LoopbackServer(files) as running:
        yield running


@pytest.mark.real
def test_release_1_0_0_split_file_is_what_its_rules_give_on_the_real_metadata(real_mirror, tmp_path):
    checked = _run("lock", "splits", "--version", "1.0.0", "--check", "--mirror", real_mirror.base_url, "--cache-dir", tmp_path, "-q")
    assert checked.exit_code == 0, checked.output
    assert "splits.csv: matches the split the rules give (6,354 images)" in checked.output


@pytest.mark.real
def test_a_1_0_0_variant_without_the_39_unreviewed_files_moves_no_image(real_mirror, tmp_path):
    """The journey of issue 21: a mirror lacks the 39 files that could not be reviewed; the printed route
    (new-variant --exclude-missing) used to move 6 Cohen images from train to test to refill the quota."""
    release = manifest_module.load(manifest_module.find("1.0.0"))
    recorded = recorded_assignment(release)
    unreviewed = pd.read_csv(release.file(release.filters.decisions["unreviewed"]), dtype=str)
    report = tmp_path / "covid19-cxr-1.0.0.missing-files.csv"
    side = dict(zip(recorded["record_id"], recorded["split"]))
    from covid19_cxr_dataset.missing import write_missing_report
    write_missing_report(report, [{"source": r.source, "source_path": r.source_path, "split": side[f"{r.source}:{r.source_path}"],
                                   "label": "COVID-19", "status": "404"} for r in unreviewed.itertuples()])
    made = _run("new-variant", "--from", "1.0.0", tmp_path / "variant", "--exclude-missing", report,
                "--mirror", real_mirror.base_url, "--cache-dir", tmp_path / "cache", "-q")
    assert made.exit_code == 0, made.output
    variant = manifest_module.load(tmp_path / "variant")
    planned = plan(variant, Options(cache_dir=tmp_path / "cache", mirror=real_mirror.base_url, progress=False))
    assert len(planned.kept) == 6354 - 39
    assert all(side[rid] == s for rid, s in zip(planned.kept["record_id"], planned.kept["split"]))
    in_test = sum(side[f"{r.source}:{r.source_path}"] == "test" for r in unreviewed.itertuples())
    assert planned.counts("paper")["test"]["COVID-19"] == 100 - in_test
    assert planned.counts("paper")["train"]["COVID-19"] == 398 - (39 - in_test)
    # The unreviewed files were flagged in 1.0.0, so curated keeps its counts: derived, not re-planned.
    assert variant.config("curated").expected_counts == release.config("curated").expected_counts
    assert {c.name: planned.counts(c.name) for c in variant.configs} == {
        c.name: {s: {k: v for k, v in per.items()} for s, per in c.expected_counts.items()} for c in variant.configs}
