"""verify.py: a release folder is checked against its build_report.json, and every difference is named."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covid19_cxr_dataset import CLASS_NAMES, release as release_format
from covid19_cxr_dataset.download import file_sha256
from covid19_cxr_dataset.errors import CxrDatasetError, VerificationError
from covid19_cxr_dataset.verify import card_header, card_label_names, require_verified, verify_release
from release_factory import make_release, rewrite_first_shard, tamper_image, tamper_label

TEST_SHARD = "data/test-00000-of-00001.parquet"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return make_release(tmp_path_factory.mktemp("pristine") / "release", per_class={"train": 6, "test": 3}, size=(48, 48))


@pytest.fixture
def release(pristine, tmp_path) -> Path:
    """A fresh copy of the pristine release for each test to tamper with."""
    return Path(shutil.copytree(pristine, tmp_path / "release"))


def checks(result) -> set[tuple[str, str]]:
    return {(p.file, p.check) for p in result.problems}


def rewrite_report(out_dir: Path, change) -> None:
    path = out_dir / release_format.REPORT_NAME
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def refresh_shard_hashes(out_dir: Path) -> None:
    """What someone hiding an edit would do: rewrite the report's shard hashes to match the files."""
    rewrite_report(out_dir, lambda data: data.update(shards=release_format.shard_hashes(out_dir)))


def test_intact_release_verifies(release):
    result = verify_release(release)
    assert result.ok, result.summary()
    assert result.problems == []
    assert result.shards == 2 and result.rows == 3 * (6 + 3)
    assert result.counts == {"train": {c: 6 for c in CLASS_NAMES}, "test": {c: 3 for c in CLASS_NAMES}}
    assert result.fingerprint == release_format.read_report(release)["fingerprint"]
    assert "verified" in result.summary() and result.fingerprint in result.summary()
    assert require_verified(release, workers=2).ok


def test_parallel_workers_give_the_same_result(release):
    tamper_label(release)
    assert [str(p) for p in verify_release(release, workers=3).problems] == [str(p) for p in verify_release(release).problems]


def test_edited_label_is_caught_with_the_report_untouched(release):
    tamper_label(release, "test", row=0)
    result = verify_release(release)
    assert {(TEST_SHARD, "shard-sha256"), ("data/test-*.parquet", "counts"), ("data/*.parquet", "fingerprint")} <= checks(result)
    counts = next(p for p in result.problems if p.check == "counts")
    assert counts.expected == "COVID-19 3, Normal 3, Pneumonia 3"
    assert counts.actual == "COVID-19 2, Normal 4, Pneumonia 3"
    sha = next(p for p in result.problems if p.check == "shard-sha256")
    assert sha.expected == f"sha256 {release_format.read_report(release)['shards'][TEST_SHARD]['sha256']}"
    assert sha.actual == f"sha256 {file_sha256(release / TEST_SHARD)}"


def test_edited_label_is_caught_even_when_the_shard_hashes_were_rewritten(release):
    tamper_label(release, "test", row=1)
    refresh_shard_hashes(release)
    result = verify_release(release)
    # the card's counts table and croissant.json's shard sha256 are generated, so they no longer match either
    assert checks(result) == {("data/test-*.parquet", "counts"), ("data/*.parquet", "fingerprint"), ("README.md", "card-generated"),
                              ("croissant.json", "generated")}


def test_reencoded_image_is_caught(release):
    def reencode(rows):
        with Image.open(io.BytesIO(rows[2]["image"]["bytes"])) as image:
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=40)  # same picture, other pixels after decoding
        rows[2]["image"] = {"bytes": buffer.getvalue(), "path": rows[2]["image"]["path"]}

    rewrite_first_shard(release, "train", reencode)
    assert ("data/train-00000-of-00001.parquet", "shard-sha256") in checks(verify_release(release))
    refresh_shard_hashes(release)
    result = verify_release(release)
    # counts are unchanged, the pixels are not (and the card and croissant.json state the shard's new size)
    assert checks(result) == {("data/*.parquet", "fingerprint"), ("README.md", "card-generated"), ("croissant.json", "generated")}
    assert "the rows (pixels or any column)" in next(p for p in result.problems if p.check == "fingerprint").actual


def test_lossless_reencode_changes_the_shard_hash_only(release):
    def to_png(rows):
        for row in rows:
            with Image.open(io.BytesIO(row["image"]["bytes"])) as image:
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
            row["image"] = {"bytes": buffer.getvalue(), "path": row["image"]["path"]}

    rewrite_first_shard(release, "test", to_png)
    assert checks(verify_release(release)) >= {(TEST_SHARD, "shard-sha256"), (TEST_SHARD, "shard-bytes")}
    assert ("data/*.parquet", "fingerprint") not in checks(verify_release(release))


def test_replaced_image_is_caught(release):
    tamper_image(release, "test", row=0)
    assert {(TEST_SHARD, "shard-sha256"), ("data/*.parquet", "fingerprint")} <= checks(verify_release(release))


