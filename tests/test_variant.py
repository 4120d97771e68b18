"""A local variant in one command: new-variant, --manifest everywhere, cards that say what they are."""

from __future__ import annotations

import csv
import re
import shutil

import pytest
import yaml
from click.testing import CliRunner

from covid19_cxr_dataset import manifest as manifest_module
from covid19_cxr_dataset import card, missing, naming, variant
from covid19_cxr_dataset.build import Options, build
from covid19_cxr_dataset.cli import main
from covid19_cxr_dataset.errors import CxrDatasetError, MissingUpstreamFiles

from loopback import LoopbackServer
from synthetic import COHEN, EXPECTED

ABSENT = {f"/{COHEN[0]}/{COHEN[1]}/images/c2.png", f"/{COHEN[0]}/{COHEN[1]}/images/c9.jpg"}


@pytest.fixture
def bundled(world, tmp_path, monkeypatch):
    """The synthetic manifest installed as bundled release ``tiny 0.0.1`` (what --version finds)."""
    root = tmp_path / "builder_manifests"
    shutil.copytree(world.manifest_dir, root / "tiny" / "0.0.1")
    monkeypatch.setenv("COVID19_CXR_MANIFESTS", str(root))
    return manifest_module.load(root / "tiny" / "0.0.1")


@pytest.fixture
def partial_mirror(world):
    with LoopbackServer({p: d for p, d in world.served.items() if p not in ABSENT}) as server:
        yield server


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_local_versions_follow_pep_440():
    assert naming.next_local_version("1.0.0") == "1.0.0+local.1"
    assert naming.next_local_version("1.0.0+local.1") == "1.0.0+local.2"
    assert naming.next_local_version("1.0.0+lab") == "1.0.0+lab.local.1"
    assert naming.public_version("1.0.0+local.3") == "1.0.0"
    packaging = pytest.importorskip("packaging.version")
    parsed = packaging.Version(naming.next_local_version("1.0.0"))
    assert parsed.public == "1.0.0" and parsed.local == "local.1"


