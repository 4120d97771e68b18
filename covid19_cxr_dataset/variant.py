"""Local variants of a release (``cxr-dataset new-variant`` is :func:`new_variant`).

A *variant* is a manifest folder copied from a release with a PEP 440 local version
(``1.0.0+local.1``, ``naming.next_local_version``), notes reset to a template that says what it was
derived from, and, when some pinned files cannot be downloaded, those files excluded with their HTTP
status as the note (``decisions/exclusions.csv``, reason ``upstream-missing``, read from a
missing-files report: ``missing``). The copy keeps the release's split file, so every other image
stays on the side the release put it; its expected counts are the release's minus the images it
leaves out (``derived_counts``), per configuration, split and class, so that what only a build of
the release finds (pixel duplicates) stays accounted for.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from . import interrupts, manifest as manifest_module
from . import CLASS_NAMES
from .counts import expected_by_config
from .errors import CxrDatasetError
from .manifest import Manifest
from .missing import MISMATCH_STATUS, read_missing_report, status_words
from .naming import is_local, next_local_version, public_version
from .options import Options
from .plan import plan, recorded_assignment
from .staging import make_hidden_folder, short_name

MISSING_REASON = "upstream-missing"


def resolve_from(value: str, name: str = manifest_module.DEFAULT_NAME) -> Manifest:
    """``--from``: a bundled release's version, or a manifest folder (or its manifest.yaml)."""
    path = Path(value)
    if path.is_dir() or path.name == manifest_module.MANIFEST_FILE:
        return manifest_module.load(path)
    return manifest_module.load(manifest_module.find(value, name))


