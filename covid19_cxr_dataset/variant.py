"""Local variants of a release, and the missing-files report that usually starts one.

A *variant* is a manifest folder copied from a release with a PEP 440 local version
(``1.0.0+local.1``), notes reset to a template that says what it was derived from, and, when some
pinned files cannot be downloaded, those files excluded with their HTTP status as the note
(``decisions/exclusions.csv``, reason ``upstream-missing``) and the expected counts recomputed by
``plan``. ``cxr-dataset new-variant`` is :func:`new_variant`.

The *missing-files report* is the CSV ``build`` writes when pinned files cannot be fetched (columns
``MISSING_COLUMNS``, one row per file); ``new-variant --exclude-missing`` reads it back.

This module also says how a manifest is named on a command line (``--version 1.0.0`` for a bundled
release, ``--manifest PATH`` for any other folder), so every hint the package prints is a command
that works for the manifest at hand, and whether a manifest's counts differ from the published
release of the same version (:func:`card_notice`).
"""

from __future__ import annotations

import csv
import io
import os
import re
import shlex
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import yaml

from . import CLASS_NAMES
from . import manifest as manifest_module
from .errors import CxrDatasetError, ManifestError
from .manifest import Manifest
from .records import split_rank

LOCAL_LABEL = "local"
MISSING_REASON = "upstream-missing"
MISSING_COLUMNS = ("source", "source_path", "split", "label", "status", "url", "detail")
"""Columns of the missing-files report: ``split`` is where the file would have gone (planned split),
``status`` the HTTP status (``404``...), ``checksum`` (other bytes than pinned) or ``not-in-archive``
/ ``not-in-folder`` (a Kaggle archive or local folder without the file)."""

_LOCAL = re.compile(r"^(?P<public>[^+]+)(?:\+(?P<local>[0-9A-Za-z.]+))?$")


# ---- versions and command-line names ---------------------------------------------------------

def public_version(version: str) -> str:
    """The release a version belongs to: ``1.0.0+local.2`` -> ``1.0.0`` (PEP 440's public part)."""
    return version.split("+", 1)[0]


def is_local(version: str) -> bool:
    return "+" in version


def next_local_version(version: str) -> str:
    """``1.0.0`` -> ``1.0.0+local.1``; ``1.0.0+local.1`` -> ``1.0.0+local.2``; ``1.0.0+lab`` -> ``1.0.0+lab.local.1``."""
    match = _LOCAL.match(version)
    if not match:
        raise ManifestError(f"version {version!r} is not N.N.N with an optional +local label")
    public, local = match["public"], match["local"]
    if not local:
        return f"{public}+{LOCAL_LABEL}.1"
    counted = re.fullmatch(rf"(?:(.*)\.)?{LOCAL_LABEL}\.(\d+)", local)
    if counted:
        prefix = f"{counted[1]}." if counted[1] else ""
        return f"{public}+{prefix}{LOCAL_LABEL}.{int(counted[2]) + 1}"
    return f"{public}+{local}.{LOCAL_LABEL}.1"


def is_bundled(manifest: Manifest) -> bool:
    """True when ``manifest`` is a release under the manifests root (what ``--version`` finds)."""
    bundled = manifest_module.manifests_root() / manifest.name / manifest.version
    try:
        return bundled.resolve() == manifest.folder.resolve()
    except OSError:
        return False


def manifest_option(manifest: Manifest) -> str:
    """How a command line names this manifest: ``--version 1.0.0`` when bundled, else ``--manifest PATH``."""
    if is_bundled(manifest):
        named = "" if manifest.name == manifest_module.DEFAULT_NAME else f" --name {shlex.quote(manifest.name)}"
        return f"--version {shlex.quote(manifest.version)}{named}"
    return f"--manifest {shlex.quote(shown_path(manifest.folder))}"


def from_argument(manifest: Manifest) -> str:
    """What ``new-variant --from`` takes for this manifest: its version when bundled, else its folder."""
    if is_bundled(manifest):
        named = "" if manifest.name == manifest_module.DEFAULT_NAME else f" --name {shlex.quote(manifest.name)}"
        return f"{shlex.quote(manifest.version)}{named}"
    return shlex.quote(shown_path(manifest.folder))


def shown_path(path: Path) -> str:
    """``path`` as a user would type it: relative to the working folder when under it (``./x``)."""
    path = Path(path)
    try:
        relative = Path(os.path.abspath(path)).relative_to(Path.cwd())
    except ValueError:
        return str(path)
    return f"./{relative.as_posix()}" if str(relative) != "." else "."


