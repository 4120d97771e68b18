"""Parts of the card (and of croissant.json) that say where a release lives and how to use it, made
from the build report alone like the rest of the card (``card.render_card``):

- where the release lives: the Hugging Face repository ``publish`` recorded (``card.hub_repo`` in
  the report), else nowhere public yet (``release_url``), and the citations that name it;
- the Hub metadata the card's YAML gains (``hub_metadata``: task_ids, annotations_creators, source_datasets);
- "Use it with PyTorch / TensorFlow / JAX", "Personal and sensitive information", "Point of contact";
- the count of files without a pinned checksum, with a link to ``unpinned-files.csv`` (the list
  itself lives in that file, not in the card).
"""

from __future__ import annotations

from typing import Any

from .citation import with_url

HUB_URL = "https://huggingface.co"
UNPINNED_NAME = "unpinned-files.csv"
KEYWORDS = ("COVID-19", "chest X-ray", "radiography", "image classification", "medical imaging")
TASK_IDS = ("multi-class-image-classification",)
ANNOTATIONS_CREATORS = ("found",)  # labels are the sources' own findings; nothing was labelled anew

PERSONAL_INFORMATION = (
    "These are patients' radiographs. Per image, this release keeps only the columns it documents: none of the age, sex, "
    "dates, places or clinical notes some sources publish in their metadata. `patient_id` is the source's own patient "
    "identifier (prefixed with the source's name) and `patient_group` joins the ids found to be one person, kept so "
    "that no patient sits on both sides of the split. The "
    "images are the sources' files converted to grayscale: this package removes no text burned into a film and "
    "neither de-identifies nor re-identifies anyone. Do not try to identify the people in these images."
)
NO_SOURCE_STATEMENT = ("The manifest says nothing about how its sources de-identified their images: check each source "
                       "(see Sources) before you use or share them.")
DEFAULT_USE = ("Research on image classification and on the shortcuts models take on composite datasets. "
               "Not for clinical use or diagnosis (see Known risks).")


def hub_repo(report: dict) -> str:
    """The Hugging Face dataset repository (``ORG/NAME``) ``publish`` recorded, or ""."""
    return str(report.get("card", {}).get("hub_repo", "") or "")


def hub_url(repo_id: str) -> str:
    """The web address of the Hugging Face dataset repository ``ORG/NAME``."""
    return f"{HUB_URL}/datasets/{repo_id}"


def release_url(report: dict) -> str:
    """Where the release lives: its Hub repository once published there, else "" (a local build)."""
    repo = hub_repo(report)
    return hub_url(repo) if repo else ""


def citations(report: dict) -> list[str]:
    """The report's BibTeX entries, this release first, naming where the release lives when it is known."""
    entries = [str(entry) for entry in report.get("card", {}).get("citations", [])]
    url = release_url(report)
    if entries and url:
        entries[0] = with_url(entries[0], url)
    return entries


def load_target(report: dict) -> tuple[str, str]:
    """(what ``load_dataset`` is given, the extra ``revision=`` argument) for the card's examples."""
    repo = hub_repo(report)
    if repo:
        return f'"{repo}"', f', revision="v{report.get("version", "")}"'
    return '"path/to/this/folder"', ""


def hub_metadata(report: dict) -> dict[str, Any]:
    """Keys of the card's YAML header that the Hub reads besides configs and dataset_info."""
    sources = report.get("card", {}).get("sources", [])
    named = [_slug(s) for s in sources]
    return {
        "task_ids": list(TASK_IDS),
        "annotations_creators": list(ANNOTATIONS_CREATORS),
        **({"source_datasets": [f"extended|other-{name}" for name in named]} if named else {}),
    }


def _slug(source: dict) -> str:
    homepage = str(source.get("homepage", "")).rstrip("/")
    return homepage.rsplit("/", 1)[-1] if homepage else str(source.get("name", ""))


