"""Manifests: the bundled releases load; broken ones fail naming the file, the key and the fix."""

from __future__ import annotations

import shutil

import pytest

from covid19_cxr_dataset import manifest
from covid19_cxr_dataset.errors import ManifestError
from covid19_cxr_dataset.sources import read_kaggle_files, read_lock

RELEASE = manifest.manifests_root() / "covid19-cxr" / "1.0.0"


def test_release_1_0_0_is_listed_and_expects_table_1():
    assert ("covid19-cxr", "1.0.0") in [(n, v) for n, v, _ in manifest.available()]
    loaded = manifest.load(manifest.find("1.0.0"))
    assert [c.name for c in loaded.configs] == ["paper", "curated"]
    paper, curated = loaded.configs
    assert paper.default and not curated.default and curated.leave_out_flagged
    assert paper.expected_counts == {
        "train": {"COVID-19": 398, "Normal": 1341, "Pneumonia": 3875},
        "test": {"COVID-19": 100, "Normal": 242, "Pneumonia": 398},
    }
    assert paper.flag == {"annotation-text", "annotation-other", "duplicate-exact", "duplicate-near", "not-reviewed"}
    # curated's counts fall out of the curation (recorded, asserted by the real tier against `plan`)
    assert set(curated.expected_counts) == {"train", "test"}
    commits = {s["name"]: s.get("commit") for s in loaded.sources}
    assert commits["cohen"] == "0f7245db6f5aa4001ea75cf69fe6cfe091928403"


def test_release_1_0_0_pins_every_listed_kaggle_file():
    files = read_kaggle_files(RELEASE / "locks" / "kaggle.csv")
    counts = files.groupby(["split", "class"]).size().to_dict()
    assert counts == {("train", "NORMAL"): 1341, ("train", "PNEUMONIA"): 3875, ("val", "NORMAL"): 8,
                      ("val", "PNEUMONIA"): 8, ("test", "NORMAL"): 234, ("test", "PNEUMONIA"): 390}
    assert not files.duplicated(["split", "class", "filename"]).any()


def test_release_locks_agree_with_the_real_trees(real_fixtures):
    for source in ("cohen", "figure1", "actualmed"):
        tree = {}
        for line in (real_fixtures / source / "tree.tsv").read_text().splitlines()[1:]:
            path, blob, _ = line.split("\t")
            tree[path] = blob
        lock = read_lock(RELEASE / "locks" / f"{source}.tsv")
        assert lock, source
        assert {p: b for p, (b, _) in lock.items()} == {p: tree[p] for p in lock}


def test_unknown_version_lists_what_exists():
    with pytest.raises(ManifestError, match="available: covid19-cxr 1.0.0"):
        manifest.find("9.9.9")


@pytest.fixture
def copy(tmp_path):
    target = tmp_path / "release"
    shutil.copytree(RELEASE, target)
    return target


def _edit(folder, old, new):
    path = folder / "manifest.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("commit: 0f7245db6f5aa4001ea75cf69fe6cfe091928403", "commit: 0f7245db", r"sources\[0\]\.commit.*40-character"),
        ("  quality: 95", "  quality: 95\n  colour: true", r"unknown key 'convert\.colour'"),
        ("dataset_version: 2", "dataset_version: two", r"dataset_version.*not of type 'integer'"),
        ("schema_version: 1\n", "", r"missing key.*schema_version"),
        ("seed: covid19-cxr-1.0.0", "seed: [unclosed", r"not valid YAML at line \d+"),
        ("    leave_out_flagged: true\n", "", r"configs\.curated: a configuration besides the default must be 'leave_out_flagged: true'"),
        ("    default: true\n", "", r"exactly one configuration must have 'default: true', found 0"),
        ("flag_instead_of_excluding: [annotation-text,", "flag_instead_of_excluding: [annotation-tetx,", r"configs\.paper\.flag_instead_of_excluding\[0\]"),
        ("configs:\n", "expected_counts: {}\nconfigs:\n", r"top-level 'expected_counts' and 'configs' both given"),
    ],
)
def test_broken_manifest_names_file_key_and_fix(copy, old, new, expected):
    _edit(copy, old, new)
    with pytest.raises(ManifestError, match=expected) as error:
        manifest.load(copy)
    assert str(copy / "manifest.yaml") in str(error.value)


def test_missing_list_file_is_named(copy):
    (copy / "decisions" / "views.csv").unlink()
    with pytest.raises(ManifestError, match=r"decisions/views\.csv.*does not exist"):
        manifest.load(copy)


def test_manifest_hash_changes_with_any_file(copy):
    before = manifest.load(copy).sha256()
    (copy / "decisions" / "exclusions.csv").write_text("source,source_path,reason,note\n\n")
    assert manifest.load(copy).sha256() != before
