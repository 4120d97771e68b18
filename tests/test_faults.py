"""The fault suite of issue 12 (reliability, round 2): one test per adversarial input or event.

Each test asserts what a user sees: the exit code, a message that names the input and the fix, and
what is on disk afterwards. Nothing here needs more than a loopback server and a few megabytes: the
oversized bodies are counted by the server, never read to the end.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from filelock import FileLock
from PIL import Image

from covid19_cxr_dataset import staging as staging_module
from covid19_cxr_dataset import download, errors, manifest as manifest_module
from covid19_cxr_dataset.build import Options, build
from covid19_cxr_dataset.cli import main
from covid19_cxr_dataset.download import Downloader, FileSpec

from loopback import LoopbackServer
from synthetic import COHEN, EXPECTED, KAGGLE_DATASET, git_blob_sha1

REPO = Path(__file__).resolve().parents[1]
KAGGLE_PATH = f"/api/v1/datasets/download/{KAGGLE_DATASET}"


# ---- helpers -------------------------------------------------------------------------------------


@pytest.fixture
def server(fresh_world):
    with LoopbackServer(dict(fresh_world.served)) as running:
        yield running


def cli(*args: str, cwd: Path | None = None):
    """Run the CLI in-process; a raw traceback (any exception but SystemExit) fails the test."""
    runner = CliRunner()
    if cwd is None:
        result = runner.invoke(main, list(args))
    else:
        previous = os.getcwd()
        os.chdir(cwd)
        try:
            result = runner.invoke(main, list(args))
        finally:
            os.chdir(previous)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"raw traceback instead of an error message: {result.exception!r}\n{result.output}"
    )
    return result


def source_args(world, server, cache: Path, *extra: str) -> list[str]:
    return ["--manifest", str(world.manifest_dir), "--mirror", server.base_url, "--cache-dir", str(cache), "-q",
            "--workers", "1", *extra]


def build_args(world, server, cache: Path, out: Path, *extra: str) -> list[str]:
    return ["build", *source_args(world, server, cache), "--out", str(out), "--kaggle-archive", str(world.kaggle_zip), *extra]


def options(tmp_path, server, world, **extra) -> Options:
    settings = dict(cache_dir=tmp_path / "cache", mirror=server.base_url, workers=1, progress=False,
                    kaggle_archive=world.kaggle_zip)
    settings.update(extra)
    return Options(**settings)


def image_requests(server) -> list:
    return [r for r in server.requests if "/images/" in r.path]


def fake_release(folder: Path) -> Path:
    """A folder that holds a build report of this package (what --overwrite accepts as a release)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "build_report.json").write_text(json.dumps(
        {"report_schema": 1, "dataset": "tiny", "package_version": "0", "fingerprint": "0" * 64}))
    return folder


def edit_manifest(world, old: str, new: str) -> None:
    path = world.manifest_dir / "manifest.yaml"
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new), encoding="utf-8")


def jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (64, 48), color=seed % 256).save(buffer, "JPEG")
    return buffer.getvalue()


# ---- 1. --overwrite and --out ----------------------------------------------------------------------


def test_overwrite_refuses_a_folder_that_is_not_a_release(fresh_world, server, tmp_path):
    work = tmp_path / "thesis"
    work.mkdir()
    (work / "chapter1.tex").write_text("months of work")
    result = cli(*build_args(fresh_world, server, tmp_path / "cache", work, "--overwrite"))
    assert result.exit_code == 1
    assert f"--overwrite refuses to replace {work}" in result.output and "no build_report.json" in result.output
    assert (work / "chapter1.tex").read_text() == "months of work"
    assert server.requests == []  # refused before any download