# ---- published release comparison (the card's first lines) -----------------------------------

def published_release(manifest: Manifest) -> Manifest | None:
    """The bundled release this manifest claims to be or to derive from (same name, same public
    version), unless ``manifest`` is that release itself; None when there is none."""
    if is_bundled(manifest) and not is_local(manifest.version):
        return None
    folder = manifest_module.manifests_root() / manifest.name / public_version(manifest.version)
    if not (folder / manifest_module.MANIFEST_FILE).is_file():
        return None
    try:
        return manifest_module.load(folder)
    except ManifestError:
        return None


def expected_counts(manifest: Manifest) -> dict[str, dict[str, int]]:
    """The counts a manifest expects for its default configuration."""
    return next(iter(expected_by_config(manifest).values()), {})


def expected_by_config(manifest: Manifest) -> dict[str | None, dict[str, dict[str, int]]]:
    """``{configuration: expected counts}``, the default first; ``{None: ...}`` for a manifest
    without a ``configs`` section (its top-level ``expected_counts``)."""
    if manifest.has_configs:
        return {config.name: config.expected_counts for config in manifest.configs}
    return {None: manifest.default_config.expected_counts}


def _planned_counts(resolution, config: str | None) -> dict[str, dict[str, int]]:
    """What ``plan`` resolves for one configuration (None: the manifest's only one), every class listed."""
    from . import report

    rows = resolution.rows(config) if config is not None and hasattr(resolution, "rows") else resolution.kept
    counts = report.count_table(rows)
    return {split_name: {label: int(counts[split_name].get(label, 0)) for label in CLASS_NAMES}
            for split_name in sorted(counts, key=lambda s: (split_rank(s), s))}


def count_differences(published: dict[str, dict[str, int]], actual: dict[str, dict[str, int]]) -> list[str]:
    """``"train/COVID-19 390 (published 398)"`` for every cell that differs."""
    out = []
    for split_name in sorted(set(published) | set(actual), key=lambda s: (split_rank(s), s)):
        for label in CLASS_NAMES:
            want = published.get(split_name, {}).get(label, 0)
            got = actual.get(split_name, {}).get(label, 0)
            if want != got:
                out.append(f"{split_name}/{label} {got:,} (published {want:,})")
    return out


def _portable_manifest_option(manifest: Manifest) -> str:
    """:func:`manifest_option` without this machine's absolute paths (the card is published): a
    folder outside the working folder is named by its folder name alone."""
    option = manifest_option(manifest)
    if is_bundled(manifest) or shown_path(manifest.folder).startswith("."):
        return option
    return f"--manifest {shlex.quote(manifest.folder.name)}"


def card_facts(manifest: Manifest) -> dict[str, Any]:
    """What the card needs to know about where its manifest stands, as plain data (it can live in the
    build report): how commands name the manifest, whether its version is local, and the published
    release it claims to be or derive from (version and expected counts), if any."""
    published = published_release(manifest)
    return {
        # A card is published: name an unbundled manifest by its folder name, never by this machine's path.
        "manifest_option": _portable_manifest_option(manifest),
        "local": is_local(manifest.version),
        "version": manifest.version,
        "published": None if published is None else {"version": published.version, "expected_counts": expected_counts(published)},
    }


def notice_lines(facts: dict[str, Any], counts: dict[str, dict[str, int]]) -> list[str]:
    """The card's first lines when it does not describe a published release (empty when it does).

    ``facts`` is :func:`card_facts`; ``counts`` the built default configuration's {split: {label: n}}."""
    published, local, version = facts.get("published"), facts.get("local", False), facts.get("version", "")
    if published is None:
        if not local:
            return []
        return [f"> **Local variant {version}**, not a published release "
                f"(release {public_version(version)} is not known to this package).", ""]
    differences = count_differences(published["expected_counts"], counts)
    what = (f"a local variant derived from release {published['version']}" if local
            else f"a manifest folder that is not the published release {published['version']}")
    if differences:
        return [f"> **Not release {published['version']}: the counts differ.** This dataset was built from {what}; "
                f"its counts differ from the published release: " + "; ".join(differences) + ".", ""]
    return [f"> **Not the published release.** This dataset was built from {what}, with the same counts.", ""]


