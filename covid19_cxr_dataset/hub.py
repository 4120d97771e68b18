"""Publish a verified release folder to the Hugging Face Hub, as one immutable, tagged version.

    plan = publish_release("covid19-cxr-1.0.0", "ORG/covid19-cxr", dry_run=True)
    print(plan.summary())   # every file that would be uploaded, with size and sha256

Layout on the Hub (a dataset repository ``ORG/NAME``), as the Hub expects it:

- each version is committed to ``main`` (``revision=`` names another branch), which is what the Hub's
  dataset viewer, its generated Croissant and a plain ``load_dataset`` read, holding exactly the
  release's files: remote files that are not part of it are deleted in the same commit;
- that commit is tagged ``v<version>`` (tag message: dataset, version, fingerprint), so
  ``datasets.load_dataset("ORG/NAME", revision="v1.0.0")`` loads exactly the verified files after
  later versions moved ``main`` on. A version is published once: an existing tag is refused (bump
  the version, docs/VERSIONING.md).

Nothing is uploaded unless ``verify.require_verified`` passes. Uploaded: build_report.json, the files
generated from it (README.md, croissant.json, unpinned-files.csv: ``generated.py``) and the shards the
report lists; any other file in the folder is listed as skipped. Before the upload, the repository is
recorded in the folder as where the release lives (``hub_release``: build_report.json's
``card.hub_repo``, and the generated files made again from it), so the uploaded folder verifies as it
is. The plan warns about a local variant (private by default) and about license-restricted images.
Before tagging, the uploaded commit's file list and sizes (and LFS sha256) are checked against the plan.

Credentials: the ``token`` argument, else ``$HF_TOKEN``, else huggingface_hub's stored login
(``hf auth login``). The token is never printed, logged, stored in the plan or put in an exception:
errors from the Hub are re-raised as ``PublishError`` with any token text replaced by ``***``.
The real upload needs ``huggingface_hub`` (``pip install 'covid19-cxr-dataset[publish]'``), imported
only then; ``api=`` takes any object with HfApi's methods (tests pass a fake; nothing reaches the network).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import hub_release
from .errors import CredentialsError, CxrDatasetError, PublishError
from .generated import NAMES as GENERATED_NAMES
from .records import split_rank
from .release import CARD_NAME, REPORT_NAME, read_report, read_row_table
from .verify import require_verified

log = logging.getLogger(__name__)

REPO_TYPE = "dataset"
HUB_URL = "https://huggingface.co"
INSTALL_HINT = "pip install 'covid19-cxr-dataset[publish]'"
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HF_TOKEN_TEXT = re.compile(r"hf_[A-Za-z0-9]{8,}")



DEFAULT_BRANCH = "main"  # what the Hub's viewer, its Croissant and a plain load_dataset read


def tag_name(version: str) -> str:
    return f"v{version}"


@dataclass(frozen=True)
class PlannedFile:
    path: str  # path in the repository (posix), the same as in the release folder
    bytes: int
    sha256: str


@dataclass
class PublishPlan:
    """What publishing a release does: where, which files, and (after a real run) the commit it made."""

    out_dir: Path
    repo_id: str
    dataset: str
    version: str
    fingerprint: str
    branch: str
    tag: str
    private: bool
    dry_run: bool
    files: list[PlannedFile] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # files in the folder that are not part of the release
    warnings: list[str] = field(default_factory=list)  # a local variant, license-restricted images (hub_release.warnings)
    private_by_default: bool = False  # a variant: private unless asked otherwise
    recorded: dict[str, bytes] = field(default_factory=dict, repr=False)  # files rewritten to record the repository
    rewrite: list[str] = field(default_factory=list)  # which of them differ from the folder's now
    commit: str = ""  # the tagged commit, after a real run
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {default, fingerprint, shards, examples}

    @property
    def total_bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    @property
    def url(self) -> str:
        return f"{HUB_URL}/datasets/{self.repo_id}"

    def summary(self) -> str:
        width = max(len(f.path) for f in self.files)
        visibility = ("private" if self.private else "public") + (" (the default for a variant)" if self.private_by_default
                                                                  and self.private else "")
        lines = [
            f"{'would publish' if self.dry_run else 'published'} {self.dataset} {self.version} from {self.out_dir} "
            f"to {self.url} ({visibility} dataset repository; an existing one keeps its visibility)",
            f"  {'would commit' if self.dry_run else 'committed'} to branch {self.branch} and tag that commit {self.tag}; "
            f"verified: fingerprint {self.fingerprint}",
        ]
        lines += [f"  WARNING: {warning}" for warning in self.warnings]
        if self.rewrite:
            lines.append(f"  {'would record' if self.dry_run else 'recorded'} {self.repo_id} as where the release lives "
                         f"(citation, examples, point of contact): {', '.join(self.rewrite)} {'would be' if self.dry_run else 'were'} "
                         "written again in the folder")
        lines.append(f"  {len(self.files)} file(s), {self.total_bytes:,} bytes:")
        lines += [f"    {f.path:<{width}}  {f.bytes:>13,}  sha256 {f.sha256}" for f in self.files]
        for name, config in self.configs.items():
            lines.append(f"  configuration {name}{' (default)' if config['default'] else ''}: "
                         + ", ".join(f"{split} {n:,}" for split, n in config["examples"].items())
                         + f" images in {config['shards']} shard(s), fingerprint {config['fingerprint']}")
        if self.skipped:
            lines.append("  not uploaded (not part of the release): " + ", ".join(self.skipped))
        if self.dry_run:
            lines.append("dry run: nothing was uploaded")
        else:
            lines.append(f"  commit {self.commit}: {self.url}/tree/{self.tag}")
        lines.append(f'load it with: datasets.load_dataset("{self.repo_id}", revision="{self.tag}")')
        lines += [f'          or: datasets.load_dataset("{self.repo_id}", "{name}", revision="{self.tag}")'
                  for name, config in self.configs.items() if not config["default"]]
        return "\n".join(lines)

    @property
    def tag_message(self) -> str:
        fingerprints = "; ".join(f"{name} {c['fingerprint']}" for name, c in self.configs.items() if not c["default"])
        return f"{self.dataset} {self.version}, fingerprint {self.fingerprint}" + (f" (configurations: {fingerprints})" if fingerprints else "")


def publish_release(
    out_dir: Path | str,
    repo_id: str,
    *,
    token: str | None = None,
    dry_run: bool = False,
    private: bool | None = None,
    revision: str | None = None,
    workers: int = 1,
    api: Any = None,
) -> PublishPlan:
    """Verify ``out_dir``, then commit it to ``main`` of ``repo_id`` and tag it ``v<version>`` (or only plan,
    ``dry_run``). ``private``: None makes a new repository private for a variant, public for a release."""
    out_dir = Path(out_dir)
    if not _REPO_ID.match(repo_id or ""):
        raise PublishError(f"repository id {repo_id!r} is not of the form ORG/NAME; pass e.g. --repo-id my-org/covid19-cxr")
    verified = require_verified(out_dir, workers=workers)  # VerificationError: nothing is uploaded
    plan = make_plan(out_dir, repo_id, private=private, dry_run=dry_run, revision=revision,
                     fingerprint=verified.fingerprint)
    if dry_run:
        return plan
    token = resolve_token(token)
    if api is None:
        if not token:
            raise CredentialsError(
                f"no Hugging Face token to publish to {repo_id}: set HF_TOKEN, run `hf auth login`, "
                "or pass token= in Python (create one with write access at https://huggingface.co/settings/tokens)"
            )
        api = _hf_api(token)
    _upload(api, plan, token)
    return plan


def make_plan(out_dir: Path, repo_id: str, *, private: bool | None = None, dry_run: bool = True,
              revision: str | None = None, fingerprint: str = "") -> PublishPlan:
    """The files a verified release uploads (build_report.json and its generated files, as they are once
    ``repo_id`` is recorded in them, then the report's shards), where, and what to warn about."""
    report = read_report(out_dir)
    version = str(report["version"])
    branch = revision or DEFAULT_BRANCH
    if branch == tag_name(version):
        raise PublishError(f"revision {branch!r} is the version's tag name; upload to a branch "
                           f"(default {DEFAULT_BRANCH!r}) and let publish create the tag")
    rows = read_row_table(out_dir)
    recorded = hub_release.files_for_repo(report, rows, repo_id)
    order = [CARD_NAME, REPORT_NAME] + [name for name in GENERATED_NAMES if name != CARD_NAME and name in recorded]
    files = [PlannedFile(name, len(recorded[name]), hashlib.sha256(recorded[name]).hexdigest()) for name in order]
    files += [PlannedFile(path, int(entry["bytes"]), str(entry["sha256"])) for path, entry in sorted(report["shards"].items())]
    planned = {f.path for f in files}
    skipped = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*")
                     if p.is_file() and p.relative_to(out_dir).as_posix() not in planned)
    configs = {
        name: {"default": bool(c.get("default")), "fingerprint": str(c.get("fingerprint", "")), "shards": len(c.get("shards", [])),
               "examples": {split: sum(per_class.values()) for split, per_class in
                            sorted(c.get("counts", {}).items(), key=lambda item: split_rank(item[0]))}}
        for name, c in (report.get("configs") or {}).items()
    }
    by_default = private is None and hub_release.default_private(report)
    return PublishPlan(out_dir=out_dir, repo_id=repo_id, dataset=str(report.get("dataset", "")), version=version,
                       fingerprint=fingerprint or str(report["fingerprint"]), branch=branch, tag=tag_name(version),
                       private=hub_release.default_private(report) if private is None else private, dry_run=dry_run,
                       files=files, skipped=skipped, configs=configs, warnings=hub_release.warnings(report, rows),
                       private_by_default=by_default, recorded=recorded,
                       rewrite=hub_release.changed_files(out_dir, recorded))