def usage_lines(report: dict, default: str) -> list[str]:
    """"Use it with PyTorch / TensorFlow / JAX": with_format, to_tf_dataset, and mlcroissant."""
    target, revision = load_target(report)
    repo = hub_repo(report)
    folder = (f'huggingface_hub.snapshot_download({target}, repo_type="dataset"{revision})' if repo
              else '"path/to/this/folder"')
    return [
        "## Use it with PyTorch / TensorFlow / JAX",
        "",
        "The films differ in size: resize them before batching. `with_format` hands out tensors, `to_tf_dataset` a "
        "`tf.data.Dataset`; `croissant.json` describes the same shards for any Croissant reader (`mlcroissant`).",
        "",
        "```python",
        "import datasets",
        f"ds = datasets.load_dataset({target}{revision})",
        "def resize(batch, size=224):",
        '    batch["pixels"] = [image.convert("L").resize((size, size)) for image in batch["image"]]',
        "    return batch",
        'train = ds["train"].map(resize, batched=True, remove_columns=["image"])',
        'torch_train = train.with_format("torch", columns=["pixels", "label"])  # PyTorch',
        'jax_train = train.with_format("jax", columns=["pixels", "label"])  # JAX',
        'tf_train = train.to_tf_dataset(columns="pixels", label_cols="label", batch_size=32, shuffle=True)  # TensorFlow',
        "",
        "import mlcroissant  # any framework, through the Croissant metadata of the downloaded folder",
        *(["import huggingface_hub"] if repo else []),
        f"folder = {folder}",
        f'records = mlcroissant.Dataset(f"{{folder}}/croissant.json").records("{default}")',  # one dict per image
        "```",
        "",
    ]


def personal_information(report: dict) -> list[str]:
    """The "Personal and sensitive information" paragraphs: what this package keeps, then what the sources say."""
    stated = str(report.get("card", {}).get("personal_information", "") or "").strip()
    return [PERSONAL_INFORMATION, stated or NO_SOURCE_STATEMENT]


def personal_information_lines(report: dict) -> list[str]:
    lines = ["## Personal and sensitive information", ""]
    for paragraph in personal_information(report):
        lines += [paragraph, ""]
    return lines


def intended_use(report: dict) -> str:
    return str(report.get("card", {}).get("intended_use", "") or "").strip() or DEFAULT_USE


def contact_lines(report: dict) -> list[str]:
    """"Point of contact": the Hub repository's discussions once published; the sources for their images."""
    variant = report.get("card", {}).get("variant", {}) or {}
    url = release_url(report)
    lines = ["## Point of contact", ""]
    if variant.get("local") or variant.get("published"):
        lines.append("- This folder: whoever built it, from a manifest that is not a published release.")
    elif url:
        lines.append(f"- This release: the discussions of its repository, <{url}/discussions>.")
    else:
        lines.append("- This release: the maintainers of covid19-cxr-dataset, the package that builds it.")
    lines += ["- One image (its license, its patient, a request to take it out): the source it comes from (column "
              "`source`; see Sources), and this release's maintainers, who leave it out of the next version.", ""]
    return lines


def unpinned_lines(report: dict) -> list[str]:
    """The count of files without a pinned checksum per source, and where they are listed."""
    unverified = report.get("unverified_files", [])
    if not unverified:
        return []
    by_source: dict[str, int] = {}
    for record_id in unverified:
        by_source[record_id.split(":", 1)[0]] = by_source.get(record_id.split(":", 1)[0], 0) + 1
    return [
        "## Files without a pinned checksum",
        "",
        f"{len(unverified):,} file(s) were used without a recorded sha256 or git blob id ("
        + ", ".join(f"{s}: {n:,}" for s, n in sorted(by_source.items()))
        + f"); their bytes are what the archive held at build time. [`{UNPINNED_NAME}`]({UNPINNED_NAME}) lists each "
        "(`source`, `source_path`), as does `build_report.json` (`unverified_files`).",
        "",
    ]


def unpinned_csv(report: dict) -> str:
    """``unpinned-files.csv``: one row per file used without a pinned checksum (``source,source_path``)."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["source", "source_path"])
    for record_id in sorted(report.get("unverified_files", [])):
        writer.writerow(record_id.split(":", 1))
    return buffer.getvalue()