def card_notice(manifest: Manifest, counts: dict[str, dict[str, int]]) -> list[str]:
    """:func:`notice_lines` for a loaded manifest."""
    return notice_lines(card_facts(manifest), counts)


# ---- the missing-files report ----------------------------------------------------------------

def write_missing_report(path: Path, rows: list[dict]) -> Path:
    """Write the missing-files CSV (atomically); returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(MISSING_COLUMNS), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in sorted(rows, key=lambda r: (r.get("source", ""), r.get("split", ""), r.get("source_path", ""))):
        writer.writerow({c: row.get(c, "") for c in MISSING_COLUMNS})
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(buffer.getvalue(), encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def read_missing_report(path: Path) -> list[dict]:
    path = Path(path)
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            absent = {"source", "source_path", "status"} - set(reader.fieldnames or [])
            if absent:
                raise CxrDatasetError(
                    f"{path}: not a missing-files report (columns {sorted(absent)} absent); expected the CSV that "
                    f"`cxr-dataset build` or `cxr-dataset plan --check-files` writes: {','.join(MISSING_COLUMNS)}"
                )
            return [dict(row) for row in reader]
    except OSError as error:
        raise CxrDatasetError(f"cannot read the missing-files report {path}: {error.strerror or error}") from None


def missing_table(rows: Iterable[dict]) -> list[str]:
    """Lines counting the missing files per source and split, with their statuses."""
    groups: dict[tuple[str, str], dict[str, int]] = {}
    for row in rows:
        statuses = groups.setdefault((row.get("source", ""), row.get("split", "") or "-"), {})
        statuses[row.get("status", "")] = statuses.get(row.get("status", ""), 0) + 1
    lines = []
    for (source, split_name), statuses in sorted(groups.items()):
        described = ", ".join(f"{_status_words(s)} {n:,}" for s, n in sorted(statuses.items()))
        lines.append(f"  {source:10s} {split_name:5s} {sum(statuses.values()):6,}   ({described})")
    return lines


def missing_lines(rows: list[dict], limit: int = 40) -> list[str]:
    """One line per missing file (status, source, path, planned split), at most ``limit``."""
    ordered = sorted(rows, key=lambda r: (r.get("source", ""), r.get("source_path", "")))
    lines = [f"  {_status_words(r.get('status', '')):>14}  {r.get('source', '')}:{r.get('source_path', '')}"
             + (f"  ({r['split']})" if r.get("split") else "") for r in ordered[:limit]]
    if len(ordered) > limit:
        lines.append(f"  ... and {len(ordered) - limit:,} more")
    return lines


def _status_words(status: str) -> str:
    if status == "checksum":
        return "bytes differ from the pin"
    if status == "size":
        return "size differs from the pin"
    return f"HTTP {status}" if status.isdigit() else status


def missing_files_advice(
    manifest: Manifest, report_path: Path, *, out: Path | None = None, mirror: str | None = None,
    cache_dir: Path | None = None, kaggle_archive: Path | None = None,
) -> str:
    """What a user can do about missing files, as commands that work for this manifest."""
    common = ""
    if mirror:
        common += f" --mirror {shlex.quote(mirror)}"
    if cache_dir:
        common += f" --cache-dir {shlex.quote(shown_path(cache_dir))}"
    version = next_local_version(manifest.version)
    base = Path(out).parent if out is not None else Path(".")
    variant_dir = shown_path(base / f"{manifest.name}-{version}-manifest")
    variant_out = shown_path(base / f"{manifest.name}-{version}")
    kaggle = f" --kaggle-archive {shlex.quote(shown_path(kaggle_archive))}" if kaggle_archive else ""
    if out is None and not kaggle_archive:  # plan --check-files: the build command needs the archive option too
        kaggle = "".join(f" {s.build_option_example()}" for s in manifest.sources if s.build_option_example())
    again = (f"cxr-dataset build {manifest_option(manifest)} --out {shlex.quote(shown_path(out))}{kaggle}{common}"
             if out is not None else f"cxr-dataset plan {manifest_option(manifest)} --check-files{common}")
    return "\n".join([
        "What you can do:",
        ("  1. Wait and retry: upstream or the mirror may be catching up. Fetched files are cached; a rerun asks only for the rest:"
         if out is not None else "  1. Wait and check again: upstream or the mirror may be catching up:"),
        f"       {again}",
        "  2. Use another mirror (same <owner>/<repo>/<commit>/<path> layout); check what it holds without downloading:",
        f"       cxr-dataset plan {manifest_option(manifest)} --check-files --mirror URL",
        "  3. Make a local variant that leaves these files out (expected counts recomputed), then build it:",
        f"       cxr-dataset new-variant --from {from_argument(manifest)} {shlex.quote(variant_dir)} "
        f"--exclude-missing {shlex.quote(shown_path(report_path))}{common}",
        f"       cxr-dataset build --manifest {shlex.quote(variant_dir)} --out {shlex.quote(variant_out)}{kaggle}{common}",
    ])


# ---- new-variant -----------------------------------------------------------------------------

def resolve_from(value: str, name: str = manifest_module.DEFAULT_NAME) -> Manifest:
    """``--from``: a bundled release's version, or a manifest folder (or its manifest.yaml)."""
    path = Path(value)
    if path.is_dir() or path.name == manifest_module.MANIFEST_FILE:
        return manifest_module.load(path)
    return manifest_module.load(manifest_module.find(value, name))


