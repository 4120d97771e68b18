"""The shape a release folder's own statements must have before ``verify`` acts on them.

A release folder may come from anyone, so its ``build_report.json`` and its card's YAML header are
read as hostile input: every value ``verify`` uses is checked for its type, and every path in them
must stay inside the release folder (``release.inside_folder``), before anything is opened or globbed.
A wrong value becomes one problem ``(where, expected, found)`` naming it; ``checked_report`` also
returns the report without the keys that failed, so the other checks run on what is sound and none
reads outside the folder or stops with a traceback.
"""

from __future__ import annotations

from typing import Any

from . import safe_load
from .release import DATA_DIR, inside_folder

Problem = tuple[str, str, str]  # (where, e.g. "configs.curated.folders"; expected; found)

_SCALARS = {"report_schema": int, "dataset": str, "version": str, "package_version": str, "fingerprint": str,
            "default_config": str, "manifest_sha256": str, "candidates": int}
_CONTAINERS = {"shards": dict, "counts": dict, "configs": dict, "expected_counts": dict, "card": dict, "exclusions": list,
               "exclusions_by_reason": dict, "flagged": list, "checks": dict, "conversions": dict, "sources": dict,
               "source_label_counts": dict, "unverified_files": list, "convert": dict}
_DEPENDS = {"configs": ("fingerprint",)}
"""Keys dropped with a malformed one: the top-level fingerprint is the default configuration's, so a
report whose configurations cannot be read has no fingerprint to check either."""


def found(value: Any) -> str:
    """How a problem shows a value it did not expect: short, with its type."""
    text = repr(value)
    return f"{text[:80]}{'...' if len(text) > 80 else ''} ({type(value).__name__})"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def counts_problems(where: str, counts: Any) -> list[Problem]:
    """``{split: {class: count}}`` with non-negative whole counts."""
    if not isinstance(counts, dict):
        return [(where, "{split: {class: count}}", found(counts))]
    for split, per_class in counts.items():
        if not isinstance(per_class, dict):
            return [(f"{where}.{split}", "{class: count}", found(per_class))]
        for label, n in per_class.items():
            if not _is_int(n) or n < 0:
                return [(f"{where}.{split}.{label}", "a count (a whole number, 0 or more)", found(n))]
    return []


def _paths_problems(where: str, value: Any, what: str, first: str | None) -> list[Problem]:
    if not isinstance(value, list):
        return [(where, f"a list of {what}", found(value))]
    for item in value:
        if not (inside_folder(item, first) or (first is None and item == "")):  # "": data/ itself (one configuration)
            return [(where, f"a list of {what}", f"{found(item)} in it")]
    return []


def config_problems(name: str, entry: Any) -> list[Problem]:
    """One configuration of ``configs``: its folders under ``data/``, its shards inside ``data/``, its counts."""
    where = f"configs.{name}"
    if not isinstance(entry, dict):
        return [(where, "an object (default, folders, shards, counts, fingerprint)", found(entry))]
    problems: list[Problem] = []
    if "default" in entry and not isinstance(entry["default"], bool):
        problems.append((f"{where}.default", "true or false", found(entry["default"])))
    if "folders" in entry:
        problems += _paths_problems(f"{where}.folders", entry["folders"], f"folder names under {DATA_DIR}/", None)
    if "shards" in entry:
        problems += _paths_problems(f"{where}.shards", entry["shards"], f"shard paths under {DATA_DIR}/ in the release",
                                    DATA_DIR)
    for key in ("counts", "expected_counts"):
        if key in entry:
            problems += counts_problems(f"{where}.{key}", entry[key])
    if "fingerprint" in entry and not isinstance(entry["fingerprint"], str):
        problems.append((f"{where}.fingerprint", "a hex string", found(entry["fingerprint"])))
    return problems