@pytest.mark.parametrize("target", ["cache", "cache-parent", "manifest", "archive-folder", "inside-cache"])
def test_overwrite_never_touches_the_cache_the_manifest_or_the_archive(fresh_world, server, tmp_path, target):
    cache = tmp_path / "shared" / "cache"
    cache.mkdir(parents=True)
    (cache / "precious").write_text("verified downloads")
    out = {
        "cache": cache,
        "cache-parent": cache.parent,
        "manifest": fresh_world.manifest_dir,
        "archive-folder": fresh_world.kaggle_zip.parent,
        "inside-cache": cache / "release",
    }[target]
    fake_release(out)  # even a folder that looks like a release is refused when it holds an input
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = cli(*build_args(fresh_world, server, cache, out, "--overwrite"))
    assert result.exit_code == 1
    assert f"--out {out}" in result.output and "Choose another --out" in result.output
    assert any(word in result.output for word in (" is the ", " contains ", " is inside "))
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert server.requests == []


def test_out_dot_and_out_under_a_file_fail_before_any_download(fresh_world, server, tmp_path):
    here = tmp_path / "here"
    here.mkdir()
    dot = cli(*build_args(fresh_world, server, tmp_path / "cache", Path(".")), cwd=here)
    assert dot.exit_code == 1 and "--out . is the current folder" in dot.output and "Pass e.g. --out ./tiny-0.0.1" in dot.output
    (tmp_path / "notes.txt").write_text("a file")
    under_file = cli(*build_args(fresh_world, server, tmp_path / "cache", tmp_path / "notes.txt" / "release"))
    assert under_file.exit_code == 1
    assert f"{tmp_path / 'notes.txt'} is a file, not a folder" in under_file.output
    assert server.requests == []
    assert not (tmp_path / "cache").exists()


def test_overwrite_replaces_a_release_and_leaves_nothing_beside_it(fresh_world, server, tmp_path):
    out = fake_release(tmp_path / "out")
    (out / "stale.parquet").write_bytes(b"old shard")
    result = cli(*build_args(fresh_world, server, tmp_path / "cache", out, "--overwrite"))
    assert result.exit_code == 0, result.output
    assert not (out / "stale.parquet").exists()
    assert json.loads((out / "build_report.json").read_text())["counts"] == EXPECTED
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == [".out.lock"]


# ---- 2. concurrent builds, staging folders ---------------------------------------------------------


