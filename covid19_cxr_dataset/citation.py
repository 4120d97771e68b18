"""How to cite a release: the release itself, then every work it is built from, as BibTeX, APA or CFF.

The facts come from the manifest (its ``citations`` and each source's ``citations``: key, APA
``text`` and ``bibtex``), so ``cxr-dataset cite``, the dataset card and CITATION.cff never disagree
with the data. The release's own entry is generated from the manifest's title and version.

    from covid19_cxr_dataset import citation, manifest
    print(citation.format_citations(manifest.load(manifest.find("1.0.0")), "bibtex"))

CFF output follows the Citation File Format 1.2.0 (https://citation-file-format.github.io/): the
release as ``type: dataset`` with every work it is built from under ``references``.
``package_cff`` gives the same for the package itself (the repository's CITATION.cff).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from . import __version__
from .errors import CxrDatasetError, ManifestError
from .manifest import Manifest

PACKAGE_NAME = "covid19-cxr-dataset"
PROJECT_URL = "https://pypi.org/project/covid19-cxr-dataset/"  # the package's public home (issue 2: pip install covid19-cxr-dataset)
"""Placeholder for the project's public home; replace it here and in CITATION.cff once it has one."""
AUTHORS = "covid19-cxr-dataset maintainers"
RELEASE_YEAR = 2026
FORMATS = ("bibtex", "apa", "cff")
CFF_VERSION = "1.2.0"

_ARXIV = re.compile(r"arXiv[:\s]*(\d{4}\.\d{4,5})", re.IGNORECASE)
_BIBTEX_TO_CFF = {
    "article": "article", "inproceedings": "conference-paper", "conference": "conference-paper",
    "book": "book", "techreport": "report", "phdthesis": "thesis", "mastersthesis": "thesis",
    "software": "software", "dataset": "data", "data": "data", "online": "website", "unpublished": "unpublished",
}


@dataclass(frozen=True)
class Citation:
    """One work to cite. ``role``: ``release`` (this dataset), ``reference`` (the manifest's own
    citations: the paper it reproduces, works the card relies on) or ``source`` (a work it is built from)."""

    key: str
    text: str  # APA
    bibtex: str
    role: str
    source: str = ""  # the manifest source it belongs to (role "source")
    bibtex_key: str = ""  # the key inside ``bibtex`` (may differ from ``key``, the manifest's)
    entry_type: str = "misc"
    fields: dict[str, str] = field(default_factory=dict)  # parsed BibTeX fields, LaTeX markup removed


def cited_fingerprints(manifest: Manifest, config: str | None = None,
                       fingerprints: dict[str, str] | None = None) -> dict[str, str]:
    """{configuration: fingerprint} a citation carries: ``fingerprints`` (a verified folder's), else the
    ones the manifest records (none until known); only ``config``'s when one is named; default first."""
    known = manifest.fingerprints if fingerprints is None else fingerprints
    names = [config] if config else [c.name for c in manifest.configs] + sorted(set(known) - {c.name for c in manifest.configs})
    return {name: known[name] for name in names if known.get(name)}


def _fingerprint_text(cited: dict[str, str], several: bool) -> str:
    """``fingerprint of configuration paper: <hex>; ...`` and how to check a copy against it."""
    if not cited:
        return ""
    values = "; ".join(f"fingerprint of configuration {name}: {value}" if several else f"fingerprint {value}"
                       for name, value in cited.items())
    return f"{values} (check a copy with: cxr-dataset verify DIR --fingerprint HEX)"


def citations(manifest: Manifest, config: str | None = None, url: str = "", *,
              fingerprints: dict[str, str] | None = None) -> list[Citation]:
    """The release's own citation (``url``: where it lives, if known), then every work the manifest cites
    (its own, then each source's), no repeats. ``fingerprints``: what the release's entry carries
    (``cited_fingerprints``; ``{}``: none)."""
    out = [release_citation(manifest, config, url, fingerprints=fingerprints)]
    seen = {out[0].key}
    listed = [(c, "reference", "") for c in manifest.citations]
    listed += [(c, "source", s.name) for s in manifest.sources for c in s.citations]
    for entry, role, source in listed:
        if entry["key"] in seen:
            continue
        seen.add(entry["key"])
        entry_type, bibtex_key, fields = parse_bibtex(entry["bibtex"], where=f"{manifest.path}: citation {entry['key']!r}")
        out.append(Citation(entry["key"], entry["text"].strip(), entry["bibtex"].strip(), role, source, bibtex_key,
                            entry_type, fields))
    return out


