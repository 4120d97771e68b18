"""Files missing upstream are found in one pass: build names every one, plan --check-files finds them by HEAD."""

from __future__ import annotations

import csv
import zipfile

import pytest
from click.testing import CliRunner

from covid19_cxr_dataset import manifest as manifest_module
from covid19_cxr_dataset.build import Options, build
from covid19_cxr_dataset.cli import main
from covid19_cxr_dataset.download import Downloader, FileSpec, git_blob_sha1
from covid19_cxr_dataset.errors import DownloadError, MissingUpstreamFiles

from loopback import LoopbackServer
from synthetic import COHEN, EXPECTED, FIGURE1

ABSENT = {  # what a partial mirror lacks: two Cohen files (train) and one Figure1 file
    f"/{COHEN[0]}/{COHEN[1]}/images/c2.png": ("cohen", "images/c2.png"),
    f"/{COHEN[0]}/{COHEN[1]}/images/c9.jpg": ("cohen", "images/c9.jpg"),
    f"/{FIGURE1[0]}/{FIGURE1[1]}/images/COVID-00002b.png": ("figure1", "images/COVID-00002b.png"),
}


@pytest.fixture
def partial_mirror(world):
    with LoopbackServer({p: d for p, d in world.served.items() if p not in ABSENT}) as server:
        yield server


def _options(server, tmp_path, world, **extra):
    return Options(cache_dir=tmp_path / "cache", mirror=server.base_url, workers=2, progress=False,
                   kaggle_archive=world.kaggle_zip, **extra)


# ---- the download core ---------------------------------------------------------------------------

def _spec(server, path, data):
    return FileSpec(url=server.url(path), cache_key=f"t{path}", git_blob_sha1=git_blob_sha1(data), size=len(data))


def test_keep_going_fetches_the_rest_then_names_every_absent_file(loopback_server, tmp_path):
    loopback_server.add("/ok.bin", b"fine bytes")
    loopback_server.add("/gone-later.bin", b"x")
    loopback_server.add("/other-bytes.bin", b"not what was pinned")
    loopback_server.fail("/gone-later.bin", 410, times=None)
    specs = [
        _spec(loopback_server, "/ok.bin", b"fine bytes"),
        _spec(loopback_server, "/absent.bin", b"never served"),
        _spec(loopback_server, "/gone-later.bin", b"x"),
        _spec(loopback_server, "/other-bytes.bin", b"the pinned bytes"),
    ]
    downloader = Downloader(tmp_path, workers=2, retries=0, progress=False)
    with pytest.raises(MissingUpstreamFiles) as error:
        downloader.fetch_all(specs, keep_going=True)
    statuses = {entry["cache_key"]: entry["status"] for entry in error.value.missing}
    assert statuses == {"t/absent.bin": "404", "t/gone-later.bin": "410", "t/other-bytes.bin": "checksum"}
    assert "3 of 4 file(s) could not be downloaded" in str(error.value)
    assert "HTTP 404: 1" in str(error.value) and "HTTP 410: 1" in str(error.value)
    assert (tmp_path / "t" / "ok.bin").read_bytes() == b"fine bytes"  # the good file is cached
    assert not (tmp_path / "t" / "absent.bin").exists() and not (tmp_path / "t" / "other-bytes.bin").exists()


def test_without_keep_going_the_first_absent_file_still_stops_everything(loopback_server, tmp_path):
    spec = _spec(loopback_server, "/absent.bin", b"never served")
    with pytest.raises(DownloadError) as error:
        Downloader(tmp_path, retries=0, progress=False).fetch_all([spec])
    assert not isinstance(error.value, MissingUpstreamFiles) and "HTTP 404" in str(error.value)


def test_a_server_in_trouble_stops_at_once_even_with_keep_going(loopback_server, tmp_path):
    # 5xx after the retries concerns the server, not a file: asking it for thousands more is futile.
    loopback_server.add("/a.bin", b"a")
    loopback_server.fail("/a.bin", 503, times=None)
    with pytest.raises(DownloadError) as error:
        Downloader(tmp_path, retries=0, backoff=0, progress=False).fetch_all([_spec(loopback_server, "/a.bin", b"a")], keep_going=True)
    assert not isinstance(error.value, MissingUpstreamFiles) and "HTTP 503" in str(error.value)


def test_check_reachable_uses_head_and_downloads_nothing(loopback_server, tmp_path):
    loopback_server.add("/ok.bin", b"fine bytes")
    loopback_server.add("/resized.bin", b"longer than the pin says")
    specs = [
        _spec(loopback_server, "/ok.bin", b"fine bytes"),
        _spec(loopback_server, "/absent.bin", b"never served"),
        _spec(loopback_server, "/resized.bin", b"short"),
    ]
    answers = Downloader(tmp_path / "cache", retries=0, progress=False).check_reachable(specs)
    assert {key: (a["status"], a["reachable"]) for key, a in answers.items()} == {
        "t/ok.bin": (200, True), "t/absent.bin": (404, False), "t/resized.bin": (200, False),
    }
    assert "announces 24 bytes; the pin says 5" in answers["t/resized.bin"]["detail"]
    assert {r.method for r in loopback_server.requests} == {"HEAD"}
    assert not (tmp_path / "cache" / "t").exists()


def test_check_reachable_refuses_offline(tmp_path):
    with pytest.raises(DownloadError, match="needs the network"):
        Downloader(tmp_path, offline=True).check_reachable([FileSpec("http://127.0.0.1:9/x", "x")])


# ---- build: one pass, one error, one list ---------------------------------------------------------