def test_two_builds_of_one_out_at_the_same_time_only_one_writes(fresh_world, server, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    slow_image = f"/{COHEN[0]}/{COHEN[1]}/images/c9.jpg"
    server.stall(slow_image, 2.5)  # holds the first build inside its downloads
    first = subprocess.Popen(
        [sys.executable, "-m", "covid19_cxr_dataset.cli", *build_args(fresh_world, server, tmp_path / "cache-1", tmp_path / "out")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 120
    while not server.requests_for(slow_image) and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.05)
    second = cli(*build_args(fresh_world, server, tmp_path / "cache-2", tmp_path / "out"))
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0 and f"wrote {tmp_path / 'out'}" in stdout, stderr
    assert second.exit_code == 1 and f"another build is writing {tmp_path / 'out'} right now" in second.output
    assert "wrote" not in second.output
    assert json.loads((tmp_path / "out" / "build_report.json").read_text())["counts"] == EXPECTED
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_a_live_build_in_another_pid_namespace_keeps_its_staging_folder(fresh_world, server, tmp_path):
    # Another container's build: its PID (999999) does not exist here, but it holds the output lock.
    staging = tmp_path / ".out.partial-999999-abcd"
    staging.mkdir()
    (staging / staging_module.STAGING_MARKER).write_text("")
    (staging / "data").mkdir()
    with FileLock(str(tmp_path / ".out.lock")):
        result = cli(*build_args(fresh_world, server, tmp_path / "cache", tmp_path / "out"))
    assert result.exit_code == 1 and "another build is writing" in result.output
    assert (staging / "data").is_dir()
    assert server.requests == []


def test_staging_left_by_a_build_killed_as_pid_1_is_removed_and_others_are_left_alone(fresh_world, server, tmp_path):
    dead = tmp_path / ".out.partial-1-abcd"  # PID 1 is alive here (init), yet that build is gone
    dead.mkdir()
    (dead / staging_module.STAGING_MARKER).write_text("")
    (dead / "data").mkdir()
    foreign = tmp_path / ".out.partial-2-notours"  # same pattern, but not a staging folder of this package
    foreign.mkdir()
    (foreign / "keep.txt").write_text("someone else's")
    report = build(manifest_module.load(fresh_world.manifest_dir), tmp_path / "out", options(tmp_path, server, fresh_world))
    assert report["counts"] == EXPECTED
    assert not dead.exists()
    assert (foreign / "keep.txt").read_text() == "someone else's"
    assert not (tmp_path / "out" / staging_module.STAGING_MARKER).exists()


# ---- 4. nothing unpinned is trusted ----------------------------------------------------------------


def test_an_html_page_for_the_kaggle_archive_is_refetched_once_then_refused(fresh_world, server, tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "0123456789abcdef0123456789abcdef")
    html = b"<!DOCTYPE html><html><body>Please log in</body></html>"
    server.corrupt(KAGGLE_PATH, html, times=2)
    settings = options(tmp_path, server, fresh_world, kaggle_archive=None, kaggle_api=server.base_url)
    with pytest.raises(errors.ArchiveError) as error:
        build(manifest_module.load(fresh_world.manifest_dir), tmp_path / "out", settings)
    assert "downloaded twice but is not a zip archive" in str(error.value) and "HTML page" in str(error.value)
    assert "removed from the cache" in str(error.value) and "--kaggle-archive" in str(error.value)
    assert len(server.requests_for(KAGGLE_PATH)) == 2
    assert not list((tmp_path / "cache" / "kaggle").rglob("*.zip"))
    assert not (tmp_path / "out").exists()

    # Once more with one bad answer (a page cached by an earlier run): discarded, fetched again, built.
    server.clear_requests()
    server.corrupt(KAGGLE_PATH, html, times=1)
    report = build(manifest_module.load(fresh_world.manifest_dir), tmp_path / "out", settings)
    assert report["counts"] == EXPECTED
    assert len(server.requests_for(KAGGLE_PATH)) == 2


def test_an_unpinned_file_is_stored_but_never_verified(loopback_server, tmp_path):
    loopback_server.add("/a.bin", b"payload")
    downloader = Downloader(tmp_path, progress=False, retries=0)
    unpinned = FileSpec(loopback_server.url("/a.bin"), "x/a.bin")
    downloader.fetch(unpinned)
    assert downloader.verified_hashes(unpinned) is None
    assert downloader.stored_hashes(unpinned).sha256 == hashlib.sha256(b"payload").hexdigest()
    pinned = FileSpec(loopback_server.url("/a.bin"), "x/a.bin", sha256=hashlib.sha256(b"payload").hexdigest())
    downloader.fetch(pinned)  # the pin checks the stored copy: now it is verified
    assert downloader.verified_hashes(pinned).sha256 == pinned.sha256


@pytest.mark.parametrize("announced", [True, False], ids=["content-length", "close-delimited"])
def test_a_body_beyond_the_cap_for_a_file_without_a_pinned_size_stops_early(loopback_server, tmp_path, announced):
    body = os.urandom(1 << 20) * 32  # 32 MiB served; the cap is 1 MiB
    loopback_server.add("/big.jpg", body, content_length=announced)
    downloader = Downloader(tmp_path, progress=False, retries=0, max_unpinned_bytes=1 << 20)
    spec = FileSpec(loopback_server.url("/big.jpg"), "x/big.jpg", sha256="0" * 64)  # a hash, no size
    with pytest.raises(errors.DownloadError) as error:
        downloader.fetch(spec)
    assert "1048576-byte cap" in str(error.value) and "pin the file's size" in str(error.value)
    time.sleep(0.2)
    assert loopback_server.requests_for("/big.jpg")[0].body_bytes < 12 * (1 << 20)
    assert [p.name for p in tmp_path.rglob("*") if p.is_file() and not p.name.endswith(".lock")] == []


def test_archive_sha256_binds_a_kaggle_archive_given_by_hand(fresh_world, server, tmp_path):
    edit_manifest(fresh_world, "archive_root: chest_xray", f"archive_root: chest_xray\n    archive_sha256: {'ab' * 32}")
    result = cli(*build_args(fresh_world, server, tmp_path / "cache", tmp_path / "out"))
    assert result.exit_code == 1
    digest = hashlib.sha256(fresh_world.kaggle_zip.read_bytes()).hexdigest()
    assert f"--kaggle-archive {fresh_world.kaggle_zip}: sha256 {digest}" in result.output
    assert f"pins archive_sha256 {'ab' * 32}" in result.output
    assert not (tmp_path / "out").exists()


def test_kaggle_archive_that_is_a_device_is_refused_at_once(fresh_world, server, tmp_path):
    result = cli(*build_args(fresh_world, server, tmp_path / "cache", tmp_path / "out")[:-2], "--kaggle-archive", "/dev/zero")
    assert result.exit_code == 1
    assert "--kaggle-archive /dev/zero is a device, pipe or socket, not a regular file" in result.output
    assert server.requests == []
    before = (fresh_world.manifest_dir / "locks" / "kaggle.csv").read_bytes()
    pinning = cli("lock", "kaggle", "--manifest", str(fresh_world.manifest_dir), "--kaggle-archive", "/dev/zero")
    assert pinning.exit_code == 1 and "is a device, pipe or socket" in pinning.output
    assert (fresh_world.manifest_dir / "locks" / "kaggle.csv").read_bytes() == before


# ---- 5. the conversion cache -----------------------------------------------------------------------


def test_replaced_or_emptied_conversion_cache_entries_are_converted_again(fresh_world, server, tmp_path):
    first = build(manifest_module.load(fresh_world.manifest_dir), tmp_path / "a", options(tmp_path, server, fresh_world))
    entries = sorted((tmp_path / "cache" / "converted").rglob("*.jpg"))
    assert len(entries) == sum(sum(c.values()) for c in EXPECTED.values())
    entries[0].write_bytes(b"")  # truncated to nothing
    entries[1].write_bytes(jpeg(7))  # replaced by another valid JPEG
    entries[2].write_bytes(entries[2].read_bytes()[:100])  # truncated
    second = build(manifest_module.load(fresh_world.manifest_dir), tmp_path / "b", options(tmp_path, server, fresh_world))
    assert second["fingerprint"] == first["fingerprint"]
    for path in entries[:3]:
        record = json.loads(path.with_name(path.name + ".json").read_text())
        assert hashlib.sha256(path.read_bytes()).hexdigest() == record["sha256"]
    assert cli("verify", str(tmp_path / "b")).exit_code == 0


# ---- inputs that crashed or hung -------------------------------------------------------------------


BILLION_LAUGHS = textwrap.dedent("""\
    a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
    b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
    c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
    d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
    e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
    f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
    g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
    h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
    i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
    """)


def test_yaml_aliases_are_refused_in_manifest_card_and_recipe(fresh_world, tmp_path):
    from covid19_cxr_dataset.baseline.recipe import RecipeError, recipe_from_file

    (fresh_world.manifest_dir / "manifest.yaml").write_text(BILLION_LAUGHS)
    started = time.monotonic()
    result = cli("plan", "--manifest", str(fresh_world.manifest_dir))
    assert result.exit_code == 1
    assert f"{fresh_world.manifest_dir / 'manifest.yaml'}: not valid YAML at line 2" in result.output
    assert "YAML aliases (*a) are not accepted" in result.output

    release = fake_release(tmp_path / "release")
    (release / "README.md").write_text("---\n" + BILLION_LAUGHS + "---\n\ncard\n")
    checked = cli("verify", str(release))
    assert checked.exit_code == 1 and "README.md" in checked.output and "YAML aliases (*a) are not accepted" in checked.output

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(BILLION_LAUGHS)
    with pytest.raises(RecipeError, match="YAML aliases"):
        recipe_from_file(recipe)
    assert time.monotonic() - started < 10  # each refusal is immediate; expanding would take minutes


def test_a_file_name_of_250_characters_is_fetched(loopback_server, tmp_path):
    name = "x" * 250 + ".png"
    loopback_server.add(f"/images/{name}", b"long-named image")
    spec = FileSpec(loopback_server.url(f"/images/{name}"), f"github/o/r/c/images/{name}",
                    sha256=hashlib.sha256(b"long-named image").hexdigest())
    path = Downloader(tmp_path, progress=False, retries=0).fetch(spec)
    assert path.read_bytes() == b"long-named image"
    assert len(path.name.encode()) <= download.MAX_NAME_BYTES and path.suffix == ".png"
    assert Downloader(tmp_path, progress=False, offline=True).fetch(spec) == path  # found again by its key


@pytest.mark.parametrize("bad", ["../x.png", "/etc/passwd", "images/a\0b.png"], ids=["dotdot", "absolute", "nul"])
def test_lock_rows_naming_paths_outside_the_source_are_refused(fresh_world, server, tmp_path, bad):
    lock = fresh_world.manifest_dir / "locks" / "cohen.tsv"
    lock.write_text(lock.read_text() + f"{bad}\t{'0' * 40}\t10\n")
    result = cli("plan", *source_args(fresh_world, server, tmp_path / "cache"))
    assert result.exit_code == 1
    assert f"{lock}:" in result.output and "is not a plain relative path" in result.output
    assert "fix the row" in result.output


@pytest.mark.parametrize("mirror, problem", [
    ("file:///srv/mirror", "its scheme is file://"),
    ("ftp://mirror.example.org", "its scheme is ftp://"),
    ("mirror.example.org/github", "its scheme is missing"),
    ("http://127.0.0.1:99999", "it cannot be parsed (Port out of range"),
])
def test_unusable_mirror_values_are_one_clear_error(fresh_world, tmp_path, mirror, problem):
    result = cli("plan", "--manifest", str(fresh_world.manifest_dir), "--mirror", mirror, "--cache-dir", str(tmp_path / "cache"), "-q")
    assert result.exit_code == 1
    assert f"--mirror {mirror!r} is not a usable base URL: {problem}" in result.output
    assert "Expected an absolute URL such as https://" in result.output


def test_a_redirect_to_an_unparseable_url_is_one_clear_error(loopback_server, tmp_path):
    loopback_server.add("/a.bin", b"x")
    loopback_server.redirect("/a.bin", "http://[bad")
    with pytest.raises(errors.DownloadError) as error:
        Downloader(tmp_path, progress=False, retries=0).fetch(FileSpec(loopback_server.url("/a.bin"), "x/a.bin"))
    assert f"{loopback_server.url('/a.bin')} answered with a redirect to an address that is not a valid URL" in str(error.value)
    assert "Invalid IPv6 URL" in str(error.value) and "use another mirror" in str(error.value)


def test_an_empty_lock_file_is_one_clear_error(fresh_world, server, tmp_path):
    lock = fresh_world.manifest_dir / "locks" / "figure1.tsv"
    lock.write_text("")
    result = cli("plan", *source_args(fresh_world, server, tmp_path / "cache"))
    assert result.exit_code == 1
    assert f"{lock}: the lock file is empty" in result.output and "cxr-dataset lock github" in result.output


def test_an_unknown_or_wrong_metadata_encoding_is_one_clear_error(fresh_world, server, tmp_path):
    edit_manifest(fresh_world, "{path: metadata.csv, encoding: iso-8859-1, layout: chung}\n    image_folder: images\n    lock: locks/figure1.tsv",
                  "{path: metadata.csv, encoding: klingon, layout: chung}\n    image_folder: images\n    lock: locks/figure1.tsv")
    result = cli("plan", *source_args(fresh_world, server, tmp_path / "cache"))
    assert result.exit_code == 1
    assert "metadata encoding 'klingon'" in result.output and "use e.g. utf-8 or iso-8859-1" in result.output
    edit_manifest(fresh_world, "encoding: klingon", "encoding: utf-8")
    edit_manifest(fresh_world, "{path: metadata.csv, encoding: iso-8859-1, layout: chung}", "{path: metadata.csv, encoding: utf-8, layout: chung}")
    result = cli("plan", *source_args(fresh_world, server, tmp_path / "cache"))
    assert result.exit_code == 1
    assert "the metadata table is not utf-8 text (byte 0xe9" in result.output
    assert "set the manifest's metadata.encoding" in result.output


def test_a_latin_1_manifest_is_one_clear_error(fresh_world):
    path = fresh_world.manifest_dir / "manifest.yaml"
    path.write_bytes(path.read_bytes().replace(b"title: Tiny", "title: Tiny caf\u00e9".encode("latin-1")))
    result = cli("plan", "--manifest", str(fresh_world.manifest_dir))
    assert result.exit_code == 1
    assert f"{path}: not valid YAML: not UTF-8 text (byte 0xe9" in result.output and "save the file as UTF-8" in result.output


@pytest.mark.parametrize("which", ["decisions/views.csv", "locks/kaggle.csv"])
def test_an_unbalanced_quote_in_a_csv_list_is_one_clear_error(fresh_world, server, tmp_path, which):
    path = fresh_world.manifest_dir / which
    path.write_text(path.read_text() + '"figure1,images/COVID-00009.jpg,PA,unclosed\n')
    result = cli("plan", *source_args(fresh_world, server, tmp_path / "cache"))
    assert result.exit_code == 1
    assert f"{path}: not valid CSV" in result.output and "unbalanced double quote" in result.output


def test_a_kaggle_key_http_cannot_carry_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "0123456789abcdef\u20ac0123456789abcde")
    with pytest.raises(errors.CredentialsError) as error:
        download.kaggle_credentials()
    assert "the Kaggle key from environment" in str(error.value) and "non-ASCII" in str(error.value)
    assert "\u20ac" not in str(error.value) and "0123456789abcdef" not in str(error.value)


def _read_only(folder: Path):
    """Make ``folder`` read-only for this process: chmod for ordinary users; root needs a ro bind mount."""
    if os.geteuid() != 0:
        paths = [folder, *folder.rglob("*")]
        for path in paths:
            path.chmod(0o555 if path.is_dir() else 0o444)
        return lambda: [p.chmod(0o755 if p.is_dir() else 0o644) for p in paths]
    mounted = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("running as root without permission to bind-mount: cannot make a read-only cache")
    subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True)
    return lambda: subprocess.run(["umount", str(folder)], check=True)


