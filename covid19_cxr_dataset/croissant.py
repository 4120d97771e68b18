"""``croissant.json``: the release described in Croissant 1.0 (MLCommons) with its Responsible-AI fields.

    record_sets = mlcroissant.Dataset("covid19-cxr-1.0.0/croissant.json").records("paper")

Like the card, the file is generated from ``build_report.json`` and the shards' rows alone
(``render(report, rows)``), so ``verify`` regenerates it byte for byte; its columns come from
``shards.FEATURES``, the object the shards are written with, and their words from ``columns.COLUMNS``.

What it holds:

- ``distribution``: one ``cr:FileObject`` per parquet shard (relative path, size, sha256), and one
  ``cr:FileSet`` per configuration over that configuration's shard folders. A FileSet without
  ``containedIn`` is read from the folder that holds this file: download the release (or the Hub
  repository at its tag) first, then point a Croissant reader at the local ``croissant.json``.
- ``recordSet``: ``splits`` (``cr:Split``: the split names), ``labels`` (the class names by index),
  and one record set per configuration (``configurations``: as ``release`` resolves them, so a
  release written before configurations is one, ``release.LEGACY_CONFIG``, as verify, cite and
  baseline name it) with every column plus ``split`` (taken from the shard's file name); ``label``
  references ``labels``, ``split`` references ``splits``. Its description states the configuration's
  fingerprint as the build report does (what ``verify --fingerprint NAME=HEX`` checks): the fields
  are the fingerprint's columns, every one of ``shards.FEATURES``.
- the card's facts: name, version, description, licenses (per image, as the sources state them),
  ``citeAs`` (this release, with where it lives once ``publish`` recorded its Hub repository) and
  ``citation`` (the works it is built from), and the RAI fields: data collection, preprocessing,
  annotation and curation, known biases, limitations, personal and sensitive information, use cases.

Written by hand as JSON-LD, not through mlcroissant's Python API: mlcroissant pulls in rdflib,
networkx, scipy, jsonpath-rw and etils (about 150 MB) for what is a JSON document here, and its
output would depend on its installed version, which would make ``verify``'s byte comparison depend on
it too. The tests validate the file with mlcroissant and read every configuration's records back.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
from datasets import ClassLabel, Image, Value

from . import CLASS_NAMES, card_sections, release
from .columns import COLUMNS
from .records import split_rank
from .shards import FEATURES

CROISSANT_NAME = "croissant.json"
CONFORMS_TO = ["http://mlcommons.org/croissant/1.0", "http://mlcommons.org/croissant/RAI/1.0"]
PARQUET = "application/x-parquet"
SPLITS_ID = "splits"
LABELS_ID = "labels"

CONTEXT: dict[str, Any] = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/",
    "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract",
    "field": "cr:field",
    "fileProperty": "cr:fileProperty",
    "fileObject": "cr:fileObject",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "parentField": "cr:parentField",
    "path": "cr:path",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "samplingRate": "cr:samplingRate",
    "sc": "https://schema.org/",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
}
"""The @context of Croissant 1.0 (as the specification's examples and mlcroissant write it)."""


def render(report: dict, rows: pd.DataFrame) -> str:
    """croissant.json of a release, exactly (sorted keys nowhere: the order is the one written here)."""
    return json.dumps(document(report, rows), indent=1, ensure_ascii=False) + "\n"


def configurations(report: dict) -> list[dict[str, Any]]:
    """The report's configurations as ``release`` resolves them (the default first; a release written
    before configurations is one, ``release.LEGACY_CONFIG``, over every shard): name, default,
    description, shard folders, shards (paths relative to the folder) and the fingerprint the report
    states (the one ``verify --fingerprint NAME=HEX`` checks)."""
    stated = release.stated_fingerprints(report)
    out = []
    for name in release.available_configs(report):
        config = release.resolve_config(Path(), report, name, stated=False)
        entry = (report.get("configs") or {}).get(name, {})
        shards = sorted(report.get("shards", {})) if config.shards is None else list(config.shards)
        out.append({"name": name, "default": config.default, "description": entry.get("description", ""),
                    "folders": list(entry.get("folders") or [""]), "shards": shards, "fingerprint": stated.get(name, "")})
    return out


def document(report: dict, rows: pd.DataFrame) -> dict[str, Any]:
    """The JSON-LD document of a release (see the module docstring)."""
    card = report.get("card", {})
    configs = configurations(report)
    default_rows = rows[rows["shard"].isin(configs[0]["shards"])]
    where = card_sections.release_url(report)
    citations = card_sections.citations(report)
    doc: dict[str, Any] = {
        "@context": CONTEXT,
        "@type": "sc:Dataset",
        "conformsTo": list(CONFORMS_TO),
        "name": str(report.get("dataset") or card.get("name", "")),
        "alternateName": card.get("title", ""),
        "description": _plain(" ".join(part for part in (card.get("title", "") + ".", card.get("description", "")) if part.strip(". "))),
        "version": str(report.get("version", "")),
        **({"url": where} if where else {}),
        "license": license_texts(default_rows),
        "isLiveDataset": False,
        "keywords": list(card_sections.KEYWORDS),
        "isBasedOn": [s["homepage"] for s in card.get("sources", []) if s.get("homepage")],
        "citeAs": citations[0] if citations else _plain(f"{card.get('title') or report.get('dataset', '')}, version "
                                                        f"{report.get('version', '')}. {where}"),
        **({"citation": citations[1:]} if len(citations) > 1 else {}),
        **rai_fields(report, default_rows),
        "distribution": distribution(report, configs),
        "recordSet": record_sets(report, configs),
    }
    return {key: value for key, value in doc.items() if value not in ("", [], None)}


def license_texts(rows: pd.DataFrame) -> list[str]:
    """The licenses of the default configuration's images, as the sources state them, most images first."""
    counts = rows["license"].str.strip().replace("", "not stated (the original publisher's terms apply)").value_counts()
    return [text for text, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]


def rai_fields(report: dict, rows: pd.DataFrame) -> dict[str, str]:
    """Croissant RAI 1.0 fields, from the manifest's card text in the report and the build's own facts."""
    card = report.get("card", {})
    sources = "; ".join(f"{s['name']}{' (' + s['description'] + ')' if s.get('description') else ''}: "
                        f"{_plain(s.get('pin', ''))}, license: {s.get('license', '') or 'not stated'}" for s in card.get("sources", []))
    conversions = report.get("conversions") or {}
    counts = ", ".join(f"{name} {n:,}" for name, n in (conversions.get("counts") or {}).items() if n)
    unverified = report.get("unverified_files") or []
    fields = {
        "rai:dataCollection": _plain(
            f"{card.get('description', '')} Rebuilt by the covid19-cxr-dataset package from public sources at pinned "
            f"versions, every file checked against its pin where one exists: {sources}."),
        "rai:dataPreprocessingProtocol": _plain(
            "Every image converted to one 8-bit grayscale image without metadata: JPEG sources keep their luminance "
            "coefficients bit for bit (lossless-jpeg), the others are decoded and normalized (normalized-jpeg, "
            f"normalized-png); the column `conversion` says which. {('Conversions: ' + counts + '.') if counts else ''}"),
        "rai:dataAnnotationProtocol": _plain(
            "Labels are the sources' own findings, mapped to " + ", ".join(CLASS_NAMES) + " by the manifest; no image "
            "was labelled anew. Curation (exclusions and flags, each with its reason, listed in build_report.json): "
            + card.get("release_notes", "")),
        "rai:dataBiases": _plain(card.get("known_risks", "")),
        "rai:dataLimitations": _plain(
            (f"{len(unverified):,} file(s) were used without a pinned checksum (unpinned-files.csv lists them). "
             if unverified else "") + "Licenses differ per image (column license): " + " ".join(license_warning_texts(rows))),
        "rai:personalSensitiveInformation": _plain(" ".join(card_sections.personal_information(report))),
        "rai:dataUseCases": _plain(card_sections.intended_use(report)),
    }
    return {key: value for key, value in fields.items() if value.strip(" :;")}


def license_warning_texts(rows: pd.DataFrame) -> list[str]:
    from .card import license_warnings

    return [_plain(text) for text in license_warnings(rows)] or ["no NonCommercial, NoDerivatives or unstated license."]


def distribution(report: dict, configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One FileObject per shard (sha256, size), then one FileSet per configuration."""
    shards = report.get("shards", {})
    files = [
        {"@type": "cr:FileObject", "@id": path, "name": path, "contentUrl": path, "encodingFormat": PARQUET,
         "contentSize": f"{int(entry.get('bytes', 0))} B", "sha256": str(entry.get("sha256", ""))}
        for path, entry in sorted(shards.items())
    ]
    sets = [
        {"@type": "cr:FileSet", "@id": _file_set_id(c["name"]), "name": _file_set_id(c["name"]),
         "description": f"The parquet shards of configuration {c['name']} (each listed above with its sha256).",
         "encodingFormat": PARQUET, "includes": _globs(c)}
        for c in configs
    ]
    return files + sets


def record_sets(report: dict, configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    splits = _split_names(report, configs)
    out = [
        {"@type": "cr:RecordSet", "@id": SPLITS_ID, "name": SPLITS_ID, "dataType": "cr:Split",
         "description": "The splits of every configuration (an image is on the same side in each).",
         "key": {"@id": f"{SPLITS_ID}/name"},
         "field": [_field(f"{SPLITS_ID}/name", "sc:Text", "split name")],
         "data": [{f"{SPLITS_ID}/name": split} for split in splits]},
        {"@type": "cr:RecordSet", "@id": LABELS_ID, "name": LABELS_ID, "dataType": "sc:Enumeration",
         "description": "The classes, by the index the label column holds.",
         "key": {"@id": f"{LABELS_ID}/index"},
         "field": [_field(f"{LABELS_ID}/index", "sc:Integer", "class index"), _field(f"{LABELS_ID}/name", "sc:Text", "class name")],
         "data": [{f"{LABELS_ID}/index": index, f"{LABELS_ID}/name": name} for index, name in enumerate(CLASS_NAMES)]},
    ]
    for config in configs:
        out.append({
            "@type": "cr:RecordSet", "@id": config["name"], "name": config["name"],
            "description": _plain(config.get("description") or f"Configuration {config['name']}.")
                           + (" The default configuration." if config.get("default") else "")
                           + (f" Fingerprint {config['fingerprint']} (check a copy: cxr-dataset verify DIR --fingerprint "
                              f"{config['name']}={config['fingerprint']})." if config.get("fingerprint") else ""),
            "field": [_split_field(config["name"], splits)] + [_column_field(config["name"], name, feature)
                                                               for name, feature in FEATURES.items()],
        })
    return out


def _column_field(config: str, name: str, feature: Any) -> dict[str, Any]:
    """A record-set field from one ``shards.FEATURES`` column."""
    source: dict[str, Any] = {"fileSet": {"@id": _file_set_id(config)}, "extract": {"column": name}}
    extra: dict[str, Any] = {}
    if isinstance(feature, Image):
        data_type = "sc:ImageObject"
        source["transform"] = {"jsonPath": "bytes"}  # datasets.Image is stored as a struct {bytes, path}
    elif isinstance(feature, ClassLabel):
        data_type = "sc:Integer"
        extra["references"] = {"field": {"@id": f"{LABELS_ID}/index"}}
    elif isinstance(getattr(feature, "feature", None), Value):  # a list of values (datasets' List, or Sequence before 4.0)
        data_type, extra["repeated"] = _data_type(feature.feature), True
    else:
        data_type = _data_type(feature)
    return {**_field(f"{config}/{name}", data_type, COLUMNS.get(name, "")), "source": source, **extra}


def _split_field(config: str, splits: list[str]) -> dict[str, Any]:
    # The split is in the shard's name (data/<folder>/<split>-NNNNN-of-NNNNN.parquet). mlcroissant applies the
    # regex again to the value when it joins with `splits`, so the pattern also matches a bare split name.
    names = "|".join(re.escape(s) for s in splits)
    pattern = rf"^(?:data/(?:[^/]+/)?)?({names})(?:-\d{{5}}-of-\d{{5}}\.parquet)?$"
    return {**_field(f"{config}/split", "sc:Text", "the split: " + ", ".join(splits)),
            "source": {"fileSet": {"@id": _file_set_id(config)}, "extract": {"fileProperty": "fullpath"},
                       "transform": {"regex": pattern}},
            "references": {"field": {"@id": f"{SPLITS_ID}/name"}}}


def _field(field_id: str, data_type: str, description: str) -> dict[str, Any]:
    return {"@type": "cr:Field", "@id": field_id, "name": field_id, "description": _plain(description), "dataType": data_type}


def _data_type(feature: Any) -> str:
    dtype = getattr(feature, "dtype", "string") if isinstance(feature, Value) else "string"
    if dtype.startswith(("int", "uint")):
        return "sc:Integer"
    if dtype.startswith("float"):
        return "sc:Float"
    if dtype == "bool":
        return "sc:Boolean"
    return "sc:Text"


def _file_set_id(config: str) -> str:
    return f"{config}-shards"


def _globs(config: dict[str, Any]) -> list[str]:
    folders = config.get("folders") or [""]
    return [f"data/{folder}/*.parquet" if folder else "data/*.parquet" for folder in folders]


def _split_names(report: dict, configs: list[dict[str, Any]]) -> list[str]:
    found = {path.rsplit("/", 1)[-1].split("-", 1)[0] for c in configs for path in c.get("shards", [])}
    found |= set(report.get("counts", {}))
    return sorted(found, key=lambda s: (split_rank(s), s))


def _plain(text: str) -> str:
    """Markdown emphasis, code marks and line breaks out: RAI fields and descriptions are plain text."""
    return " ".join(text.replace("**", "").replace("`", "").split())
