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
        with pytest.raises(CxrDatasetError, match=r"IM-0001-0001\.jpeg.*differs from the pinned"):
            build(manifest_module.load(world.manifest_dir), tmp_path / "out2", options)
