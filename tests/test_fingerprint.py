"""One identity for everything a user reads (issue 21, item 3).

The attacker of these tests does what the issue describes: edit the shards of a built release with
pyarrow, rewrite the shard hashes in build_report.json, regenerate README.md with the package's own
card renderer; some then recompute the fingerprints too. ``verify`` must name the configuration
whose rows or definition changed; fingerprints from outside the folder (``--fingerprint``, a
manifest's ``fingerprints``) must catch the attacker who recomputed; ``cite`` must carry them.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from covid19_cxr_dataset import manifest as manifest_module, release
from covid19_cxr_dataset.build import Options, build
from covid19_cxr_dataset.generated import write_generated
from covid19_cxr_dataset.cli import main
from covid19_cxr_dataset.errors import ManifestError, VerificationError
from covid19_cxr_dataset.verify import card_header, verify_release

from loopback import LoopbackServer
from release_factory import make_release
from synthetic import make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"), configs=True)


@pytest.fixture(scope="module")
def server(world):
    with LoopbackServer(dict(world.served)) as running:
        yield running


@pytest.fixture(scope="module")
def pristine(world, server, tmp_path_factory) -> Path:
    """tiny 0.0.1 built from the synthetic sources: paper (default) over data/curated + data/flagged, curated over data/curated."""
    root = tmp_path_factory.mktemp("built")
    options = Options(cache_dir=root / "cache", mirror=server.base_url, workers=2, progress=False, kaggle_archive=world.kaggle_zip)
    build(manifest_module.load(world.manifest_dir), root / "out", options)
    return root / "out"


@pytest.fixture
def built(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "release"))


@pytest.fixture(scope="module")
def original(pristine) -> dict[str, str]:
    return release.stated_fingerprints(release.read_report(pristine))


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _verify(folder: Path, *more):
    return _cli("verify", folder, "--workers", "1", *more)


def _checks(result) -> set[tuple[str, str]]:
    return {(p.file, p.check) for p in result.problems}


# ---- the attacker ----------------------------------------------------------------------------------

def edit_rows(folder: Path, shard_folder: str, split: str, change, *, row: int = 0) -> None:
    """Edit one row of the first ``split`` shard in data/<shard_folder>/ with pyarrow, in place."""
    path = sorted((folder / "data" / shard_folder).glob(f"{split}-*.parquet"))[0]
    table = pq.read_table(path)
    rows = table.to_pylist()
    change(rows[row])
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)


def cover_up(folder: Path, change_report=None, *, recompute: bool = False) -> dict:
    """Rewrite build_report.json's shard hashes (and whatever ``change_report`` edits), optionally the
    fingerprints as the package computes them, and regenerate README.md, croissant.json and
    unpinned-files.csv with the package's renderers."""
    data = release.read_report(folder)
    data["shards"] = release.shard_hashes(folder)
    if change_report:
        change_report(data)
    if recompute:
        fingerprints = release.report_fingerprints(folder, data)
        for name, value in fingerprints.items():
            data["configs"][name]["fingerprint"] = value
        data["fingerprint"] = fingerprints[release.available_configs(data)[0]]
    release.write_report(folder, data)
    write_generated(folder, data)
    return data


def _named(result) -> set[str]:
    """The configurations whose fingerprint verify found changed."""
    return {re.search(r"\((\w+)\)", p.file)[1] for p in result.problems if p.check == "config-fingerprint"}


COLUMN_EDITS = {
    "patient_id": lambda row: row.update(patient_id=row["patient_id"] + "-edited"),
    "patient_group": lambda row: row.update(patient_group=row["patient_group"] + "-elsewhere"),
    "view": lambda row: row.update(view="AP Supine" if row["view"] != "AP Supine" else "PA"),
    "finding": lambda row: row.update(finding=row["finding"] + " (edited)"),
    "license": lambda row: row.update(license="all rights reserved"),
    "sha256": lambda row: row.update(sha256="0" * 64),
    "duplicate_of": lambda row: row.update(duplicate_of="cohen:images/c1.png"),
    "conversion": lambda row: row.update(conversion="normalized-png" if row["conversion"] != "normalized-png" else "lossless-jpeg"),
    "source": lambda row: row.update(source="figure1"),
    "source_path": lambda row: row.update(source_path="images/elsewhere.png"),
    "image path": lambda row: row.update(image={**row["image"], "path": "renamed.jpg"}),
}


