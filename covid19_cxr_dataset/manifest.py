"""Manifest stage: find, load and validate a release's manifest folder.

A release is a folder ``builder_manifests/<name>/<version>/`` holding ``manifest.yaml`` and the
lists it names (locks, decisions). It is data, not code: read with ``yaml.safe_load`` and checked
against ``manifest_schema()`` (``MANIFEST_SCHEMA`` plus each source kind's section schema, ``sources/``); an unknown key, a missing pin or a wrong type is a ManifestError that
names the file, the key and the fix.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from . import CLASS_NAMES
from . import safe_load, sources
from .download import file_sha256
from .errors import ManifestError

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.yaml"
DEFAULT_NAME = "covid19-cxr"
_COUNTS = {
    "type": "object",
    "propertyNames": {"enum": list(CLASS_NAMES)},
    "additionalProperties": {"type": "integer", "minimum": 0},
}
_EXPECTED_COUNTS = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"train": _COUNTS, "test": _COUNTS},
}
_FLAG_REASONS = ["annotation-text", "annotation-other", "annotation-circle", "annotation-arrow", "annotation-box",
                 "duplicate-exact", "duplicate-near", "not-reviewed"]  # records.FLAGS
CONFIG_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["expected_counts"],
    "properties": {
        "default": {"type": "boolean"},
        "description": {"type": "string"},
        "flag_instead_of_excluding": {"type": "array", "items": {"enum": _FLAG_REASONS}},
        "leave_out_flagged": {"type": "boolean"},
        "expected_counts": _EXPECTED_COUNTS,
    },
}
MANIFEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["schema_version", "name", "version", "title", "sources", "filters", "convert", "split"],
    "properties": {
        "schema_version": {"const": 1},
        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]*$"},
        "version": {"type": "string", "pattern": r"^\d+\.\d+\.\d+([-+][0-9A-Za-z.-]+)?$"},
        "title": {"type": "string"},
        "description": {"type": "string"},
        "card_license": {"type": "string"},
        "release_notes": {"type": "string"},
        "known_risks": {"type": "string"},
        "personal_information": {"type": "string"},  # what the sources did and did not de-identify (card, croissant.json)
        "intended_use": {"type": "string"},  # what the release is for (croissant.json's rai:dataUseCases)
        "citations": {"type": "array", "items": sources.base.CITATION_SCHEMA},
        "sources": {"type": "array"},  # replaced by sources.sources_schema() in manifest_schema()
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
                    "properties": {k: {"type": "string"} for k in ("views", "annotations", "duplicates", "exclusions", "patients", "unreviewed", "accepted_hashes")},
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
                # convert.ConvertSettings: JPEG sources transcoded losslessly; what the decode path writes
                "lossless_jpeg": {"type": "boolean"},
                "fallback_format": {"enum": ["jpeg", "png"]},
                "optimize_huffman": {"type": "boolean"},
                "input_formats": {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"enum": ["jpeg", "png", "dicom"]}},
                "min_side": {"type": "integer", "minimum": 1},
            },
        },
        "split": {
            "type": "object",
            "additionalProperties": False,
            "required": ["seed", "rules"],
            "properties": {
                "seed": {"type": "string"},
                "assignment": {"type": "string"},  # the release's split as data (split.ASSIGNMENT_COLUMNS)
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
        "configs": {
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"pattern": "^[a-z][a-z0-9_-]*$"},
            "additionalProperties": CONFIG_SCHEMA,
        },
        "expected_counts": _EXPECTED_COUNTS,
        # The fingerprint of each configuration of the published release (release.FINGERPRINT_DEFINITION),
        # recorded once known, so `cxr-dataset verify` and `cite` check against it without being told.
        "fingerprints": {
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"pattern": "^[a-z][a-z0-9_-]*$"},
            "additionalProperties": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        },
    },
}


def manifest_schema() -> dict[str, Any]:
    """``MANIFEST_SCHEMA`` with the ``sources`` list checked against every registered source kind."""
    return {**MANIFEST_SCHEMA, "properties": {**MANIFEST_SCHEMA["properties"], "sources": sources.sources_schema()}}


DEFAULT_CONFIG_NAME = "default"  # the one configuration of a manifest without a ``configs`` section


@dataclass(frozen=True)
class Config:
    """One configuration of a release (docs/MANIFEST.md, "Configurations").

    The default configuration holds every selected row; ``flag`` lists the reason codes its filters
    record as a flag on the row instead of excluding it. A subset configuration
    (``leave_out_flagged``) is the default's rows that carry no flag, with the same split.
    """

    name: str
    default: bool
    description: str
    flag: frozenset[str]
    leave_out_flagged: bool
    expected_counts: dict[str, dict[str, int]]



@dataclass(frozen=True)
class QuotaRule:
    """``filters.quota.<class>``: keep at most ``keep`` rows of the class, in ``order``."""

    keep: int
    order: tuple[str, ...]
    description: str = ""


@dataclass(frozen=True)
class Filters:
    """The ``filters`` section (docs/MANIFEST.md)."""

    modalities: tuple[str, ...]
    frontal_views: tuple[str, ...]
    lateral_views: tuple[str, ...]
    exclude_paths_under: tuple[str, ...] = ()
    exact_duplicates: bool = True
    decisions: dict[str, str] = field(default_factory=dict)  # decision kind -> file, relative to the manifest folder
    quota: dict[str, QuotaRule] = field(default_factory=dict)

    @classmethod
    def from_section(cls, spec: dict[str, Any]) -> "Filters":
        return cls(
            modalities=tuple(spec["modalities"]), frontal_views=tuple(spec["frontal_views"]),
            lateral_views=tuple(spec["lateral_views"]), exclude_paths_under=tuple(spec.get("exclude_paths_under", ())),
            exact_duplicates=bool(spec.get("exact_duplicates", True)), decisions=dict(spec.get("decisions", {})),
            quota={label: QuotaRule(rule["keep"], tuple(rule["order"]), rule.get("description", ""))
                   for label, rule in spec.get("quota", {}).items()},
        )


@dataclass(frozen=True)
class SplitSpec:
    """The ``split`` section: the seed, the rules ``split.assign_splits`` applies in order, and the
    release's recorded assignment (a file of the manifest folder, "" for none)."""

    seed: str
    rules: tuple[dict[str, Any], ...]
    assignment: str = ""