def test_a_read_only_cache_builds_offline_and_fails_clearly_when_files_are_missing(fresh_world, server, tmp_path):
    cache = tmp_path / "cache"
    first = build(manifest_module.load(fresh_world.manifest_dir), tmp_path / "a", options(tmp_path, server, fresh_world))
    restore = _read_only(cache)
    try:
        with pytest.raises(OSError):
            (cache / "probe").write_text("")
        result = cli(*build_args(fresh_world, server, cache, tmp_path / "b", "--offline"))
        assert result.exit_code == 0, result.output
        assert json.loads((tmp_path / "b" / "build_report.json").read_text())["fingerprint"] == first["fingerprint"]
        # A file the read-only cache lacks: one clear error naming the cache and the fix.
        extra = jpeg(3)
        edit_manifest(fresh_world, "version: 0.0.1", "version: 0.0.2")
        server.add(f"/{COHEN[0]}/{COHEN[1]}/images/c9.jpg", extra)
        lock = fresh_world.manifest_dir / "locks" / "cohen.tsv"
        lock.write_text("\n".join(
            f"images/c9.jpg\t{git_blob_sha1(extra)}\t{len(extra)}" if line.startswith("images/c9.jpg\t") else line
            for line in lock.read_text().splitlines()) + "\n")
        result = cli(*build_args(fresh_world, server, cache, tmp_path / "c"))
        assert result.exit_code == 1
        assert f"the cache dir {cache} is not writable" in result.output and "pass --cache-dir" in result.output.lower()
        assert not (tmp_path / "c").exists()
    finally:
        restore()