def release_citation(manifest: Manifest, config: str | None = None, url: str = "", *,
                     fingerprints: dict[str, str] | None = None) -> Citation:
    """How to cite version X of this dataset: title, version, the package that builds it, year,
    ``url``, where the release lives (its Hub repository) when known: none is invented for a local build
    (issue 25: a package index page where no package is published is not where a release lives), and
    the fingerprint of each configuration when known (``cited_fingerprints``), so a reader can
    check a copy (``cxr-dataset verify DIR --fingerprint HEX``).

    A release with several configurations names them (or, with ``config``, the one used)."""
    title, version = manifest.title, manifest.version
    configs = manifest.configs
    key = f"{manifest.name}-{version}" + (f"-{config}" if config and len(configs) > 1 else "")
    which = ""
    if config and len(configs) > 1:
        which = f", configuration {manifest.config(config).name}"
    elif len(configs) > 1:
        which = ", configurations " + " and ".join(c.name + (" (default)" if c.default else "") for c in configs)
    note = f"Dataset release {version} ({manifest.name}){which}, built with the {PACKAGE_NAME} Python package, version {__version__}"
    marks = _fingerprint_text(cited_fingerprints(manifest, config, fingerprints), len(configs) > 1)
    note += f"; {marks}" if marks else ""
    bibtex = "\n".join([
        f"@misc{{{key},",
        f"  title={{{_bibtex_escape(title)}}},",
        f"  author={{{{{AUTHORS}}}}},",
        f"  year={{{RELEASE_YEAR}}},",
        f"  version={{{version}}},",
        *([f"  howpublished={{\\url{{{url}}}}},"] if url else []),
        f"  note={{{_bibtex_escape(note)}}}",
        "}",
    ])
    text = (f"{AUTHORS}. ({RELEASE_YEAR}). {title} (Version {version}{which.replace(', c', '; c', 1) if config else ''}) [Data set]. "
            f"Built with the {PACKAGE_NAME} Python package, version {__version__}." + (f" {marks[0].upper()}{marks[1:]}." if marks else "")
            + (f" {url}" if url else ""))
    fields = {"title": title, "author": AUTHORS, "year": str(RELEASE_YEAR), "version": version, "note": note,
              **({"url": url} if url else {})}
    return Citation(key, text, bibtex, "release", "", key, "misc", fields)


def with_url(bibtex: str, url: str) -> str:
    """A release entry (``release_citation``'s BibTeX) that says where the release lives: its
    ``howpublished`` line replaced by ``\\url{url}`` (before ``note``), or removed when ``url`` is ""."""
    lines = [line for line in bibtex.strip().splitlines() if not line.strip().startswith("howpublished=")]
    if url:
        at = next((i for i, line in enumerate(lines) if line.strip().startswith("note=")), len(lines) - 1)
        lines.insert(at, f"  howpublished={{\\url{{{url}}}}},")
    return "\n".join(lines)


def format_citations(manifest: Manifest, fmt: str = "bibtex", config: str | None = None, url: str = "", *,
                     fingerprints: dict[str, str] | None = None) -> str:
    """All citations of a release as one text: ``bibtex``, ``apa`` or ``cff`` (a CITATION.cff for the release).

    ``config`` names the configuration used (the release entry then says which); ``url`` where the
    release lives (e.g. its Hugging Face repository), when known. ``fingerprints``: {configuration:
    fingerprint} of a verified folder; default: the ones the manifest records. A ``config`` neither the
    manifest nor ``fingerprints`` knows is refused (ManifestError), however many it has."""
    known = [c.name for c in manifest.configs] + [name for name in fingerprints or {} if name not in {c.name for c in manifest.configs}]
    if config is not None and config not in known:
        raise ManifestError(f"{manifest.path}: --config {config}: no configuration named {config!r} in {manifest.name} "
                            f"{manifest.version}; it has {', '.join(known)}. Pass one of them, or leave --config out")
    entries = citations(manifest, config, url, fingerprints=fingerprints)
    cited = cited_fingerprints(manifest, config, fingerprints)
    if fmt == "bibtex":
        release, works = entries[0], entries[1:]
        unknown = "" if cited else " (no fingerprint recorded: `cxr-dataset cite --release DIR` cites your verified folder's)"
        return "\n\n".join(
            [f"% This dataset: {manifest.name} {manifest.version}{unknown}", release.bibtex,
             "% The works it is built from and relies on"] + [c.bibtex for c in works]
        ) + "\n"
    if fmt == "apa":
        return "\n\n".join(c.text for c in entries) + "\n"
    if fmt == "cff":
        return dump_cff(release_cff(manifest, entries, url, fingerprints=cited))
    raise CxrDatasetError(f"unknown citation format {fmt!r}; use one of {', '.join(FORMATS)}")


# ---- CFF -------------------------------------------------------------------------------------

