"""Convert stage, as the build runs it: every image through the conversion cache, on worker processes.

Converted images are kept under ``<cache>/converted/<key>/<sha256[:2]>/`` where ``<key>`` names the
settings and every library that can change the output bytes (``convert.output_fingerprint``), and
each file is ``<sha256 of the source>.<conversion><suffix>`` (``cache_path``), so a rebuild
converts nothing twice and knows each image's conversion path. Beside each entry,
``<entry>.json`` records ``{"sha256", "size"}`` of the output, and ``repair`` when the source lacked
something its pixels did not need (``ConvertedImage.repair``: a JPEG's end marker, a PNG's end chunk),
which the build report lists (``conversion_summary``); an entry is reused only while it matches that
record, so a replaced, truncated or emptied file is converted again.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

import pandas as pd

from . import convert
from .convert import CONVERSIONS, SUFFIXES, library_versions
from .errors import ConversionError, CxrDatasetError
from .interrupts import worker_pool
from .records import exclude


def cache_folder(cache: Path, settings: convert.ConvertSettings) -> Path:
    """The conversion cache of ``settings`` under the download cache ``cache``."""
    identity = f"{settings.cache_identity()}|{convert.output_fingerprint()}"
    key = f"q{settings.quality}-side{settings.max_side or 'orig'}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"
    return cache / "converted" / key


def _record_path(target: Path) -> Path:
    """``<sha256>.jpg.json`` beside a converted image: ``{"sha256", "size"}`` of it."""
    return target.with_name(target.name + ".json")


def _entry_ok(target: Path) -> bool:
    """An entry is reused only while its bytes still hash to what was recorded when it was written."""
    try:
        record = json.loads(_record_path(target).read_text(encoding="utf-8"))
        data = target.read_bytes()
    except (OSError, ValueError):
        return False
    return (
        isinstance(record, dict) and record.get("size") == len(data) and len(data) > 0
        and record.get("sha256") == hashlib.sha256(data).hexdigest()
    )


def _store(target: Path, image: bytes, repair: str = "") -> None:
    """Image first, then its record, each by atomic rename: a crash in between leaves an entry without
    a record, which is converted again."""
    suffix = f".{os.getpid()}.tmp"  # one writer per process
    record = json.dumps({"sha256": hashlib.sha256(image).hexdigest(), "size": len(image), **({"repair": repair} if repair else {})})
    for path, data in ((target, image), (_record_path(target), record.encode())):
        temporary = path.with_name(path.name + suffix)
        try:
            temporary.write_bytes(data)
            os.replace(temporary, path)
        except OSError as error:
            with contextlib.suppress(OSError):
                temporary.unlink()
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise CxrDatasetError(
                f"cannot write the converted image {path.name} into the conversion cache {target.parent.parent} "
                f"({error.strerror or error}); pass --cache-dir (or set COVID19_CXR_CACHE) to a writable folder, or "
                "use a cache that already holds this release's conversions"
            ) from None


def _convert_one(task: tuple[str, str, convert.ConvertSettings]) -> tuple[str, str]:
    """Worker: convert one file into the conversion cache; returns (target path, "") or ("", "reason\\terror")."""
    source_path, stem, settings = task
    cached = cached_output(Path(stem))
    if cached is not None and _entry_ok(cached):
        return str(cached), ""
    try:
        result = convert.convert_file(Path(source_path), settings)
    except ConversionError as error:
        return "", f"{error.reason}\t{error}"
    target_path = cache_path(Path(stem), result.conversion)
    _store(target_path, result.data, result.repair)
    return str(target_path), ""


def conversions(kept: pd.DataFrame, cache: Path, settings: convert.ConvertSettings, workers: int) -> Iterator[tuple[str, str]]:
    """(converted path or "", error) for each row of ``kept`` (``local_path``, ``sha256``), in row
    order, from ``workers`` processes (in this one when ``workers <= 1``).

    Close the generator when you stop early (``contextlib.closing``): the worker processes are then
    terminated at once, pending images dropped (``interrupts.worker_pool``), so Ctrl-C or SIGTERM does
    not wait for every queued conversion and no worker outlives the command."""
    folder = cache_folder(cache, settings)
    try:
        for prefix in {s[:2] for s in kept["sha256"]}:  # once here, not once per image in the workers
            (folder / prefix).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise CxrDatasetError(
            f"cannot create the conversion cache {folder} ({error.strerror or error}); pass --cache-dir (or set "
            "COVID19_CXR_CACHE) to a writable folder"
        ) from None
    tasks = [(p, str(folder / s[:2] / s), settings) for p, s in zip(kept["local_path"], kept["sha256"])]
    if workers <= 1:
        yield from map(_convert_one, tasks)
        return
    with worker_pool(workers) as pool:
        yield from pool.map(_convert_one, tasks, chunksize=4)


def separate_failures(kept: pd.DataFrame, results: list[tuple[str, str]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows with their ``converted_path``, and the rows that failed as ``convert`` exclusions."""
    kept = kept.copy()
    kept["converted_path"] = [target for target, _ in results]
    errors = pd.Series([error for _, error in results], index=kept.index)
    remaining, dropped = exclude(
        kept.drop(columns="converted_path"), kept["converted_path"].eq(""), stage="convert",
        reason=errors.map(lambda e: e.split("\t", 1)[0] if e else ""), detail=errors.map(lambda e: e.split("\t", 1)[-1]),
    )
    remaining["converted_path"] = kept.loc[remaining.index, "converted_path"]
    return remaining, dropped


# ---- cache file names: <sha256 of the source>.<conversion><suffix> ---------------------------------

def cache_path(stem: Path, conversion: str) -> Path:
    """Where a conversion cache keeps an output: ``<stem>.<conversion><suffix>``."""
    return stem.with_name(f"{stem.name}.{conversion}{SUFFIXES[conversion]}")


def cached_output(stem: Path) -> Path | None:
    """The cached output for ``stem``, whichever path it took, or None."""
    for conversion in CONVERSIONS:
        path = cache_path(stem, conversion)
        if path.is_file():
            return path
    return None


def conversion_of(path: str | Path) -> str:
    """The conversion path of a cached output, from its name (``cache_path``)."""
    name = Path(path).name
    for conversion, suffix in SUFFIXES.items():
        if name.endswith(f".{conversion}{suffix}"):
            return conversion
    raise ValueError(f"{path}: not a conversion cache file name (<sha256>.<conversion><suffix>)")


def conversion_summary(kept: pd.DataFrame) -> dict:
    """For the build report: images per conversion path, the library versions the bytes depend on, and
    the images whose source lacked something its pixels did not need (``repaired``: source, path and
    the repair, from the entry records)."""
    counts = {conversion: 0 for conversion in CONVERSIONS}
    repaired = []
    for row in kept.itertuples() if "converted_path" in kept else ():
        if row.converted_path:
            counts[conversion_of(row.converted_path)] += 1
            repair = _recorded_repair(Path(row.converted_path))
            if repair:
                repaired.append({"source": row.source, "source_path": row.source_path, "repair": repair})
    return {"counts": counts, "libraries": library_versions(),
            "repaired": sorted(repaired, key=lambda r: (r["source"], r["source_path"]))}


def _recorded_repair(target: Path) -> str:
    try:
        record = json.loads(_record_path(target).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    return str(record.get("repair", "")) if isinstance(record, dict) else ""
