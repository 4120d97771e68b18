"""hub.py: publish refuses unverified releases, plans exactly the release's files, and never leaks the token.

No test reaches the network: the real path runs against FakeHfApi, injected with ``api=``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from covid19_cxr_dataset import hub, hub_release, release as release_format
from covid19_cxr_dataset.download import file_sha256
from covid19_cxr_dataset.errors import CredentialsError, CxrDatasetError, VerificationError
from covid19_cxr_dataset.generated import write_generated
from covid19_cxr_dataset.release import read_row_table
from covid19_cxr_dataset.verify import verify_release
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


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_dry_run_lists_every_file_with_size_and_sha256_and_changes_nothing(release):
    (release / "notes.txt").write_text("not part of the release\n", encoding="utf-8")
    before = _snapshot(release)
    plan = hub.publish_release(release, REPO, dry_run=True, api=NoNetwork())
    assert _snapshot(release) == before  # a dry run writes nothing, not even where the release would live
    expected = {"README.md", "build_report.json", "croissant.json", *release_format.read_report(release)["shards"]}
    assert [f.path for f in plan.files][:3] == ["README.md", "build_report.json", "croissant.json"]
    assert {f.path for f in plan.files} == expected
    # README.md, croissant.json and build_report.json as they will be once the repository is recorded in them
    recorded = hub_release.files_for_repo(release_format.read_report(release), read_row_table(release), REPO)
    for planned in plan.files:
        data = recorded.get(planned.path) or (release / planned.path).read_bytes()
        assert planned.bytes == len(data) and planned.sha256 == hashlib.sha256(data).hexdigest()
    assert plan.rewrite == ["build_report.json", "README.md", "croissant.json"]
    assert plan.skipped == ["notes.txt"]
    assert (plan.branch, plan.tag, plan.version, plan.private) == ("main", f"v{VERSION}", VERSION, False)
    assert plan.fingerprint == release_format.read_report(release)["fingerprint"]
    text = plan.summary()
    assert f"would commit to branch main and tag that commit v{VERSION}" in text
    assert "dry run: nothing was uploaded" in text and REPO in text and "public dataset repository" in text
    assert all(f.path in text and f.sha256 in text for f in plan.files)
    assert f'load_dataset("{REPO}", revision="v{VERSION}")' in text
    assert "WARNING" not in text  # a published release of CC0 images: nothing to warn about


def test_unverified_release_is_refused_before_any_upload(release):
    tamper_label(release)
    api = FakeHfApi()
    with pytest.raises(VerificationError, match="data/test-00000-of-00001.parquet"):
        hub.publish_release(release, REPO, token=FAKE_TOKEN, api=api)
    with pytest.raises(VerificationError):
        hub.publish_release(release, REPO, dry_run=True, api=api)
    assert api.calls == []


def test_publish_commits_to_main_and_tags_that_commit(release):
    (release / "notes.txt").write_text("local only\n", encoding="utf-8")
    api = FakeHfApi()
    plan = hub.publish_release(release, REPO, token=FAKE_TOKEN, private=True, api=api)
    assert api.names() == ["create_repo", "list_repo_refs", "upload_folder", "list_repo_tree", "create_tag"]
    assert api.kwargs("create_repo") == {"repo_id": REPO, "repo_type": "dataset", "private": True, "exist_ok": True}
    upload = api.kwargs("upload_folder")
    assert upload["revision"] == "main" and upload["repo_type"] == "dataset"
    assert upload["allow_patterns"] == [f.path for f in plan.files] and upload["delete_patterns"] == "*"
    tag = api.kwargs("create_tag")
    assert tag["tag"] == f"v{VERSION}" and tag["revision"] == plan.commit and plan.fingerprint in tag["tag_message"]
    assert set(api.commits[plan.commit]) == {".gitattributes", *(f.path for f in plan.files)}  # no notes.txt
    assert api.branches["main"] is api.commits[plan.commit] and api.tags[f"v{VERSION}"] == plan.commit
    assert not plan.dry_run and "published" in plan.summary() and plan.commit in plan.summary()


def test_the_published_folder_names_its_repository_and_still_verifies(release):
    built = release_format.read_report(release)  # the release's own citation, as a build stores it (no URL yet)
    built["card"]["citations"] = ["@misc{covid19-cxr-test-0.0.0,\n  title={T},\n  version={0.0.0-test},\n  note={n}\n}"]
    release_format.write_report(release, built)
    write_generated(release, built)
    plan = hub.publish_release(release, REPO, token=FAKE_TOKEN, api=FakeHfApi())
    url = f"https://huggingface.co/datasets/{REPO}"
    for planned in plan.files:  # what was uploaded is what the folder now holds
        assert file_sha256(release / planned.path) == planned.sha256
    card = (release / "README.md").read_text(encoding="utf-8")
    assert f"howpublished={{\\url{{{url}}}}}" in card  # the citation names where the release lives
    assert f'datasets.load_dataset("{REPO}", revision="v{VERSION}")' in card and f"<{url}/discussions>" in card
    croissant = json.loads((release / "croissant.json").read_text(encoding="utf-8"))
    assert croissant["url"] == url and url in croissant["citeAs"]
    assert release_format.read_report(release)["card"]["hub_repo"] == REPO
    assert verify_release(release).ok  # here, and in a download of the repository (the same bytes)
    assert hub.publish_release(release, REPO, dry_run=True).rewrite == []  # recorded once


def test_publish_removes_stale_files_of_an_older_release(release):
    api = FakeHfApi()
    api.branches["main"]["data/train-00000-of-00009.parquet"] = (5, "f" * 64)
    plan = hub.publish_release(release, REPO, token=FAKE_TOKEN, api=api)
    assert "data/train-00000-of-00009.parquet" not in api.commits[plan.commit]


def test_another_revision_is_a_branch_made_first(release):
    api = FakeHfApi()
    plan = hub.publish_release(release, REPO, token=FAKE_TOKEN, revision="staging", api=api)
    assert api.kwargs("create_branch")["branch"] == "staging" and api.kwargs("upload_folder")["revision"] == "staging"
    assert plan.branch == "staging" and api.tags[f"v{VERSION}"] == plan.commit


def test_revision_named_like_the_tag_is_refused(release):
    with pytest.raises(hub.PublishError, match="tag name"):
        hub.publish_release(release, REPO, token=FAKE_TOKEN, revision=f"v{VERSION}", api=NoNetwork())


def test_an_existing_tag_is_never_moved(release):
    api = FakeHfApi(tags=[f"v{VERSION}"])
    with pytest.raises(hub.PublishError, match="already exists; a published version is immutable"):
        hub.publish_release(release, REPO, token=FAKE_TOKEN, api=api)
    assert api.names() == ["create_repo", "list_repo_refs"]


def test_an_older_release_never_replaces_a_newer_one_on_main(release):
    api = FakeHfApi(tags=["v0.0.1", "v9.0.0"])
    with pytest.raises(hub.PublishError, match="v9.0.0 is newer than 0.0.0-test; committing 0.0.0-test to main would replace it"):
        hub.publish_release(release, REPO, token=FAKE_TOKEN, api=api)
    assert api.names() == ["create_repo", "list_repo_refs"]
    plan = hub.publish_release(release, REPO, token=FAKE_TOKEN, revision="v0.x", api=FakeHfApi(tags=["v9.0.0"]))
    assert plan.branch == "v0.x" and plan.commit


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
    assert {f.path for f in plan.files} == {"README.md", "build_report.json", "croissant.json", *built["shards"]}
    assert any(f.path.startswith("data/flagged/") for f in plan.files) and any(f.path.startswith("data/curated/") for f in plan.files)
    text = plan.summary()
    assert f"configuration paper (default): train 12, test 12 images in 4 shard(s), fingerprint {built['configs']['paper']['fingerprint']}" in text
    assert f"configuration curated: train 9, test 9 images in 2 shard(s), fingerprint {built['configs']['curated']['fingerprint']}" in text
    assert f'load_dataset("{REPO}", "curated", revision="v{VERSION}")' in text
    assert built["configs"]["curated"]["fingerprint"] in plan.tag_message and built["fingerprint"] in plan.tag_message


def _as_variant(release: Path, version: str = f"{VERSION}+local.1") -> Path:
    """The release as a local variant's build would write it (its card says what it is)."""
    built = release_format.read_report(release)
    built["version"] = version
    built["card"]["variant"] = {"manifest_option": "--manifest variant", "local": True, "version": version, "published": None}
    release_format.write_report(release, built)
    write_generated(release, built)
    return release