def report_problems(report: dict[str, Any]) -> list[Problem]:
    """Every value of ``report`` that ``verify`` (or the card it regenerates) reads and that has the wrong
    type or a path leading out of the release folder."""
    problems: list[Problem] = []
    for key, kind in {**_SCALARS, **_CONTAINERS}.items():
        if key in report and not (isinstance(report[key], kind) and not (kind is int and isinstance(report[key], bool))):
            problems.append((key, f"a {'JSON object' if kind is dict else 'list' if kind is list else kind.__name__}",
                             found(report[key])))
    if isinstance(report.get("shards"), dict):
        for relpath, entry in report["shards"].items():
            if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) or not _is_int(entry.get("bytes")):
                problems.append((f"shards.{relpath}", "{sha256: hex string, bytes: whole number}", found(entry)))
    for key in ("exclusions", "flagged"):
        bad = [item for item in report.get(key) or [] if not isinstance(item, dict)] if isinstance(report.get(key), list) else []
        if bad:
            problems.append((key, "a list of objects (one per image)", f"{found(bad[0])} in it"))
    if isinstance(report.get("counts"), dict):
        problems += counts_problems("counts", report["counts"])
    if isinstance(report.get("configs"), dict):
        for name, entry in report["configs"].items():
            problems += config_problems(name, entry)
    return problems


def checked_report(report: dict[str, Any]) -> tuple[dict[str, Any], list[Problem]]:
    """``report`` without every top-level key that holds a problem (and the keys that depend on it), and
    the problems (``report_problems``)."""
    problems = report_problems(report)
    dropped = {where.split(".", 1)[0] for where, _, _ in problems}
    dropped |= {dependent for key in list(dropped) for dependent in _DEPENDS.get(key, ())}
    return {key: value for key, value in report.items() if key not in dropped}, problems


def data_file_problem(pattern: Any) -> str:
    """Why a card's ``data_files`` path cannot be used ("" when it can): it must be a relative glob under
    ``data/`` inside the release folder (``/etc/*`` or ``../x/data/*.parquet`` would list files elsewhere)."""
    if not isinstance(pattern, str):
        return f"{found(pattern)}, not a path"
    if not inside_folder(pattern, DATA_DIR):
        return f"{pattern!r}, a path outside the release's {DATA_DIR}/ folder"
    return ""


# ---- the dataset card's YAML header (verify reads a card that may come from anyone) ----

def card_header(text: str) -> dict[str, Any]:
    """The YAML header of a dataset card (between the leading ``---`` lines); ValueError if none."""
    if not text.startswith("---\n"):
        raise ValueError("no YAML header (the file does not start with a '---' line)")
    end = text.find("\n---\n", 4)
    if end < 0 and text.endswith("\n---"):
        end = len(text) - 4
    if end < 0:
        raise ValueError("the YAML header is not closed by a '---' line")
    header = safe_load.yaml_load(text[4:end + 1])  # no aliases: a card may come from anyone
    if not isinstance(header, dict):
        raise ValueError(f"the YAML header is a {type(header).__name__}, not a mapping")
    return header


def card_label_names(header: dict[str, Any]) -> list[list[str]]:
    """The class_label names of every ``label`` feature in the card's ``dataset_info`` (one list per config)."""
    names_per_config = []
    for info in dataset_infos(header):
        for feature in info.get("features") or []:
            if isinstance(feature, dict) and feature.get("name") == "label":
                dtype = feature.get("dtype") if isinstance(feature.get("dtype"), dict) else {}
                class_label = dtype.get("class_label") if isinstance(dtype.get("class_label"), dict) else {}
                names = class_label.get("names") or {}
                if isinstance(names, dict) and names and all(str(k).isdigit() for k in names):
                    names_per_config.append([str(names[k]) for k in sorted(names, key=lambda k: int(k))])
                elif isinstance(names, list) and names:
                    names_per_config.append([str(n) for n in names])
                else:
                    names_per_config.append([f"<{found(names)}: not a list of names or {{index: name}}>"])
    return names_per_config


def dataset_infos(header: dict[str, Any]) -> list[dict[str, Any]]:
    infos = header.get("dataset_info")
    infos = infos if isinstance(infos, list) else [infos]
    return [info for info in infos if isinstance(info, dict)]
