"""The files of a release folder that are generated from its build report and shards: what ``build``
writes after the shards, what ``verify`` regenerates and compares byte for byte, what ``publish`` uploads
beside ``build_report.json`` and the shards.

==========================  =====================================================================
``README.md``               the dataset card (``card.render_card``)
``croissant.json``          Croissant 1.0 metadata with its RAI fields (``croissant.render``)
``unpinned-files.csv``      the files used without a pinned checksum (``source,source_path``); only
                            when there are some. The card states their count and links this file.
==========================  =====================================================================

Each is a pure function of ``build_report.json`` and the shards' rows (``release.read_row_table``),
so nothing in them can be edited without ``verify`` noticing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from . import card_sections, croissant
from .card import render_card
from .release import CARD_NAME, read_row_table

CROISSANT_NAME = croissant.CROISSANT_NAME
UNPINNED_NAME = card_sections.UNPINNED_NAME
NAMES = (CARD_NAME, CROISSANT_NAME, UNPINNED_NAME)
"""Every file name this module may write, whether or not a given release has it."""


def generated_files(report: dict, rows: pd.DataFrame) -> dict[str, bytes]:
    """{file name: bytes} of every generated file of the release ``report`` describes."""
    files = {
        CARD_NAME: render_card(report, rows).encode("utf-8"),
        CROISSANT_NAME: croissant.render(report, rows).encode("utf-8"),
    }
    if report.get("unverified_files"):
        files[UNPINNED_NAME] = card_sections.unpinned_csv(report).encode("utf-8")
    return files


def write_generated(out_dir: Path, report: dict, rows: pd.DataFrame | None = None) -> dict[str, bytes]:
    """Write every generated file into ``out_dir`` (each by an atomic rename), remove a stale optional one;
    returns what was written."""
    out_dir = Path(out_dir)
    files = generated_files(report, read_row_table(out_dir) if rows is None else rows)
    for name, data in files.items():
        temporary = out_dir / f".{name}.tmp"
        temporary.write_bytes(data)
        os.replace(temporary, out_dir / name)
    for name in NAMES:
        if name not in files:
            (out_dir / name).unlink(missing_ok=True)
    return files