def test_a_variant_is_private_by_default_and_says_it_is_not_a_release(release):
    plan = hub.publish_release(_as_variant(release), REPO, dry_run=True, api=NoNetwork())
    assert plan.private and plan.private_by_default
    text = plan.summary()
    assert "private (the default for a variant) dataset repository" in text
    assert f"WARNING: {VERSION}+local.1 is a local variant, not a published release" in text
    assert not hub.publish_release(release, REPO, dry_run=True, private=False).private  # --public
    api = FakeHfApi()
    hub.publish_release(release, REPO, token=FAKE_TOKEN, api=api)
    assert api.kwargs("create_repo")["private"] is True


def test_license_restricted_images_are_counted_before_publishing(tmp_path):
    licenses = ["CC BY-NC-SA 4.0", "CC BY-NC-ND 4.0", "", "CC BY 4.0"]
    release = make_release(tmp_path / "release", per_class={"train": 4, "test": 4}, size=(32, 32), version=VERSION,
                           license_of=lambda split, label, index: licenses[index % 4])
    text = hub.publish_release(release, REPO, dry_run=True, api=NoNetwork()).summary()
    # 24 images, 6 of each license text: both NC ones count as NonCommercial, the NC-ND one also as NoDerivatives
    assert "WARNING: license-restricted images: 12 NonCommercial, 6 NoDerivatives, 6 license not stated (of 24)" in text


def test_publish_dry_run_command_shows_main_the_tag_and_the_warnings(release):
    from click.testing import CliRunner

    from covid19_cxr_dataset.cli import main

    result = CliRunner().invoke(main, ["publish", str(_as_variant(release)), "--repo-id", REPO, "--dry-run", "-q"])
    assert result.exit_code == 0, result.output
    assert f"would commit to branch main and tag that commit v{VERSION}+local.1" in result.output
    assert "WARNING: " in result.output and "private (the default for a variant)" in result.output
    assert "dry run: nothing was uploaded" in result.output and "fingerprint (decode" not in result.output  # -q: no bars
