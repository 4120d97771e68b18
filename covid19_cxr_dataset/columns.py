"""What each column of a release holds, in words: the one text the card's "Columns" paragraph and
the Croissant file's field descriptions are both made from (``shards.FEATURES`` says the types;
``tests/test_croissant.py`` checks that every feature has its words here).
"""

from __future__ import annotations

from . import CLASS_NAMES

COLUMNS: dict[str, str] = {
    "image": ("8-bit grayscale; JPEG sources as JPEG with their luminance kept bit for bit, the others as the "
              "manifest's fallback format"),
    "label": "ClassLabel: " + ", ".join(f"{i} = {name}" for i, name in enumerate(CLASS_NAMES)),
    "source": "the manifest's name of the source the image comes from",
    "source_path": "path in the source at the pinned version",
    "patient_id": "normalized across sources",
    "patient_group": ("every patient id linked to the same person; never on both sides of the split: group by it for "
                      "your own folds"),
    "view": "the radiographic view (PA, AP, AP Supine, ...)",
    "finding": "the source's own text",
    "license": "as the source states it; empty when it states none",
    "sha256": "of the source file, not of the stored image",
    "flags": ("what the curation found on a kept image, empty when clean; in pandas read it as `df[\"flags\"]`: "
              "`df.flags` is pandas' own `DataFrame.flags`"),
    "duplicate_of": "`source:source_path` of the kept copy when this image is a duplicate, else empty",
    "conversion": "`lossless-jpeg`, `normalized-jpeg` or `normalized-png`: the path the image took",
}
"""Column -> what it holds (Markdown), in ``shards.FEATURES`` order."""


def columns_sentence() -> str:
    """The card's "Columns: `image` (...), `label` (...), ..." sentence."""
    return "Columns: " + ", ".join(f"`{name}` ({text})" for name, text in COLUMNS.items()) + "."
