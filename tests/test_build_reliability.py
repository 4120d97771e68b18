"""Builds that meet broken inputs, kills and company: a correct dataset or a clear error, never half of one."""

from __future__ import annotations

import io
import os
import signal
import shutil
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import pytest

from covid19_cxr_dataset import manifest as manifest_module
from covid19_cxr_dataset.build import Options, build
from covid19_cxr_dataset.errors import CountMismatch

from loopback import LoopbackServer
from synthetic import COHEN, EXPECTED, git_blob_sha1

REPO = Path(__file__).resolve().parents[1]


def png_bomb(width: int = 40000, height: int = 40000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (1.6 gigapixels by default)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _replace_file(world, path: str, data: bytes) -> None:
    """Serve other bytes for a Cohen file and pin them, as if upstream had published them so."""
    world.served[f"/{COHEN[0]}/{COHEN[1]}/{path}"] = data
    lock = world.manifest_dir / "locks" / "cohen.tsv"
    lines = [
        f"{path}\t{git_blob_sha1(data)}\t{len(data)}" if line.startswith(path + "\t") else line
        for line in lock.read_text().splitlines()
    ]
    lock.write_text("\n".join(lines) + "\n")


def _set_expected_covid_train(world, count: int) -> None:
    text = (world.manifest_dir / "manifest.yaml").read_text()
    text = text.replace("train: {COVID-19: 10,", f"train: {{COVID-19: {count},")
    (world.manifest_dir / "manifest.yaml").write_text(text)


@pytest.fixture
def broken_world(fresh_world):
    world = fresh_world
    truncated = world.served[f"/{COHEN[0]}/{COHEN[1]}/images/c9.jpg"][:400]
    _replace_file(world, "images/c9.jpg", truncated)
    _replace_file(world, "images/c1-b.jpg", png_bomb())
    return world


def _options(tmp_path, server, world, **extra):
    return Options(cache_dir=tmp_path / "cache", mirror=server.base_url, workers=1, progress=False,
                   kaggle_archive=world.kaggle_zip, **extra)


def test_corrupt_and_bomb_images_are_excluded_and_the_build_goes_on(broken_world, tmp_path):
    _set_expected_covid_train(broken_world, 8)
    with LoopbackServer(dict(broken_world.served)) as server:
        report = build(manifest_module.load(broken_world.manifest_dir), tmp_path / "out", _options(tmp_path, server, broken_world))
    reasons = {e["source_path"]: e["reason"] for e in report["exclusions"] if e["stage"] == "convert"}
    # a truncated JPEG: libjpeg-turbo reports the premature end (convert.integrity)
    assert reasons == {"images/c9.jpg": "image-corrupt", "images/c1-b.jpg": "image-too-large"}
    assert report["counts"]["train"]["COVID-19"] == 8


def test_when_excluded_images_break_the_counts_the_error_names_them(broken_world, tmp_path):
    with LoopbackServer(dict(broken_world.served)) as server:
        with pytest.raises(CountMismatch) as error:
            build(manifest_module.load(broken_world.manifest_dir), tmp_path / "out", _options(tmp_path, server, broken_world))
    message = str(error.value)
    assert "train/COVID-19: expected 10, got 8" in message
    assert "cohen:images/c9.jpg" in message and "image-corrupt" in message
    assert "cohen:images/c1-b.jpg" in message and "image-too-large" in message
    assert not (tmp_path / "out").exists()


_BUILD_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from covid19_cxr_dataset import manifest
    from covid19_cxr_dataset.build import Options, build
    manifest_dir, out, cache, mirror, kaggle = sys.argv[1:6]
    build(manifest.load(manifest_dir), Path(out), Options(cache_dir=Path(cache), mirror=mirror, workers=1,
          progress=False, kaggle_archive=Path(kaggle)))
""")


def _spawn_build(world, out, cache, server) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-c", _BUILD_SCRIPT, str(world.manifest_dir), str(out), str(cache), server.base_url, str(world.kaggle_zip)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


@pytest.mark.slow
def test_killed_build_then_rerun_is_identical_to_an_uninterrupted_one(world, tmp_path):
    with LoopbackServer(dict(world.served)) as server:
        reference = build(manifest_module.load(world.manifest_dir), tmp_path / "reference",
                          Options(cache_dir=tmp_path / "ref-cache", mirror=server.base_url, workers=1, progress=False,
                                  kaggle_archive=world.kaggle_zip))
        # Slow every image down so the kill lands in the middle of the downloads.
        for path in world.served:
            if "/images/" in path:
                server.stall(path, 0.3, times=None)
        process = _spawn_build(world, tmp_path / "out", tmp_path / "cache", server)
        deadline = time.time() + 60
        while time.time() < deadline and len([r for r in server.requests if "/images/" in r.path]) < 4:
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert not (tmp_path / "out").exists()
        server.clear_requests()
        for path in world.served:
            server.stall(path, 0.0, times=None)
        report = build(manifest_module.load(world.manifest_dir), tmp_path / "out",
                       Options(cache_dir=tmp_path / "cache", mirror=server.base_url, workers=1, progress=False,
                               kaggle_archive=world.kaggle_zip))
    assert report["fingerprint"] == reference["fingerprint"]
    shards = sorted((tmp_path / "reference" / "data").rglob("*.parquet"))
    assert shards  # shards sit in per-configuration folders under data/
    for shard in shards:
        assert (tmp_path / "out" / shard.relative_to(tmp_path / "reference")).read_bytes() == shard.read_bytes()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


@pytest.mark.slow
def test_two_builds_sharing_one_cache_both_succeed_identically(world, tmp_path):
    with LoopbackServer(dict(world.served)) as server:
        first = _spawn_build(world, tmp_path / "a", tmp_path / "cache", server)
        second = _spawn_build(world, tmp_path / "b", tmp_path / "cache", server)
        outputs = [p.communicate(timeout=180) for p in (first, second)]
        assert first.returncode == 0 and second.returncode == 0, outputs
    from covid19_cxr_dataset.release import read_report

    assert read_report(tmp_path / "a")["fingerprint"] == read_report(tmp_path / "b")["fingerprint"]
    assert read_report(tmp_path / "a")["counts"] == EXPECTED


def test_disk_full_while_writing_shards_is_a_clean_error_with_nothing_left(world, tmp_path, monkeypatch):
    import errno

    from covid19_cxr_dataset import shards
    from covid19_cxr_dataset.errors import CxrDatasetError

    def full(self, row):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shards.SplitShardWriter, "add", full)
    with LoopbackServer(dict(world.served)) as server:
        with pytest.raises(CxrDatasetError, match="is full"):
            build(manifest_module.load(world.manifest_dir), tmp_path / "out", _options(tmp_path, server, world))
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    monkeypatch.undo()
    with LoopbackServer(dict(world.served)) as server:  # space freed: the next build reuses the cache and succeeds
        server.clear_requests()
        report = build(manifest_module.load(world.manifest_dir), tmp_path / "out", _options(tmp_path, server, world))
        assert report["counts"] == EXPECTED
        assert [r for r in server.requests if "/images/" in r.path] == []