def release_cff(manifest: Manifest, entries: list[Citation] | None = None, url: str = "", *,
                fingerprints: dict[str, str] | None = None) -> dict[str, Any]:
    """CITATION.cff content for one release of the dataset (``type: dataset``); ``url``: where it lives,
    if known; each fingerprint (``cited_fingerprints``) is one of its ``identifiers``."""
    entries = entries or citations(manifest, url=url, fingerprints=fingerprints)
    cited = cited_fingerprints(manifest, None, fingerprints)
    data: dict[str, Any] = {
        "cff-version": CFF_VERSION,
        "message": (f"If you use release {manifest.version} of this dataset, please cite it and the works it is "
                    "built from (references)."),
        "type": "dataset",
        "title": manifest.title,
        "version": manifest.version,
        "authors": [{"name": AUTHORS}],
        **({"url": url} if url else {}),
        "keywords": ["COVID-19", "chest X-ray", "radiography", "image classification", "dataset"],
    }
    if cited:
        data["identifiers"] = [
            {"type": "other", "value": value,
             "description": f"{PACKAGE_NAME} fingerprint of configuration {name} (check a copy: cxr-dataset verify DIR --fingerprint {name}={value})"}
            for name, value in cited.items()
        ]
    if manifest.description:
        data["abstract"] = " ".join(manifest.description.split())
    data["references"] = [package_reference()] + [cff_reference(c) for c in entries if c.role != "release"]
    return data


def package_cff(manifest: Manifest) -> dict[str, Any]:
    """CITATION.cff content for the package itself (``type: software``), referencing the works of ``manifest``."""
    return {
        "cff-version": CFF_VERSION,
        "message": ("If you use this software, please cite it, the dataset release you built with it "
                    "(`cxr-dataset cite --version VERSION`) and the works it is built from (references)."),
        "type": "software",
        "title": PACKAGE_NAME,
        "version": __version__,
        "authors": [{"name": AUTHORS}],
        "license": "MIT",
        "url": PROJECT_URL,
        "abstract": ("Rebuild, verify, cite and publish the COVID-19 chest X-ray dataset of Zhong (arXiv 2007.09695) "
                     "from its public sources, and certify each release with the paper's DCNN."),
        "keywords": ["COVID-19", "chest X-ray", "dataset", "reproducibility", "Hugging Face datasets"],
        "references": [cff_reference(c) for c in citations(manifest) if c.role != "release"],
    }


PACKAGE_CFF_HEADER = """\
# Citation File Format 1.2.0 (https://citation-file-format.github.io/) for the covid19-cxr-dataset package.
# Generated from the newest manifest's citations; tests/test_cite.py checks that it is current. Regenerate:
#   python -c "from covid19_cxr_dataset import citation; print(citation.package_cff_text(), end='')" > CITATION.cff
# To cite a dataset release instead: cxr-dataset cite --version VERSION [--format bibtex|apa|cff]
"""


def package_cff_text(manifest: Manifest | None = None) -> str:
    """The repository's CITATION.cff: ``package_cff`` of ``manifest`` (default: the newest release)."""
    if manifest is None:
        from . import manifest as manifests

        newest = [folder for name, _, folder in manifests.available() if name == manifests.DEFAULT_NAME]
        if not newest:
            raise CxrDatasetError(f"no {manifests.DEFAULT_NAME} manifest under {manifests.manifests_root()}; pass a manifest")
        manifest = manifests.load(newest[-1])
    return PACKAGE_CFF_HEADER + dump_cff(package_cff(manifest))


def package_reference() -> dict[str, Any]:
    return {"type": "software", "title": PACKAGE_NAME, "version": __version__,
            "authors": [{"name": AUTHORS}], "url": PROJECT_URL, "license": "MIT"}


