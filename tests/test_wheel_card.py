"""The card is a function of the manifest folder and the build report: an installed wheel writes the
same card, byte for byte, as the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from covid19_cxr_dataset import card, evidence, manifest as manifest_module
from covid19_cxr_dataset.build import Options, build
from covid19_cxr_dataset.release import read_report

from loopback import LoopbackServer

CHECKOUT = Path(__file__).resolve().parents[1]

# What both installs print for the bundled release 1.0.0: every input of its card that comes from the package.
PROBE = """
import json, sys
import covid19_cxr_dataset
from covid19_cxr_dataset import card, evidence, manifest
release = manifest.load(manifest.find("1.0.0"))
report = {"fingerprint": "f" * 64, "configs": {"paper": {"default": True, "fingerprint": "f" * 64}}}
print(json.dumps({"package": covid19_cxr_dataset.__file__, "manifest_sha256": release.sha256(),
                  "files": sorted(str(p.relative_to(release.folder)) for p in release.folder.rglob("*") if p.is_file()),
                  "card_inputs": card.card_inputs(release),
                  "evidence": evidence.card_section(report, release.folder / evidence.CERTIFICATES_FOLDER)}))
"""


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory):
    """The package as `pip install` lays it out: the wheel built from this checkout, unpacked."""
    if not (CHECKOUT / "pyproject.toml").is_file():
        pytest.fail("tests must run from a checkout")
    dist = tmp_path_factory.mktemp("dist")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(CHECKOUT)],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    site = tmp_path_factory.mktemp("site")
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    return site


def _in_wheel(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "COVID19_CXR_MANIFESTS"}
    env["PYTHONPATH"] = str(site)  # ahead of the editable install of the checkout
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_the_wheel_ships_every_file_of_the_bundled_release_and_gives_the_same_card_inputs(wheel_site, tmp_path, monkeypatch):
    monkeypatch.delenv("COVID19_CXR_MANIFESTS", raising=False)
    result = _in_wheel(wheel_site, "-c", PROBE, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    from_wheel = json.loads(result.stdout)
    assert from_wheel["package"].startswith(str(wheel_site))
    release = manifest_module.load(manifest_module.find("1.0.0"))
    report = {"fingerprint": "f" * 64, "configs": {"paper": {"default": True, "fingerprint": "f" * 64}}}
    assert from_wheel["files"] == sorted(str(p.relative_to(release.folder)) for p in release.folder.rglob("*") if p.is_file())
    assert from_wheel["manifest_sha256"] == release.sha256()
    assert from_wheel["card_inputs"] == json.loads(json.dumps(card.card_inputs(release)))
    assert from_wheel["evidence"] == evidence.card_section(report, release.folder / evidence.CERTIFICATES_FOLDER)


def test_a_release_built_from_the_wheel_has_the_checkouts_card_byte_for_byte(fresh_world, wheel_site, tmp_path):
    world = fresh_world  # a certificate is committed in its manifest folder below
    with LoopbackServer(dict(world.served)) as server:
        options = Options(cache_dir=tmp_path / "cache", mirror=server.base_url, workers=1, progress=False, kaggle_archive=world.kaggle_zip)
        build(manifest_module.load(world.manifest_dir), tmp_path / "checkout-build", options)
        # A certificate committed in the manifest folder for this release's data reaches the card in both installs.
        fingerprint = read_report(tmp_path / "checkout-build")["fingerprint"]
        certificate = {"dataset": {"fingerprint": fingerprint}, "created": "2026-12-06", "verdict": "pass",
                       "probes": {"metadata": {"probe": "metadata", "status": "skipped"}}}
        folder = world.manifest_dir / evidence.CERTIFICATES_FOLDER / "0.0.1"
        folder.mkdir(parents=True)
        (folder / "certificate.json").write_text(json.dumps(certificate), encoding="utf-8")
        shutil.rmtree(tmp_path / "checkout-build")
        build(manifest_module.load(world.manifest_dir), tmp_path / "checkout-build", options)
        result = _in_wheel(wheel_site, "-m", "covid19_cxr_dataset.cli", "build", "--manifest", str(world.manifest_dir),
                           "--out", str(tmp_path / "wheel-build"), "--mirror", server.base_url, "--cache-dir", str(tmp_path / "cache2"),
                           "--kaggle-archive", str(world.kaggle_zip), "--workers", "1", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    checkout_card = (tmp_path / "checkout-build" / "README.md").read_bytes()
    assert b"From the certificate in `certificates/0.0.1`" in checkout_card
    assert (tmp_path / "wheel-build" / "README.md").read_bytes() == checkout_card