def test_missing_shard_is_named(release):
    (release / TEST_SHARD).unlink()
    result = verify_release(release)
    missing = next(p for p in result.problems if p.check == "shard-missing")
    assert missing.file == TEST_SHARD and missing.actual == "no such file"
    assert release_format.read_report(release)["shards"][TEST_SHARD]["sha256"] in missing.expected
    assert ("data/test-*.parquet", "counts") in checks(result)  # the report expects a test split


def test_extra_shards_are_named(release):
    shutil.copy(release / TEST_SHARD, release / "data" / "test-00001-of-00001.parquet")
    (release / "data" / "nested").mkdir()
    shutil.copy(release / TEST_SHARD, release / "data" / "nested" / "more.parquet")
    result = verify_release(release)
    extra = {p.file for p in result.problems if p.check == "shard-extra"}
    assert extra == {"data/test-00001-of-00001.parquet", "data/nested/more.parquet"}
    assert ("data/test-*.parquet", "counts") in checks(result)  # the extra shard is read as data, doubling the split
    assert "remove it" in str(next(p for p in result.problems if p.check == "shard-extra"))


def test_truncated_shard_is_reported_not_raised(release):
    path = release / TEST_SHARD
    path.write_bytes(path.read_bytes()[:1000])
    result = verify_release(release)
    assert {(TEST_SHARD, "shard-bytes"), (TEST_SHARD, "shard-sha256"), (TEST_SHARD, "shard-unreadable"),
            ("data/*.parquet", "fingerprint")} <= checks(result)


def test_report_paths_outside_data_are_refused(release):
    rewrite_report(release, lambda data: data["shards"].update({"../../etc/passwd": {"sha256": "0" * 64, "bytes": 1}}))
    assert (release_format.REPORT_NAME, "shard-path") in checks(verify_release(release))


def test_missing_report(release):
    (release / release_format.REPORT_NAME).unlink()
    result = verify_release(release)
    assert (release_format.REPORT_NAME, "report") in checks(result)
    assert not result.ok


def test_report_without_fingerprint(release):
    rewrite_report(release, lambda data: data.pop("fingerprint"))
    problem = next(p for p in verify_release(release).problems if p.check == "report")
    assert "fingerprint" in problem.expected and problem.actual == "missing"


def test_unparseable_card_header(release):
    card = release / "README.md"
    card.write_text("---\npretty_name: [unclosed\n---\n\n# card\n", encoding="utf-8")
    problem = next(p for p in verify_release(release).problems if p.file == "README.md")
    assert problem.check == "card" and problem.expected == "a YAML header that parses"
    assert "line" in problem.actual  # PyYAML says where


def test_card_without_header(release):
    (release / "README.md").write_text("# just markdown\n", encoding="utf-8")
    assert ("README.md", "card") in checks(verify_release(release))


def test_card_with_other_class_labels(release):
    card = release / "README.md"
    card.write_text(card.read_text(encoding="utf-8").replace("'1': Normal", "'1': Healthy"), encoding="utf-8")
    problem = next(p for p in verify_release(release).problems if p.check == "card-labels")
    assert problem.file == "README.md"
    assert "Healthy" in problem.actual and "Normal" in problem.expected


def test_card_with_other_split_sizes(release):
    card = release / "README.md"
    header = card_header(card.read_text(encoding="utf-8"))
    test_split = next(s for s in header["dataset_info"]["splits"] if s["name"] == "test")
    text = card.read_text(encoding="utf-8").replace(f"num_examples: {test_split['num_examples']}", "num_examples: 740")
    card.write_text(text, encoding="utf-8")
    problem = next(p for p in verify_release(release).problems if p.check == "card-splits")
    assert problem.actual == "740 examples" and "test: 9 examples" in problem.expected


def test_card_helpers_read_the_generated_header(release):
    header = card_header((release / "README.md").read_text(encoding="utf-8"))
    assert card_label_names(header) == [list(CLASS_NAMES)]


def test_label_out_of_range_is_named(release):
    def bad_label(rows):
        rows[0]["label"] = 7

    rewrite_first_shard(release, "test", bad_label)  # the label column is int64: the ClassLabel range is ours to check
    assert (TEST_SHARD, "labels") in checks(verify_release(release))


def test_not_a_folder(tmp_path):
    result = verify_release(tmp_path / "nowhere")
    assert not result.ok and result.problems[0].actual == "no such folder"


def test_require_verified_raises_with_every_problem(release):
    tamper_label(release)
    with pytest.raises(VerificationError) as caught:
        require_verified(release)
    message = str(caught.value)
    assert isinstance(caught.value, CxrDatasetError)
    assert str(release) in message and TEST_SHARD in message
    assert "expected" in message and "found" in message and "cxr-dataset build" in message
    assert len(caught.value.problems) >= 3


def test_default_images_survive_the_check(tmp_path):
    """A release whose images are arrays of one gray level (smallest JPEGs) verifies too."""
    flat = make_release(tmp_path / "flat", per_class={"train": 1, "test": 1}, size=(16, 16),
                        image_fn=lambda label, split, index, size: np.full(size[::-1], 40 * label, np.uint8))
    assert verify_release(flat).ok


