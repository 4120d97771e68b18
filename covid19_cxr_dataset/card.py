"""The dataset card (README.md), generated from the build report and the shards alone.

``render_card(report, rows)`` is the whole file: the YAML header (``card_yaml``, the contract with
``load_dataset``, generated from ``shards.FEATURES``) and the Markdown body (``card_body``): counts
per configuration, flags, curation, risks, licenses and citations. Its inputs are
``build_report.json`` (which carries the manifest's card text under ``card``, see ``card_inputs``)
and the rows of the shards without their images (``release.read_row_table``), so ``verify``
regenerates the card byte for byte. A card that does not describe a published release says so in
its first lines (``card_facts``, ``notice_lines``).

Extra sections are ``{"title", "markdown"}`` items in ``report["card"]["extra_sections"]``, appended
after "Known risks": the manifest's own (``extra_sections(manifest)``, stored by ``card_inputs``),
then the shortcut evidence, which the build adds once the fingerprints are known
(``evidence.card_extra_section``).

The parts that say where the release lives and how to use it (Hub YAML keys, "Use it with PyTorch /
TensorFlow / JAX", personal information, point of contact, the unpinned-file count) are
``card_sections``; the column words are ``columns``. croissant.json is made from the same inputs
(``croissant``, ``generated``).
"""

from __future__ import annotations

import re

from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from datasets import DatasetInfo
from datasets.splits import SplitDict, SplitInfo

from . import CLASS_NAMES, card_sections  # card_sections: where it lives, how to use it (issue 25)
from .citation import citations
from .counts import count_differences, expected_counts
from .columns import columns_sentence
from .manifest import Manifest
from .naming import is_local, portable_manifest_option, public_version, published_release
from .records import FLAGS, REASONS, split_rank
from .release import CARD_NAME, available_configs, fingerprint_definition, folders_by_split, shard_glob
from .safe_load import csv_table
from .shards import FEATURES

HUB_DEFAULT_CONFIG = "default"
"""The configuration name a card gives a release written before configurations (read elsewhere as
``release.LEGACY_CONFIG``): what ``load_dataset`` calls the one configuration of a card without named ones."""



def license_table(kept: pd.DataFrame) -> list[tuple[str, str, int]]:
    """(source, license, images) for the kept rows, most images first."""
    counts = kept.assign(license=kept["license"].str.strip().replace("", "not stated")).groupby(["source", "license"]).size()
    return sorted(((s, lic, int(n)) for (s, lic), n in counts.items()), key=lambda row: (row[0], -row[2], row[1]))


_NONCOMMERCIAL = re.compile(r"(?:^|[-\s])NC(?:[-\s]|$)|non-?commercial", re.IGNORECASE)
_NODERIVATIVES = re.compile(r"(?:^|[-\s])ND(?:[-\s]|$)|no-?derivatives|no-?derivs", re.IGNORECASE)


def is_noncommercial(license_text: str) -> bool:
    """Creative Commons NonCommercial terms (``CC BY-NC-SA 4.0``, ``cc by-nc``, ``...NonCommercial...``)."""
    return bool(_NONCOMMERCIAL.search(license_text))


def is_noderivatives(license_text: str) -> bool:
    return bool(_NODERIVATIVES.search(license_text))


def license_warnings(kept: pd.DataFrame) -> list[str]:
    """The card's license warnings: NC, ND and unstated licenses counted apart."""
    licenses = kept["license"].str.strip()
    nc, nd, unstated = int(licenses.map(is_noncommercial).sum()), int(licenses.map(is_noderivatives).sum()), int(licenses.eq("").sum())
    out = []
    if nc:
        out.append(f"**NonCommercial:** {nc:,} image(s) carry an NC license: they may not be used for commercial purposes.")
    if nd:
        out.append(
            f"**NoDerivatives:** {nd:,} image(s) carry an ND license. This release stores them converted to grayscale "
            "(JPEG or PNG), a change of format that Creative Commons licenses allow as a technical modification; do not "
            "redistribute edited versions of them (crops, annotations, augmentations)."
        )
    if unstated:
        out.append(
            f"**License not stated:** for {unstated:,} image(s) the source states no license; they remain under the "
            "terms of their original publisher (see the source's `url` of each case). Check them before any "
            "redistribution."
        )
    return out




def _conversion_lines(conversions: dict | None) -> list[str]:
    """Images per conversion path and the library versions their bytes depend on (from the report)."""
    if not conversions:
        return []
    counts = ", ".join(f"{name} {n:,}" for name, n in conversions["counts"].items() if n)
    libraries = ", ".join(f"{name} {version}" for name, version in conversions["libraries"].items())
    return ["", f"Conversions: {counts}. The image bytes depend on these versions (rebuild with them for identical shards): {libraries}."]


