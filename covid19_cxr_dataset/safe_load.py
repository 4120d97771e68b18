"""Readers for the text files the package is handed: YAML (manifests, dataset cards, recipes) and CSV lists.

Every one of these files may come from someone else (a variant manifest, a downloaded release, a
recipe from a colleague), so reading one must never hang, eat memory or end in a traceback:

* :func:`yaml_load` refuses YAML aliases (``*name``). An alias re-uses a node, and nested aliases
  expand exponentially ("billion laughs": 2.5 KB of YAML that takes gigabytes and minutes to load).
  None of the package's files needs them; anchors alone (``&name``) are harmless and accepted. Bytes
  must be UTF-8 (a BOM is allowed). Problems are raised as :class:`yaml.YAMLError` subclasses, so
  callers keep their one ``except yaml.YAMLError`` and their own error type.
* :func:`csv_table` reads a CSV list as strings; an unbalanced quote, undecodable bytes or an empty
  file become one :class:`~covid19_cxr_dataset.errors.ManifestError` naming the file and the fix.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from .errors import ManifestError


class YAMLRefused(yaml.MarkedYAMLError):
    """A YAML text the package will not load (an alias, or bytes that are not UTF-8)."""


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that stops at the first alias, before anything is expanded."""

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise YAMLRefused(
                problem=f"YAML aliases (*{event.anchor}) are not accepted (nested aliases expand exponentially); "
                "write the values out in full",
                problem_mark=event.start_mark,
            )
        return super().compose_node(parent, index)


def yaml_load(data: str | bytes) -> Any:
    """``yaml.safe_load`` without aliases; ``bytes`` are decoded as UTF-8 first.

    Raises:
        yaml.YAMLError: invalid YAML, an alias (:class:`YAMLRefused`), or bytes that are not UTF-8.
    """
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise YAMLRefused(
                problem=f"not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start}); "
                "save the file as UTF-8"
            ) from None
    loader = _NoAliasLoader(data)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def csv_table(path: Path, **read_csv_options) -> pd.DataFrame:
    """A UTF-8 CSV file as a table of strings (empty cells stay ``""``).

    Raises:
        ManifestError: the file is empty, not UTF-8, or not parseable CSV (e.g. an unbalanced quote).
    """
    path = Path(path)
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8", **read_csv_options)
    except UnicodeDecodeError as error:
        raise ManifestError(
            f"{path}: not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset {error.start}); "
            "save the file as UTF-8"
        ) from None
    except pd.errors.EmptyDataError:
        raise ManifestError(f"{path}: the file is empty; expected a CSV header line and rows") from None
    except (pd.errors.ParserError, csv.Error) as error:
        detail = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise ManifestError(
            f"{path}: not valid CSV ({detail}); check for an unbalanced double quote (a quote that opens a "
            'cell must close it; write a literal quote as "")'
        ) from None
