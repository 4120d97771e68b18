"""The extracted Kaggle tree in the cache is checked on every use: changed bytes never reach a release."""

from __future__ import annotations

import zipfile

import pandas as pd
import pyarrow.parquet as pq
import pytest

from covid19_cxr_dataset import archive, manifest as manifest_module
from covid19_cxr_dataset.build import Options, build
from covid19_cxr_dataset.errors import ArchiveError
from covid19_cxr_dataset.release import read_report

from loopback import LoopbackServer
from synthetic import KAGGLE_FILES

TRAIN_NORMAL = "chest_xray/{}/{}/{}".format(*KAGGLE_FILES[0][:3])


@pytest.fixture(scope="module")
def server(world):
    with LoopbackServer(dict(world.served)) as running:
        yield running


@pytest.fixture(scope="module")
def first(world, server, tmp_path_factory):
    """One clean build; the tests below tamper with its cache and build again."""
    root = tmp_path_factory.mktemp("first")
    options = Options(cache_dir=root / "cache", mirror=server.base_url, workers=2, progress=False,
                      kaggle_archive=world.kaggle_zip)
    build(manifest_module.load(world.manifest_dir), root / "out", options)
    return root / "out", options


def _extracted_file(options: Options, member: str):
    trees = list((options.cache / "kaggle").glob("*/*/extracted/*"))
    trees = [t for t in trees if t.is_dir()]
    assert len(trees) == 1
    return trees[0], trees[0] / member


def _sha256_of(out, member):
    rows = pd.concat([pq.read_table(p, columns=["source_path", "sha256"]).to_pandas() for p in sorted(out.rglob("*.parquet"))])
    return rows.loc[rows["source_path"].eq(member), "sha256"].item()


@pytest.mark.parametrize("damage", ["changed", "truncated", "deleted"])
def test_a_damaged_extracted_file_is_extracted_again_and_the_release_is_unchanged(world, first, tmp_path, damage, caplog):
    out, options = first
    tree, path = _extracted_file(options, TRAIN_NORMAL)
    original = path.read_bytes()
    if damage == "changed":  # same size, other bytes: only a hash sees it
        path.write_bytes(bytes(255 - b for b in original))
    elif damage == "truncated":
        path.write_bytes(original[: len(original) // 2])
    else:
        path.unlink()
    rebuilt = tmp_path / "again"
    report = build(manifest_module.load(world.manifest_dir), rebuilt, options)
    assert path.read_bytes() == original  # restored from the archive, in place
    assert report["fingerprint"] == read_report(out)["fingerprint"]
    assert _sha256_of(rebuilt, TRAIN_NORMAL) == _sha256_of(out, TRAIN_NORMAL)
    assert "changed or disappeared in the cache" in caplog.text and TRAIN_NORMAL in caplog.text


def test_an_extraction_without_a_record_is_extracted_again(world, first, tmp_path):
    out, options = first
    tree, path = _extracted_file(options, TRAIN_NORMAL)
    (tree / archive.EXTRACTION_RECORD).unlink()  # as an older package left it
    path.write_bytes(b"tampered, and no record to tell")
    report = build(manifest_module.load(world.manifest_dir), tmp_path / "again", options)
    assert report["fingerprint"] == read_report(out)["fingerprint"]
    assert archive.read_extraction_record(tree) is not None


def test_check_extracted_names_a_file_the_archive_does_not_give_back(tmp_path):
    zip_path = tmp_path / "a.zip"
    with zipfile.ZipFile(zip_path, "w") as handle:
        handle.writestr("root/x.jpeg", b"first bytes")
    tree = tmp_path / "tree"
    archive.extract_zip(zip_path, tree, root="root")
    assert archive.check_extracted(tree, zip_path) == {"root/x.jpeg": archive.read_extraction_record(tree)["root/x.jpeg"][1]}
    (tree / "root" / "x.jpeg").write_bytes(b"other bytes")
    with zipfile.ZipFile(zip_path, "w") as handle:  # the archive itself was replaced since extraction
        handle.writestr("root/x.jpeg", b"changed in the archive")
    with pytest.raises(ArchiveError, match="the archive changed"):
        archive.check_extracted(tree, zip_path)
    assert (tree / "root" / "x.jpeg").read_bytes() == b"other bytes"  # nothing half-restored
    assert [p.name for p in (tree / "root").iterdir()] == ["x.jpeg"]  # no temporary file left
    with zipfile.ZipFile(zip_path, "w") as handle:
        handle.writestr("root/y.jpeg", b"another file")
    with pytest.raises(ArchiveError, match="no longer holds 'root/x.jpeg'"):
        archive.check_extracted(tree, zip_path)