def test_the_whole_journey_failed_build_then_variant_then_build_and_cite(bundled, world, partial_mirror, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = ["--mirror", partial_mirror.base_url, "--cache-dir", tmp_path / "cache", "-q"]
    failed = _run("build", "--version", "0.0.1", "--name", "tiny", "--out", "./tiny", "--kaggle-archive", world.kaggle_zip, *common)
    assert failed.exit_code == 1
    assert "2 of 24 pinned file(s) could not be fetched" in failed.output
    report = tmp_path / "tiny.missing-files.csv"
    # The error's own command, as printed, makes the variant.
    suggested = "cxr-dataset new-variant --from 0.0.1 --name tiny ./tiny-0.0.1+local.1-manifest --exclude-missing ./tiny.missing-files.csv"
    assert suggested in failed.output

    made = _run("new-variant", "--from", "0.0.1", "--name", "tiny", "./tiny-0.0.1+local.1-manifest",
                "--exclude-missing", "./tiny.missing-files.csv", *common)
    assert made.exit_code == 0, made.output
    assert "wrote tiny-0.0.1+local.1-manifest: tiny 0.0.1+local.1, derived from 0.0.1" in made.output
    assert "excluded 2 missing file(s)" in made.output
    assert "train COVID-19 8  Normal 3  Pneumonia 4" in made.output
    assert "differs from release 0.0.1: train/COVID-19 8 (published 10)" in made.output
    assert "cxr-dataset cite --manifest ./tiny-0.0.1+local.1-manifest" in made.output

    folder = tmp_path / "tiny-0.0.1+local.1-manifest"
    data = yaml.safe_load((folder / "manifest.yaml").read_text())
    assert data["version"] == "0.0.1+local.1"
    assert "derived from 0.0.1" in data["description"] and "not a published release" in data["description"]
    assert data["release_notes"].startswith("Derived from 0.0.1 by `cxr-dataset new-variant`")
    assert "test release" not in data["release_notes"]
    assert data["expected_counts"] == {"train": {"COVID-19": 8, "Normal": 3, "Pneumonia": 4},
                                       "test": {"COVID-19": 3, "Normal": 2, "Pneumonia": 2}}
    assert data["split"] == bundled.data["split"] and data["sources"] == bundled.data["sources"]
    with open(folder / "decisions" / "exclusions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["source"], r["source_path"], r["reason"]) for r in rows} == {
        ("cohen", "images/c2.png", "upstream-missing"), ("cohen", "images/c9.jpg", "upstream-missing")}
    assert all(r["note"].startswith("HTTP 404 at http://127.0.0.1:") for r in rows)
    # The base release is untouched.
    assert (bundled.folder / "decisions" / "exclusions.csv").read_text() == "source,source_path,reason,note\n"

    built = _run("build", "--manifest", folder, "--out", "./tiny-0.0.1+local.1", "--kaggle-archive", world.kaggle_zip, *common)
    assert built.exit_code == 0, built.output
    assert "upstream-missing 2" in built.output
    card = (tmp_path / "tiny-0.0.1+local.1" / "README.md").read_text()
    body = card.split("---\n", 2)[2].lstrip()
    first_lines = body.splitlines()[:4]
    assert first_lines[0] == "# Tiny synthetic release for tests (local variant of release 0.0.1)"
    assert first_lines[2].startswith("> **Not release 0.0.1: the counts differ.**")
    assert "train/COVID-19 8 (published 10)" in first_lines[2]
    assert "`cxr-dataset cite --manifest tiny-0.0.1+local.1-manifest`" in card  # the folder's name: not where it was built

    cited = _run("cite", "--manifest", folder)
    assert cited.exit_code == 0, cited.output
    assert "0.0.1+local.1" in cited.output and "local variant of release 0.0.1" in cited.output


def test_a_variant_of_a_variant_counts_on(bundled, world, tmp_path):
    with LoopbackServer(dict(world.served)) as server:
        options = Options(cache_dir=tmp_path / "cache", mirror=server.base_url, progress=False)
        first, _ = variant.new_variant(bundled, tmp_path / "one", options=options)
        second, resolution = variant.new_variant(first, tmp_path / "two", options=options)
    assert (first.version, second.version) == ("0.0.1+local.1", "0.0.1+local.2")
    assert second.data["title"] == "Tiny synthetic release for tests (local variant of release 0.0.1)"
    # No files excluded: the counts plan recomputes are the release's own.
    assert second.data["expected_counts"] == EXPECTED == resolution.counts()


def test_new_variant_refuses_a_non_empty_folder_and_leaves_nothing_after_a_failure(bundled, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    result = _run("new-variant", "--from", "0.0.1", "--name", "tiny", tmp_path / "taken")
    assert result.exit_code == 1 and "already exists and is not empty" in result.output
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]
    # Offline with an empty cache, plan cannot read the metadata: no half-made folder remains.
    result = _run("new-variant", "--from", "0.0.1", "--name", "tiny", tmp_path / "fresh", "--offline", "--cache-dir", tmp_path / "empty")
    assert result.exit_code == 1 and "offline" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["builder_manifests", "taken"]


def test_exclude_missing_rejects_a_report_of_another_release(bundled, tmp_path):
    report = tmp_path / "other.csv"
    missing.write_missing_report(report, [{"source": "elsewhere", "source_path": "x.png", "status": "404"}])
    with pytest.raises(CxrDatasetError, match="elsewhere"):
        variant.new_variant(bundled, tmp_path / "v", exclude_missing=report, options=Options(offline=True, progress=False))
    assert not (tmp_path / "v").exists()


def test_a_local_version_is_found_by_its_folder_and_the_error_says_so():
    result = _run("cite", "--version", "1.0.0+local.1")
    assert result.exit_code == 1 and "pass --manifest DIR" in result.output and "local version" in result.output


def test_version_and_manifest_together_are_refused(world):
    result = _run("plan", "--version", "1.0.0", "--manifest", world.manifest_dir)
    assert result.exit_code == 2 and "not both" in result.output


def test_hints_name_the_manifest_the_way_that_works(bundled, world):
    assert naming.manifest_option(bundled) == "--version 0.0.1 --name tiny"
    assert naming.manifest_option(manifest_module.load(world.manifest_dir)) == f"--manifest {world.manifest_dir}"


def test_real_release_is_named_by_version(monkeypatch):
    monkeypatch.delenv("COVID19_CXR_MANIFESTS", raising=False)
    release = manifest_module.load(manifest_module.find("1.0.0"))
    assert naming.manifest_option(release) == "--version 1.0.0"
    assert naming.published_release(release) is None  # a published release gets no notice


def test_a_hand_copied_manifest_with_other_counts_says_so_in_the_card(bundled, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(bundled.folder, copy)
    copied = manifest_module.load(copy)  # same name and version as the bundled release, other folder
    counts = {"train": {"COVID-19": 9, "Normal": 3, "Pneumonia": 4}, "test": {"COVID-19": 3, "Normal": 2, "Pneumonia": 2}}
    notice = card.card_notice(copied, counts)
    assert notice[0].startswith("> **Not release 0.0.1: the counts differ.**")
    assert "a manifest folder that is not the published release 0.0.1" in notice[0]
    assert "train/COVID-19 9 (published 10)" in notice[0]
    assert card.card_notice(bundled, counts) == []
    assert card.card_notice(copied, EXPECTED)[0].startswith("> **Not the published release.**")


def test_missing_files_error_from_the_library_is_one_exception(bundled, world, partial_mirror, tmp_path):
    options = Options(cache_dir=tmp_path / "cache", mirror=partial_mirror.base_url, progress=False, kaggle_archive=world.kaggle_zip)
    with pytest.raises(MissingUpstreamFiles) as error:
        build(bundled, tmp_path / "out", options)
    assert len(error.value.missing) == 2
    assert "--version 0.0.1 --name tiny" in str(error.value)
    # a bundled release is named as a release, not by a path inside site-packages
    assert str(error.value).startswith("release 0.0.1 (bundled): 2 of ") and str(bundled.path) not in str(error.value)


@pytest.mark.real
def test_variant_of_release_1_0_0_from_a_partial_mirror_of_the_real_sources(real_fixtures, tmp_path, monkeypatch):
    """plan --check-files on 1.0.0 against the real fixtures (most images absent), then new-variant
    from its report: the real manifest's comments survive, and the counts are plan's."""
    from test_release_1_0_0_real import _serve

    monkeypatch.delenv("COVID19_CXR_MANIFESTS", raising=False)
    monkeypatch.chdir(tmp_path)
    release = manifest_module.load(manifest_module.find("1.0.0"))
    with LoopbackServer(_serve(real_fixtures, release)) as server:
        common = ["--mirror", server.base_url, "--cache-dir", tmp_path / "cache", "-q"]
        checked = _run("plan", "--version", "1.0.0", "--check-files", *common)
        assert checked.exit_code == 2, checked.output
        report = tmp_path / "covid19-cxr-1.0.0.missing-files.csv"
        with open(report, newline="") as handle:
            missing = list(csv.DictReader(handle))
        assert missing and {r["status"] for r in missing} == {"404"}
        reachable, checked_files = map(int, re.search(r"files: ([\d,]+) of ([\d,]+) reachable", checked.output).groups())
        assert reachable == checked_files - len(missing)
        made = _run("new-variant", "--from", "1.0.0", "./v", "--exclude-missing", report, *common)
        assert made.exit_code == 0, made.output
        planned = _run("plan", "--manifest", "./v", *common)
    assert planned.exit_code == 0 and "counts match the manifest" in planned.output
    text = (tmp_path / "v" / "manifest.yaml").read_text()
    assert "commit: 0f7245db6f5aa4001ea75cf69fe6cfe091928403  # 2020-06-05" in text  # 1.0.0's comments kept
    data = yaml.safe_load(text)
    assert data["version"] == "1.0.0+local.1" and data["sources"] == release.data["sources"]
    kept = int(re.search(r"candidate files, ([\d,]+) kept", checked.output)[1].replace(",", ""))
    paper = data["configs"]["paper"]["expected_counts"]
    assert sum(sum(per_class.values()) for per_class in paper.values()) == kept - len(missing)
