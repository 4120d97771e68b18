"""What publishing a release folder to the Hugging Face Hub writes into it and warns about (``hub.py``
does the upload).

- Where the release lives: ``publish`` records the repository in ``build_report.json``
  (``card.hub_repo``) and regenerates ``README.md``, ``croissant.json`` (and ``unpinned-files.csv``)
  from it, so the card's examples, its point of contact and both citations name the repository, and
  ``verify`` still regenerates every generated file byte for byte, here and in a download of the Hub
  repository. ``files_for_repo`` gives those bytes; nothing is written on a dry run.
- Warnings (``warnings``): a local variant or a manifest that is not the published release, files
  accepted with other bytes than the release pins, and the images whose license restricts reuse
  (NonCommercial, NoDerivatives, not stated), counted.
- ``default_private``: a variant goes to a private repository unless asked otherwise.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd

from .card import is_noncommercial, is_noderivatives
from .generated import generated_files
from .release import REPORT_NAME, report_bytes, resolve_config, rows_of


def with_hub_repo(report: dict, repo_id: str) -> dict:
    """A copy of ``report`` that records ``repo_id`` as where the release lives."""
    recorded = copy.deepcopy(report)
    recorded.setdefault("card", {})["hub_repo"] = repo_id
    return recorded


def files_for_repo(report: dict, rows: pd.DataFrame, repo_id: str) -> dict[str, bytes]:
    """{file name: bytes} of build_report.json and every generated file once ``repo_id`` is recorded."""
    recorded = with_hub_repo(report, repo_id)
    return {REPORT_NAME: report_bytes(recorded), **generated_files(recorded, rows)}


def changed_files(out_dir: Path, files: dict[str, bytes]) -> list[str]:
    """The names in ``files`` whose bytes differ from the folder's (or that it lacks)."""
    out_dir = Path(out_dir)
    return [name for name, data in files.items() if not (out_dir / name).is_file() or (out_dir / name).read_bytes() != data]


def write_files(out_dir: Path, files: dict[str, bytes], names: list[str]) -> None:
    """Write ``names`` of ``files`` into ``out_dir``, each by an atomic rename (build_report.json last)."""
    import os

    for name in sorted(names, key=lambda n: n == REPORT_NAME):
        temporary = Path(out_dir) / f".{name}.publish.tmp"
        temporary.write_bytes(files[name])
        os.replace(temporary, Path(out_dir) / name)


def newer_tags(version: str, tags: list[str]) -> list[str]:
    """The ``v<version>`` tags of releases newer than ``version`` (by their public N.N.N part), oldest first."""
    def key(text: str) -> tuple[int, ...] | None:
        parts = text.split("+", 1)[0].split("-", 1)[0].split(".")
        return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else None

    mine = key(version)
    found = [(key(tag[1:]), tag) for tag in tags if tag.startswith("v") and key(tag[1:]) is not None]
    return [tag for k, tag in sorted(found) if mine is not None and k > mine]


def is_variant(report: dict) -> bool:
    """True for a build whose manifest is a local variant or not the published release it names."""
    facts = report.get("card", {}).get("variant") or {}
    return bool(facts.get("local") or facts.get("published"))


def default_private(report: dict) -> bool:
    return is_variant(report)


def warnings(report: dict, rows: pd.DataFrame) -> list[str]:
    """What a user should know before publishing this folder, one line each."""
    out = []
    facts = report.get("card", {}).get("variant") or {}
    version = report.get("version", "")
    if facts.get("local"):
        out.append(f"{version} is a local variant, not a published release: its card says so; publish it to your own "
                   "repository (private unless --public)")
    elif facts.get("published"):
        out.append(f"built from a manifest folder that is not the published release {facts['published'].get('version', '')}: "
                   "its card says so (private unless --public)")
    if facts.get("accepted_hashes"):  # new-variant --accept-hashes: a documented deviation from the release's pins
        out.append(f"{facts['accepted_hashes']:,} file(s) differ from the sha256 the release pins "
                   "(decisions/accepted-hashes.csv): its card says so; it is not the published release")
    default = resolve_config(Path(), report, stated=False)  # the default configuration: every image of the release
    licenses = rows_of(rows, default)["license"].str.strip() if len(rows) else pd.Series(dtype=str)
    restricted = {
        "NonCommercial": int(licenses.map(is_noncommercial).sum()),
        "NoDerivatives": int(licenses.map(is_noderivatives).sum()),
        "license not stated": int(licenses.eq("").sum()),
    }
    if any(restricted.values()):
        out.append("license-restricted images: " + ", ".join(f"{n:,} {what}" for what, n in restricted.items() if n)
                   + f" (of {len(licenses):,}); check that you may redistribute them (the card's Licenses section; "
                   "column `license`)")
    return out
