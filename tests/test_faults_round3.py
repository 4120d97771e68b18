"""The fault suite of issue 23 (reliability, round 3): no traceback, nothing overwritten, the smaller items.

One test per adversarial input or event, asserting what the user sees: the exit code, a message that
names the input and the fix, and what is on disk afterwards. The signal cases run the real program in a
subprocess: tests/test_faults_signals.py.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from covid19_cxr_dataset import release, staging
from covid19_cxr_dataset.cli import main
from covid19_cxr_dataset.download import Downloader, FileSpec
from covid19_cxr_dataset.download import resume
from covid19_cxr_dataset.errors import DownloadError, FingerprintMismatch, VerificationError

from loopback import LoopbackServer
from release_factory import make_release, tamper_label
from synthetic import COHEN, EXPECTED

REPO = Path(__file__).resolve().parents[1]


def cli(*args, cwd: Path | None = None):
    """Run the CLI in-process; a raw traceback (any exception but SystemExit) fails the test."""
    previous = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        result = CliRunner().invoke(main, [str(a) for a in args])
    finally:
        os.chdir(previous)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"raw traceback instead of an error message: {result.exception!r}\n{result.output}")
    return result


@pytest.fixture
def server(world):
    with LoopbackServer(dict(world.served)) as running:
        yield running


def source_args(world, server, cache: Path) -> list[str]:
    return ["--manifest", world.manifest_dir, "--mirror", server.base_url, "--cache-dir", cache, "-q", "--workers", "1"]


def tree(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``: what a refused command must leave as it was."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- verify: a hostile card or report ----------------------------------------------------------------


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return make_release(tmp_path_factory.mktemp("pristine") / "release", per_class={"train": 2, "test": 1}, size=(32, 32),
                        configs=True)


@pytest.fixture
def hostile(pristine, tmp_path) -> Path:
    """A copy of a good release, with another release beside it (``neighbour``) whose files a hostile
    card or report may try to make verify read."""
    shutil.copytree(pristine, tmp_path / "neighbour")
    return Path(shutil.copytree(pristine, tmp_path / "release"))


def _card(old: str, new: str):
    def edit(folder: Path) -> None:
        path = folder / "README.md"
        text = path.read_text(encoding="utf-8")
        assert old in text
        path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return edit


def _report(change):
    def edit(folder: Path) -> None:
        path = folder / "build_report.json"
        report = json.loads(path.read_text(encoding="utf-8"))
        change(report)
        path.write_text(json.dumps(report), encoding="utf-8")
    return edit


TRAIN_FILES = "path: data/curated/train-*.parquet"
HOSTILE = {  # name: (edit, file the message names, what it says was expected)
    "card data_files /etc/*": (_card(TRAIN_FILES, "path: /etc/*"), "README.md: card-data-files",
                               "relative globs under data/ inside the release folder"),
    "card data_files ../": (_card(TRAIN_FILES, "path: ../*/data/curated/train-*.parquet"), "README.md: card-data-files",
                            "a path outside the release's data/ folder"),
    "card data_files path a number": (_card(TRAIN_FILES, "path: 5"), "README.md: card-data-files", "not a path"),
    "card data_files path an object": (_card(TRAIN_FILES, "path: {a: 1}"), "README.md: card-data-files", "not a path"),
    "card config_name a list": (_card("- config_name: paper\n  default: true", "- config_name: [paper]\n  default: true"),
                                "README.md: card-configs", "config_name (a string)"),
    "card split name a list": (_card("  - split: train\n    path: data/curated/train-*.parquet",
                                     "  - split: [train]\n    path: data/curated/train-*.parquet"),
                               "README.md: card-data-files", "data_files entries naming a split (a string)"),
    "card class label index a word": (_card("          '0': COVID-19", "          'a': COVID-19"), "README.md: card-labels",
                                      "not a list of names or {index: name}"),
    "card dtype a string": (_card("  - name: label\n    dtype:\n      class_label:", "  - name: label\n    dtype: x\n    y:\n      class_label:"),
                            "README.md: card-labels", "not a list of names or {index: name}"),
    "card dataset_info config_name a list": (_card("dataset_info:\n- config_name: paper", "dataset_info:\n- config_name: [paper]"),
                                             "README.md: card-splits", "naming their configuration and splits by name"),
    "report configuration a string": (_report(lambda r: r["configs"].__setitem__("curated", "x")), "build_report.json: report",
                                      "configs.curated: an object"),
    "report folders with ../": (_report(lambda r: r["configs"]["curated"].__setitem__("folders", ["../../neighbour/data/curated"])),
                                "build_report.json: report", "configs.curated.folders: a list of folder names under data/"),
    "report folders a string": (_report(lambda r: r["configs"]["curated"].__setitem__("folders", "curated")),
                                "build_report.json: report", "configs.curated.folders: a list of folder names"),
    "report folders of numbers": (_report(lambda r: r["configs"]["curated"].__setitem__("folders", [1])),
                                  "build_report.json: report", "configs.curated.folders: a list of folder names"),
    "report shards with ../": (_report(lambda r: r["configs"]["paper"].__setitem__(
        "shards", ["data/../../neighbour/data/curated/train-00000-of-00001.parquet"])),
                               "build_report.json: report", "configs.paper.shards: a list of shard paths under data/"),
    "report count null": (_report(lambda r: r["counts"]["train"].__setitem__("COVID-19", None)), "build_report.json: report",
                          "counts.train.COVID-19: a count"),
    "report count a word": (_report(lambda r: r["counts"]["train"].__setitem__("COVID-19", "many")), "build_report.json: report",
                            "counts.train.COVID-19: a count"),
    "report configuration counts a list": (_report(lambda r: r["configs"]["curated"].__setitem__("counts", [1])),
                                           "build_report.json: report", "configs.curated.counts: {split: {class: count}}"),
    "report exclusions of numbers": (_report(lambda r: r.__setitem__("exclusions", [1])), "build_report.json: report",
                                     "exclusions: a list of objects"),
    "report schema a word": (_report(lambda r: r.__setitem__("report_schema", "two")), "build_report.json: report",
                             "report_schema: a int"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_verify_names_every_hostile_value_and_reads_nothing_outside_the_release(hostile, case):
    edit, named, expected = HOSTILE[case]
    edit(hostile)
    before = tree(hostile.parent)
    result = cli("verify", hostile, "--workers", "1")
    assert result.exit_code == 1, result.output
    assert f"{hostile}: covid19-cxr-test 0.0.0-test FAILED verification" in result.output
    assert named in result.output and expected in result.output, result.output
    assert "rebuild" in result.output  # the fix
    assert "neighbour/data/curated/test-00000" not in result.output and "resolving to ['../" not in result.output
    assert "/etc/passwd" not in result.output
    assert tree(hostile.parent) == before


def test_a_report_naming_shards_outside_the_release_is_refused_to_every_reader(hostile):
    _report(lambda r: r["configs"]["curated"].__setitem__("shards", ["data/../../neighbour/data/curated/test-00000-of-00001.parquet"]))(hostile)
    report = release.read_report(hostile)
    with pytest.raises(VerificationError, match=r"configuration 'curated' must list its shards as paths under data/ inside "
                                                r"the release folder; found 'data/\.\./\.\./neighbour"):
        release.resolve_config(hostile, report, "curated")  # what the baseline reads its shards through
    assert release.shard_paths(hostile / "data", folders=["../../neighbour/data/curated"]) == []


# ---- new-variant: hostile reports and folders -------------------------------------------------------


def _report_text() -> str:
    return ("source,source_path,split,label,status,url,detail,sha256_expected,sha256_actual\n"
            "cohen,images/c9.jpg,train,COVID-19,404,https://example.org/c9.jpg,gone,,\n")


@pytest.mark.parametrize("encoding, problem", [
    ("latin-1", "not UTF-8 text (byte 0xe9 at offset"),
    ("utf-16", "not UTF-8 text (byte 0xff at offset 0)"),
])
def test_new_variant_refuses_a_missing_files_report_that_is_not_utf8(world, tmp_path, encoding, problem):
    report = tmp_path / "missing.csv"
    report.write_bytes(_report_text().replace("gone", "disparu, d\u00e9j\u00e0").encode(encoding))
    result = cli("new-variant", "--from", world.manifest_dir, tmp_path / "variant", "--exclude-missing", report, "--offline",
                 "--cache-dir", tmp_path / "cache", "-q")
    assert result.exit_code == 1
    assert f"{report}: {problem}" in result.output and "save this one as UTF-8" in result.output
    assert not (tmp_path / "variant").exists() and not list(tmp_path.glob(".variant*"))


@pytest.mark.parametrize("row, problem", [
    ("cohen\n", "line 3: no source_path, status"),
    ("cohen,images/c2.png,train,COVID-19,,,,,\n", "line 3: no status"),
    ("cohen,images/c2.png,train,COVID-19,404,u,d,,,surplus\n", "line 3: 1 cell(s) beyond the header's columns"),
])
def test_new_variant_refuses_report_rows_with_missing_fields(world, tmp_path, row, problem):
    report = tmp_path / "missing.csv"
    report.write_text(_report_text() + row, encoding="utf-8")
    result = cli("new-variant", "--from", world.manifest_dir, tmp_path / "variant", "--exclude-missing", report, "--offline",
                 "--cache-dir", tmp_path / "cache", "-q")
    assert result.exit_code == 1
    assert f"{report}, {problem}" in result.output and "Fix or remove that row" in result.output
    assert not (tmp_path / "variant").exists()


@pytest.mark.parametrize("where", ["under-a-file", "under-proc"])
def test_new_variant_into_a_folder_that_cannot_exist_is_one_clear_error(world, tmp_path, where):
    (tmp_path / "notes.txt").write_text("a file")
    folder = tmp_path / "notes.txt" / "variant" if where == "under-a-file" else Path("/proc/cxr-dataset-variant/v")
    result = cli("new-variant", "--from", world.manifest_dir, folder, "--offline", "--cache-dir", tmp_path / "cache", "-q")
    assert result.exit_code == 1
    assert f"error: {folder}: " in result.output and "choose" in result.output
    assert ("is a file, not a folder" in result.output) if where == "under-a-file" else ("cannot create the variant's folder" in result.output)
    assert (tmp_path / "notes.txt").read_text() == "a file"


def test_variant_folders_not_named_by_a_version_do_not_break_manifests_or_plan(world, server, tmp_path, monkeypatch):
    root = tmp_path / "builder_manifests"
    shutil.copytree(world.manifest_dir, root / "tiny" / "0.0.1")
    shutil.copytree(world.manifest_dir, root / "tiny" / "my-variant")
    variant = shutil.copytree(world.manifest_dir, root / "tiny" / "0.0.1+1")
    text = (variant / "manifest.yaml").read_text(encoding="utf-8")
    (variant / "manifest.yaml").write_text(text.replace("version: 0.0.1", "version: 0.0.1+local.1"), encoding="utf-8")
    shutil.copytree(world.manifest_dir, root / "tiny" / "0.0.1+local.2")
    monkeypatch.setenv("COVID19_CXR_MANIFESTS", str(root))
    listed = cli("manifests")
    assert listed.exit_code == 0, listed.output
    assert f"skipped {root / 'tiny' / 'my-variant'}: a folder under the manifests root" in listed.output
    assert "named by its release's version" in listed.output and "--manifest DIR" in listed.output
    assert "tiny 0.0.1\t" in listed.output
    assert "tiny 0.0.1+1\tskipped:" in listed.output and "describes tiny 0.0.1+local.1" in listed.output
    planned = cli("plan", "--name", "tiny", "--mirror", server.base_url, "--cache-dir", tmp_path / "cache", "-q")
    assert planned.exit_code == 0, planned.output
    assert "tiny 0.0.1" in planned.output and "my-variant" in planned.output  # the newest release, with the warning


# ---- plan --json / --missing-report: refused where they would overwrite inputs, written atomically ----------


@pytest.fixture
def manifest_copy(world, tmp_path) -> Path:
    return Path(shutil.copytree(world.manifest_dir, tmp_path / "manifest"))


@pytest.mark.parametrize("option", ["--json", "--missing-report"])
@pytest.mark.parametrize("target", ["manifest.yaml", "lock file", "cache lock", "cache"])
def test_plan_outputs_are_refused_inside_the_manifest_folder_or_the_cache(manifest_copy, server, tmp_path, option, target):
    cache = tmp_path / "cache"
    (cache / ".locks").mkdir(parents=True)
    (cache / ".locks" / "x.lock").write_text("")
    path = {"manifest.yaml": manifest_copy / "manifest.yaml", "lock file": manifest_copy / "locks" / "cohen.tsv",
            "cache lock": cache / ".locks" / "x.lock", "cache": cache / "plan.json"}[target]
    before = {**tree(manifest_copy), **{f"cache/{k}": v for k, v in tree(cache).items()}}
    extra = ["--check-files"] if option == "--missing-report" else []
    result = cli("plan", "--manifest", manifest_copy, "--mirror", server.base_url, "--cache-dir", cache, "-q", option, path, *extra)
    assert result.exit_code == 1
    assert f"error: {option} {path} is inside the {'cache dir' if 'cache' in target else 'manifest folder'}" in result.output
    assert f"Choose a path outside it, e.g. {option} ./{path.name}" in result.output
    assert {**tree(manifest_copy), **{f"cache/{k}": v for k, v in tree(cache).items()}} == before
    assert server.requests == []  # refused before the plan


@pytest.mark.parametrize("option", ["--json", "--missing-report"])
@pytest.mark.parametrize("where", ["under-a-file", "under-proc"])
def test_plan_outputs_that_cannot_be_written_are_refused_before_the_work(world, server, tmp_path, option, where):
    (tmp_path / "notes.txt").write_text("a file")
    path = {"under-a-file": tmp_path / "notes.txt" / "plan.json", "under-proc": Path("/proc/plan.json")}[where]
    extra = ["--check-files"] if option == "--missing-report" else []
    result = cli("plan", *source_args(world, server, tmp_path / "cache"), option, path, *extra)
    assert result.exit_code == 1
    assert f"error: {option} {path}" in result.output
    assert {"under-a-file": "is a file, not a folder", "under-proc": "cannot write into /proc"}[where] in result.output
    assert server.requests == []
    assert (tmp_path / "notes.txt").read_text() == "a file"


def test_plan_json_is_written_atomically(world, server, tmp_path, monkeypatch):
    target = tmp_path / "plan.json"
    target.write_text("the previous plan")
    assert cli("plan", *source_args(world, server, tmp_path / "cache")).exit_code == 0  # the metadata in the cache

    def disk_full(source, destination):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(staging.os, "replace", disk_full)
    failed = cli("plan", *source_args(world, server, tmp_path / "cache"), "--json", target)
    assert failed.exit_code == 1
    assert f"error: --json {target}: cannot write it (No space left on device); nothing was changed there" in failed.output
    assert target.read_text() == "the previous plan"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "plan.json"]  # no temporary file left
    monkeypatch.undo()
    written = cli("plan", *source_args(world, server, tmp_path / "cache"), "--json", target)
    assert written.exit_code == 0, written.output
    assert json.loads(target.read_text())["files"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "plan.json"]


# ---- a disk that fills while a download is closed -------------------------------------------------------


class _FullOnClose(io.FileIO):
    """A .part whose last buffered bytes do not fit on the disk: close() fails with ENOSPC."""

    def close(self):
        if not self.closed:
            super().close()
            raise OSError(errno.ENOSPC, "No space left on device")


def test_a_disk_that_fills_while_a_download_is_closed_is_one_clear_error(loopback_server, tmp_path, monkeypatch):
    loopback_server.add("/a.bin", b"payload" * 1000)
    monkeypatch.setattr(resume, "open", lambda path, mode: _FullOnClose(path, mode.replace("b", "")), raising=False)
    spec = FileSpec(loopback_server.url("/a.bin"), "x/a.bin", sha256=hashlib.sha256(b"payload" * 1000).hexdigest())
    with pytest.raises(DownloadError) as error:
        Downloader(tmp_path / "cache", progress=False, retries=0).fetch(spec)
    assert "the disk is full: writing x/a.bin" in str(error.value) and "free some space or pass --cache-dir" in str(error.value)
    assert [p.name for p in (tmp_path / "cache").rglob("*") if p.is_file() and not p.name.endswith(".lock")] == []


# ---- --out with a long name ----------------------------------------------------------------------


def test_an_out_name_of_240_characters_builds_and_its_helpers_stay_under_the_name_limit(world, server, tmp_path):
    out = tmp_path / ("r" * 240)
    result = cli("build", *source_args(world, server, tmp_path / "cache"), "--out", out, "--kaggle-archive", world.kaggle_zip)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "build_report.json").read_text())["counts"] == EXPECTED
    beside = sorted(p.name for p in tmp_path.iterdir() if p != out and p.name != "cache")
    assert len(beside) == 1 and beside[0].startswith(".rrrr") and beside[0].endswith(".lock")  # the output lock only
    assert all(len(p.name.encode()) <= 255 for p in tmp_path.iterdir())
    too_long = cli("build", *source_args(world, server, tmp_path / "cache"), "--out", tmp_path / ("r" * 300),
                   "--kaggle-archive", world.kaggle_zip)
    assert too_long.exit_code == 1
    assert "the folder name is 300 bytes long; file systems allow 255. Choose a shorter --out" in too_long.output


def test_the_missing_files_report_of_a_long_out_name_fits_the_name_limit(world, tmp_path):
    with LoopbackServer({p: d for p, d in world.served.items() if not p.endswith("/images/c9.jpg")}) as partial:
        out = tmp_path / ("r" * 240)
        result = cli("build", *source_args(world, partial, tmp_path / "cache"), "--out", out, "--kaggle-archive", world.kaggle_zip)
    assert result.exit_code == 1 and "1 of 24 pinned file(s) could not be fetched" in result.output
    report = [p for p in tmp_path.iterdir() if p.name.endswith(".missing-files.csv")]
    assert len(report) == 1 and len(report[0].name.encode()) <= 255 and report[0].name in result.output
    assert "images/c9.jpg" in report[0].read_text()


# ---- baseline: checked before training ---------------------------------------------------------------


@pytest.mark.parametrize("split", ["test", "train"])
def test_baseline_on_a_release_without_a_split_stops_before_training(tmp_path, split):
    data = make_release(tmp_path / "release", per_class={"train": 2, "test": 1, split: 0}, size=(32, 32))
    result = cli("baseline", "--data", data, "--out", tmp_path / "cert", "--epochs", "1")
    assert result.exit_code == 1
    assert f"error: --data {data}: configuration 'paper' has no {split} split" in result.output
    assert "pass a release with both" in result.output
    assert not (tmp_path / "cert").exists()


@pytest.mark.parametrize("where", ["under-a-file", "under-proc", "inside-the-release"])
def test_baseline_out_that_cannot_be_written_stops_before_training(tmp_path, where):
    data = make_release(tmp_path / "release", per_class={"train": 2, "test": 1}, size=(32, 32))
    (tmp_path / "notes.txt").write_text("a file")
    out = {"under-a-file": tmp_path / "notes.txt" / "cert", "under-proc": Path("/proc/cxr-dataset-cert"),
           "inside-the-release": data / "cert"}[where]
    code = ("import sys\nfrom covid19_cxr_dataset.cli import main\nsys.argv = ['cxr-dataset', *sys.argv[1:]]\n"
            "try:\n    main()\nfinally:\n    print('tensorflow loaded' if 'tensorflow' in sys.modules else 'no tensorflow', file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", code, "baseline", "--data", str(data), "--out", str(out), "--epochs", "1"],
                            capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 1, result.stderr
    assert f"error: --out {out}" in result.stderr and "Traceback" not in result.stderr
    assert {"under-a-file": "is under", "under-proc": "cannot write into /proc",
            "inside-the-release": "is inside the release folder"}[where] in result.stderr
    assert "no tensorflow" in result.stderr  # refused before TensorFlow loads, let alone trains
    assert not (data / "cert").exists() and (tmp_path / "notes.txt").read_text() == "a file"


# ---- a shared cache: another user's, read-only ----------------------------------------------------------


def test_the_extracted_kaggle_tree_is_as_readable_as_the_umask_allows(world, server, tmp_path):
    previous = os.umask(0o022)
    try:
        result = cli("build", *source_args(world, server, tmp_path / "cache"), "--out", tmp_path / "out",
                     "--kaggle-archive", world.kaggle_zip)
    finally:
        os.umask(previous)
    assert result.exit_code == 0, result.output
    extracted = [p for p in (tmp_path / "cache" / "kaggle").rglob("extracted/*") if p.is_dir()]
    assert extracted and all(p.stat().st_mode & 0o777 == 0o755 for p in extracted)  # mkdtemp would give 0700


def _as_another_user(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run the program as user ``nobody`` (root only: setpriv drops to uid 65534)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run as another user")
    code = "import sys\nfrom covid19_cxr_dataset.__main__ import main\nsys.argv = ['cxr-dataset', *sys.argv[1:]]\nmain()\n"
    command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code, *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(REPO), HOME=str(cwd)))


@pytest.mark.slow
@pytest.mark.parametrize("offline", [False, True], ids=["online", "offline"])
def test_another_users_cache_builds_and_fails_clearly_where_it_must_write(world, server, tmp_path_factory, offline):
    shared = tmp_path_factory.mktemp("shared")  # pytest's folders are 0700: open a path for the other user
    for folder in (shared, *shared.parents):
        if folder.stat().st_mode & 0o005 != 0o005:
            folder.chmod(folder.stat().st_mode | 0o005)
    manifest = Path(shutil.copytree(world.manifest_dir, shared / "manifest"))
    archive = Path(shutil.copy(world.kaggle_zip, shared / "archive.zip"))
    cache = shared / "cache"
    previous = os.umask(0o022)
    try:
        first = cli("build", "--manifest", manifest, "--mirror", server.base_url, "--cache-dir", cache, "-q", "--workers", "1",
                    "--out", shared / "mine", "--kaggle-archive", archive)
    finally:
        os.umask(previous)
    assert first.exit_code == 0, first.output
    (shared / "theirs").mkdir(mode=0o777)
    (shared / "theirs").chmod(0o777)
    common = ["--manifest", str(manifest), "--mirror", server.base_url, "--cache-dir", str(cache), "-q", "--workers", "1",
              *(["--offline"] if offline else [])]
    built = _as_another_user(["build", *common, "--kaggle-archive", str(archive), "--out", str(shared / "theirs" / "release")],
                             shared / "theirs")
    assert built.returncode == 0, built.stderr
    assert json.loads((shared / "theirs" / "release" / "build_report.json").read_text())["fingerprint"] == \
        json.loads((shared / "mine" / "build_report.json").read_text())["fingerprint"]
    planned = _as_another_user(["plan", *common], shared / "theirs")
    assert planned.returncode == 0 and "Traceback" not in planned.stderr, planned.stderr


# ---- smaller ---------------------------------------------------------------------------------------------


def test_new_variant_refuses_a_version_that_names_a_release(world, tmp_path):
    common = ["--offline", "--cache-dir", tmp_path / "cache", "-q"]
    own = cli("new-variant", "--from", "1.0.0", tmp_path / "v1", "--new-version", "1.0.0", *common)
    assert own.exit_code == 1
    assert "--new-version 1.0.0 names the published release covid19-cxr 1.0.0, not a local variant" in own.output
    assert "Pass --new-version 1.0.0+local.1, or leave it out" in own.output
    public = cli("new-variant", "--from", world.manifest_dir, tmp_path / "v2", "--new-version", "0.0.2", *common)
    assert public.exit_code == 1 and "--new-version 0.0.2 names a release tiny 0.0.2" in public.output
    other = cli("new-variant", "--from", world.manifest_dir, tmp_path / "v3", "--new-version", "2.0.0+local.1", *common)
    assert other.exit_code == 1 and "would make the variant derive from release 2.0.0, but it is made from 0.0.1" in other.output
    assert not any(tmp_path.glob("v*")) and not any(tmp_path.glob(".v*"))


def test_cite_refuses_an_unknown_configuration_of_a_single_configuration_manifest(world):
    result = cli("cite", "--manifest", world.manifest_dir, "--config", "nosuch")
    assert result.exit_code == 1
    assert "--config nosuch: no configuration named 'nosuch' in tiny 0.0.1; it has default" in result.output
    assert "leave --config out" in result.output
    assert cli("cite", "--manifest", world.manifest_dir, "--config", "default").exit_code == 0


def test_the_fingerprint_error_names_the_option_of_where_it_was_called_from(tmp_path):
    data = make_release(tmp_path / "release", per_class={"train": 2, "test": 1}, size=(32, 32))
    tamper_label(data)
    config = release.resolve_config(data, release.read_report(data))
    with pytest.raises(FingerprintMismatch) as error:
        release.verify_config_fingerprint(data, config)
    assert str(error.value).endswith("(or pass verify_fingerprint=False to train on it anyway)")
    assert "--no-verify" not in str(error.value)
    assert str(error.value.skipped_by("--no-verify")).endswith("(or pass --no-verify to train on it anyway)")


@pytest.mark.slow
def test_baseline_on_a_tampered_release_suggests_no_verify(tmp_path):
    pytest.importorskip("tensorflow")
    data = make_release(tmp_path / "release", per_class={"train": 2, "test": 1}, size=(32, 32))
    tamper_label(data)
    result = cli("baseline", "--data", data, "--out", tmp_path / "cert", "--epochs", "1", "--image-size", "16")
    assert result.exit_code == 1
    assert "changed after the build" in result.output and "(or pass --no-verify to train on it anyway)" in result.output
    assert "verify_fingerprint=False" not in result.output
