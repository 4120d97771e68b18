"""citation.py: the release and every work it is built from, as BibTeX, APA and CITATION.cff."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from covid19_cxr_dataset import __version__, citation, manifest
from covid19_cxr_dataset.errors import CxrDatasetError
from covid19_cxr_dataset.manifest import Manifest

ROOT = Path(__file__).resolve().parent.parent
WORKS = {  # manifest key -> a string its citation must carry
    "zhong2020": "2007.09695",
    "cohen2020": "2006.11988",
    "chung2020figure1": "Figure1-COVID-chestxray-dataset",
    "chung2020actualmed": "Actualmed-COVID-chestxray-dataset",
    "kermany2018": "10.1016/j.cell.2018.02.010",
    "kermany2018data": "10.17632/rscbjbr9sj.2",
    "mooney2018": "paultimothymooney/chest-xray-pneumonia",
}

# The parts of the Citation File Format 1.2.0 schema (https://citation-file-format.github.io/1.2.0/schema.json)
# that the generated files use: required keys, reference types, persons and entities, DOI and URL forms.
_URL = {"type": "string", "pattern": "^(https|http|ftp|sftp)://.+"}
_DOI = {"type": "string", "pattern": r"^10\.\d{4,9}(\.\d+)?/[A-Za-z0-9:/_;\-\.\(\)\[\]\\]+$"}
_PERSON = {"type": "object", "additionalProperties": False, "minProperties": 1,
           "properties": {"family-names": {"type": "string", "minLength": 1}, "given-names": {"type": "string", "minLength": 1}}}
_ENTITY = {"type": "object", "additionalProperties": False, "required": ["name"],
           "properties": {"name": {"type": "string", "minLength": 1}, "website": _URL}}
_AUTHORS = {"type": "array", "minItems": 1, "items": {"anyOf": [_PERSON, _ENTITY]}}
_NUMBER = {"anyOf": [{"type": "integer"}, {"type": "string", "minLength": 1}]}
_REFERENCE = {
    "type": "object", "additionalProperties": False, "required": ["authors", "title", "type"],
    "properties": {
        "type": {"enum": ["art", "article", "audiovisual", "bill", "blog", "book", "catalogue", "conference-paper",
                          "conference", "data", "database", "dictionary", "edited-work", "encyclopedia", "film-broadcast",
                          "generic", "government-document", "grant", "hearing", "historical-work", "legal-case",
                          "legal-rule", "magazine-article", "manual", "map", "multimedia", "music", "newspaper-article",
                          "pamphlet", "patent", "personal-communication", "proceedings", "report", "serial", "slides",
                          "software-code", "software-container", "software-executable", "software-virtual-machine",
                          "software", "sound-recording", "standard", "statute", "thesis", "unpublished", "video", "website"]},
        "title": {"type": "string", "minLength": 1}, "authors": _AUTHORS, "year": _NUMBER, "journal": {"type": "string"},
        "volume": _NUMBER, "issue": _NUMBER, "start": _NUMBER, "end": _NUMBER, "doi": _DOI, "url": _URL,
        "version": {"type": "string"}, "license": {"type": "string"}, "notes": {"type": "string", "minLength": 1},
        "publisher": _ENTITY,
        "identifiers": {"type": "array", "minItems": 1, "items": {
            "type": "object", "additionalProperties": False, "required": ["type", "value"],
            "properties": {"type": {"enum": ["doi", "url", "swh", "other"]}, "value": {"type": "string"},
                           "description": {"type": "string"}}}},
    },
}
CFF_SUBSET = {
    "type": "object", "additionalProperties": False, "required": ["authors", "cff-version", "message", "title"],
    "properties": {
        "cff-version": {"const": "1.2.0"}, "message": {"type": "string", "minLength": 1},
        "type": {"enum": ["dataset", "software"]}, "title": {"type": "string", "minLength": 1},
        "version": {"type": "string"}, "authors": _AUTHORS, "url": _URL, "repository-code": _URL,
        "license": {"type": "string"}, "abstract": {"type": "string"},
        "keywords": {"type": "array", "items": {"type": "string"}},
        "references": {"type": "array", "items": _REFERENCE},
        "identifiers": _REFERENCE["properties"]["identifiers"],
    },
}


@pytest.fixture(scope="module")
def release_manifest() -> Manifest:
    return manifest.load(manifest.find("1.0.0"))


def newest(name: str = manifest.DEFAULT_NAME) -> Manifest:
    return manifest.load([folder for n, _, folder in manifest.available() if n == name][-1])


def bibtex_entries(text: str) -> list[str]:
    return [entry for entry in re.split(r"\n(?=@)", text) if entry.startswith("@")]


def test_release_comes_first_then_every_work(release_manifest):
    entries = citation.citations(release_manifest)
    assert entries[0].role == "release" and entries[0].key == "covid19-cxr-1.0.0"
    keys = [c.key for c in entries]
    assert set(WORKS) <= set(keys) and len(keys) == len(set(keys))
    assert {c.source for c in entries if c.role == "source"} == {"cohen", "figure1", "actualmed", "kaggle"}
    for c in entries:
        if c.key in WORKS:
            assert WORKS[c.key] in c.bibtex + c.text


def test_bibtex(release_manifest):
    text = citation.format_citations(release_manifest, "bibtex")
    entries = bibtex_entries(text)
    assert len(entries) == len(citation.citations(release_manifest))
    release = entries[0]
    assert release.startswith("@misc{covid19-cxr-1.0.0,")
    for expected in ("version={1.0.0}", "year={2026}", release_manifest.data["title"],
                     f"covid19-cxr-dataset Python package, version {__version__}"):
        assert expected in release
    # no URL is invented for a release that lives nowhere public yet (a package index page is not where it lives)
    assert "howpublished" not in release and "pypi.org" not in release
    hub = bibtex_entries(citation.format_citations(release_manifest, "bibtex", url="https://huggingface.co/datasets/org/cxr"))[0]
    assert "howpublished={\\url{https://huggingface.co/datasets/org/cxr}}" in hub
    assert citation.with_url(hub, "") == release.strip()
    for entry in entries:  # each entry parses: balanced braces, fields, title and author
        entry_type, key, fields = citation.parse_bibtex(entry)
        assert key and fields["title"] and fields["author"] and fields["year"].isdigit()
        assert entry.count("{") == entry.count("}")
    for needle in WORKS.values():
        assert needle in text


def test_apa_uses_each_citations_text(release_manifest):
    text = citation.format_citations(release_manifest, "apa")
    paragraphs = text.strip().split("\n\n")
    assert paragraphs[0].startswith("covid19-cxr-dataset maintainers. (2026). ")
    assert "(Version 1.0.0) [Data set]" in paragraphs[0]
    sources = [c for s in release_manifest.sources for c in s.get("citations", [])]
    for entry in release_manifest.data["citations"] + sources:
        assert entry["text"].strip() in paragraphs


def test_cff_is_valid_citation_file_format(release_manifest):
    data = yaml.safe_load(citation.format_citations(release_manifest, "cff"))
    jsonschema.validate(data, CFF_SUBSET)
    assert data["cff-version"] == "1.2.0" and data["type"] == "dataset" and data["version"] == "1.0.0"
    assert data["title"] == release_manifest.data["title"]
    references = data["references"]
    assert references[0] == citation.package_reference()
    titles = {r["title"] for r in references}
    for c in citation.citations(release_manifest)[1:]:
        assert c.fields["title"] in titles
    kermany_data = next(r for r in references if r.get("doi") == "10.17632/rscbjbr9sj.2")
    assert kermany_data["type"] == "data" and kermany_data["publisher"] == {"name": "Mendeley Data"}
    zhong = next(r for r in references if "arXiv:2007.09695" in str(r.get("identifiers")))
    assert zhong["type"] == "article" and zhong["authors"] == [{"family-names": "Zhong", "given-names": "Yi"}]
    cell = next(r for r in references if r.get("journal") == "Cell")
    assert (cell["volume"], cell["issue"], cell["start"], cell["end"]) == (172, 5, 1122, 1131)
    assert cell["authors"][-1] == {"name": "et al."}


def test_version_follows_the_manifest(release_manifest):
    data = copy.deepcopy(release_manifest.data)
    data["version"] = "1.1.0"
    other = Manifest(folder=release_manifest.folder, data=data)
    assert "version={1.1.0}" in citation.format_citations(other, "bibtex")
    assert "(Version 1.1.0)" in citation.format_citations(other, "apa")
    assert yaml.safe_load(citation.format_citations(other, "cff"))["version"] == "1.1.0"


def test_repeated_keys_are_cited_once(release_manifest):
    data = copy.deepcopy(release_manifest.data)
    data["sources"][1]["citations"] = data["sources"][1]["citations"] + data["sources"][0]["citations"]
    keys = [c.key for c in citation.citations(Manifest(folder=release_manifest.folder, data=data))]
    assert keys.count("cohen2020") == 1


def test_unknown_format(release_manifest):
    with pytest.raises(CxrDatasetError, match="bibtex, apa, cff"):
        citation.format_citations(release_manifest, "ris")


def test_bibtex_parser_handles_nesting_quotes_and_bare_numbers():
    entry_type, key, fields = citation.parse_bibtex(
        '@Article{k1, title = {The {COVID-19} set}, author = "Doe, Jane and {Big Lab} and others",\n'
        "  year = 2020, howpublished={\\url{https://example.org/x}}}"
    )
    assert (entry_type, key) == ("article", "k1")
    assert fields["title"] == "The COVID-19 set" and fields["year"] == "2020"
    assert fields["howpublished"] == "https://example.org/x"
    assert citation.cff_authors(fields["author"]) == [
        {"family-names": "Doe", "given-names": "Jane"}, {"name": "Big Lab"}, {"name": "et al."}]


def test_broken_bibtex_names_the_problem():
    with pytest.raises(CxrDatasetError, match="unbalanced braces"):
        citation.parse_bibtex("@misc{k, title={open", where="manifest.yaml: citation 'k'")
    with pytest.raises(CxrDatasetError, match="not closed"):
        citation.parse_bibtex("@misc{k, title={closed}", where="manifest.yaml: citation 'k'")
    with pytest.raises(CxrDatasetError, match="manifest.yaml: citation 'k'"):
        citation.parse_bibtex("not bibtex", where="manifest.yaml: citation 'k'")


def test_package_citation_cff_is_current():
    """CITATION.cff (the package's) is what citation.package_cff gives for the newest manifest."""
    on_disk = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    jsonschema.validate(on_disk, CFF_SUBSET)
    assert on_disk == citation.package_cff(newest()), (
        "CITATION.cff is out of date; regenerate it as its header comment says"
    )
    assert on_disk["type"] == "software" and on_disk["version"] == __version__ and on_disk["license"] == "MIT"
    text = yaml.safe_dump(on_disk)
    for needle in ("2007.09695", "2006.11988", "10.17632/rscbjbr9sj.2", "paultimothymooney", "Figure1", "Actualmed"):
        assert needle in text


def test_cite_names_the_configuration_used(release_manifest):
    from covid19_cxr_dataset.errors import ManifestError

    default = citation.format_citations(release_manifest, "bibtex")
    assert "configurations paper (default) and curated" in default
    curated = citation.format_citations(release_manifest, "bibtex", "curated")
    assert "@misc{covid19-cxr-1.0.0-curated," in curated and "configuration curated, built with" in curated
    assert "(Version 1.0.0; configuration paper)" in citation.format_citations(release_manifest, "apa", "paper")
    with pytest.raises(ManifestError, match="no configuration named 'strict'"):
        citation.format_citations(release_manifest, "apa", "strict")


def test_recorded_fingerprints_are_cff_identifiers_and_in_the_bibtex_note(release_manifest):
    data = copy.deepcopy(release_manifest.data)
    data["fingerprints"] = {"paper": "a" * 64, "curated": "b" * 64}
    recorded = Manifest(folder=release_manifest.folder, data=data)
    cff = yaml.safe_load(citation.format_citations(recorded, "cff"))
    jsonschema.validate(cff, CFF_SUBSET)
    assert [i["value"] for i in cff["identifiers"]] == ["a" * 64, "b" * 64]
    release = bibtex_entries(citation.format_citations(recorded, "bibtex"))[0]
    assert citation.parse_bibtex(release)[2]["note"].endswith(
        f"fingerprint of configuration paper: {'a' * 64}; fingerprint of configuration curated: {'b' * 64} "
        "(check a copy with: cxr-dataset verify DIR --fingerprint HEX)")
    assert "fingerprint" not in citation.format_citations(release_manifest, "cff")  # 1.0.0 records none