def test_name_without_version_names_the_known_releases():
    result = cli("plan", "--name", "no-such-dataset")
    assert result.exit_code == 1
    assert "no release named 'no-such-dataset'" in result.output and "covid19-cxr" in result.output


# ---- smaller -------------------------------------------------------------------------------------


def test_a_kaggle_json_readable_by_others_is_warned_about(tmp_path, monkeypatch, caplog):
    folder = tmp_path / "kaggle"
    folder.mkdir()
    (folder / "kaggle.json").write_text(json.dumps({"username": "someone", "key": "0123456789abcdef0123456789abcdef"}))
    (folder / "kaggle.json").chmod(0o644)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(folder))
    with caplog.at_level(logging.WARNING, logger="covid19_cxr_dataset.download"):
        assert download.kaggle_credentials().username == "someone"
    assert f"chmod 600 {folder / 'kaggle.json'}" in caplog.text and "readable by other users" in caplog.text
    caplog.clear()
    (folder / "kaggle.json").chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="covid19_cxr_dataset.download"):
        download.kaggle_credentials()
    assert "readable by other users" not in caplog.text


def test_netrc_credentials_for_the_mirror_are_not_sent(loopback_server, tmp_path, monkeypatch):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password s3cret-from-netrc\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    loopback_server.add("/a.bin", b"payload")
    Downloader(tmp_path / "cache", progress=False, retries=0).fetch(FileSpec(loopback_server.url("/a.bin"), "x/a.bin"))
    assert "authorization" not in loopback_server.requests_for("/a.bin")[0].headers


