"""Maintainer pins: Kaggle sha256s recorded from an archive are then verified by every build."""

from __future__ import annotations

import hashlib
import zipfile

import pandas as pd
import pytest
from click.testing import CliRunner

from covid19_cxr_dataset import manifest as manifest_module
from covid19_cxr_dataset.build import Options, build
from covid19_cxr_dataset.cli import main
from covid19_cxr_dataset.errors import CxrDatasetError

from loopback import LoopbackServer
from synthetic import KAGGLE_FILES


def test_recorded_kaggle_checksums_verify_the_next_build(fresh_world, tmp_path):
    world = fresh_world  # `lock kaggle` writes its locks
    result = CliRunner().invoke(main, ["lock", "kaggle", "--manifest", str(world.manifest_dir), "--kaggle-archive", str(world.kaggle_zip)])
    assert result.exit_code == 0, result.output
    files = pd.read_csv(world.manifest_dir / "locks" / "kaggle.csv", dtype=str)
    with zipfile.ZipFile(world.kaggle_zip) as archive:
        first = files.iloc[0]
        data = archive.read(f"chest_xray/{first['split']}/{first['class']}/{first['filename']}")
    assert first["sha256"] == hashlib.sha256(data).hexdigest()
    assert files["sha256"].str.len().eq(64).all() and len(files) == len(KAGGLE_FILES)

    with LoopbackServer(dict(world.served)) as server:
        options = Options(cache_dir=tmp_path / "cache", mirror=server.base_url, workers=1, progress=False, kaggle_archive=world.kaggle_zip)
        report = build(manifest_module.load(world.manifest_dir), tmp_path / "out", options)
        assert report["checks"]["unverified_files"] == 0

        # An archive whose bytes differ from the pins is refused, naming the file.
        other = tmp_path / "other.zip"
        with zipfile.ZipFile(world.kaggle_zip) as source, zipfile.ZipFile(other, "w") as target:
            for info in source.infolist():
                payload = source.read(info)
                target.writestr(info, payload + b"\0" if info.filename.endswith("IM-0001-0001.jpeg") else payload)
        options = Options(cache_dir=tmp_path / "cache", mirror=server.base_url, workers=1, progress=False, kaggle_archive=other)
        with pytest.raises(CxrDatasetError, match=r"(?s)differ from their pinned sha256.*IM-0001-0001\.jpeg"):
            build(manifest_module.load(world.manifest_dir), tmp_path / "out2", options)


def test_lock_kaggle_never_replaces_an_existing_pin_silently(fresh_world, tmp_path):
    world = fresh_world  # `lock kaggle` writes its locks
    lock = ["lock", "kaggle", "--manifest", str(world.manifest_dir)]
    assert CliRunner().invoke(main, [*lock, "--kaggle-archive", str(world.kaggle_zip)]).exit_code == 0
    pinned = (world.manifest_dir / "locks" / "kaggle.csv").read_bytes()
    other = tmp_path / "other.zip"
    changed_member = "chest_xray/{}/{}/{}".format(*KAGGLE_FILES[0][:3])
    with zipfile.ZipFile(world.kaggle_zip) as source, zipfile.ZipFile(other, "w") as target:
        for info in source.infolist():
            payload = source.read(info)
            target.writestr(info, payload + b"\0" if info.filename == changed_member else payload)

    refused = CliRunner().invoke(main, [*lock, "--kaggle-archive", str(other)])
    assert refused.exit_code != 0
    assert "1 file(s) differ from the sha256 already pinned" in refused.output and changed_member in refused.output
    assert "--replace-pins" in refused.output and "nothing was written" in refused.output
    assert (world.manifest_dir / "locks" / "kaggle.csv").read_bytes() == pinned

    replaced = CliRunner().invoke(main, [*lock, "--kaggle-archive", str(other), "--replace-pins"])
    assert replaced.exit_code == 0, replaced.output
    with zipfile.ZipFile(other) as archive:
        new = hashlib.sha256(archive.read(changed_member)).hexdigest()
    assert f"replaced the pin of {changed_member}:" in replaced.output and new in replaced.output
    files = pd.read_csv(world.manifest_dir / "locks" / "kaggle.csv", dtype=str)
    assert (files["sha256"] == new).sum() == 1
