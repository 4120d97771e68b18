"""The dataset card's Markdown body, generated from the manifest, the build report and the kept rows.

The YAML header (the contract with ``load_dataset``) comes from ``publish.card_yaml``; this module
writes what a person reads: counts, curation, risks, licenses and citations. Nothing is typed by
hand, so the card always describes the data beside it.
"""

from __future__ import annotations

import re

import pandas as pd

from . import CLASS_NAMES
from .baseline.evidence import card_section as shortcut_evidence_section
from .citation import citations
from .manifest import Manifest
from .records import REASONS
from .variant import card_facts, notice_lines



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
            "JPEG, a change of format that Creative Commons licenses allow as a technical modification; do not "
            "redistribute edited versions of them (crops, annotations, augmentations)."
        )
    if unstated:
        out.append(
            f"**License not stated:** for {unstated:,} image(s) the source states no license; they remain under the "
            "terms of their original publisher (see the source's `url` of each case). Check them before any "
            "redistribution."
        )
    return out


_SPLIT_ORDER = {"train": 0, "test": 1}


def card_body(manifest: Manifest, report: dict, kept: pd.DataFrame) -> str:
    counts = report["counts"]
    where = card_facts(manifest)  # published release or not; how commands name this manifest
    lines = [
        f"# {manifest.data['title']}",
        "",
        *notice_lines(where, counts),
        f"Release **{manifest.version}** of `{manifest.name}`, built by covid19-cxr-dataset {report['package_version']}.",
        "",
        manifest.data.get("description", "").strip(),
        "",
        "```python",
        "import datasets",
        'dataset = datasets.load_dataset("path/to/this/folder")  # DatasetDict with train and test',
        "```",
        "",
        "## Contents",
        "",
        "| split | " + " | ".join(CLASS_NAMES) + " | total |",
        "|---|" + "---:|" * (len(CLASS_NAMES) + 1),
    ]
    for split_name, per_class in sorted(counts.items(), key=lambda item: _SPLIT_ORDER.get(item[0], 9)):
        row = [per_class.get(c, 0) for c in CLASS_NAMES]
        lines.append(f"| {split_name} | " + " | ".join(f"{n:,}" for n in row) + f" | {sum(row):,} |")
    lines += ["", "Images per source and class:", "", "| split | source | class | images |", "|---|---|---|---:|"]
    for split_name, per_source in sorted(report["source_label_counts"].items(), key=lambda item: _SPLIT_ORDER.get(item[0], 9)):
        for source, per_label in sorted(per_source.items()):
            for label, n in per_label.items():
                lines.append(f"| {split_name} | {source} | {label} | {n:,} |")
    lines += [
        "",
        "Columns: `image` (8-bit grayscale JPEG), `label` (ClassLabel: " + ", ".join(f"{i} = {c}" for i, c in enumerate(CLASS_NAMES)) + "), "
        "`source`, `source_path` (path in the source at the pinned version), `patient_id` (normalized across sources), "
        "`view`, `finding` (the source's own text), `license` (as the source states it), `sha256` (of the source file).",
        "",
        "## Sources",
        "",
    ]
    for source in manifest.sources:
        pin = f"`{source['repository']}` at commit `{source['commit']}`" if source["kind"] == "github" else \
            f"`{source.get('dataset', source['name'])}` version {source.get('dataset_version', '-')}"
        described = f" — {source['description']}" if source.get("description") else ""
        lines.append(f"- **{source['name']}**{described}: {pin}. License: {source['license']}.")
    lines += ["", "## Curation", "", manifest.data.get("release_notes", "").strip(), "",
              f"{report['candidates']:,} candidate files were considered; exclusions by reason:", "",
              "| reason | files | meaning |", "|---|---:|---|"]
    for reason, n in report["exclusions_by_reason"].items():
        lines.append(f"| `{reason}` | {n:,} | {REASONS.get(reason, '')} |")
    checks = report["checks"]
    lines += [
        "",
        f"Checks: counts match the manifest: **{checks['counts_match_manifest']}**; patients in both splits: "
        f"**{len(checks['patients_in_both_splits'])}**; near-duplicate pairs across splits: "
        f"**{len(checks['near_duplicate_pairs_across_splits'])}**; files without a pinned checksum: **{checks['unverified_files']}**.",
        "Every exclusion is listed in `build_report.json` with its reason.",
        "",
    ]
    if manifest.data.get("known_risks"):
        lines += ["## Known risks", "", manifest.data["known_risks"].strip(), ""]
    lines += [shortcut_evidence_section(report)]  # baseline/evidence.py: probe results of a committed certificate
    lines += [
        "## Licenses",
        "",
        "Each image keeps its source's license (column `license`). The code that builds this dataset is MIT "
        "licensed; that does not relicense the images.",
        "",
        "| source | license | images |",
        "|---|---|---:|",
    ]
    for source, license_text, n in license_table(kept):
        lines.append(f"| {source} | {license_text} | {n:,} |")
    warnings = license_warnings(kept)
    if warnings:
        lines += [""] + [f"- {w}" for w in warnings] + ["", "Filter on the `license` column if your use requires it."]
    lines += ["", "## Provenance", "",
              f"- manifest sha256: `{report['manifest_sha256']}`",
              f"- fingerprint (decoded pixels and labels): `{report['fingerprint']}`",
              "- verify this folder with `cxr-dataset verify <folder>`", "",
              "## Citation", "", "Please cite this release and the works it is built from "
              "(`cxr-dataset cite " + where["manifest_option"] + "` prints them in BibTeX, APA or CFF):", "", "```bibtex"]
    lines += [c.bibtex.strip() + "\n" for c in citations(manifest)]
    lines += ["```", ""]
    return "\n".join(lines)