_FIXES = {
    "additionalProperties": "remove the key or check its spelling against docs/MANIFEST.md",
    "required": "add the key (see docs/MANIFEST.md)",
    "pattern": "use the documented form (commits are full 40-character lowercase SHAs)",
    "type": "use the documented type",
    "enum": "use one of the allowed values",
    "const": "use the documented value",
}


def _optional_text(key: str, default: str = "") -> property:
    """A manifest key read as text, ``default`` when the manifest leaves it out."""
    return property(lambda self: self.data.get(key, default), doc=f"The manifest's ``{key}`` ({default!r} when absent).")


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
    def where(self) -> str:
        """How messages name this manifest: ``release 1.0.0 (bundled)`` for a release this package ships
        (its path is inside site-packages and means nothing to a user), else its manifest.yaml path."""
        try:  # the test of naming.is_bundled (which sits above this module)
            bundled = (manifests_root() / self.name / self.version).resolve() == self.folder.resolve()
        except OSError:
            bundled = False
        return f"release {self.version} (bundled)" if bundled else str(self.path)

    @property
    def sources(self) -> list[sources.Source]:
        """The typed sources (one ``sources.Source`` subclass per kind), in manifest order."""
        return [sources.from_section(section) for section in self.data["sources"]]

    @property
    def title(self) -> str:
        return self.data["title"]

    description = _optional_text("description")
    release_notes = _optional_text("release_notes")
    known_risks = _optional_text("known_risks")
    personal_information = _optional_text("personal_information")
    intended_use = _optional_text("intended_use")
    card_license = _optional_text("card_license", "other")

    @property
    def citations(self) -> list[dict[str, str]]:
        return list(self.data.get("citations", []))

    @property
    def filters(self) -> "Filters":
        return Filters.from_section(self.data["filters"])

    @property
    def split(self) -> "SplitSpec":
        spec = self.data["split"]
        return SplitSpec(seed=spec["seed"], rules=tuple(spec["rules"]), assignment=spec.get("assignment", ""))

    @property
    def convert(self) -> dict[str, Any]:
        """The ``convert`` section: keyword arguments of ``convert.ConvertSettings``."""
        return dict(self.data["convert"])

    @property
    def has_configs(self) -> bool:
        """Whether the manifest declares a ``configs`` section (else one configuration, ``default``)."""
        return "configs" in self.data

    @property
    def configs(self) -> list[Config]:
        """The release's configurations, the default first (one named ``default`` without ``configs``)."""
        if "configs" not in self.data:
            return [Config(DEFAULT_CONFIG_NAME, True, "", frozenset(), False, self.data["expected_counts"])]
        found = [
            Config(name, bool(spec.get("default", False)), spec.get("description", "").strip(),
                   frozenset(spec.get("flag_instead_of_excluding", [])), bool(spec.get("leave_out_flagged", False)),
                   spec["expected_counts"])
            for name, spec in self.data["configs"].items()
        ]
        return sorted(found, key=lambda c: not c.default)

    @property
    def fingerprints(self) -> dict[str, str]:
        """{configuration: fingerprint} of the published release, as recorded (empty until known)."""
        return dict(self.data.get("fingerprints", {}))

    @property
    def default_config(self) -> Config:
        return self.configs[0]

    def config(self, name: str) -> Config:
        for config in self.configs:
            if config.name == name:
                return config
        raise ManifestError(f"{self.where}: no configuration named {name!r}; configurations are {[c.name for c in self.configs]}")

    def source(self, name: str) -> sources.Source:
        for source in self.sources:
            if source.name == name:
                return source
        raise ManifestError(f"{self.where}: no source named {name!r}; sources are {[s.name for s in self.sources]}")

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
            digest.update(bytes.fromhex(file_sha256(path)))
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