def extra_sections(manifest: Manifest) -> list[dict[str, str]]:
    """Sections appended to the card after "Known risks", as ``{"title", "markdown"}`` items.

    The one place to add a section the manifest does not hold (e.g. shortcut evidence from a
    committed certificate): what this returns is stored in ``build_report.json`` (``card`` ->
    ``extra_sections``), so ``verify`` regenerates the card with it.
    """
    return []


def card_inputs(manifest: Manifest, *, sections: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """What the card needs from the manifest, stored in the build report (``report["card"]``);
    ``sections`` defaults to ``extra_sections(manifest)``."""
    sections = extra_sections(manifest) if sections is None else sections
    sources = []
    for source in manifest.sources:
        sources.append({"name": source.name, "description": source.description, "pin": source.card_pin(), "license": source.license,
                        "homepage": source.homepage})
    return {
        "name": manifest.name,
        "title": manifest.title,
        "description": manifest.description.strip(),
        "release_notes": manifest.release_notes.strip(),
        "known_risks": manifest.known_risks.strip(),
        "personal_information": manifest.personal_information.strip(),  # the card's "Personal and sensitive information"
        "intended_use": manifest.intended_use.strip(),  # croissant.json's rai:dataUseCases
        "license": manifest.card_license,
        "seed": manifest.split.seed,
        "sources": sources,
        # the card states the built fingerprints under Provenance; a recorded one is for `cite` and `verify`
        "citations": [c.bibtex.strip() for c in citations(manifest, fingerprints={})],
        "extra_sections": list(sections),
        "variant": card_facts(manifest),  # published release or not; how commands name this manifest
    }


def _configs(report: dict) -> list[dict[str, Any]]:
    """The report's configurations, default first (``release.available_configs``); one over the flat
    data/, named ``HUB_DEFAULT_CONFIG``, for a report written before configurations."""
    configs = report.get("configs") or {}
    if not configs:
        return [{"name": HUB_DEFAULT_CONFIG, "default": True, "folders": [], "shards": sorted(report.get("shards", {}))}]
    return [{"name": name, **configs[name]} for name in available_configs(report)]


def config_rows(rows: pd.DataFrame, config: dict[str, Any]) -> pd.DataFrame:
    """The shard rows that belong to a configuration (its shard folders)."""
    folders = config.get("folders") or [""]
    return rows[rows["folder"].isin(folders)]


def split_sizes(report: dict, rows: pd.DataFrame, config: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """{split: (num_examples from the shards, num_bytes of the shard files)}, train first."""
    mine = config_rows(rows, config)
    shards = report.get("shards", {})
    sizes = {}
    splits = {p.rsplit("/", 1)[-1].split("-", 1)[0] for p in config.get("shards", [])} | set(mine["split"])
    for split in sorted(splits, key=lambda s: split_rank(s)):
        files = [p for p in config.get("shards", []) if p.rsplit("/", 1)[-1].startswith(f"{split}-")]
        sizes[split] = (int((mine["split"] == split).sum()), int(sum(int(shards.get(p, {}).get("bytes", 0)) for p in files)))
    return sizes


def card_header(report: dict, rows: pd.DataFrame) -> str:
    card = report.get("card", {})
    configs = _configs(report)
    return card_yaml(
        license_id=card.get("license", "other"), pretty_name=card.get("title", report.get("dataset", "")), version=str(report.get("version", "")),
        configs=[{"name": c["name"], "default": bool(c.get("default")), "folders": folders_by_split(c.get("shards", []), c.get("folders")),
                  "split_sizes": split_sizes(report, rows, c)} for c in configs],
        metadata=card_sections.hub_metadata(report),  # task_ids, annotations_creators, source_datasets
    )


def render_card(report: dict, rows: pd.DataFrame) -> str:
    """README.md of a release, exactly: YAML header and body, from the build report and the shard rows."""
    return f"---\n{card_header(report, rows)}---\n\n{card_body(report, rows).rstrip()}\n"


def _count_lines(rows: pd.DataFrame) -> list[str]:
    lines = ["| split | " + " | ".join(CLASS_NAMES) + " | total |", "|---|" + "---:|" * (len(CLASS_NAMES) + 1)]
    for split_name in sorted(set(rows["split"]), key=lambda s: split_rank(s)):
        part = rows[rows["split"] == split_name]
        counts = [int((part["label"] == c).sum()) for c in CLASS_NAMES]
        lines.append(f"| {split_name} | " + " | ".join(f"{n:,}" for n in counts) + f" | {sum(counts):,} |")
    return lines


def _source_lines(rows: pd.DataFrame) -> list[str]:
    lines = ["| split | source | class | images |", "|---|---|---|---:|"]
    groups = rows.groupby(["split", "source", "label"]).size()
    for (split_name, source, label), n in sorted(groups.items(), key=lambda item: (split_rank(item[0][0]), item[0][1], item[0][2])):
        lines.append(f"| {split_name} | {source} | {label} | {int(n):,} |")
    return lines


def _flag_lines(rows: pd.DataFrame) -> list[str]:
    counts: dict[str, int] = {}
    for flags in rows["flags"]:
        for flag in flags:
            counts[flag] = counts.get(flag, 0) + 1
    if not counts:
        return []
    lines = ["| flag | images | meaning |", "|---|---:|---|"]
    lines += [f"| `{flag}` | {n:,} | {FLAGS.get(flag, REASONS.get(flag, ''))} |" for flag, n in sorted(counts.items())]
    return lines


def card_body(report: dict, rows: pd.DataFrame, extra_sections: list[dict[str, str]] | None = None) -> str:
    """The Markdown body. ``extra_sections`` defaults to the report's ``card.extra_sections``."""
    card = report.get("card", {})
    version, name = report.get("version", ""), card.get("name", report.get("dataset", ""))
    configs = _configs(report)
    default = configs[0]
    subsets = configs[1:]
    paper_rows = config_rows(rows, default)
    target, revision = card_sections.load_target(report)  # the Hub repository once published, else this folder
    lines = [
        f"# {card.get('title', name)}",
        "",
        *notice_lines(card.get("variant", {}), report.get("counts", {})),
        *deviation_lines(card.get("variant", {}), report),
        f"Release **{version}** of `{name}`, built by covid19-cxr-dataset {report.get('package_version', '')}.",
        "",
        card.get("description", ""),
        "",
        "```python",
        "import datasets",
        f'dataset = datasets.load_dataset({target}{revision})  # DatasetDict with train and test: {default["name"]!r}',
    ]
    lines += [f'{c["name"]} = datasets.load_dataset({target}, "{c["name"]}"{revision})' for c in subsets]
    lines += ["```", ""]
    lines += card_sections.usage_lines(report, default["name"])
    lines += ["## Configurations", ""]
    if subsets:
        lines += [
            f"This folder holds {len(configs)} configurations over one split, and no image twice: "
            + f"`{default['name']}` (the default) reads every shard folder ("
            + ", ".join(f"`data/{f}/`" for f in default.get("folders", [])) + "); "
            + "; ".join(f"`{c['name']}` reads only `data/{c['name']}/`, the rows of `{default['name']}` without any flag" for c in subsets)
            + ". An image is on the same side of the split in every configuration.",
            "",
        ]
    for config in configs:
        mine = config_rows(rows, config)
        title = f"### `{config['name']}`" + (" (default)" if config.get("default") else "")
        lines += [title, ""] if subsets else []
        if config.get("description"):
            lines += [config["description"], ""]
        lines += _count_lines(mine) + ["", "Images per source and class:", ""] + _source_lines(mine) + [""]
        flag_lines = _flag_lines(mine)
        if flag_lines:
            lines += ["Flags (a row can carry several; column `flags`):", ""] + flag_lines + [""]
        crossing = config.get("duplicate_pairs_across_splits") or []
        upstream = config.get("upstream_groups_in_both_splits") or []
        if crossing or upstream:
            lines += [
                f"**Across the source's own split:** {len(crossing):,} duplicate pair(s) and {len(upstream):,} patient group(s) "
                "sit on both sides because a source's own split (Kaggle's train/test) puts them there. They were kept where "
                "the source put them, not moved, so that the counts stay those of the source's split; they are listed in "
                "`build_report.json` (`configs` → `duplicate_pairs_across_splits`, `upstream_groups_in_both_splits`).",
                "",
            ]
    lines += [
        f"Row order: inside each split the rows are in a deterministic shuffled order (sha256 of the seed "
        f"`{card.get('seed', '')}` and the record id), not grouped by class or source."
        + (f" `{default['name']}` reads the `{subsets[0]['name']}` shards before the `flagged` ones, so shuffle before "
           "training on it." if subsets else ""),
        "",
        columns_sentence(),
        *_conversion_lines(report.get("conversions")),
        "",
        "## Sources",
        "",
    ]
    for source in card.get("sources", []):
        described = f" — {source['description']}" if source.get("description") else ""
        lines.append(f"- **{source['name']}**{described}: {source['pin']}. License: {source['license']}.")
    lines += ["", "## Curation", "", card.get("release_notes", ""), "",
              f"{report.get('candidates', 0):,} candidate files were considered; excluded from every configuration, by reason:", "",
              "| reason | files | meaning |", "|---|---:|---|"]
    for reason, n in report.get("exclusions_by_reason", {}).items():
        lines.append(f"| `{reason}` | {n:,} | {REASONS.get(reason, '')} |")
    checks = report.get("checks", {})
    lines += [
        "",
        f"Checks: counts match the manifest: **{checks.get('counts_match_manifest')}**; patients in both splits: "
        f"**{len(checks.get('patients_in_both_splits', []))}**; near-duplicate pairs across splits: "
        f"**{len(checks.get('near_duplicate_pairs_across_splits', []))}**; "
        + ("".join(f"recorded duplicate pairs across splits in `{c['name']}`: **{len(c.get('duplicate_pairs_across_splits') or [])}**; "
                   for c in configs if "duplicate_pairs_across_splits" in c))
        + f"files without a pinned checksum: **{checks.get('unverified_files', 0)}**.",
        "Every exclusion and every flagged image is listed in `build_report.json` with its reason.",
        "",
    ]
    lines += card_sections.unpinned_lines(report)  # the list itself is unpinned-files.csv (issue 25: card size)
    if card.get("known_risks"):
        lines += ["## Known risks", "", card["known_risks"], ""]
    for section in card.get("extra_sections", []) if extra_sections is None else extra_sections:
        lines += [f"## {section['title']}", "", section["markdown"].strip(), ""]
    lines += card_sections.personal_information_lines(report)
    lines += [
        "## Licenses",
        "",
        "Each image keeps its source's license (column `license`). The code that builds this dataset is MIT "
        "licensed; that does not relicense the images.",
        "",
        "| source | license | images |",
        "|---|---|---:|",
    ]
    for source, license_text, n in license_table(paper_rows):
        lines.append(f"| {source} | {license_text} | {n:,} |")
    warnings = license_warnings(paper_rows)
    if warnings:
        lines += [""] + [f"- {w}" for w in warnings] + ["", "Filter on the `license` column if your use requires it."]
    lines += ["", "## Provenance", "", f"- manifest sha256: `{report.get('manifest_sha256', '')}`"]
    covers = "decoded pixels and labels" if fingerprint_definition(report) == 1 else "every column of every row; the configuration's name, default and data files"
    if subsets:
        lines += [f"- fingerprint of `{c['name']}` ({covers}): `{c.get('fingerprint', '')}`" for c in configs]
    else:
        lines += [f"- fingerprint ({covers}): `{report.get('fingerprint', '')}`"]
    lines += ["- verify this folder with `cxr-dataset verify <folder>`" + (
        "" if fingerprint_definition(report) == 1 else
        "; against a fingerprint cited elsewhere (a paper, the Hub) with `cxr-dataset verify <folder> --fingerprint <hex>`"), ""]
    lines += card_sections.contact_lines(report)
    lines += ["## Citation", "", "Please cite this release and the works it is built from "
              "(`cxr-dataset cite " + card.get("variant", {}).get("manifest_option", f"--version {version}")
              + (f" --repo-id {card_sections.hub_repo(report)}" if card_sections.hub_repo(report) else "")
              + "` prints them in BibTeX, APA or CFF):", "", "```bibtex"]
    lines += [bibtex + "\n" for bibtex in card_sections.citations(report)]  # the release's entry names where it lives
    lines += ["```", ""]
    return "\n".join(lines)


# ---- the YAML header --------------------------------------------------------------------------------

def dataset_info_yaml(split_sizes: dict[str, tuple[int, int]], config_name: str | None = None) -> dict[str, Any]:
    """``dataset_info`` for the card, from FEATURES and {split: (num_examples, num_bytes)}."""
    splits = SplitDict()
    for name, (examples, nbytes) in split_sizes.items():
        splits.add(SplitInfo(name=name, num_examples=examples, num_bytes=nbytes))
    info = DatasetInfo(features=FEATURES, splits=splits, config_name=config_name)._to_yaml_dict()
    return {"config_name": config_name, **{k: v for k, v in info.items() if k != "config_name"}} if config_name else info


def card_yaml(
    *, split_sizes: dict[str, tuple[int, int]] | None = None, license_id: str, pretty_name: str, version: str,
    configs: list[dict[str, Any]] | None = None, metadata: dict[str, Any] | None = None,
) -> str:
    """The YAML header of README.md: the contract with ``datasets.load_dataset``.

    ``metadata``: more keys the Hub reads (``task_ids``, ``annotations_creators``, ``source_datasets``),
    written after ``task_categories``.

    ``configs``: one dict per configuration, the default first: ``name``, ``default``, ``folders``
    {split: the shard folders under ``data/`` holding rows of that split, "" for shards directly in
    ``data/``} and ``split_sizes`` {split: (num_examples, num_bytes)}. Without it, one default
    configuration over ``data/`` of ``split_sizes`` (the layout of releases written before configurations).
    """
    if configs is None:
        configs = [{"name": "default", "default": True, "folders": {s: [""] for s in split_sizes or {}}, "split_sizes": split_sizes or {}}]
    default = configs[0]
    total = sum(n for n, _ in default["split_sizes"].values())

    def paths(folders: list[str], split: str) -> str | list[str]:
        globs = [shard_glob(folder, split) for folder in folders]
        return globs[0] if len(globs) == 1 else globs

    header = {
        "pretty_name": pretty_name,
        "license": license_id,
        **({"license_name": "per-image-source-licenses", "license_link": "README.md#licenses"} if license_id == "other" else {}),
        "task_categories": ["image-classification"],
        **(metadata or {}),
        "tags": ["medical", "chest-x-ray", "covid-19", f"release-{version}"],
        "size_categories": [_size_category(total)],
        "configs": [
            {
                "config_name": c["name"],
                **({"default": True} if c["default"] else {}),
                "data_files": [{"split": s, "path": paths(c["folders"][s], s)} for s in c["split_sizes"] if c["folders"].get(s)],
            }
            for c in configs
        ],
        "dataset_info": (
            dataset_info_yaml(default["split_sizes"]) if len(configs) == 1 and default["name"] == "default"
            else [dataset_info_yaml(c["split_sizes"], c["name"]) for c in configs]
        ),
    }
    return yaml.safe_dump(header, sort_keys=False, allow_unicode=True)


def _size_category(n: int) -> str:
    """The Hub's size bucket for n examples."""
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < limit:
            return label
    return "100K<n<1M"


def write_card(out_dir: Path, *, header_yaml: str, body_markdown: str) -> Path:
    path = Path(out_dir) / CARD_NAME
    path.write_text(f"---\n{header_yaml}---\n\n{body_markdown.rstrip()}\n", encoding="utf-8")
    return path


# ---- where the manifest stands (the card's first lines) ------------------------------------------

def card_facts(manifest: Manifest) -> dict[str, Any]:
    """What the card needs to know about where its manifest stands, as plain data (it can live in the
    build report): how commands name the manifest, whether its version is local, the published
    release it claims to be or derive from (version and expected counts), if any, and how many files
    it accepts with other bytes than the release pins (``accepted_hashes``)."""
    published = published_release(manifest)
    accepted = manifest.filters.decisions.get("accepted_hashes")
    return {
        "accepted_hashes": len(csv_table(manifest.file(accepted))) if accepted else 0,
        # A card is published: name an unbundled manifest by its folder name, never by this machine's path.
        "manifest_option": portable_manifest_option(manifest),
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


def deviation_lines(facts: dict[str, Any], report: dict[str, Any]) -> list[str]:
    """What a variant changed of its release, as the card's first lines: files whose bytes differ from
    the release's pins, and the release's images it lacks per configuration, split and class."""
    release = (facts.get("published") or {}).get("version") or public_version(facts.get("version", ""))
    lines = []
    if facts.get("accepted_hashes"):
        lines += [f"> **{facts['accepted_hashes']:,} file(s) differ from release {release}'s pinned sha256.** This dataset "
                  "was built from files whose bytes are not the ones the release pins, recorded as a deviation in "
                  "`decisions/accepted-hashes.csv`: it is not release " + f"{release}.", ""]
    for name, config in (report.get("configs") or {}).items():
        absent = config.get("absent_from_split_file") or {}
        if absent:
            total = sum(n for per_class in absent.values() for n in per_class.values())
            parts = "; ".join(f"{split_name} " + ", ".join(f"{label} {n:,}" for label, n in per_class.items())
                              for split_name, per_class in absent.items())
            lines += [f"> `{name}` lacks {total:,} image(s) of release {release} ({parts}); every other image is on the "
                      f"side release {release} puts it.", ""]
    return lines


def card_notice(manifest: Manifest, counts: dict[str, dict[str, int]]) -> list[str]:
    """:func:`notice_lines` for a loaded manifest."""
    return notice_lines(card_facts(manifest), counts)