def test_build_names_every_missing_file_once_and_writes_nothing(world, partial_mirror, tmp_path):
    out = tmp_path / "release"
    with pytest.raises(MissingUpstreamFiles) as error:
        build(manifest_module.load(world.manifest_dir), out, _options(partial_mirror, tmp_path, world))
    message = str(error.value)
    assert "3 of 24 pinned file(s) could not be fetched" in message
    assert "nothing was written to" in message
    for source, path in ABSENT.values():
        assert f"{source}:{path}" in message
    assert "cohen      train      2   (HTTP 404 2)" in message
    assert "figure1    train      1   (HTTP 404 1)" in message
    report = tmp_path / "release.missing-files.csv"
    assert error.value.report_path == report and str(report.name) in message
    with open(report, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["source"], r["source_path"]) for r in rows} == set(ABSENT.values())
    assert {r["status"] for r in rows} == {"404"} and {r["split"] for r in rows} == {"train"}
    assert all(r["url"].startswith(partial_mirror.base_url) and r["label"] == "COVID-19" for r in rows)
    # What to do: retry, another mirror, or a variant, each as a command.
    assert "cxr-dataset plan --manifest" in message and "--check-files --mirror URL" in message
    assert f"cxr-dataset new-variant --from {world.manifest_dir}" in message
    assert f"--exclude-missing {report}" in message
    # Nothing reached --out, no staging folder was left beside it.
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["cache", "release.missing-files.csv"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".release.partial")]
    # Each missing file was asked for once (retries=5 only retry 5xx/429): one pass, not one per run.
    for path in ABSENT:
        assert len(partial_mirror.requests_for(path)) == 1


def test_what_was_fetched_stays_cached_and_a_rerun_asks_only_for_the_rest(world, partial_mirror, tmp_path):
    manifest = manifest_module.load(world.manifest_dir)
    with pytest.raises(MissingUpstreamFiles):
        build(manifest, tmp_path / "out", _options(partial_mirror, tmp_path, world))
    for path in ABSENT:  # the mirror catches up
        partial_mirror.add(path, world.served[path])
    partial_mirror.clear_requests()
    report = build(manifest, tmp_path / "out", _options(partial_mirror, tmp_path, world))
    assert report["counts"] == EXPECTED
    assert {r.path for r in partial_mirror.requests} == set(ABSENT)


def test_files_absent_from_the_kaggle_archive_join_the_same_list(world, tmp_path):
    archive = tmp_path / "short.zip"
    dropped = "chest_xray/test/NORMAL/IM-0100-0001.jpeg"
    with zipfile.ZipFile(world.kaggle_zip) as source, zipfile.ZipFile(archive, "w") as target:
        for item in source.infolist():
            if not item.filename.endswith(dropped):
                target.writestr(item, source.read(item))
    with LoopbackServer({p: d for p, d in world.served.items() if p not in ABSENT}) as server:
        options = Options(cache_dir=tmp_path / "cache", mirror=server.base_url, workers=1, progress=False, kaggle_archive=archive)
        with pytest.raises(MissingUpstreamFiles) as error:
            build(manifest_module.load(world.manifest_dir), tmp_path / "out", options)
    rows = {(r["source"], r["source_path"]): r for r in error.value.missing}
    assert len(rows) == 4
    assert rows[("kaggle", dropped)]["status"] == "not-in-archive" and rows[("kaggle", dropped)]["split"] == "test"
    assert "kaggle     test       1   (not-in-archive 1)" in str(error.value)


# ---- plan --check-files ---------------------------------------------------------------------------

def test_plan_check_files_reports_unreachable_files_without_downloading(world, partial_mirror, tmp_path):
    report = tmp_path / "missing.csv"
    result = CliRunner().invoke(main, [
        "plan", "--manifest", str(world.manifest_dir), "--mirror", partial_mirror.base_url,
        "--cache-dir", str(tmp_path / "cache"), "-q", "--check-files", "--missing-report", str(report),
    ])
    assert result.exit_code == 2, result.output
    assert "counts match the manifest" in result.output
    assert "files: 10 of 13 reachable on " + partial_mirror.base_url in result.output
    assert "cohen      train      2   (HTTP 404 2)" in result.output
    assert "missing.csv (3 files" in result.output
    assert "cxr-dataset new-variant --from" in result.output
    # the suggested build of the variant works as typed: the Kaggle files come from an archive
    build_line = next(line for line in result.output.splitlines() if line.strip().startswith("cxr-dataset build --manifest"))
    assert "--kaggle-archive ./chest-xray-pneumonia.zip" in build_line
    with open(report, newline="") as handle:
        assert {(r["source"], r["source_path"], r["status"]) for r in csv.DictReader(handle)} == {
            (s, p, "404") for s, p in ABSENT.values()}
    gets = {r.path.rsplit("/", 1)[-1] for r in partial_mirror.requests if r.method == "GET"}
    assert gets == {"metadata.csv"}  # images were only asked about (HEAD), never downloaded
    assert not (tmp_path / "cache" / "github" / COHEN[0] / COHEN[1] / "images").exists()


def test_plan_check_files_on_a_complete_mirror_exits_0_and_writes_no_report(world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with LoopbackServer(dict(world.served)) as server:
        result = CliRunner().invoke(main, ["plan", "--manifest", str(world.manifest_dir), "--mirror", server.base_url,
                                           "--cache-dir", str(tmp_path / "cache"), "-q", "--check-files"])
    assert result.exit_code == 0, result.output
    assert "files: 13 of 13 reachable" in result.output
    assert not list(tmp_path.glob("*.missing-files.csv"))
