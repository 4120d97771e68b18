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
* :func:`open_regular` opens a file that must be a regular file (not a FIFO, a device such as
  ``/dev/zero``, a socket or a folder) of at most ``max_bytes``, without blocking: a FIFO named like
  a handed-in file would otherwise hang the reader, and a device would be read until memory runs out.
  :func:`read_regular` reads one whole.
"""

from __future__ import annotations

import csv
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

import pandas as pd
import yaml

from .errors import ManifestError, NotARegularFile


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


_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


def file_kind(path: Path | str) -> str:
    """"" for a regular file (symbolic links followed), else what ``path`` is: "no such file", "a FIFO
    (named pipe)", "a folder"...; nothing is opened."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no such file"
    except OSError as error:
        return f"unreadable ({error.strerror or error})"
    if stat.S_ISREG(mode):
        return ""
    return next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")


def open_regular(path: Path | str, *, max_bytes: int | None = None, what: str = "file") -> BinaryIO:
    """``path`` opened for binary reading, refused unless it is a regular file (symbolic links are
    followed) of at most ``max_bytes``. Opening never blocks: a FIFO is opened non-blocking, seen for
    what it is and closed. ``what`` names the file in the message (e.g. "the missing-files report").

    Raises:
        NotARegularFile: a FIFO, device, socket or folder, or a file over ``max_bytes``.
        OSError: the file cannot be opened (missing, permissions), as ``open`` raises it.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = next((name for test, name in _FILE_KINDS if test(info.st_mode)), "not a regular file")
            raise NotARegularFile(f"{path}: {what} is {kind}, not a regular file; refusing to read it (it could block "
                                  "or never end). Pass the path of the file itself")
        if max_bytes is not None and info.st_size > max_bytes:
            raise NotARegularFile(f"{path}: {what} is {info.st_size:,} bytes, over the limit of {max_bytes:,} bytes for "
                                  "such a file; it is not the file expected: pass the right one")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: Path | str, *, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of the regular file ``path`` (:func:`open_regular`), at most ``max_bytes`` of them
    whatever its size says (a file that grows while it is read is refused too)."""
    with open_regular(path, max_bytes=max_bytes, what=what) as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise NotARegularFile(f"{path}: {what} grew past the limit of {max_bytes:,} bytes while it was read; pass a "
                              "file that is complete")
    return data