VERSION_PATTERN = r"^\d+\.\d+\.\d+([-+][0-9A-Za-z.-]+)?$"
"""A release's version (the manifest schema's ``version``), and so the name of its folder under the root."""


def available(root: Path | None = None) -> list[tuple[str, str, Path]]:
    """Every (name, version, folder) with a manifest.yaml under the manifests root, oldest version first.

    A folder there is named by its release's version (``1.0.0``, ``1.0.0+local.1``); one named otherwise
    (``my-variant``) is skipped with a warning naming it, so it cannot break every later command."""
    root = root or manifests_root()
    found = []
    for path in root.glob(f"*/*/{MANIFEST_FILE}"):
        name, version, folder = path.parent.parent.name, path.parent.name, path.parent
        if not re.match(VERSION_PATTERN, version):
            log.warning("skipped %s: a folder under the manifests root %s is named by its release's version (N.N.N, "
                        "e.g. 1.0.0 or 1.0.0+local.1), not %r. Move it out of there and pass it with --manifest DIR",
                        folder, root, version)
            continue
        found.append((name, version, folder))
    return sorted(found, key=lambda item: (item[0], version_key(item[1])))


def version_key(version: str) -> tuple:
    """An order of versions that never compares a number with a word: public part (numbers), a
    pre-release (``-rc1``) before its release, then the local label's parts (``+local.2``)."""
    public, _, local = version.partition("+")
    release, dash, pre = public.partition("-")
    parts = lambda text: tuple((0, int(x), "") if x.isdigit() else (1, 0, x) for x in re.split(r"[.\-_]", text) if x)  # noqa: E731
    return parts(release), (0 if dash else 1), parts(pre), parts(local)


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
    validator = jsonschema.Draft202012Validator(manifest_schema())
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


def _check_configs(manifest: Manifest) -> None:
    data, path = manifest.data, manifest.path
    if "configs" not in data:
        if "expected_counts" not in data:
            raise ManifestError(f"{path}: missing key: 'expected_counts' (or a 'configs' section with expected_counts per configuration); see docs/MANIFEST.md")
        return
    if "expected_counts" in data:
        raise ManifestError(f"{path}: top-level 'expected_counts' and 'configs' both given; keep the counts under each configuration")
    configs = data["configs"]
    defaults = [name for name, spec in configs.items() if spec.get("default")]
    if len(defaults) != 1:
        raise ManifestError(f"{path}: exactly one configuration must have 'default: true', found {len(defaults)} ({defaults}); mark the full one")
    for name, spec in configs.items():
        if spec.get("default") and spec.get("leave_out_flagged"):
            raise ManifestError(f"{path}: configs.{name}: the default configuration holds every row; 'leave_out_flagged' belongs to a subset configuration")
        if not spec.get("default") and not spec.get("leave_out_flagged"):
            raise ManifestError(f"{path}: configs.{name}: a configuration besides the default must be 'leave_out_flagged: true' (the default's unflagged rows)")
        if not spec.get("default") and "flag_instead_of_excluding" in spec:
            raise ManifestError(f"{path}: configs.{name}: 'flag_instead_of_excluding' belongs to the default configuration, whose filters run")
    if len(configs) > 2:
        raise ManifestError(f"{path}: at most two configurations (the default and one subset) are supported, found {list(configs)}")
    if "flagged" in configs:
        raise ManifestError(f"{path}: 'flagged' is the shard folder of rows outside the subset; name the configuration otherwise")


def _check_fingerprints(manifest: Manifest) -> None:
    recorded = manifest.data.get("fingerprints")
    if recorded is None:
        return
    if "+" in manifest.version:
        raise ManifestError(f"{manifest.path}: 'fingerprints' records a published release's fingerprints; the local "
                            f"version {manifest.version} has none: remove the key")
    names = [c.name for c in manifest.configs]
    unknown = sorted(set(recorded) - set(names))
    if unknown:
        raise ManifestError(f"{manifest.path}: 'fingerprints' names {unknown}, not configurations of this release ({names}); "
                            "key each fingerprint by its configuration's name")


def _check_references(manifest: Manifest) -> None:
    """Cross-field checks the schema cannot express."""
    _check_configs(manifest)
    _check_fingerprints(manifest)
    names = [s.name for s in manifest.sources]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ManifestError(f"{manifest.path}: source names must be unique; repeated: {duplicates}")
    for source in manifest.sources:
        for relative in source.list_files():
            manifest.file(relative)
    for relative in manifest.filters.decisions.values():
        manifest.file(relative)
    if manifest.split.assignment:
        manifest.file(manifest.split.assignment)
    for rule in manifest.split.rules:
        if "source" in rule and rule["source"] not in names:
            raise ManifestError(f"{manifest.path}: split rule names source {rule['source']!r}, not one of {names}")
        if rule["method"] == "upstream" and "map" not in rule:
            raise ManifestError(f"{manifest.path}: split rule with method 'upstream' needs a 'map' of upstream split -> train/test")
