"""hub.py: publish refuses unverified releases, plans exactly the release's files, and never leaks the token.

No test reaches the network: the real path runs against FakeHfApi, injected with ``api=``.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from covid19_cxr_dataset import hub, release as release_format
from covid19_cxr_dataset.download import file_sha256
from covid19_cxr_dataset.errors import CredentialsError, CxrDatasetError, VerificationError
from release_factory import make_release, tamper_label

FAKE_TOKEN = "hf_FakeTokenForTests0123456789abcdef"
REPO = "test-org/covid19-cxr-test"
VERSION = "0.0.0-test"


class FakeHfApi:
    """Records calls; keeps one repository's files per revision in memory, as the Hub would."""

    def __init__(self, *, tags=(), fail=None, error=None, tamper_upload=None):
        self.calls: list[tuple[str, dict]] = []
        self.tags = {t: "0" * 40 for t in tags}
        self.branches = {"main": {".gitattributes": (10, None)}}
        self.commits: dict[str, dict] = {}
        self.fail, self.error, self.tamper_upload = fail, error, tamper_upload

    def _call(self, name, **kwargs):
        self.calls.append((name, kwargs))
        if name == self.fail:
            raise self.error

    def create_repo(self, repo_id, *, repo_type=None, private=None, exist_ok=False):
        self._call("create_repo", repo_id=repo_id, repo_type=repo_type, private=private, exist_ok=exist_ok)

    def list_repo_refs(self, repo_id, *, repo_type=None):
        self._call("list_repo_refs", repo_id=repo_id, repo_type=repo_type)
        return SimpleNamespace(tags=[SimpleNamespace(name=t, target_commit=c) for t, c in self.tags.items()],
                               branches=[SimpleNamespace(name=b) for b in self.branches])

    def create_branch(self, repo_id, *, branch, repo_type=None, exist_ok=False):
        self._call("create_branch", repo_id=repo_id, branch=branch, repo_type=repo_type, exist_ok=exist_ok)
        self.branches.setdefault(branch, dict(self.branches["main"]))

    def upload_folder(self, *, repo_id, folder_path, repo_type=None, revision=None, allow_patterns=None,
                      delete_patterns=None, commit_message=None, commit_description=None):
        self._call("upload_folder", repo_id=repo_id, folder_path=folder_path, repo_type=repo_type, revision=revision,
                   allow_patterns=allow_patterns, delete_patterns=delete_patterns, commit_message=commit_message,
                   commit_description=commit_description)
        files = {".gitattributes": self.branches[revision][".gitattributes"]} if delete_patterns == "*" else dict(self.branches[revision])
        for path in sorted(Path(folder_path).rglob("*")):
            relpath = path.relative_to(folder_path).as_posix()
            if path.is_file() and relpath in allow_patterns:
                lfs = file_sha256(path) if relpath.endswith(".parquet") else None
                files[relpath] = (path.stat().st_size, lfs)
        if self.tamper_upload:
            self.tamper_upload(files)
        oid = f"{len(self.commits) + 1:040x}"
        self.commits[oid] = files
        self.branches[revision] = files
        return SimpleNamespace(oid=oid, commit_url=f"https://huggingface.co/datasets/{repo_id}/commit/{oid}")

    def list_repo_tree(self, repo_id, *, revision=None, repo_type=None, recursive=False):
        self._call("list_repo_tree", repo_id=repo_id, revision=revision, repo_type=repo_type, recursive=recursive)
        files = self.commits[revision]
        folders = sorted({p.rsplit("/", 1)[0] for p in files if "/" in p})
        return [SimpleNamespace(path=f, tree_id="t") for f in folders] + [
            SimpleNamespace(path=p, size=size, blob_id="b", lfs=SimpleNamespace(sha256=sha) if sha else None)
            for p, (size, sha) in files.items()
        ]

    def create_tag(self, repo_id, *, tag, revision=None, repo_type=None, tag_message=None):
        self._call("create_tag", repo_id=repo_id, tag=tag, revision=revision, repo_type=repo_type, tag_message=tag_message)
        self.tags[tag] = revision

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def kwargs(self, name: str) -> dict:
        return next(kwargs for called, kwargs in self.calls if called == name)


