"""The download package against a loopback server: bytes, errors and the requests the server saw."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from covid19_cxr_dataset import download, errors
from covid19_cxr_dataset.download import Downloader, FileSpec

from loopback import LoopbackServer, kaggle_download_path  # conftest puts tests/ on sys.path


REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = bytes(range(256)) * 1200  # 307,200 bytes: several network chunks
SHA = hashlib.sha256(DATA).hexdigest()
PATH = "/owner/repo/0123abcd/images/a.png"


def make_downloader(cache: Path, **options) -> Downloader:
    settings = dict(retries=2, backoff=0.01, timeout=2.0, progress=False, workers=2)
    settings.update(options)
    return Downloader(cache, **settings)


def spec_for(server: LoopbackServer, path: str = PATH, **pins) -> FileSpec:
    pins.setdefault("sha256", SHA)
    return FileSpec(url=server.url(path), cache_key="github" + path, **pins)


def leftovers(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*.part"))


@pytest.fixture
def server(loopback_server):
    loopback_server.add(PATH, DATA)
    return loopback_server


# ---- plain fetch and cache -----------------------------------------------------------------------


def test_fetch_stores_verified_file_and_a_cache_hit_sends_no_request(server, tmp_path):
    spec = spec_for(server, size=len(DATA))
    path = make_downloader(tmp_path).fetch(spec)
    assert path == tmp_path.joinpath("github", *PATH.strip("/").split("/"))
    assert path.read_bytes() == DATA
    assert len(server.requests) == 1 and server.requests[0].range is None
    assert server.requests[0].headers["accept-encoding"] == "identity"

    again = make_downloader(tmp_path).fetch(spec)  # a new downloader: the cache, not memory, decides
    assert again == path
    assert len(server.requests) == 1
    assert make_downloader(tmp_path).verified_hashes(spec).sha256 == SHA
    assert leftovers(tmp_path) == []


def test_corrupted_cached_file_is_detected_and_fetched_again(server, tmp_path):
    spec = spec_for(server)
    path = make_downloader(tmp_path).fetch(spec)
    path.write_bytes(b"\0" * len(DATA))  # same size: only a hash notices
    assert make_downloader(tmp_path).fetch(spec).read_bytes() == DATA
    assert len(server.requests) == 2


def test_unpinned_file_is_trusted_through_its_sidecar(server, tmp_path):
    spec = FileSpec(server.url(PATH), "github" + PATH)
    path = make_downloader(tmp_path).fetch(spec)
    make_downloader(tmp_path).fetch(spec)
    assert len(server.requests) == 1
    path.write_bytes(b"tampered")
    assert make_downloader(tmp_path).fetch(spec).read_bytes() == DATA
    assert len(server.requests) == 2


def test_body_without_content_length_is_accepted(server, tmp_path):
    server.add(PATH, DATA, content_length=False)
    assert make_downloader(tmp_path).fetch(spec_for(server)).read_bytes() == DATA


# ---- resume --------------------------------------------------------------------------------------


def test_cut_transfer_resumes_from_the_byte_received(server, tmp_path):
    server.cut(PATH, after=100_000, times=1)
    path = make_downloader(tmp_path).fetch(spec_for(server))
    assert path.read_bytes() == DATA
    first, second = server.requests_for(PATH)
    assert first.range is None and first.body_bytes == 100_000
    assert second.range == "bytes=100000-" and second.status == 206
    assert second.body_bytes == len(DATA) - 100_000  # nothing already received came twice


def test_server_answering_200_to_a_range_restarts_cleanly(server, tmp_path):
    server.cut(PATH, after=50_000, times=1)
    server.ignore_range(PATH, times=1)
    path = make_downloader(tmp_path).fetch(spec_for(server))
    assert path.read_bytes() == DATA
    statuses = [(r.range, r.status) for r in server.requests_for(PATH)]
    assert statuses == [(None, 200), ("bytes=50000-", 200)]


def test_wrong_content_range_is_not_appended(server, tmp_path):
    server.cut(PATH, after=50_000, times=1)
    server.shift_range(PATH, by=7, times=1)
    path = make_downloader(tmp_path).fetch(spec_for(server))
    assert path.read_bytes() == DATA
    assert [r.range for r in server.requests_for(PATH)] == [None, "bytes=50000-", None]


def test_leftover_part_of_a_pinned_file_is_resumed(server, tmp_path):
    downloader = make_downloader(tmp_path)
    part = downloader.path_for(spec_for(server)).with_name("a.png.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(DATA[:123_456])  # what an interrupted earlier run left behind
    assert downloader.fetch(spec_for(server)).read_bytes() == DATA
    assert [r.range for r in server.requests_for(PATH)] == ["bytes=123456-"]


def test_stale_whole_size_leftover_part_is_replaced_by_a_clean_download(server, tmp_path):
    downloader = make_downloader(tmp_path)
    spec = spec_for(server, size=len(DATA))
    part = downloader.path_for(spec).with_name("a.png.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * len(DATA))  # full length, wrong content
    assert downloader.fetch(spec).read_bytes() == DATA
    assert [r.range for r in server.requests_for(PATH)] == [None]


def test_leftover_part_of_an_unpinned_file_is_not_trusted(server, tmp_path):
    downloader = make_downloader(tmp_path)
    spec = FileSpec(server.url(PATH), "github" + PATH)
    part = downloader.path_for(spec).with_name("a.png.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"junk")
    assert downloader.fetch(spec).read_bytes() == DATA
    assert [r.range for r in server.requests_for(PATH)] == [None]


def test_connection_cut_every_time_gives_up_with_a_clear_error(server, tmp_path):
    server.cut(PATH, after=0, times=None)
    with pytest.raises(errors.DownloadError, match=r"failed 3 times") as caught:
        make_downloader(tmp_path).fetch(spec_for(server))
    assert server.url(PATH) in str(caught.value)
    assert not make_downloader(tmp_path).path_for(spec_for(server)).exists()


# ---- statuses and retries ------------------------------------------------------------------------


def test_500_and_503_are_retried_until_success(server, tmp_path):
    server.fail(PATH, 500, times=1)
    server.fail(PATH, 503, times=1)
    assert make_downloader(tmp_path).fetch(spec_for(server)).read_bytes() == DATA
    assert [r.status for r in server.requests_for(PATH)] == [500, 503, 200]


def test_429_retry_after_is_honoured(server, tmp_path):
    server.fail(PATH, 429, times=1, retry_after=1)
    started = time.monotonic()
    assert make_downloader(tmp_path).fetch(spec_for(server)).read_bytes() == DATA
    assert time.monotonic() - started >= 0.9  # the backoff alone would be ~0 s
    assert [r.status for r in server.requests_for(PATH)] == [429, 200]


def test_retries_exhausted_gives_download_error_naming_url_and_status(server, tmp_path):
    server.fail(PATH, 503, times=None)
    with pytest.raises(errors.DownloadError) as caught:
        make_downloader(tmp_path, retries=2).fetch(spec_for(server))
    message = str(caught.value)
    assert "HTTP 503" in message and server.url(PATH) in message and "2 retries" in message
    assert len(server.requests_for(PATH)) == 3
    assert not isinstance(caught.value, errors.ChecksumMismatch)


def test_404_is_not_retried(server, tmp_path):
    with pytest.raises(errors.DownloadError, match="HTTP 404"):
        make_downloader(tmp_path).fetch(spec_for(server, "/owner/repo/0123abcd/missing.png"))
    assert len(server.requests) == 1


def test_connection_refused_is_a_download_error(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    spec = FileSpec(f"http://127.0.0.1:{port}/x", "x", sha256=SHA)
    with pytest.raises(errors.DownloadError, match="no answer after 1 retries"):
        make_downloader(tmp_path, retries=1).fetch(spec)


# ---- verification --------------------------------------------------------------------------------


def test_wrong_bytes_raise_checksum_mismatch_and_nothing_is_cached(server, tmp_path):
    wrong = DATA[:-1] + b"!"
    server.corrupt(PATH, wrong)
    downloader = make_downloader(tmp_path)
    with pytest.raises(errors.ChecksumMismatch) as caught:
        downloader.fetch(spec_for(server))
    message = str(caught.value)
    assert SHA in message and hashlib.sha256(wrong).hexdigest() in message and server.url(PATH) in message
    assert not downloader.path_for(spec_for(server)).exists()
    assert leftovers(tmp_path) == []
    assert downloader.verified_hashes(spec_for(server)) is None


def test_truncated_body_raises_checksum_mismatch(server, tmp_path):
    server.corrupt(PATH, DATA[:1000])
    with pytest.raises(errors.ChecksumMismatch, match=f"sha256 expected {SHA}"):
        make_downloader(tmp_path).fetch(spec_for(server))
    # With the size pinned, the announced length alone is enough to refuse.
    with pytest.raises(errors.ChecksumMismatch, match=f"size expected {len(DATA)} bytes, the server announces 1000"):
        make_downloader(tmp_path).fetch(spec_for(server, size=len(DATA)))
    assert leftovers(tmp_path) == [] and not list(tmp_path.glob("github/**/a.png"))


def test_git_blob_sha1_is_verified(server, tmp_path):
    assert download.git_blob_sha1(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"  # git hash-object
    blob = download.git_blob_sha1(DATA)
    assert make_downloader(tmp_path / "a").fetch(spec_for(server, sha256="", git_blob_sha1=blob)).read_bytes() == DATA
    assert download.hash_file(tmp_path / "a" / "github" / PATH.strip("/")).git_blob_sha1 == blob
    wrong = "0" * 40
    with pytest.raises(errors.ChecksumMismatch, match=f"git blob sha1 expected {wrong}, got {blob}"):
        make_downloader(tmp_path / "b").fetch(spec_for(server, sha256="", git_blob_sha1=wrong))


def test_mismatch_after_a_resume_is_retried_once_from_scratch(server, tmp_path):
    # The first response is cut, then the file "changes": the stitched result cannot verify.
    server.cut(PATH, after=10_000, times=1)
    server.corrupt(PATH, b"X" * len(DATA), times=1)
    assert make_downloader(tmp_path).fetch(spec_for(server)).read_bytes() == DATA
    assert [r.range for r in server.requests_for(PATH)] == [None, "bytes=10000-", None]


def test_malformed_specs_fail_early():
    with pytest.raises(ValueError, match="cache key"):
        FileSpec("https://example.org/x", "../escape")
    with pytest.raises(ValueError, match="cache key"):
        FileSpec("https://example.org/x", ".locks/x")
    with pytest.raises(ValueError, match="sha256"):
        FileSpec("https://example.org/x", "x", sha256="abc")
    with pytest.raises(ValueError, match="http"):
        FileSpec("file:///etc/passwd", "x")
    assert FileSpec("https://example.org/x", "x", sha256=SHA.upper()).sha256 == SHA


# ---- timeouts and redirects ----------------------------------------------------------------------


def test_stalled_server_times_out_quickly(server, tmp_path):
    server.stall(PATH, 30, times=None)
    started = time.monotonic()
    with pytest.raises(errors.DownloadError, match="timed out"):
        make_downloader(tmp_path, timeout=0.2, retries=1).fetch(spec_for(server))
    assert time.monotonic() - started < 3


def test_stall_in_the_middle_of_the_body_times_out_and_resumes(server, tmp_path):
    server.stall(PATH, 30, after=70_000, times=1)
    path = make_downloader(tmp_path, timeout=0.3).fetch(spec_for(server))
    assert path.read_bytes() == DATA
    assert [r.range for r in server.requests_for(PATH)] == [None, "bytes=70000-"]


def test_redirect_to_a_foreign_http_host_is_refused(server, make_server, tmp_path):
    foreign = make_server({PATH: DATA})
    server.redirect(PATH, foreign.url(PATH))
    with pytest.raises(errors.DownloadError, match="redirects to") as caught:
        make_downloader(tmp_path).fetch(spec_for(server))
    assert foreign.url(PATH) in str(caught.value)
    assert foreign.requests == []
    assert leftovers(tmp_path) == []


def test_redirect_to_the_mirror_host_is_followed_without_credentials(server, make_server, tmp_path):
    mirror = make_server({PATH: DATA})
    server.redirect(PATH, mirror.url(PATH))
    server.require_auth("/", "alice", "sekrit-key")
    downloader = make_downloader(
        tmp_path, allowed_redirect_hosts=[mirror.origin], auth=("alice", "sekrit-key"), credentials_for=server.origin
    )
    assert downloader.fetch(spec_for(server)).read_bytes() == DATA
    assert "authorization" in server.requests[0].headers
    assert [("authorization" in r.headers) for r in mirror.requests] == [False]


def test_relative_redirect_on_the_same_origin_is_followed(server, tmp_path):
    server.add("/moved.png", DATA)
    server.redirect(PATH, "/moved.png", status=301)
    assert make_downloader(tmp_path).fetch(spec_for(server)).read_bytes() == DATA


# ---- offline, disk, processes --------------------------------------------------------------------


def test_offline_lists_every_missing_key_and_opens_no_socket(server, tmp_path, monkeypatch):
    cached = spec_for(server)
    make_downloader(tmp_path).fetch(cached)
    missing = [FileSpec(server.url(f"/m{i}"), f"github/m{i}", sha256=SHA) for i in range(3)]

    def no_socket(*args, **kwargs):
        raise AssertionError("offline mode opened a socket")

    monkeypatch.setattr(socket, "socket", no_socket)
    monkeypatch.setattr(socket, "create_connection", no_socket)
    offline = make_downloader(tmp_path, offline=True)
    assert offline.fetch(cached).read_bytes() == DATA
    with pytest.raises(errors.OfflineMissing) as caught:
        offline.fetch_all([cached, *missing], desc="test")
    assert caught.value.missing == ["github/m0", "github/m1", "github/m2"]
    assert all(key in str(caught.value) for key in caught.value.missing)
    assert "without --offline" in str(caught.value)


def test_disk_full_gives_a_clean_error_and_a_consistent_cache(server, tmp_path, monkeypatch):
    writes = []

    def full_disk(handle, data):
        if writes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        writes.append(len(data))
        handle.write(data)

    monkeypatch.setattr("covid19_cxr_dataset.download.resume._write_chunk", full_disk)
    downloader = make_downloader(tmp_path)
    with pytest.raises(errors.DownloadError) as caught:
        downloader.fetch(spec_for(server))
    message = str(caught.value)
    assert "disk is full" in message and str(tmp_path) in message
    assert leftovers(tmp_path) == [] and not downloader.path_for(spec_for(server)).exists()

    monkeypatch.undo()
    assert downloader.fetch(spec_for(server)).read_bytes() == DATA


CHILD = """
import sys
from covid19_cxr_dataset.download import Downloader, FileSpec
spec = FileSpec(sys.argv[1], "shared/file.bin", sha256=sys.argv[2])
print(Downloader(sys.argv[3], retries=2, backoff=0.01, timeout=10, progress=False).fetch(spec))
"""


def test_two_processes_fetching_one_file_into_one_cache(server, tmp_path):
    # The stall keeps the first transfer open long enough for the second process to contend.
    server.stall(PATH, 0.3, after=1000, times=None)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, server.url(PATH), SHA, str(tmp_path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for _ in range(2)
    ]
    outputs = [child.communicate(timeout=30) for child in children]
    assert [child.returncode for child in children] == [0, 0], outputs
    paths = {out.strip() for out, _ in outputs}
    assert paths == {str(tmp_path / "shared" / "file.bin")}
    assert (tmp_path / "shared" / "file.bin").read_bytes() == DATA
    assert len(server.requests_for(PATH)) == 1  # the second process waited and found it verified
    assert leftovers(tmp_path) == []


# ---- fetch_all -----------------------------------------------------------------------------------


def test_fetch_all_returns_paths_by_key(server, tmp_path):
    files = {f"/f/{i}.bin": bytes([i]) * (1000 + i) for i in range(6)}
    for path, data in files.items():
        server.add(path, data)
    specs = [FileSpec(server.url(p), "k" + p, sha256=hashlib.sha256(d).hexdigest()) for p, d in files.items()]
    result = make_downloader(tmp_path, workers=3).fetch_all(specs + specs[:1], desc="test")
    assert list(result) == [s.cache_key for s in specs]
    assert {result["k" + p].read_bytes() for p in files} == set(files.values())
    assert len(server.requests) == 6  # a key listed twice is fetched once


def test_fetch_all_raises_the_first_error_and_keeps_completed_files(server, tmp_path):
    server.add("/ok.bin", b"ok")
    good = FileSpec(server.url("/ok.bin"), "ok.bin", sha256=hashlib.sha256(b"ok").hexdigest())
    bad = FileSpec(server.url("/missing.bin"), "missing.bin", sha256=SHA)
    later = [FileSpec(server.url(f"/later{i}"), f"later{i}", sha256=SHA) for i in range(20)]
    downloader = make_downloader(tmp_path, workers=1)
    with pytest.raises(errors.DownloadError, match="HTTP 404"):
        downloader.fetch_all([good, bad, *later], desc="test")
    assert (tmp_path / "ok.bin").read_bytes() == b"ok"
    assert len(server.requests) < 22  # work queued behind the failure was cancelled


def test_fetch_all_rejects_one_key_for_two_files(server, tmp_path):
    one = FileSpec(server.url("/a"), "same", sha256=SHA)
    other = FileSpec(server.url("/b"), "same", sha256=SHA)
    with pytest.raises(ValueError, match="same"):
        make_downloader(tmp_path).fetch_all([one, other])


def test_fetch_all_progress_bar_can_be_shown(server, tmp_path, capsys):
    make_downloader(tmp_path, progress=True).fetch_all([spec_for(server)], desc="sources")
    assert "sources" in capsys.readouterr().err


# ---- credentials ---------------------------------------------------------------------------------

SECRET = "s3cr3t-kaggle-key-0123456789"


def test_credentials_never_appear_in_errors_logs_or_repr(server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="covid19_cxr_dataset")
    server.fail(PATH, 503, times=None)
    server.cut("/cut", after=10, times=None)
    server.add("/cut", DATA)
    downloader = make_downloader(
        tmp_path, auth=("kaggle-user-name", SECRET), headers={"X-Token": "header-token-value"},
        credentials_for=server.origin,
    )
    messages = [repr(downloader)]
    for path in (PATH, "/cut", "/missing"):
        with pytest.raises(errors.DownloadError) as caught:
            downloader.fetch(FileSpec(server.url(path), "k" + path, sha256=SHA))
        messages.append(str(caught.value))
    with_userinfo = server.url(PATH).replace("http://", f"http://kaggle-user-name:{SECRET}@")
    with pytest.raises(errors.DownloadError) as caught:
        downloader.fetch(FileSpec(with_userinfo, "userinfo", sha256=SHA))
    messages.append(str(caught.value))
    assert "***@127.0.0.1" in messages[-1]
    messages.extend(record.getMessage() for record in caplog.records)
    for text in messages:
        assert SECRET not in text and "header-token-value" not in text and "kaggle-user-name" not in text
    assert server.requests[0].headers["x-token"] == "header-token-value"  # they were sent, though


def test_credentials_need_an_origin():
    with pytest.raises(ValueError, match="credentials_for"):
        Downloader(Path("/nonexistent"), auth=("u", "k"))


def test_redact_url_masks_userinfo_and_signatures():
    url = "https://u:p@storage.example.org/a.zip?X-Goog-Signature=abc&X-Goog-Credential=me&datasetVersionNumber=2"
    redacted = download.redact_url(url)
    assert "u:p" not in redacted and "abc" not in redacted and "=me" not in redacted
    assert "datasetVersionNumber=2" in redacted and redacted.startswith("https://***@storage.example.org/a.zip")


# ---- cache dir and Kaggle ------------------------------------------------------------------------


def test_default_cache_dir_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("COVID19_CXR_CACHE", str(tmp_path / "c"))
    assert download.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("COVID19_CXR_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert download.default_cache_dir() == tmp_path / ".cache" / "covid19-cxr-dataset"


def test_kaggle_credentials_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert download.kaggle_credentials({}) is None

    found = download.kaggle_credentials({"KAGGLE_USERNAME": "env-user", "KAGGLE_KEY": SECRET})
    assert (found.username, found.key) == ("env-user", SECRET) and SECRET not in repr(found)

    home_file = tmp_path / "home" / ".kaggle" / "kaggle.json"
    home_file.parent.mkdir(parents=True)
    home_file.write_text(json.dumps({"username": "home-user", "key": "home-key"}))
    assert download.kaggle_credentials({}).username == "home-user"

    config = tmp_path / "config"
    config.mkdir()
    (config / "kaggle.json").write_text(json.dumps({"username": "config-user", "key": "config-key"}))
    assert download.kaggle_credentials({"KAGGLE_CONFIG_DIR": str(config)}).username == "config-user"
    assert download.kaggle_credentials({"KAGGLE_CONFIG_DIR": str(config), "KAGGLE_USERNAME": "env-user"}).username == "env-user"

    with pytest.raises(errors.CredentialsError, match="KAGGLE_KEY"):
        download.kaggle_credentials({"KAGGLE_USERNAME": "only-user", "KAGGLE_CONFIG_DIR": str(tmp_path / "none")})
    (config / "kaggle.json").write_text('{"username": "x", "key": ' + SECRET)  # truncated JSON
    with pytest.raises(errors.CredentialsError) as caught:
        download.kaggle_credentials({"KAGGLE_CONFIG_DIR": str(config)})
    assert str(config / "kaggle.json") in str(caught.value) and SECRET not in str(caught.value)


def test_missing_kaggle_credentials_message_gives_both_ways_out():
    message = str(download.missing_kaggle_credentials())
    assert "KAGGLE_USERNAME" in message and "KAGGLE_KEY" in message and "kaggle.json" in message
    assert "https://www.kaggle.com/datasets/paultimothymooney/chest-xray-pneumonia" in message
    assert "--kaggle-archive PATH" in message


def test_kaggle_download_url():
    assert download.kaggle_download_url("owner/slug") == "https://www.kaggle.com/api/v1/datasets/download/owner/slug"
    assert download.kaggle_download_url("owner/slug", 2, base_url="http://h/").endswith("slug?datasetVersionNumber=2")
    with pytest.raises(ValueError):
        download.kaggle_download_url("../../etc")


def test_fetch_kaggle_archive_through_the_api(server, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    archive = b"PK\x05\x06" + b"\0" * 18
    api_path = kaggle_download_path("owner", "slug")
    server.add(api_path, archive)
    server.require_auth(api_path, "kaggle-user", SECRET)
    options = dict(cache_dir=tmp_path / "cache", version=2, base_url=server.base_url, progress=False,
                   retries=1, backoff=0.01, timeout=2.0, sha256=hashlib.sha256(archive).hexdigest())

    with pytest.raises(errors.CredentialsError, match="--kaggle-archive"):
        download.fetch_kaggle_archive("owner/slug", **options)
    assert server.requests == []  # nothing is asked without credentials

    wrong = download.KaggleCredentials("kaggle-user", "wrong-key")
    with pytest.raises(errors.CredentialsError, match="HTTP 401") as caught:
        download.fetch_kaggle_archive("owner/slug", credentials=wrong, **options)
    assert "wrong-key" not in str(caught.value)

    monkeypatch.setenv("KAGGLE_USERNAME", "kaggle-user")
    monkeypatch.setenv("KAGGLE_KEY", SECRET)
    path = download.fetch_kaggle_archive("owner/slug", **options)
    assert path.read_bytes() == archive and path.as_posix().endswith("kaggle/owner/slug/v2/slug.zip")
    assert server.requests[-1].query == "datasetVersionNumber=2"

    monkeypatch.delenv("KAGGLE_KEY")  # a cached archive needs no credentials, even offline
    assert download.fetch_kaggle_archive("owner/slug", offline=True, **options) == path
    count = len(server.requests)
    assert download.fetch_kaggle_archive("owner/slug", **options) == path
    assert len(server.requests) == count