# ---- a release with configurations (1.0.0's layout) -------------------------------------------

@pytest.fixture(scope="module")
def pristine_configs(tmp_path_factory) -> Path:
    return make_release(tmp_path_factory.mktemp("configs") / "release", per_class={"train": 8, "test": 4}, size=(32, 32), configs=True)


@pytest.fixture
def configured(pristine_configs, tmp_path) -> Path:
    return Path(shutil.copytree(pristine_configs, tmp_path / "release"))


def _edit_card(release: Path, old: str, new: str) -> None:
    card = release / "README.md"
    text = card.read_text(encoding="utf-8")
    assert old in text, old
    card.write_text(text.replace(old, new, 1), encoding="utf-8")


def _verify_cli(release: Path):
    from click.testing import CliRunner

    from covid19_cxr_dataset.cli import main

    return CliRunner().invoke(main, ["verify", str(release), "--workers", "1"])


def test_release_with_configurations_verifies(configured):
    result = verify_release(configured)
    assert result.ok, result.summary()
    assert result.configs["paper"] == {s: {c: n for c in CLASS_NAMES} for s, n in (("train", 8), ("test", 4))}
    assert result.configs["curated"] == {s: {c: n for c in CLASS_NAMES} for s, n in (("train", 6), ("test", 3))}
    outcome = _verify_cli(configured)
    assert outcome.exit_code == 0 and "configuration curated: train 18, test 9" in outcome.output


@pytest.mark.parametrize(
    "old, new, check, named",
    [
        # train and test data_files swapped in the curated configuration
        ("  - split: train\n    path: data/curated/train-*.parquet\n  - split: test\n    path: data/curated/test-*.parquet",
         "  - split: train\n    path: data/curated/test-*.parquet\n  - split: test\n    path: data/curated/train-*.parquet",
         "card-data-files", "configuration 'curated', split 'train'"),
        # train pointed at every shard
        ("  - split: train\n    path: data/curated/train-*.parquet", "  - split: train\n    path: data/*.parquet",
         "card-data-files", "configuration 'curated', split 'train'"),
        # paper reads only the curated folder
        ("    path:\n    - data/curated/train-*.parquet\n    - data/flagged/train-*.parquet", "    path: data/curated/train-*.parquet",
         "card-data-files", "configuration 'paper', split 'train'"),
    ],
    ids=["swapped-train-test", "train-at-data-star", "paper-without-flagged"],
)
def test_card_data_files_must_resolve_to_each_configurations_shards(configured, old, new, check, named):
    _edit_card(configured, old, new)
    problems = [p for p in verify_release(configured).problems if p.check == check]
    assert problems and named in problems[0].expected, problems
    outcome = _verify_cli(configured)
    assert outcome.exit_code == 1 and check in outcome.output and named in outcome.output


def test_card_without_dataset_info_splits_fails(configured):
    card = configured / "README.md"
    text = card.read_text(encoding="utf-8")
    start = text.index("  splits:\n")
    end = text.index("\n- config_name:", start) if "\n- config_name:" in text[start:] else text.index("\n---\n", start)
    card.write_text(text[:start] + text[end + 1:] if text[end] == "\n" else text[:start] + text[end:], encoding="utf-8")
    result = verify_release(configured)
    assert ("README.md", "card-splits") in checks(result)
    assert "dataset_info of configuration 'paper' stating the splits ['train', 'test']" in str(result.problems)
    assert _verify_cli(configured).exit_code == 1


@pytest.mark.parametrize("old, new", [
    ("license: cc0-1.0", "license: mit"),
    ("- fingerprint of `curated` (every column of every row; the configuration's name, default and data files): `", "- fingerprint of `curated` (every column of every row; the configuration's name, default and data files): `0"),
], ids=["license", "fingerprint"])
def test_any_edit_of_the_generated_card_fails(configured, old, new):
    _edit_card(configured, old, new)
    result = verify_release(configured)
    assert checks(result) == {("README.md", "card-generated")}
    problem = result.problems[0]
    assert repr(new.split("\n")[0])[1:-1] in problem.actual and "line " in problem.expected
    outcome = _verify_cli(configured)
    assert outcome.exit_code == 1 and "card-generated" in outcome.output and "rebuild instead of editing it" in outcome.output


def test_a_flagged_shard_moved_into_the_subset_is_caught(configured):
    flagged = next((configured / "data" / "flagged").glob("test-*.parquet"))
    shutil.move(flagged, configured / "data" / "curated" / "test-00001-of-00001.parquet")
    found = checks(verify_release(configured))
    assert {("data/ (curated)", "config-shards"), ("data/curated/", "flags"), ("data/ (curated)", "config-counts")} <= found


def test_configuration_fingerprint_in_the_report_is_checked(configured):
    rewrite_report(configured, lambda data: data["configs"]["curated"].update(fingerprint="0" * 64))
    found = checks(verify_release(configured))
    assert ("data/ (curated)", "config-fingerprint") in found