class NoNetwork:
    """Any use fails the test: for paths that must not touch the Hub."""

    def __getattr__(self, name):
        raise AssertionError(f"the Hub API was used ({name}) where it must not be")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return make_release(tmp_path_factory.mktemp("pristine") / "release", per_class={"train": 4, "test": 2}, size=(32, 32),
                        version=VERSION)


@pytest.fixture
def release(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "release"))


@pytest.fixture(autouse=True)
def _no_ambient_token(monkeypatch):
    """No test sees the developer's own token (environment or stored login)."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)


def test_dry_run_lists_every_file_with_size_and_sha256(release):
    (release / "notes.txt").write_text("not part of the release\n", encoding="utf-8")
    plan = hub.publish_release(release, REPO, dry_run=True, api=NoNetwork())
    expected = {"README.md", "build_report.json", *release_format.read_report(release)["shards"]}
    assert [f.path for f in plan.files][:2] == ["README.md", "build_report.json"]
    assert {f.path for f in plan.files} == expected
    for planned in plan.files:
        assert planned.bytes == (release / planned.path).stat().st_size
        assert planned.sha256 == file_sha256(release / planned.path)
    assert plan.skipped == ["notes.txt"]
    assert (plan.branch, plan.tag, plan.version) == (f"release-{VERSION}", f"v{VERSION}", VERSION)
    assert plan.fingerprint == release_format.read_report(release)["fingerprint"]
    text = plan.summary()
    assert "dry run: nothing was uploaded" in text and REPO in text and f"v{VERSION}" in text
    assert all(f.path in text and f.sha256 in text for f in plan.files)
    assert f'load_dataset("{REPO}", revision="v{VERSION}")' in text


def test_unverified_release_is_refused_before_any_upload(release):
    tamper_label(release)
    api = FakeHfApi()
    with pytest.raises(VerificationError, match="data/test-00000-of-00001.parquet"):
        hub.publish_release(release, REPO, token=FAKE_TOKEN, api=api)
    with pytest.raises(VerificationError):
        hub.publish_release(release, REPO, dry_run=True, api=api)
    assert api.calls == []


def test_publish_uploads_to_the_version_branch_and_tags_that_commit(release):
    (release / "notes.txt").write_text("local only\n", encoding="utf-8")
    api = FakeHfApi()
    plan = hub.publish_release(release, REPO, token=FAKE_TOKEN, private=True, api=api)
    assert api.names() == ["create_repo", "list_repo_refs", "create_branch", "upload_folder", "list_repo_tree", "create_tag"]
    assert api.kwargs("create_repo") == {"repo_id": REPO, "repo_type": "dataset", "private": True, "exist_ok": True}
    upload = api.kwargs("upload_folder")
    assert upload["revision"] == f"release-{VERSION}" and upload["repo_type"] == "dataset"
    assert upload["allow_patterns"] == [f.path for f in plan.files] and upload["delete_patterns"] == "*"
    tag = api.kwargs("create_tag")
    assert tag["tag"] == f"v{VERSION}" and tag["revision"] == plan.commit and plan.fingerprint in tag["tag_message"]
    assert set(api.commits[plan.commit]) == {".gitattributes", *(f.path for f in plan.files)}  # no notes.txt
    assert not plan.dry_run and "published" in plan.summary() and plan.commit in plan.summary()


def test_publish_removes_stale_files_of_an_older_release(release):
    api = FakeHfApi()
    api.branches["main"]["data/train-00000-of-00009.parquet"] = (5, "f" * 64)
    plan = hub.publish_release(release, REPO, token=FAKE_TOKEN, api=api)
    assert "data/train-00000-of-00009.parquet" not in api.commits[plan.commit]


def test_revision_main_uploads_to_main_without_a_branch(release):
    api = FakeHfApi()
    plan = hub.publish_release(release, REPO, token=FAKE_TOKEN, revision="main", api=api)
    assert "create_branch" not in api.names() and api.kwargs("upload_folder")["revision"] == "main"
    assert plan.branch == "main" and api.tags[f"v{VERSION}"] == plan.commit


def test_revision_named_like_the_tag_is_refused(release):
    with pytest.raises(hub.PublishError, match="tag name"):
        hub.publish_release(release, REPO, token=FAKE_TOKEN, revision=f"v{VERSION}", api=NoNetwork())


def test_an_existing_tag_is_never_moved(release):
    api = FakeHfApi(tags=[f"v{VERSION}"])
    with pytest.raises(hub.PublishError, match="already exists; a published version is immutable"):
        hub.publish_release(release, REPO, token=FAKE_TOKEN, api=api)
    assert api.names() == ["create_repo", "list_repo_refs"]


def test_a_commit_that_differs_from_the_plan_is_not_tagged(release):
    def corrupt(files):
        path = next(p for p in files if p.endswith(".parquet"))
        files[path] = (files[path][0], "0" * 64)
        files["stray.txt"] = (3, None)

    api = FakeHfApi(tamper_upload=corrupt)
    with pytest.raises(hub.PublishError, match="differs from the verified release") as caught:
        hub.publish_release(release, REPO, token=FAKE_TOKEN, api=api)
    assert "create_tag" not in api.names()
    assert "stray.txt" in str(caught.value) and "expected sha256" in str(caught.value)


def test_bad_repo_id(release):
    with pytest.raises(hub.PublishError, match="ORG/NAME"):
        hub.publish_release(release, "no-slash", dry_run=True)


@pytest.mark.parametrize("via", ["argument", "environment"])
def test_token_never_appears_in_errors_logs_or_the_plan(release, monkeypatch, caplog, via):
    error = RuntimeError(f"401 Client Error: Unauthorized for url https://huggingface.co/api/repos/create "
                         f"(Authorization: Bearer {FAKE_TOKEN})")
    error.response = SimpleNamespace(status_code=401)
    api = FakeHfApi(fail="create_repo", error=error)
    token = FAKE_TOKEN if via == "argument" else None
    if via == "environment":
        monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(hub.PublishError) as caught:
        hub.publish_release(release, REPO, token=token, api=api)
    message = str(caught.value)
    assert FAKE_TOKEN not in message and "***" in message
    assert "401" in message and "write access" in message and REPO in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert FAKE_TOKEN not in caplog.text
    plan = hub.publish_release(release, REPO, token=token, api=FakeHfApi())
    assert FAKE_TOKEN not in repr(plan) + plan.summary()


def test_token_shaped_text_is_scrubbed_even_when_it_is_not_ours():
    assert hub._scrub("bad header hf_abcdefghijklmnop123 and x", None) == "bad header hf_*** and x"


def test_token_order_argument_then_environment_then_stored_login(monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_stored")
    assert hub.resolve_token(None) == "hf_stored"
    monkeypatch.setenv("HF_TOKEN", "hf_environment")
    assert hub.resolve_token(None) == "hf_environment"
    assert hub.resolve_token("hf_argument") == "hf_argument"


def test_no_token_is_refused_before_the_network(release, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", NoNetwork)
    with pytest.raises(CredentialsError, match="HF_TOKEN"):
        hub.publish_release(release, REPO)


def test_missing_huggingface_hub_says_what_to_install(release, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails as if it were not installed
    assert hub.publish_release(release, REPO, dry_run=True).dry_run  # a dry run does not need it
    with pytest.raises(CxrDatasetError, match=r"pip install 'covid19-cxr-dataset\[publish\]'"):
        hub.publish_release(release, REPO, token=FAKE_TOKEN)


def test_dry_run_and_upload_of_a_release_with_configurations(tmp_path):
    release = make_release(tmp_path / "release", per_class={"train": 4, "test": 4}, size=(32, 32), version=VERSION, configs=True)
    built = release_format.read_report(release)
    plan = hub.publish_release(release, REPO, dry_run=True, api=NoNetwork())
    assert {f.path for f in plan.files} == {"README.md", "build_report.json", *built["shards"]}
    assert any(f.path.startswith("data/flagged/") for f in plan.files) and any(f.path.startswith("data/curated/") for f in plan.files)
    text = plan.summary()
    assert f"configuration paper (default): train 12, test 12 images in 4 shard(s), fingerprint {built['configs']['paper']['fingerprint']}" in text
    assert f"configuration curated: train 9, test 9 images in 2 shard(s), fingerprint {built['configs']['curated']['fingerprint']}" in text
    assert f'load_dataset("{REPO}", "curated", revision="v{VERSION}")' in text
    assert built["configs"]["curated"]["fingerprint"] in plan.tag_message and built["fingerprint"] in plan.tag_message