@pytest.mark.parametrize("column", sorted(COLUMN_EDITS))
def test_an_edited_column_fails_verify_naming_both_configurations(built, column):
    edit_rows(built, "curated", "test", COLUMN_EDITS[column])
    cover_up(built)
    result = verify_release(built)
    # nothing but the fingerprints notices: hashes, counts and card were made to agree
    assert _checks(result) == {("data/*.parquet", "fingerprint"), ("data/ (paper)", "config-fingerprint"),
                               ("data/ (curated)", "config-fingerprint")}
    outcome = _verify(built)
    assert outcome.exit_code == 1
    assert "configuration 'paper': fingerprint" in outcome.output and "configuration 'curated': fingerprint" in outcome.output


def test_edited_flags_in_the_flagged_folder_name_paper_only(built):
    edit_rows(built, "flagged", "train", lambda row: row.update(flags=["not-reviewed"]))
    cover_up(built)
    result = verify_release(built)
    assert _named(result) == {"paper"}
    assert ("data/*.parquet", "fingerprint") in _checks(result)
    outcome = _verify(built)
    assert outcome.exit_code == 1 and "configuration 'paper'" in outcome.output and "configuration 'curated'" not in outcome.output


def test_an_edited_label_fails_too(built):
    edit_rows(built, "flagged", "test", lambda row: row.update(label=(row["label"] + 1) % 3))
    cover_up(built)
    assert _named(verify_release(built)) == {"paper"}
    assert _verify(built).exit_code == 1


def test_a_column_the_package_does_not_know_is_covered(built, original):
    """A column added to every shard (a future `age` column, say) is covered without code changes."""
    for path in sorted((built / "data").rglob("*.parquet")):
        table = pq.read_table(path)
        table = table.append_column("age", pa.array([f"{i}" for i in range(table.num_rows)]))
        pq.write_table(table, path)
    honest = cover_up(built, recompute=True)
    assert verify_release(built).ok
    assert release.stated_fingerprints(honest)["paper"] != original["paper"]  # a new column is something users read
    edit_rows(built, "curated", "train", lambda row: row.update(age="99"))
    cover_up(built)
    assert _named(verify_release(built)) == {"paper", "curated"}
    assert _verify(built).exit_code == 1


def test_switching_the_default_configuration_fails(built):
    def switch(data):
        data["configs"]["paper"]["default"], data["configs"]["curated"]["default"] = False, True
        data["default_config"] = "curated"

    before = release.fingerprint(built, config="paper", definition=1)
    cover_up(built, switch)
    header = card_header((built / "README.md").read_text(encoding="utf-8"))
    assert [c["config_name"] for c in header["configs"] if c.get("default")] == ["curated"]  # load_dataset(dir) gives curated
    assert release.fingerprint(built, config="paper", definition=1) == before  # what the old definition missed
    result = verify_release(built)
    assert _named(result) == {"paper", "curated"}
    outcome = _verify(built)
    assert outcome.exit_code == 1 and "configuration 'curated'" in outcome.output


def test_a_configuration_reading_other_data_files_fails(built):
    """paper's flagged test shard moved to another folder: the same rows, other data files."""
    moved = sorted((built / "data" / "flagged").glob("test-*.parquet"))[0]
    (built / "data" / "extra").mkdir()
    target = built / "data" / "extra" / moved.name
    shutil.move(moved, target)

    def rewire(data):
        paper = data["configs"]["paper"]
        paper["folders"] = paper["folders"] + ["extra"]
        paper["shards"] = sorted(p.replace(moved.relative_to(built).as_posix(), target.relative_to(built).as_posix())
                                 for p in paper["shards"])

    cover_up(built, rewire)
    header = card_header((built / "README.md").read_text(encoding="utf-8"))
    paper_files = next(c for c in header["configs"] if c["config_name"] == "paper")["data_files"]
    assert "data/extra/test-*.parquet" in str(paper_files)
    result = verify_release(built)
    assert _named(result) == {"paper"} and _checks(result) == {("data/*.parquet", "fingerprint"), ("data/ (paper)", "config-fingerprint")}
    assert _verify(built).exit_code == 1