def test_report_paths_are_relative_to_the_cache(fresh_world, server, tmp_path):
    truncated = fresh_world.served[f"/{COHEN[0]}/{COHEN[1]}/images/c9.jpg"][:400]
    server.add(f"/{COHEN[0]}/{COHEN[1]}/images/c9.jpg", truncated)
    lock = fresh_world.manifest_dir / "locks" / "cohen.tsv"
    lock.write_text("\n".join(
        f"images/c9.jpg\t{git_blob_sha1(truncated)}\t{len(truncated)}" if line.startswith("images/c9.jpg\t") else line
        for line in lock.read_text().splitlines()) + "\n")
    edit_manifest(fresh_world, "train: {COVID-19: 10,", "train: {COVID-19: 9,")
    build(manifest_module.load(fresh_world.manifest_dir), tmp_path / "out", options(tmp_path, server, fresh_world))
    text = (tmp_path / "out" / "build_report.json").read_text()
    detail = next(e["detail"] for e in json.loads(text)["exclusions"] if e["source_path"] == "images/c9.jpg")
    assert "<cache>/github/" in detail and str(tmp_path) not in text


def test_ctrl_c_after_the_release_is_in_place_exits_0(fresh_world, server, tmp_path, monkeypatch):
    original = staging_module.move_into_place

    def move_then_interrupt(staging, out):
        original(staging, out)
        raise KeyboardInterrupt

    monkeypatch.setattr(staging_module, "move_into_place", move_then_interrupt)
    result = cli(*build_args(fresh_world, server, tmp_path / "cache", tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output
    assert json.loads((tmp_path / "out" / "build_report.json").read_text())["counts"] == EXPECTED

    monkeypatch.setattr(staging_module, "move_into_place", original)
    from covid19_cxr_dataset import report as report_module

    def interrupted_summary(result):
        raise KeyboardInterrupt

    monkeypatch.setattr(report_module, "summary", interrupted_summary)  # what `build` prints once the release is in place
    again = cli(*build_args(fresh_world, server, tmp_path / "cache", tmp_path / "out2"))
    assert again.exit_code == 0 and (tmp_path / "out2" / "build_report.json").is_file()