def cff_reference(citation: Citation) -> dict[str, Any]:
    """A CFF ``references`` entry from a citation's parsed BibTeX."""
    f = citation.fields
    kind = _BIBTEX_TO_CFF.get(citation.entry_type)
    if kind is None:  # @misc: the manifest's sources are data sets; anything else is generic
        kind = "data" if citation.role == "source" else "generic"
    ref: dict[str, Any] = {"type": kind, "title": f.get("title", citation.key), "authors": cff_authors(f.get("author", ""))}
    if f.get("year", "").isdigit():
        ref["year"] = int(f["year"])
    for bib, cff in (("journal", "journal"), ("volume", "volume"), ("number", "issue"), ("doi", "doi")):
        if f.get(bib):
            ref[cff] = int(f[bib]) if bib in ("volume", "number") and f[bib].isdigit() else f[bib]
    if f.get("pages"):
        start, _, end = f["pages"].replace("–", "--").partition("--")
        ref["start"], ref["end"] = _int_or_str(start.strip("-")), _int_or_str(end.strip("-") or start)
    if f.get("publisher"):
        ref["publisher"] = {"name": f["publisher"]}
    arxiv = _ARXIV.search(" ".join([f.get("journal", ""), f.get("eprint", ""), citation.text]))
    url = f.get("url") or _url_in(f.get("howpublished", "")) or (f"https://arxiv.org/abs/{arxiv.group(1)}" if arxiv else "")
    if url:
        ref["url"] = url
    if arxiv:
        ref["identifiers"] = [{"type": "other", "value": f"arXiv:{arxiv.group(1)}", "description": "arXiv identifier"}]
    ref["notes"] = (f"Source '{citation.source}' of this dataset." if citation.role == "source"
                    else "Cited by this dataset's manifest and card.") + f" BibTeX key: {citation.bibtex_key or citation.key}."
    return ref


def cff_authors(author_field: str) -> list[dict[str, str]]:
    """BibTeX ``author`` (``Last, First and ...``) as CFF persons; ``{Braced Name}`` is an entity, ``others`` "et al."."""
    authors: list[dict[str, str]] = []
    for name in re.split(r"\s+and\s+", author_field.strip()) if author_field.strip() else []:
        name = name.strip()
        if name == "others":
            authors.append({"name": "et al."})
            continue
        if name.startswith("{") and name.endswith("}"):
            authors.append({"name": _clean(name)})
            continue
        name = _clean(name)
        if "," in name:
            family, given = (part.strip() for part in name.split(",", 1))
            authors.append({"family-names": family, **({"given-names": given} if given else {})})
        elif " " in name:
            given, family = name.rsplit(" ", 1)
            authors.append({"family-names": family, "given-names": given})
        else:
            authors.append({"name": name})
    return authors or [{"name": "anonymous"}]


def dump_cff(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


# ---- BibTeX ----------------------------------------------------------------------------------

def parse_bibtex(entry: str, *, where: str = "BibTeX entry") -> tuple[str, str, dict[str, str]]:
    """(entry type, key, fields) of one BibTeX entry; field values lose their braces and ``\\url{}``."""
    head = re.match(r"\s*@(\w+)\s*\{\s*([^,\s]+)\s*,", entry)
    if not head:
        raise CxrDatasetError(f"{where}: expected a BibTeX entry like '@article{{key, ...}}', found {entry[:40]!r}; fix the manifest")
    fields: dict[str, str] = {}
    pos = head.end()
    while True:
        match = re.compile(r"[\s,]*(\}|[A-Za-z][\w-]*)\s*(=?)\s*").match(entry, pos)
        if not match:
            raise CxrDatasetError(f"{where}: the entry is not closed by '}}' (or a field name is malformed) "
                                  f"at character {pos}; fix the manifest's bibtex")
        if match.group(1) == "}":
            break
        if not match.group(2):
            raise CxrDatasetError(f"{where}: expected '=' after field {match.group(1)!r}; fix the manifest's bibtex")
        name, pos = match.group(1).lower(), match.end()
        value, pos = _bibtex_value(entry, pos, where)
        fields[name] = " ".join(value.split()) if name == "author" else _clean(value)  # braces mark entities
    return head.group(1).lower(), head.group(2), fields


def _bibtex_value(text: str, pos: int, where: str) -> tuple[str, int]:
    if pos < len(text) and text[pos] in "{\"":
        closing = "}" if text[pos] == "{" else "\""
        depth, i = 0, pos + 1
        while i < len(text):
            char = text[i]
            if char == "{":
                depth += 1
            elif char == "}" and depth > 0:
                depth -= 1
            elif char == closing and depth == 0:
                return text[pos + 1:i], i + 1
            i += 1
        raise CxrDatasetError(f"{where}: unbalanced braces in a field value; fix the manifest's bibtex")
    match = re.compile(r"[^,}\s]+").match(text, pos)  # a bare number or macro
    if not match:
        raise CxrDatasetError(f"{where}: empty field value at character {pos}; fix the manifest's bibtex")
    return match.group(0), match.end()


def _clean(value: str) -> str:
    value = re.sub(r"\\url\{([^{}]*)\}", r"\1", value)
    value = value.replace("{", "").replace("}", "")
    return " ".join(value.split())


def _url_in(text: str) -> str:
    match = re.search(r"(https?://\S+)", text)
    return match.group(1) if match else ""


def _int_or_str(value: str) -> int | str:
    return int(value) if value.isdigit() else value


def _bibtex_escape(text: str) -> str:
    return re.sub(r"([&%$#_])", r"\\\1", text)