def test_a_subset_reading_the_flagged_folder_too_fails(built):
    def widen(data):
        curated = data["configs"]["curated"]
        curated["folders"] = ["curated", "flagged"]
        curated["shards"] = list(data["configs"]["paper"]["shards"])
        curated["counts"] = data["configs"]["paper"]["counts"]

    cover_up(built, widen)
    result = verify_release(built)
    assert _checks(result) == {("data/ (curated)", "config-fingerprint")}
    outcome = _verify(built)
    assert outcome.exit_code == 1 and "configuration 'curated'" in outcome.output


# ---- anchors outside the folder ----------------------------------------------------------------------

def test_a_recomputed_report_passes_alone_and_fails_against_the_original_fingerprint(built, original):
    edit_rows(built, "curated", "test", COLUMN_EDITS["patient_id"])
    forged = cover_up(built, recompute=True)
    assert release.stated_fingerprints(forged) != original
    alone = _verify(built)
    assert alone.exit_code == 0  # consistent with itself: why anchors exist, and the output says so
    assert "no recorded fingerprint" in alone.output and "--fingerprint HEX checks this folder" in alone.output
    outcome = _verify(built, "--fingerprint", original["paper"])
    assert outcome.exit_code == 1 and "fingerprint-anchor" in outcome.output and original["paper"] in outcome.output
    outcome = _verify(built, "--fingerprint", f"curated={original['curated']}")
    assert outcome.exit_code == 1 and "configuration 'curated': fingerprint" in outcome.output


def test_fingerprint_option_on_an_intact_folder(built, original):
    matched = _verify(built, "--fingerprint", original["curated"][:16])
    assert matched.exit_code == 0 and f"fingerprint {original['curated'][:16]} (given with --fingerprint) matches configuration curated" in matched.output
    both = _verify(built, "--fingerprint", f"paper={original['paper']}", "--fingerprint", f"curated={original['curated']}")
    assert both.exit_code == 0 and "configuration paper: fingerprint" in both.output
    wrong = _verify(built, "--fingerprint", f"paper={original['curated']}")
    assert wrong.exit_code == 1 and "configuration 'paper': fingerprint" in wrong.output
    absent = _verify(built, "--fingerprint", f"strict={original['paper']}")
    assert absent.exit_code == 1 and "configuration 'strict'" in absent.output and "no such configuration" in absent.output
    for malformed in ("3f2a", "paper=xyz", "Paper=" + original["paper"]):
        outcome = _verify(built, "--fingerprint", malformed)
        assert outcome.exit_code == 2 and "16 to 64 hex digits" in outcome.output


@pytest.fixture
def bundled(world, original, tmp_path, monkeypatch):
    """tiny 0.0.1 bundled (COVID19_CXR_MANIFESTS) with its known fingerprints recorded in its manifest."""
    root = tmp_path / "builder_manifests"
    folder = shutil.copytree(world.manifest_dir, root / "tiny" / "0.0.1")
    with (folder / "manifest.yaml").open("a", encoding="utf-8") as handle:
        handle.write(yaml.safe_dump({"fingerprints": original}))
    monkeypatch.setenv("COVID19_CXR_MANIFESTS", str(root))
    return manifest_module.load(folder)


def test_a_recorded_fingerprint_makes_plain_verify_fail_after_a_recomputed_forgery(built, bundled, original):
    assert bundled.fingerprints == original
    intact = _verify(built)
    assert intact.exit_code == 0 and "recorded for release 0.0.1" in intact.output and "matches" in intact.output
    edit_rows(built, "flagged", "train", COLUMN_EDITS["duplicate_of"])
    cover_up(built, recompute=True)
    outcome = _verify(built)
    assert outcome.exit_code == 1
    assert "configuration 'paper': fingerprint" in outcome.output and "recorded for release 0.0.1" in outcome.output
    assert "configuration 'curated'" not in outcome.output  # its rows and definition are untouched