def resolve_token(token: str | None) -> str | None:
    """The token argument, else $HF_TOKEN, else huggingface_hub's stored login (None when there is none)."""
    if token:
        return token
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"]
    try:
        import huggingface_hub
    except ImportError:
        return None
    return huggingface_hub.get_token()


def _hf_api(token: str):
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise CxrDatasetError(f"publishing needs huggingface_hub, which is not installed; run: {INSTALL_HINT}") from None
    from . import __version__

    return HfApi(token=token, library_name="covid19-cxr-dataset", library_version=__version__)


# ---- the upload ------------------------------------------------------------------------------

def _upload(api: Any, plan: PublishPlan, token: str | None) -> None:
    repo, kind = plan.repo_id, REPO_TYPE

    def step(what: str, call: Callable[[], Any]) -> Any:
        log.info("%s: %s", repo, what)
        try:
            return call()
        except CxrDatasetError:
            raise
        except Exception as error:  # any Hub/HTTP failure: one readable line, token scrubbed, no chained traceback
            message = _scrub(f"{type(error).__name__}: {error}", token)
            status = getattr(getattr(error, "response", None), "status_code", None)
            hint = ("check that the token (HF_TOKEN or `hf auth login`) has write access to the repository's owner"
                    if status in (401, 403) else
                    "check the network and the repository id; running publish again resumes an interrupted upload")
            raise PublishError(f"{HUB_URL}/datasets/{repo}: {what} failed: {message}; {hint}") from None

    step(f"create the dataset repository ({'private' if plan.private else 'public'}) if needed",
         lambda: api.create_repo(repo, repo_type=kind, private=plan.private, exist_ok=True))
    refs = step("list branches and tags", lambda: api.list_repo_refs(repo, repo_type=kind))
    if plan.tag in {ref.name for ref in getattr(refs, "tags", [])}:
        raise PublishError(
            f"{HUB_URL}/datasets/{repo}: tag {plan.tag} already exists; a published version is immutable. "
            "Bump the version in a new manifest (docs/VERSIONING.md), build, verify and publish that"
        )
    newer = hub_release.newer_tags(plan.version, [ref.name for ref in getattr(refs, "tags", [])])
    if plan.branch == DEFAULT_BRANCH and newer:
        raise PublishError(
            f"{HUB_URL}/datasets/{repo}: {newer[-1]} is newer than {plan.version}; committing {plan.version} to "
            f"{DEFAULT_BRANCH} would replace it there. Publish this release to its own branch with --revision "
            f"(e.g. --revision v{plan.version.split('.')[0]}.x); nothing was uploaded"
        )
    if plan.rewrite:  # the folder records where it lives before it is uploaded (hub_release), so it verifies as uploaded
        try:
            hub_release.write_files(plan.out_dir, plan.recorded, plan.rewrite)
        except OSError as error:
            raise PublishError(f"{plan.out_dir}: cannot record {repo} in {', '.join(plan.rewrite)} ({error.strerror or error}); "
                               "publish needs write access to the release folder. Nothing was uploaded") from None
    if plan.branch != DEFAULT_BRANCH:
        step(f"create branch {plan.branch}", lambda: api.create_branch(repo, branch=plan.branch, repo_type=kind, exist_ok=True))
    commit = step(
        f"upload {len(plan.files)} file(s) ({plan.total_bytes:,} bytes) to {plan.branch}",
        lambda: api.upload_folder(
            repo_id=repo, repo_type=kind, folder_path=str(plan.out_dir), revision=plan.branch,
            allow_patterns=[f.path for f in plan.files],
            delete_patterns="*",  # the branch holds exactly this release (.gitattributes is always kept)
            commit_message=f"{plan.dataset} {plan.version}",
            commit_description=f"Release {plan.version}, fingerprint {plan.fingerprint} (check a copy: cxr-dataset verify DIR --fingerprint HEX).",
        ),
    )
    plan.commit = str(getattr(commit, "oid", "") or "")
    if not plan.commit:
        raise PublishError(f"{HUB_URL}/datasets/{repo}: the upload returned no commit id; nothing was tagged. Run publish again")
    remote = step(f"list the files of commit {plan.commit}",
                  lambda: list(api.list_repo_tree(repo, revision=plan.commit, repo_type=kind, recursive=True)))
    differences = _compare_remote(plan, remote)
    if differences:
        raise PublishError(
            f"{HUB_URL}/datasets/{repo}: commit {plan.commit} on {plan.branch} differs from the verified release: "
            + "; ".join(differences) + f". Nothing was tagged; check {plan.out_dir} was not changed during the upload and run publish again"
        )
    step(f"create tag {plan.tag} at {plan.commit}",
         lambda: api.create_tag(repo, tag=plan.tag, revision=plan.commit, repo_type=kind,
                                tag_message=plan.tag_message))
    log.info("%s: published %s %s as %s (commit %s)", repo, plan.dataset, plan.version, plan.tag, plan.commit)


def _compare_remote(plan: PublishPlan, remote: list[Any]) -> list[str]:
    """Differences between the planned files and a commit's file list (RepoFile-like: path, size, lfs.sha256)."""
    files = {item.path: item for item in remote if hasattr(item, "size")}  # RepoFolder entries have no size
    problems = []
    for planned in plan.files:
        item = files.pop(planned.path, None)
        if item is None:
            problems.append(f"{planned.path}: expected {planned.bytes} bytes, found no file")
            continue
        if item.size != planned.bytes:
            problems.append(f"{planned.path}: expected {planned.bytes} bytes, found {item.size}")
        lfs_sha256 = getattr(getattr(item, "lfs", None), "sha256", None)
        if lfs_sha256 and lfs_sha256 != planned.sha256:
            problems.append(f"{planned.path}: expected sha256 {planned.sha256}, found {lfs_sha256}")
    files.pop(".gitattributes", None)
    problems += [f"{path}: expected no such file, found one" for path in sorted(files)]
    return problems


def _scrub(text: str, token: str | None) -> str:
    """``text`` with the token (and anything shaped like a Hugging Face token) replaced by ``***``."""
    if token:
        text = text.replace(token, "***")
    return _HF_TOKEN_TEXT.sub("hf_***", text)