def new_variant(
    base: Manifest, folder: Path, *, exclude_missing: Path | None = None, options=None, version: str | None = None,
):
    """Write a variant of ``base`` into ``folder`` (absent or empty); returns ``(manifest, resolution)``.

    The copy keeps every list (locks, decisions) and the split seed, gets ``version`` (default: the
    next ``+local.N`` of ``base``), a title and notes that say it is derived from ``base``, and with
    ``exclude_missing`` (a missing-files report) those files as ``upstream-missing`` exclusions. Its
    expected counts are what ``plan`` resolves for the new folder (``options``: the download options
    for the metadata). Nothing is left in ``folder`` when any step fails.
    """
    from .build import Options, plan  # build imports this module for its messages

    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise CxrDatasetError(f"{folder} already exists and is not empty; choose a new folder for the variant")
    version = version or next_local_version(base.version)
    missing = read_missing_report(exclude_missing) if exclude_missing is not None else []
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        shutil.copytree(base.folder, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", ".*"))
        data = dict(base.data)
        data["version"] = version
        data["title"] = _variant_title(base)
        data["description"] = _description_template(base, version)
        data["release_notes"] = _notes_template(base, version, missing, exclude_missing)
        if missing:
            data["filters"] = _with_exclusions(base, staging, data["filters"], missing, exclude_missing)
        _write_manifest_yaml(staging, base, data)
        resolution = plan(manifest_module.load(staging), options or Options(progress=False))
        if isinstance(data.get("configs"), dict):  # expected counts per configuration
            data["configs"] = {name: {**spec, "expected_counts": _planned_counts(resolution, name)}
                               for name, spec in data["configs"].items()}
        else:
            data["expected_counts"] = _planned_counts(resolution, None)
        _write_manifest_yaml(staging, base, data)
        if folder.exists():
            folder.rmdir()
        os.chmod(staging, 0o755)  # mkdtemp makes 0700 folders
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest_module.load(folder), resolution


def _variant_title(base: Manifest) -> str:
    title = re.sub(r"\s*\(local variant of release [^)]*\)$", "", base.title)
    return f"{title} (local variant of release {public_version(base.version)})"


def _description_template(base: Manifest, version: str) -> str:
    return (
        f"Local variant {version} of {base.name}, derived from {base.version}. It is not a published release: "
        f"its files and counts may differ from {base.version}'s (the dataset card says so in its first lines). "
        "Edit this description: say what this variant is for."
    )


def _notes_template(base: Manifest, version: str, missing: list[dict], report: Path | None) -> str:
    lines = [f"Derived from {base.version} by `cxr-dataset new-variant` on {time.strftime('%Y-%m-%d', time.gmtime())}.",
             f"What differs from {base.version}:"]
    if missing:
        lines.append(f"- {len(missing):,} pinned file(s) that could not be downloaded are excluded "
                     f"(decisions/exclusions.csv, reason `{MISSING_REASON}`; from {Path(report).name}).")
    lines += ["- The expected counts are what `cxr-dataset plan` resolves for this folder.",
              "- Edit this list: say what else you changed (decisions, filters, sources), then run "
              "`cxr-dataset plan --manifest <this folder>` and copy its counts into expected_counts."]
    return "\n".join(lines) + "\n"


def _with_exclusions(base: Manifest, staging: Path, filters_spec: dict, missing: list[dict], report: Path) -> dict:
    """Append the missing files to the variant's exclusions list (declaring one when absent)."""
    names = {s.name for s in base.sources}
    strangers = sorted({r["source"] for r in missing} - names)
    if strangers:
        raise CxrDatasetError(
            f"{report}: names source(s) {strangers} that {base.path} does not have (sources: {sorted(names)}); "
            "pass the report of a build of this release"
        )
    decisions = dict(filters_spec.get("decisions", {}))
    relative = decisions.setdefault("exclusions", "decisions/exclusions.csv")
    target = staging / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    existing: set[str] = set()
    text = target.read_text(encoding="utf-8") if target.is_file() else "source,source_path,reason,note\n"
    for row in csv.DictReader(io.StringIO(text)):
        existing.add(f"{row['source']}:{row['source_path']}")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    added = 0
    for row in sorted(missing, key=lambda r: (r["source"], r["source_path"])):
        if f"{row['source']}:{row['source_path']}" in existing:
            continue
        existing.add(f"{row['source']}:{row['source_path']}")
        where = f" at {row['url']}" if row.get("url") else ""
        writer.writerow([row["source"], row["source_path"], MISSING_REASON,
                         f"{_status_words(row['status'])}{where} ({time.strftime('%Y-%m-%d', time.gmtime())})"])
        added += 1
    if not text.endswith("\n"):
        text += "\n"
    target.write_text(text + buffer.getvalue(), encoding="utf-8")
    return {**filters_spec, "decisions": decisions}


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks, so notes and BibTeX stay readable; no anchors or aliases
    (safe_load.yaml_load refuses them, so a repeated value, e.g. equal counts, is written out twice)."""

    def ignore_aliases(self, data) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def _dump(value: dict[str, Any]) -> str:
    (key, inner), = value.items()
    if key == "expected_counts":  # one line per split, as the bundled manifests write them
        return "expected_counts:\n" + "".join(
            f"  {split_name}: {{" + ", ".join(f"{label}: {n}" for label, n in per_class.items()) + "}\n"
            for split_name, per_class in inner.items()
        )
    return yaml.dump(value, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100, default_flow_style=False)


def _write_manifest_yaml(folder: Path, base: Manifest, data: dict) -> None:
    """Rewrite the changed top-level keys of the base's manifest.yaml, keeping its other text and
    comments; a whole new dump when the splice would not read back as ``data``."""
    header = (f"# Local variant {data['version']} of {base.name}, derived from {base.version} by `cxr-dataset new-variant`.\n"
              f"# Data, not code: see docs/MANIFEST.md. The comments below are {base.version}'s.\n")
    text = base.path.read_text(encoding="utf-8")
    body = re.sub(r"\A(?:#[^\n]*\n|\s*\n)*", "", text)
    blocks = _top_level_blocks(body)
    for key, value in data.items():
        if key in base.data and base.data[key] == value:
            continue
        old = blocks.get(key, "")
        start = re.search(rf"^{re.escape(key)}:", old, re.M)
        blocks[key] = (old[:start.start()] if start else "") + _dump({key: value})
    # A key the base did not have goes where a reader looks for it (description after the title).
    order = list(blocks)
    for key in [k for k in order if k not in base.data and k in _AFTER]:
        order.remove(key)
        anchor = _AFTER[key]
        order.insert(order.index(anchor) + 1 if anchor in order else len(order), key)
    spliced = header + "".join(blocks[key] for key in order)
    try:
        readable = yaml.safe_load(spliced) == data
    except yaml.YAMLError:
        readable = False
    (folder / manifest_module.MANIFEST_FILE).write_text(spliced if readable else header + _dump(data), encoding="utf-8")


_AFTER = {"description": "title", "release_notes": "card_license"}


def _top_level_blocks(text: str) -> dict[str, str]:
    """``{key: text}`` for each top-level key of a YAML mapping, each block keeping the comment and
    blank lines that precede the next key with it (so a key's replacement keeps its neighbours')."""
    blocks: dict[str, str] = {}
    current, lines = None, []
    pending: list[str] = []
    for line in text.splitlines(keepends=True):
        match = re.match(r"^([A-Za-z_][A-Za-z0-9_]*):", line)
        if match:
            if current is not None:
                blocks[current] = "".join(lines)
            current, lines = match[1], pending + [line]
            pending = []
        elif line.startswith("#") or not line.strip():
            pending.append(line)
        else:
            lines += pending + [line]
            pending = []
    if current is not None:
        blocks[current] = "".join(lines + pending)
    return blocks