def test_a_local_variants_report_has_no_recorded_fingerprint(built, bundled):
    cover_up(built, lambda data: data.update(version="0.0.1+local.1"), recompute=True)
    outcome = _verify(built)
    assert outcome.exit_code == 0 and "0.0.1+local.1 is a local variant: no fingerprint is recorded" in outcome.output


def test_a_manifest_records_fingerprints_of_its_own_configurations_only(world, original, tmp_path):
    def load(extra: dict, version: str = "0.0.1"):
        folder = Path(shutil.copytree(world.manifest_dir, tmp_path / f"m{len(list(tmp_path.iterdir()))}"))
        text = (folder / "manifest.yaml").read_text(encoding="utf-8").replace("version: 0.0.1", f"version: {version}", 1)
        (folder / "manifest.yaml").write_text(text + yaml.safe_dump(extra), encoding="utf-8")
        return manifest_module.load(folder)

    assert load({"fingerprints": {"curated": original["curated"]}}).fingerprints == {"curated": original["curated"]}
    with pytest.raises(ManifestError, match="'fingerprints' names \\['strict'\\]"):
        load({"fingerprints": {"strict": original["paper"]}})
    with pytest.raises(ManifestError, match="fingerprints.paper"):
        load({"fingerprints": {"paper": "3f2a"}})
    with pytest.raises(ManifestError, match="local version 0.0.1\\+local.1 has none"):
        load({"fingerprints": original}, version="0.0.1+local.1")
    assert manifest_module.load(manifest_module.manifests_root() / "covid19-cxr" / "1.0.0").fingerprints == {}


def test_a_variant_does_not_inherit_the_release_fingerprints(bundled, server, tmp_path):
    from covid19_cxr_dataset.variant import new_variant

    variant, _ = new_variant(bundled, tmp_path / "variant", options=Options(cache_dir=tmp_path / "cache", mirror=server.base_url,
                                                                              progress=False))
    assert variant.fingerprints == {} and "fingerprints" not in (tmp_path / "variant" / "manifest.yaml").read_text(encoding="utf-8")


# ---- old reports ---------------------------------------------------------------------------------------

def test_a_schema_1_report_is_checked_with_the_old_definition_and_says_so(built, original):
    def downgrade(data):
        data["report_schema"] = 1

    old = cover_up(built, downgrade, recompute=True)
    assert release.stated_fingerprints(old)["paper"] == release.fingerprint(built, config="paper", definition=1) != original["paper"]
    outcome = _verify(built)
    assert outcome.exit_code == 0
    assert "report schema 1: its fingerprints use the old definition 1" in outcome.output and "is not covered" in outcome.output
    assert "(decoded pixels and labels)" in (built / "README.md").read_text(encoding="utf-8")  # its card as it was written
    edit_rows(built, "curated", "test", lambda row: row.update(label=(row["label"] + 1) % 3))
    cover_up(built)
    assert _verify(built).exit_code == 1  # pixels and labels stay covered
    anchored = _verify(built, "--fingerprint", original["paper"])
    assert anchored.exit_code == 1 and "fingerprint definition 1 (report schema 1)" in anchored.output


# ---- what does not change it -----------------------------------------------------------------------------

def test_shard_boundaries_do_not_change_the_fingerprint(tmp_path):
    one = make_release(tmp_path / "one", per_class={"train": 24, "test": 2}, size=(32, 32))
    many = make_release(tmp_path / "many", per_class={"train": 24, "test": 2}, size=(32, 32), max_shard_bytes=20_000)
    assert len(release.shard_paths(many / "data", "train")) > len(release.shard_paths(one / "data", "train"))
    assert release.read_report(one)["fingerprint"] == release.read_report(many)["fingerprint"] == release.fingerprint(many)


def test_baseline_reads_the_same_fingerprint(built):
    """baseline's check (release.verify_config_fingerprint) refuses what verify refuses, naming the configuration."""
    edit_rows(built, "curated", "train", COLUMN_EDITS["patient_id"])
    cover_up(built)
    report = release.read_report(built)
    with pytest.raises(VerificationError, match="configuration 'curated' has fingerprint .* other columns"):
        release.verify_config_fingerprint(built, release.resolve_config(built, report, "curated"), workers=1)


