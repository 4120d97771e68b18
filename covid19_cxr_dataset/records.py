"""The record table: one row per candidate image, the only thing the stages pass to each other.

Sources create rows (``new_record_table``); download fills ``local_path`` and ``sha256``; filters
split the table into kept and excluded rows (``exclude``); convert reads ``local_path``; split
fills ``split``; publish writes the kept rows. Columns:

=================  ==========================================================================
record_id          ``"<source>:<source_path>"``, unique in a build
source             source name from the manifest (``cohen``, ``figure1``, ``actualmed``, ``kaggle``)
source_path        path of the file inside the source (repository path or archive path)
patient_id         ``"<source>:<id>"``, normalized so that one patient has one id (see sources)
finding            the source's own finding text, unchanged
label              class name from ``CLASS_NAMES``, or "" when the manifest maps no class
view               the source's view (``PA``, ``AP``, ``AP Supine``, ``L``, ``Axial``...), or ""
modality           ``X-ray``, ``CT``...
license            license of this image as its source states it ("" when unstated)
upstream_split     the source's own split (Kaggle ``train``/``val``/``test``), else ""
download_url       where the file is fetched from
git_blob_sha1      pinned git blob id (GitHub sources), else ""
sha256_expected    pinned sha256, else ""
size               pinned size in bytes, or -1 when unknown
local_path         cached file after download, else ""
sha256             sha256 of the downloaded source file, else ""
split              ``train`` / ``test`` after the split stage, else ""
flags              tuple of flag codes (``FLAGS``): what a filter found on a row it was told to keep
                   (the default configuration's ``flag_instead_of_excluding``); empty when clean
duplicate_of       record id of the kept copy, written by the filter that found the duplicate
                   (listed or exact), else ""; the split joins both copies' patients through it
=================  ==========================================================================

Excluded rows carry three more columns: ``stage`` (the module that dropped the row), ``reason``
(a reason code, listed in ``REASONS``) and ``detail`` (free text for the report).
"""

from __future__ import annotations

import hashlib

import pandas as pd

SPLITS = ("train", "test")
"""The values of ``split``, in the order every table, card and shard list shows them."""

RECORD_COLUMNS = (
    "record_id",
    "source",
    "source_path",
    "patient_id",
    "finding",
    "label",
    "view",
    "modality",
    "license",
    "upstream_split",
    "download_url",
    "git_blob_sha1",
    "sha256_expected",
    "size",
    "local_path",
    "sha256",
    "split",
    "flags",
    "duplicate_of",
)
EXCLUSION_COLUMNS = RECORD_COLUMNS + ("stage", "reason", "detail")

REASONS = {
    "label-unmapped": "finding is not one of the release's classes",
    "label-inconclusive": "the source marks the finding as inconclusive",
    "not-in-upstream-files": "metadata names a file the pinned tree does not hold",
    "modality-not-xray": "not a radiograph (CT slice or volume, ultrasound...)",
    "view-lateral": "lateral view",
    "view-not-frontal": "view is neither PA nor AP (or reviewed as not frontal)",
    "annotation-arrow": "drawn arrow on the film",
    "annotation-circle": "drawn circle or ellipse on the film",
    "annotation-box": "drawn box on the film",
    "annotation-text": "lesion text or label drawn on the film",
    "annotation-other": "other drawn lesion mark",
    "not-a-radiograph": "figure, photo or composite, not a single radiograph",
    "duplicate-exact": "byte-identical to a kept image",
    "duplicate-near": "same radiograph as a kept image (cropped, rescaled or re-encoded)",
    "manual-exclusion": "excluded by an explicit manifest decision",
    "upstream-missing": "a pinned file that could not be downloaded (HTTP status in the decision's note); see new-variant",
    "undecodable": "the image cannot be decoded",
    "image-corrupt": "the decoder reports damage (corrupt or missing entropy-coded data, premature end): the pixels are not the film",
    "image-too-many-scans": "a JPEG with more scans than any encoder writes (each one a pass over the image): a decoding-time bomb",
    "dicom-multiframe": "multi-frame DICOM: a release holds single radiographs",
    "dicom-undecodable": "DICOM pixel data cannot be decoded (transfer syntax named in detail)",
    "image-too-large": "image exceeds the decompression-bomb limit",
    "format-not-accepted": "file format (by its magic bytes) is not one the release accepts",
    "image-multiframe": "animated or multi-page image: a release holds single radiographs",
    "image-too-small": "shorter side below the release's minimum: a thumbnail or placeholder, not a film",
    "image-constant": "every pixel has the same value: a blank film",
    "over-quota": "beyond the class count the release keeps (deterministic rule in the manifest)",
    "not-reviewed": "the image could not be obtained for review; metadata alone says it qualifies",
}

