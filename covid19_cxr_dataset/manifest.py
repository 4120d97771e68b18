"""Manifest stage: find, load and validate a release's manifest folder.

A release is a folder ``builder_manifests/<name>/<version>/`` holding ``manifest.yaml`` and the
lists it names (locks, decisions). It is data, not code: read with ``yaml.safe_load`` and checked
against ``MANIFEST_SCHEMA``; an unknown key, a missing pin or a wrong type is a ManifestError that
names the file, the key and the fix.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from . import CLASS_NAMES
from . import safe_load
from .errors import ManifestError

MANIFEST_FILE = "manifest.yaml"
DEFAULT_NAME = "covid19-cxr"
_COUNTS = {
    "type": "object",
    "propertyNames": {"enum": list(CLASS_NAMES)},
    "additionalProperties": {"type": "integer", "minimum": 0},
}
_CITATION = {
    "type": "object",
    "additionalProperties": False,
    "required": ["key", "text", "bibtex"],
    "properties": {"key": {"type": "string"}, "text": {"type": "string"}, "bibtex": {"type": "string"}},
}
_LABELS = {"type": "object", "additionalProperties": {"enum": list(CLASS_NAMES)}}
_COMMON_SOURCE = {
    "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]*$"},
    "kind": {"type": "string"},
    "description": {"type": "string"},
    "homepage": {"type": "string"},
    "license": {"type": "string"},
    "citations": {"type": "array", "items": _CITATION},
    "labels": _LABELS,
}
GITHUB_SOURCE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "kind", "repository", "commit", "metadata", "image_folder", "lock", "labels", "license"],
    "properties": {
        **_COMMON_SOURCE,
        "kind": {"const": "github"},
        "repository": {"type": "string", "pattern": r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$"},
        "commit": {"type": "string", "pattern": "^[0-9a-f]{40}$"},
        "metadata": {
            "type": "object",
            "additionalProperties": False,
            "required": ["path", "layout"],
            "properties": {
                "path": {"type": "string"},
                "encoding": {"type": "string"},
                "layout": {"enum": ["cohen", "chung"]},
            },
        },
        "image_folder": {"type": "string"},
        "lock": {"type": "string"},
        "inconclusive_findings": {"type": "array", "items": {"type": "string"}},
    },
}
KAGGLE_SOURCE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "kind", "dataset", "dataset_version", "archive_root", "files", "labels", "license"],
    "properties": {
        **_COMMON_SOURCE,
        "kind": {"const": "kaggle"},
        "dataset": {"type": "string", "pattern": r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$"},
        "dataset_version": {"type": "integer", "minimum": 1},
        "archive_root": {"type": "string"},
        "archive_sha256": {"type": "string", "pattern": "^([0-9a-f]{64})?$"},
        "files": {"type": "string"},
        "view": {"type": "string"},
    },
}
DICOM_SOURCE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "kind", "files", "license"],
    "properties": {
        **_COMMON_SOURCE,
        "kind": {"const": "dicom"},
        "files": {"type": "string"},
        "base_url": {"type": "string"},
        "local_dir": {"type": "string"},
    },
}
MANIFEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["schema_version", "name", "version", "title", "sources", "filters", "convert", "split", "expected_counts"],
    "properties": {
        "schema_version": {"const": 1},
        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]*$"},
        "version": {"type": "string", "pattern": r"^\d+\.\d+\.\d+([-+][0-9A-Za-z.-]+)?$"},
        "title": {"type": "string"},
        "description": {"type": "string"},
        "card_license": {"type": "string"},
        "release_notes": {"type": "string"},
        "known_risks": {"type": "string"},
        "citations": {"type": "array", "items": _CITATION},
        "sources": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["kind"],
                "properties": {"kind": {"enum": ["github", "kaggle", "dicom"]}},
                "allOf": [
                    {"if": {"properties": {"kind": {"const": "github"}}}, "then": GITHUB_SOURCE},
                    {"if": {"properties": {"kind": {"const": "kaggle"}}}, "then": KAGGLE_SOURCE},
                    {"if": {"properties": {"kind": {"const": "dicom"}}}, "then": DICOM_SOURCE},
                ],
            },
        },
        "filters": {
            "type": "object",
            "additionalProperties": False,
            "required": ["modalities", "frontal_views", "lateral_views"],
            "properties": {
                "modalities": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                "frontal_views": {"type": "array", "items": {"type": "string"}},
                "lateral_views": {"type": "array", "items": {"type": "string"}},
                "exclude_paths_under": {"type": "array", "items": {"type": "string"}},
                "exact_duplicates": {"type": "boolean"},
                "decisions": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {k: {"type": "string"} for k in ("views", "annotations", "duplicates", "exclusions", "patients")},
                },
                "quota": {
                    "type": "object",
                    "propertyNames": {"enum": list(CLASS_NAMES)},
                    "additionalProperties": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["keep", "order"],
                        "properties": {
                            "keep": {"type": "integer", "minimum": 0},
                            "order": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                            "description": {"type": "string"},
                        },
                    },
                },
            },
        },
        "convert": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "quality": {"type": "integer", "minimum": 1, "maximum": 100},
                "max_side": {"type": ["integer", "null"], "minimum": 16},
            },
        },
        "split": {
            "type": "object",
            "additionalProperties": False,
            "required": ["seed", "rules"],
            "properties": {
                "seed": {"type": "string"},
                "rules": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["method"],
                        "properties": {
                            "source": {"type": "string"},
                            "label": {"enum": list(CLASS_NAMES)},
                            "method": {"enum": ["upstream", "patient-hash"]},
                            "map": {"type": "object", "additionalProperties": {"enum": ["train", "test"]}},
                            "test_images": {"type": "integer", "minimum": 0},
                            "test_fraction": {"type": "number", "minimum": 0, "maximum": 1},
                        },
                    },
                },
            },
        },
        "expected_counts": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"train": _COUNTS, "test": _COUNTS},
        },
    },
}

_FIXES = {
    "additionalProperties": "remove the key or check its spelling against docs/MANIFEST.md",
    "required": "add the key (see docs/MANIFEST.md)",
    "pattern": "use the documented form (commits are full 40-character lowercase SHAs)",
    "type": "use the documented type",
    "enum": "use one of the allowed values",
    "const": "use the documented value",
}


@dataclass(frozen=True)
class Manifest:
    """A validated manifest and the folder it came from."""

    folder: Path
    data: dict[str, Any]

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def version(self) -> str:
        return self.data["version"]

    @property
    def path(self) -> Path:
        return self.folder / MANIFEST_FILE

    @property
    def sources(self) -> list[dict[str, Any]]:
        return self.data["sources"]

    def source(self, name: str) -> dict[str, Any]:
        for source in self.sources:
            if source["name"] == name:
                return source
        raise ManifestError(f"{self.path}: no source named {name!r}; sources are {[s['name'] for s in self.sources]}")

    def file(self, relative: str) -> Path:
        """A file the manifest names, relative to its folder; must exist."""
        path = (self.folder / relative).resolve()
        if self.folder.resolve() not in path.parents:
            raise ManifestError(f"{self.path}: {relative!r} points outside the manifest folder; keep lists beside manifest.yaml")
        if not path.is_file():
            raise ManifestError(f"{self.path}: names {relative!r}, but {path} does not exist; add the file or fix the name")
        return path

    def sha256(self) -> str:
        """Hash of every file in the manifest folder (names and bytes), as the build report records it."""
        digest = hashlib.sha256()
        for path in sorted(p for p in self.folder.rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(self.folder)).encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        return digest.hexdigest()


def manifests_root() -> Path:
    """``builder_manifests/``: $COVID19_CXR_MANIFESTS, else beside the package (source checkout), else packaged."""
    env = os.environ.get("COVID19_CXR_MANIFESTS")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "builder_manifests", here / "_manifests"):
        if candidate.is_dir():
            return candidate
    return here.parent / "builder_manifests"


def available(root: Path | None = None) -> list[tuple[str, str, Path]]:
    """Every (name, version, folder) with a manifest.yaml under the manifests root, sorted."""
    root = root or manifests_root()
    found = [(p.parent.parent.name, p.parent.name, p.parent) for p in root.glob(f"*/*/{MANIFEST_FILE}")]
    return sorted(found, key=lambda item: (item[0], _version_key(item[1])))


def _version_key(version: str) -> tuple:
    return tuple(int(x) if x.isdigit() else x for x in re.split(r"[.+-]", version))


def find(version: str, name: str = DEFAULT_NAME, root: Path | None = None) -> Path:
    root = root or manifests_root()
    folder = root / name / version
    if not (folder / MANIFEST_FILE).is_file():
        known = ", ".join(f"{n} {v}" for n, v, _ in available(root)) or "none"
        raise ManifestError(
            f"no manifest for {name} {version} under {root}; available: {known}. "
            "Run `cxr-dataset manifests` to list them or pass --manifest PATH."
        )
    return folder


def load(folder: Path | str) -> Manifest:
    """Load and validate ``<folder>/manifest.yaml`` (``folder`` may also be the yaml file itself)."""
    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    path = folder / MANIFEST_FILE
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(f"{path} does not exist; pass the folder that holds manifest.yaml") from None
    try:
        data = safe_load.yaml_load(text)  # no aliases, UTF-8 only
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ManifestError(f"{path}: not valid YAML{where}: {getattr(error, 'problem', error)}; fix the syntax") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: expected a mapping of keys at the top level, found {type(data).__name__}")
    validate(data, path)
    manifest = Manifest(folder=folder, data=data)
    _check_references(manifest)
    return manifest


def validate(data: dict[str, Any], path: Path) -> None:
    validator = jsonschema.Draft202012Validator(MANIFEST_SCHEMA)
    errors = sorted(validator.iter_errors(data), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if not errors:
        return
    error = _most_specific(errors)
    key = _key_path(error.absolute_path)
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        key = f"{key}.{extra[0]}" if key and extra else (extra[0] if extra else key)
        message = f"unknown key {key!r}"
    elif error.validator == "required":
        message = f"missing key: {error.message} (under {key or 'the top level'})"
    else:
        message = f"key {key!r}: {error.message}"
    raise ManifestError(f"{path}: {message}; {_FIXES.get(error.validator, 'see docs/MANIFEST.md')}")


def _most_specific(errors: list[jsonschema.ValidationError]) -> jsonschema.ValidationError:
    """The deepest error: for if/then schemas the root error only says 'failed', the leaf says why."""
    best = max(errors, key=lambda e: len(e.absolute_path))
    while best.context:
        best = max(best.context, key=lambda e: len(e.absolute_path))
    return best


def _key_path(parts) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _check_references(manifest: Manifest) -> None:
    """Cross-field checks the schema cannot express."""
    names = [s["name"] for s in manifest.sources]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ManifestError(f"{manifest.path}: source names must be unique; repeated: {duplicates}")
    for source in manifest.sources:
        for key in ("lock", "files"):
            if key in source:
                manifest.file(source[key])
    for relative in manifest.data["filters"].get("decisions", {}).values():
        manifest.file(relative)
    for rule in manifest.data["split"]["rules"]:
        if "source" in rule and rule["source"] not in names:
            raise ManifestError(f"{manifest.path}: split rule names source {rule['source']!r}, not one of {names}")
        if rule["method"] == "upstream" and "map" not in rule:
            raise ManifestError(f"{manifest.path}: split rule with method 'upstream' needs a 'map' of upstream split -> train/test")