# ---- cite -------------------------------------------------------------------------------------------------

def test_cite_carries_recorded_fingerprints(bundled, original):
    bibtex = _cli("cite", "--name", "tiny", "--version", "0.0.1")
    assert bibtex.exit_code == 0
    assert (f"fingerprint of configuration paper: {original['paper']}; fingerprint of configuration curated: "
            f"{original['curated']} (check a copy with: cxr-dataset verify DIR --fingerprint HEX)") in bibtex.output
    one = _cli("cite", "--name", "tiny", "--version", "0.0.1", "--config", "curated")
    assert original["curated"] in one.output and original["paper"] not in one.output
    cff = yaml.safe_load(_cli("cite", "--name", "tiny", "--version", "0.0.1", "--format", "cff").output)
    assert [(i["type"], i["value"]) for i in cff["identifiers"]] == [("other", original["paper"]), ("other", original["curated"])]
    assert "configuration curated" in cff["identifiers"][1]["description"]
    assert f"Fingerprint of configuration paper: {original['paper']}" in _cli("cite", "--name", "tiny", "--version", "0.0.1", "--format", "apa").output


def test_cite_without_recorded_fingerprints_says_how_to_get_them():
    outcome = _cli("cite", "--version", "1.0.0")
    assert outcome.exit_code == 0 and "fingerprint of configuration" not in outcome.output
    assert "no fingerprint recorded: `cxr-dataset cite --release DIR`" in outcome.output


def test_cite_release_verifies_the_folder_and_cites_its_fingerprints(built, world, original):
    unbundled = _cli("cite", "--release", built, "--workers", "1")
    assert unbundled.exit_code == 1 and "pass the manifest folder it was built from with --manifest DIR" in unbundled.output
    other = _cli("cite", "--release", built, "--version", "1.0.0", "--workers", "1")
    assert other.exit_code == 1 and "the folder holds tiny 0.0.1, but the manifest given is covid19-cxr 1.0.0" in other.output
    cited = _cli("cite", "--release", built, "--manifest", world.manifest_dir, "--format", "cff", "--workers", "1")
    assert cited.exit_code == 0, cited.output
    # stdout is the CFF alone (verify's progress bars go to stderr), so `> CITATION.cff` works
    assert [i["value"] for i in yaml.safe_load(cited.stdout)["identifiers"]] == [original["paper"], original["curated"]]
    edit_rows(built, "curated", "test", COLUMN_EDITS["license"])
    cover_up(built)
    refused = _cli("cite", "--release", built, "--manifest", world.manifest_dir, "--workers", "1")
    assert refused.exit_code == 1 and "FAILED verification" in refused.output and original["paper"] not in refused.output.split("FAILED")[0]



def test_cite_release_names_where_publish_recorded_the_release(built, world, original):
    """A published folder records its Hub repository (hub_release): `cite --release` links it, and the
    fingerprints it cites are unchanged by that record (`--repo-id` names another copy)."""
    data = release.read_report(built)
    data["card"]["hub_repo"] = "org/cxr"
    release.write_report(built, data)
    write_generated(built, data)
    cited = _cli("cite", "--release", built, "--manifest", world.manifest_dir, "--workers", "1")
    assert cited.exit_code == 0, cited.output
    assert "howpublished={\\url{https://huggingface.co/datasets/org/cxr}}" in cited.stdout and original["paper"] in cited.stdout
    mirror = _cli("cite", "--release", built, "--manifest", world.manifest_dir, "--workers", "1", "--repo-id", "me/copy")
    assert "datasets/me/copy" in mirror.stdout and "datasets/org/cxr" not in mirror.stdout

def test_the_report_states_schema_2(pristine):
    data = json.loads((pristine / release.REPORT_NAME).read_text(encoding="utf-8"))
    assert data["report_schema"] == 2
    assert "every column of every row; the configuration's name, default and data files" in (pristine / "README.md").read_text(encoding="utf-8")