FLAGS = {
    "annotation-text": REASONS["annotation-text"],
    "annotation-other": REASONS["annotation-other"],
    "annotation-circle": REASONS["annotation-circle"],
    "annotation-arrow": REASONS["annotation-arrow"],
    "annotation-box": REASONS["annotation-box"],
    "duplicate-exact": "an identical copy of another image (same bytes or same decoded pixels); `duplicate_of` names the kept copy",
    "duplicate-near": "the same radiograph as another image (cropped, rescaled or re-encoded); `duplicate_of` names the kept copy",
    "not-reviewed": REASONS["not-reviewed"],
}
"""Reason codes a configuration may keep as a flag instead of excluding (``flag_instead_of_excluding``)."""

STRING_COLUMNS = tuple(c for c in RECORD_COLUMNS if c not in ("size", "flags"))


def new_record_table(rows: list[dict]) -> pd.DataFrame:
    """Build a record table from row dicts, filling absent columns with "" (size with -1)."""
    table = pd.DataFrame(rows, columns=list(RECORD_COLUMNS))
    for column in STRING_COLUMNS:
        table[column] = table[column].astype(object).fillna("").astype(str)
    table["size"] = table["size"].fillna(-1).astype("int64")
    table["flags"] = [tuple(f) if isinstance(f, (list, tuple)) else () for f in table["flags"]]
    return table


def empty_exclusions() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="int64" if c == "size" else "object") for c in EXCLUSION_COLUMNS})


def add_flag(table: pd.DataFrame, mask: pd.Series, flag: str) -> pd.DataFrame:
    """``table`` with ``flag`` added (once, in sorted order) to the ``flags`` of the rows in ``mask``."""
    if flag not in FLAGS:
        raise ValueError(f"unknown flag code {flag!r}; add it to records.FLAGS")
    table = table.copy()
    table["flags"] = [tuple(sorted(set(f) | {flag})) if m else f for f, m in zip(table["flags"], mask.astype(bool))]
    return table


def exclude(
    table: pd.DataFrame, mask: pd.Series, *, stage: str, reason: str | pd.Series, detail: str | pd.Series = ""
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``table`` by ``mask``: return (kept rows, excluded rows with stage/reason/detail).

    ``reason`` and ``detail`` may be a constant or a Series aligned with ``table``.
    """
    if isinstance(reason, str) and reason not in REASONS:
        raise ValueError(f"unknown reason code {reason!r}; add it to records.REASONS")
    mask = mask.astype(bool)
    dropped = table[mask].copy()
    dropped["stage"] = stage
    dropped["reason"] = reason if isinstance(reason, str) else reason[mask]
    dropped["detail"] = detail if isinstance(detail, str) else detail[mask]
    unknown = set(dropped["reason"]) - set(REASONS)
    if unknown:
        raise ValueError(f"unknown reason codes {sorted(unknown)}; add them to records.REASONS")
    return table[~mask].copy(), dropped[list(EXCLUSION_COLUMNS)]


def split_rank(name: str) -> int:
    """Sort key of a split name: ``train`` before ``test`` (``SPLITS``), anything else after them."""
    return SPLITS.index(name) if name in SPLITS else len(SPLITS)


def seeded_hash(seed: str, *parts: str) -> str:
    """sha256 hex of ``seed`` and ``parts`` joined by NUL: the one stable pseudo-random order of the
    package (split groups, quota ``hash`` order, row order inside a shard)."""
    return hashlib.sha256("\0".join((seed, *parts)).encode()).hexdigest()