def new_variant(
    base: Manifest, folder: Path, *, exclude_missing: Path | None = None, options=None, version: str | None = None,
    accept_hashes: Path | None = None,
):
    """Write a variant of ``base`` into ``folder`` (absent or empty); returns ``(manifest, resolution)``.

    The copy keeps every list (locks, decisions) and the split seed, gets ``version`` (default: the
    next ``+local.N`` of ``base``), a title and notes that say it is derived from ``base``, and with
    ``exclude_missing`` (a missing-files report) those files as ``upstream-missing`` exclusions; with
    ``accept_hashes`` (the same kind of report) the sha256 of every file it lists as differing from its
    pin recorded as a documented deviation (``decisions/accepted-hashes.csv``). Its
    expected counts are ``derived_counts``; the returned resolution is ``plan`` of the new folder
    (``options``: the download options for the metadata). Nothing is left in ``folder`` when any step fails.
    """
    folder = Path(folder)
    try:
        taken_folder = folder.exists() and (not folder.is_dir() or any(folder.iterdir()))
    except OSError as error:
        raise CxrDatasetError(f"{folder}: cannot be read ({error.strerror or error}); choose a new folder for the variant") from None
    if taken_folder:
        raise CxrDatasetError(f"{folder} already exists and is not empty; choose a new folder for the variant")
    version = version or next_local_version(base.version)
    _check_variant_version(base, version)
    accepted = [r for r in read_missing_report(accept_hashes) if r.get("status") == MISMATCH_STATUS] if accept_hashes else []
    if accept_hashes is not None and not accepted:
        raise CxrDatasetError(f"{accept_hashes}: lists no file whose sha256 differs from its pin (status {MISMATCH_STATUS}); "
                              "nothing to accept. Pass the report a failed `cxr-dataset build` wrote")
    taken = {f"{r['source']}:{r['source_path']}" for r in accepted}
    missing = [r for r in read_missing_report(exclude_missing) if f"{r['source']}:{r['source_path']}" not in taken] \
        if exclude_missing is not None else []
    staging = _variant_staging(folder)
    try:
        shutil.copytree(base.folder, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", ".*"))
        data = dict(base.data)
        data.pop("fingerprints", None)  # the release's fingerprints; a variant's data is another
        data["version"] = version
        data["title"] = _variant_title(base)
        data["description"] = _description_template(base, version)
        data["release_notes"] = _notes_template(base, version, missing, exclude_missing, accepted)
        if missing:
            data["filters"] = _with_exclusions(base, staging, data["filters"], missing, exclude_missing)
        if accepted:
            data["filters"] = _with_accepted_hashes(base, staging, data["filters"], accepted, accept_hashes)
        options = options or Options(progress=False)
        derived = derived_counts(base, {f"{r['source']}:{r['source_path']}" for r in missing}, options)
        if isinstance(data.get("configs"), dict):  # expected counts and the variant's own rule per configuration
            data["configs"] = {name: {**spec, "description": _config_description(base, name, derived[name], missing, accepted),
                                      "expected_counts": derived[name]} for name, spec in data["configs"].items()}
        else:
            data["expected_counts"] = derived[None]
        _write_manifest_yaml(staging, base, data)
        resolution = plan(manifest_module.load(staging), options)
        try:
            if folder.exists():
                folder.rmdir()
            os.replace(staging, folder)
            interrupts.work_complete()  # the variant is in place: the program ignores Ctrl-C from now on
        except OSError as error:
            raise CxrDatasetError(f"{folder}: cannot put the variant there ({error.strerror or error}); nothing was "
                                  "written. Choose a new, empty folder") from None
    except OSError as error:  # copying the release's files (a full disk, a file it cannot read)
        shutil.rmtree(staging, ignore_errors=True)
        where = f" ({error.filename})" if error.filename else ""
        raise CxrDatasetError(f"{folder}: writing the variant failed: {error.strerror or error}{where}; nothing was "
                              "written. Free some space or choose another DIR") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest_module.load(folder), resolution


def _check_variant_version(base: Manifest, version: str) -> None:
    """A variant's version is its release's with a PEP 440 local label (``1.0.0+local.1``): a version
    without one names a release (maybe a published one, maybe the base itself), and a version of another
    release would make the variant claim to derive from that one."""
    suggestion = next_local_version(base.version)
    rule = (f"a variant's version is the version of the release it derives from ({public_version(base.version)}) with "
            f"a local label, e.g. {suggestion}. Pass --new-version {suggestion}, or leave it out for that")
    if not re.match(manifest_module.VERSION_PATTERN, version) or not is_local(version):
        bundled = manifest_module.manifests_root() / base.name / version
        named = ("the published release " if (bundled / manifest_module.MANIFEST_FILE).is_file() else "a release ") \
            if re.match(manifest_module.VERSION_PATTERN, version) else "no version "
        raise CxrDatasetError(f"--new-version {version} names {named}{base.name} {version}, not a local variant: {rule}")
    if public_version(version) != public_version(base.version):
        raise CxrDatasetError(f"--new-version {version} would make the variant derive from release {public_version(version)}, "
                              f"but it is made from {base.version}: {rule}")


def _variant_staging(folder: Path) -> Path:
    """A new hidden folder beside ``folder`` to write the variant in (renamed into place at the end);
    a clear error when ``folder``'s parent cannot hold one (a file, /proc, a read-only disk)."""
    for ancestor in (folder.parent, *folder.parent.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise CxrDatasetError(f"{folder}: {ancestor} is a file, not a folder, so no variant can be written under "
                                      "it; choose another DIR")
            break
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        return make_hidden_folder(folder.parent, f".{short_name(folder.name)}.partial-")
    except OSError as error:
        raise CxrDatasetError(f"{folder}: cannot create the variant's folder in {folder.parent} ({error.strerror or error}); "
                              "choose a DIR in a folder you can write") from None


def derived_counts(base: Manifest, left_out: set[str], options: Options) -> dict[str | None, dict[str, dict[str, int]]]:
    """``{configuration: expected counts}`` of a variant: the release's expected counts minus the images
    ``left_out`` (record ids) takes from each configuration, per split and class.

    Which configuration held each image is read from the release's split file; a release without one
    is planned once for it (its metadata-level membership).
    """
    assignment = recorded_assignment(base)
    if assignment is not None:
        gone = assignment[assignment["record_id"].isin(left_out)]
        held = [(config, row.split, row.label) for row in gone.itertuples() for config in row.configs.split(";")]
    else:
        resolution = plan(base, options) if left_out else None
        held = [(config.name, row.split, row.label) for config in base.configs if resolution is not None
                for row in resolution.rows(config.name).itertuples() if row.record_id in left_out]
    derived = {}
    for key, expected in expected_by_config(base).items():
        name = key or base.default_config.name
        counts = {split_name: {label: int(per_class.get(label, 0)) for label in CLASS_NAMES} for split_name, per_class in expected.items()}
        for config, split_name, label in held:
            if config == name and split_name in counts:
                counts[split_name][label] -= 1
        derived[key] = counts
    return derived


def _variant_title(base: Manifest) -> str:
    title = re.sub(r"\s*\(local variant of release [^)]*\)$", "", base.title)
    return f"{title} (local variant of release {public_version(base.version)})"


def _description_template(base: Manifest, version: str) -> str:
    # One plain line that is true as it stands: it reaches the dataset card unless the maker replaces it.
    return (f"Local variant {version} of {base.name}, derived from {base.version}; not a published release, "
            "and its maker gave no description.")


def _notes_template(base: Manifest, version: str, missing: list[dict], report: Path | None, accepted: list[dict]) -> str:
    lines = [f"Derived from {base.version} by `cxr-dataset new-variant` on {time.strftime('%Y-%m-%d', time.gmtime())}.",
             f"What differs from {base.version}:"]
    if missing:
        lines.append(f"- {len(missing):,} pinned file(s) that could not be downloaded are excluded "
                     f"(decisions/exclusions.csv, reason `{MISSING_REASON}`; from {Path(report).name}).")
    if accepted:
        lines.append(f"- {len(accepted):,} file(s) differ from {base.version}'s pinned sha256; this variant accepts the "
                     "hashes of the files its maker holds (decisions/accepted-hashes.csv): a documented deviation.")
    lines.append(f"- Every other image keeps the side {base.version} gives it (the split file is {base.version}'s); the "
                 f"expected counts are {base.version}'s minus the images left out, per configuration, split and class.")
    return "\n".join(lines) + "\n"


def _config_description(base: Manifest, name: str, counts: dict[str, dict[str, int]], missing: list[dict],
                        accepted: list[dict]) -> str:
    """The variant's own rule for one configuration: the release's, minus what the variant changed."""
    total = sum(n for per_class in counts.values() for n in per_class.values())
    changes = [f"without the {len(missing):,} file(s) that could not be downloaded"] if missing else []
    changes += [f"with {len(accepted):,} file(s) whose sha256 differs from the release's pins"] if accepted else []
    return (f"Configuration `{name}` of release {base.version}" + (", " + " and ".join(changes) if changes else "")
            + f": {total:,} images. Every image keeps the side {base.version} gives it. This is not release "
            f"{base.version}; its card describes the release's own selection rule.")


def _with_accepted_hashes(base: Manifest, staging: Path, filters_spec: dict, accepted: list[dict], report: Path) -> dict:
    """Write the accepted hashes (``decisions/accepted-hashes.csv``) and name the file in the filters."""
    names = {s.name for s in base.sources}
    strangers = sorted({r["source"] for r in accepted} - names)
    if strangers:
        raise CxrDatasetError(f"{report}: names source(s) {strangers} that {base.path} does not have; pass the report of a build of this release")
    decisions = dict(filters_spec.get("decisions", {}))
    relative = decisions.setdefault("accepted_hashes", "decisions/accepted-hashes.csv")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["source", "source_path", "pinned_sha256", "accepted_sha256", "note"])
    for row in sorted(accepted, key=lambda r: (r["source"], r["source_path"])):
        writer.writerow([row["source"], row["source_path"], row["sha256_expected"], row["sha256_actual"],
                         f"the file in hand differs from {base.version}'s pin ({Path(report).name}, "
                         f"{time.strftime('%Y-%m-%d', time.gmtime())})"])
    target = staging / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(buffer.getvalue(), encoding="utf-8")
    return {**filters_spec, "decisions": decisions}


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
                         f"{status_words(row['status'])}{where} ({time.strftime('%Y-%m-%d', time.gmtime())})"])
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
              f"# Say what this variant is for in `description` and `release_notes`: both reach the dataset card.\n"
              f"# Data, not code: see docs/MANIFEST.md. The comments below are {base.version}'s.\n")
    text = base.path.read_text(encoding="utf-8")
    body = re.sub(r"\A(?:#[^\n]*\n|\s*\n)*", "", text)
    blocks = {key: block for key, block in _top_level_blocks(body).items() if key in data}
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
