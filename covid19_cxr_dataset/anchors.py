"""Fingerprints held outside a release folder, which ``verify`` checks the folder against.

Whoever can edit a release's shards can also rewrite its ``build_report.json`` (shard hashes and
fingerprints) and regenerate its card, so a folder that agrees with its own report proves only that it
is consistent. An *anchor* is a fingerprint from somewhere the folder cannot change:

- ``verify DIR --fingerprint [CONFIG=]HEX``: a value from a paper, a citation or the Hub's tag message
  (``parse``); without ``CONFIG=`` it must be the fingerprint of one of the folder's configurations;
- the release's manifest in this package: a published release whose fingerprints are known records
  them (``fingerprints:`` in manifest.yaml, ``Manifest.fingerprints``), and ``recorded`` finds them
  from the name and version the build report states. A local variant (``1.0.0+local.1``) has none.

``check`` compares anchors with the fingerprints recomputed from the shards, never with the ones the
report states.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

from . import manifest as manifest_module
from .errors import CxrDatasetError, ManifestError
from .manifest import Manifest
from .naming import is_local
from .release import FINGERPRINT_DEFINITION

MIN_PREFIX = 16
"""Hex digits an anchor needs at least: a citation may shorten a fingerprint (``3f2a…``), never below this."""

OPTION = "--fingerprint"

_ANCHOR = re.compile(r"^(?:(?P<config>[a-z][a-z0-9_-]*)=)?(?P<hex>[0-9a-fA-F]+)(?:…|\.\.\.)?$")


@dataclass(frozen=True)
class Anchor:
    """A fingerprint to check a folder against: ``fingerprint`` (lowercase hex, whole or a prefix of at
    least ``MIN_PREFIX`` digits) of configuration ``config`` (None: any of the folder's), from ``origin``."""

    fingerprint: str
    config: str | None = None
    origin: str = f"given with {OPTION}"

    def matches(self, value: str) -> bool:
        return bool(value) and value.startswith(self.fingerprint)

    def __str__(self) -> str:
        return f"{self.config}={self.fingerprint}" if self.config else self.fingerprint


def parse(text: str) -> Anchor:
    """``[CONFIG=]HEX`` as typed after ``--fingerprint``; CxrDatasetError says what a valid one looks like."""
    match = _ANCHOR.match(text.strip())
    if not match or not (MIN_PREFIX <= len(match["hex"]) <= 64):
        raise CxrDatasetError(
            f"{OPTION} {text!r}: expected a fingerprint of {MIN_PREFIX} to 64 hex digits, optionally after the "
            "configuration's name (paper=3f2a…), as the card, the citation or the Hub tag message gives it")
    return Anchor(match["hex"].lower(), match["config"])


@dataclass(frozen=True)
class Recorded:
    """What this package records about the release a build report names: its anchors, and a note."""

    anchors: tuple[Anchor, ...]
    note: str


def bundled_manifest(report: dict[str, Any]) -> Manifest | None:
    """The manifest this package bundles for the release a build report names (None: none, or a local variant)."""
    name, version = str(report.get("dataset", "")), str(report.get("version", ""))
    if not name or not version or is_local(version):
        return None
    try:
        return manifest_module.load(manifest_module.find(version, name))
    except ManifestError:
        return None


def recorded(report: dict[str, Any]) -> Recorded:
    """The fingerprints this package's manifest records for the release ``report`` names."""
    name, version = str(report.get("dataset", "")), str(report.get("version", ""))
    unanchored = (f"{OPTION} HEX checks this folder against a fingerprint cited elsewhere (a paper, the Hub); "
                  "without one, a folder whose report was rewritten with its shards would pass")
    if is_local(version):
        return Recorded((), f"{name} {version} is a local variant: no fingerprint is recorded for it; {unanchored}")
    manifest = bundled_manifest(report)
    if manifest is None:
        return Recorded((), f"this package has no manifest of {name} {version}, so no recorded fingerprint; {unanchored}")
    if not manifest.fingerprints:
        return Recorded((), f"release {name} {version} records no fingerprint yet ({manifest.path}); {unanchored}")
    origin = f"recorded for release {version} in {manifest.path}"
    anchors = tuple(Anchor(value, config, origin) for config, value in manifest.fingerprints.items())
    return Recorded(anchors, f"checked against the fingerprints {origin}")


def check(anchors: Iterable[Anchor], recomputed: dict[str, str], definition: int) -> tuple[list[tuple[str, ...]], list[str]]:
    """(problems, confirmations): each anchor against the fingerprints ``recomputed`` from the shards
    ({configuration: hex}). A problem is (file, check, expected, actual, hint) for ``verify``."""
    problems: list[tuple[str, ...]] = []
    confirmed: list[str] = []
    older = (f"this folder's build report has fingerprint definition {definition} (report schema 1), "
             f"the anchor may be of definition {FINGERPRINT_DEFINITION}: rebuild it with this package"
             if definition != FINGERPRINT_DEFINITION else "")
    for anchor in anchors:
        if anchor.config is not None:
            where = f"data/ ({anchor.config})"
            if anchor.config not in recomputed:
                problems.append((where, "fingerprint-anchor", f"configuration {anchor.config!r} ({anchor.origin})",
                                 f"no such configuration; this folder has {', '.join(recomputed) or 'none'}", ""))
            elif not anchor.matches(recomputed[anchor.config]):
                problems.append((where, "fingerprint-anchor",
                                 f"configuration {anchor.config!r}: fingerprint {anchor.fingerprint} ({anchor.origin})",
                                 f"fingerprint {recomputed[anchor.config]}", older or "this folder is not the data that fingerprint identifies"))
            else:
                confirmed.append(f"configuration {anchor.config}: fingerprint {anchor.fingerprint} ({anchor.origin}) matches")
            continue
        hits = [name for name, value in recomputed.items() if anchor.matches(value)]
        if hits:
            confirmed.append(f"fingerprint {anchor.fingerprint} ({anchor.origin}) matches configuration {hits[0]}")
        else:
            problems.append(("data/", "fingerprint-anchor", f"a configuration with fingerprint {anchor.fingerprint} ({anchor.origin})",
                             "; ".join(f"{name}: {value}" for name, value in recomputed.items()) or "no configuration",
                             older or "no configuration of this folder is the data that fingerprint identifies"))
    return problems, confirmed
