"""The pipeline: runs the stages in order and writes a release only when every check passed.

``plan`` resolves a release from metadata, locks and decisions alone (no image downloads).
``build`` then downloads, verifies, converts, splits and publishes. The output folder is written
under a temporary name beside ``out`` and renamed into place at the very end, so a failed or
interrupted build never leaves a half-written release.

The output folder, before anything is downloaded (``check_output_folder``): ``out`` may not be the
current folder or one above it, its parent may not be a file, and it may neither contain nor sit
inside the cache, the manifest folder, an input archive or a local source folder. ``--overwrite``
replaces only a folder that is a release this package wrote (its ``build_report.json`` says so).

Concurrency: a build holds ``<parent>/.<name>.lock`` (a :mod:`filelock` lock, released by the kernel
when the process dies, in any PID namespace) from its checks to the rename, so a second build of the
same ``out`` stops at once with a clear error. Staging folders ``.<name>.partial-*`` carry a marker
file; the lock holder removes leftover ones, which can only belong to dead builds.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pandas as pd
from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from . import __version__
from . import archive, convert, filters, publish, report, sources, split, variant
from .baseline.evidence import HEADING as EVIDENCE_HEADING, card_section
from .card import card_inputs, render_card
from .download import (
    KAGGLE_BASE_URL, Downloader, FileSpec, check_base_url, default_cache_dir, fetch_kaggle_archive, kaggle_archive_spec,
)
from .errors import ArchiveError, ChecksumMismatch, ConversionError, CountMismatch, CxrDatasetError, MissingUpstreamFiles
from .manifest import Manifest
from .records import exclude

log = logging.getLogger(__name__)

MISSING_REPORT_SUFFIX = ".missing-files.csv"
"""``build --out X`` writes the list of files it could not get to ``X.missing-files.csv``."""


@dataclass
class Options:
    """Everything a build or plan can be told besides the manifest (the CLI's flags)."""

    cache_dir: Path | None = None
    mirror: str | None = None
    kaggle_api: str = KAGGLE_BASE_URL
    kaggle_archive: Path | None = None
    offline: bool = False
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    progress: bool = True
    max_shard_bytes: int = publish.DEFAULT_MAX_SHARD_BYTES
    overwrite: bool = False

    @property
    def cache(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else default_cache_dir()

    @property
    def github_base(self) -> str:
        return check_base_url(self.mirror, "--mirror") if self.mirror else sources.GITHUB_RAW_BASE

    def downloader(self) -> Downloader:
        allowed = [check_base_url(self.mirror, "--mirror")] if self.mirror else []
        return Downloader(
            self.cache, offline=self.offline, workers=max(1, min(16, self.workers * 4)),
            allowed_redirect_hosts=allowed, progress=self.progress,
        )


@dataclass
class Resolution:
    """What a manifest resolves to: every candidate, the kept rows and the exclusions so far."""

    manifest: Manifest
    candidates: pd.DataFrame
    kept: pd.DataFrame
    excluded: pd.DataFrame
    decisions: filters.Decisions

    def counts(self, config: str | None = None) -> dict[str, dict[str, int]]:
        """{split: {class: n}} of one configuration (default: the default configuration)."""
        return report.count_table(self.rows(config))

    def rows(self, config: str | None = None) -> pd.DataFrame:
        """The kept rows that belong to ``config`` (default: the default configuration: all of them)."""
        chosen = self.manifest.config(config) if config else self.manifest.default_config
        return self.kept[filters.in_config(self.kept, chosen)]


# ---- stages ----------------------------------------------------------------------------------

def collect_records(manifest: Manifest, options: Options, downloader: Downloader) -> pd.DataFrame:
    """Sources stage for every source: download each pinned metadata table and parse it."""
    tables = []
    for source in manifest.sources:
        if source["kind"] == "github":
            blob, size = sources.metadata_pin(manifest, source)
            path = source["metadata"]["path"]
            spec = FileSpec(
                url=sources.github_url(source, path, options.github_base),
                cache_key=sources.github_cache_key(source, path), git_blob_sha1=blob, size=size,
            )
            local = downloader.fetch(spec)
            metadata = sources.read_metadata_csv(local, source["metadata"].get("encoding", "utf-8"))
            tables.append(sources.github_records(manifest, source, metadata, options.github_base))
        elif source["kind"] == "kaggle":
            tables.append(sources.kaggle_records(manifest, source))
        else:
            tables.append(sources.dicom_records(manifest, source))
    return pd.concat(tables, ignore_index=True)


def resolve(manifest: Manifest, options: Options, downloader: Downloader | None = None) -> Resolution:
    """Sources + every metadata-level filter (what needs no image bytes)."""
    downloader = downloader or options.downloader()
    candidates = collect_records(manifest, options, downloader)
    decisions = filters.load_decisions(manifest, candidates)
    kept, excluded = filters.metadata_filters(manifest, candidates, decisions)
    return Resolution(manifest, candidates, kept, excluded, decisions)


def finish_selection(resolution: Resolution) -> Resolution:
    """Quota and split: the last steps, run by plan on metadata and by build after conversion."""
    manifest = resolution.manifest
    kept, dropped = filters.apply_quota(manifest, resolution.kept)
    excluded = pd.concat([resolution.excluded, dropped], ignore_index=True) if len(dropped) else resolution.excluded
    # Duplicate links are the duplicate_of column: flagged copies among the kept rows, dropped copies among the excluded.
    links = split.duplicate_patient_links(pd.concat([kept, excluded], ignore_index=True), resolution.candidates)
    links += resolution.decisions.patient_links()
    seed = manifest.data["split"]["seed"]
    kept = split.assign_splits(kept, manifest.data["split"]["rules"], seed, links)
    return Resolution(manifest, resolution.candidates, publish_order(kept, seed), excluded, resolution.decisions)


def publish_order(kept: pd.DataFrame, seed: str) -> pd.DataFrame:
    """Train before test; inside a split a seeded shuffle (sha256 of seed and record id), not grouped
    by class or source, and independent of download or file-system order."""
    order = kept["record_id"].map(lambda rid: hashlib.sha256(f"{seed}\0row-order\0{rid}".encode()).hexdigest())
    side = kept["split"].map({name: i for i, name in enumerate(publish.SPLITS)})
    return kept.assign(_side=side, _order=order).sort_values(["_side", "_order"]).drop(columns=["_side", "_order"]).reset_index(drop=True)


def plan(manifest: Manifest, options: Options) -> Resolution:
    """Resolve the release from metadata, locks and decisions alone: no image is downloaded."""
    return finish_selection(resolve(manifest, options))


def check_counts(manifest: Manifest, kept: pd.DataFrame, *, shortfall_only: bool = False, config: str | None = None) -> list[str]:
    """Differences between the kept rows and each configuration's expected counts (empty when exact).

    ``kept`` is the default configuration's selection; each configuration's rows are taken from it
    (``filters.in_config``). Messages name the configuration when the release has more than one.
    ``shortfall_only``: report only cells with too few images (later stages can still remove some).
    """
    configs = [manifest.config(config)] if config else manifest.configs
    named = len(manifest.configs) > 1
    problems = []
    for chosen in configs:
        actual = report.count_table(kept[filters.in_config(kept, chosen)])
        for split_name, expected in chosen.expected_counts.items():
            for label, count in expected.items():
                got = actual.get(split_name, {}).get(label, 0)
                if got < count or (got > count and not shortfall_only):
                    problems.append((f"{chosen.name}: " if named else "") + f"{split_name}/{label}: expected {count}, got {got}")
    return problems


def image_spec(manifest: Manifest, row) -> FileSpec:
    """The download of one record-table row (a namedtuple from ``itertuples``) with a ``download_url``."""
    return FileSpec(
        url=row.download_url, cache_key=f"{row.source}/{row.source_path}" if not row.git_blob_sha1 else
        sources.github_cache_key(manifest.source(row.source), row.source_path),
        git_blob_sha1=row.git_blob_sha1, sha256=row.sha256_expected, size=int(row.size),
    )


def fetch_images(resolution: Resolution, options: Options, downloader: Downloader, *, out: Path | None = None) -> pd.DataFrame:
    """Download stage: put every kept row's file in the cache; fill ``local_path``.

    Every file that can be fetched is fetched; the ones that cannot (absent upstream or on the
    mirror, other bytes than pinned, not in the Kaggle archive or local folder) are collected and
    raised once as :class:`~covid19_cxr_dataset.errors.MissingUpstreamFiles`, after writing their
    list beside ``out`` (``<out>.missing-files.csv``; see variant.MISSING_COLUMNS).
    """
    kept = resolution.kept.copy()
    manifest = resolution.manifest
    remote = kept["download_url"].ne("")
    specs = {row.record_id: image_spec(manifest, row) for row in kept[remote].itertuples()}
    absent: dict[str, dict] = {}  # record_id -> what the downloader said
    if specs:
        try:
            paths = downloader.fetch_all(list(specs.values()), desc="download images", keep_going=True)
        except MissingUpstreamFiles as error:
            by_key = {entry["cache_key"]: entry for entry in error.missing}
            absent = {rid: by_key[spec.cache_key] for rid, spec in specs.items() if spec.cache_key in by_key}
            paths = {spec.cache_key: downloader.path_for(spec) for rid, spec in specs.items() if rid not in absent}
        fetched = remote & ~kept["record_id"].isin(absent)
        kept.loc[fetched, "local_path"] = [str(paths[specs[rid].cache_key]) for rid in kept.loc[fetched, "record_id"]]
        # The downloader hashed each file as it verified it; hash_and_verify reuses that sha256.
        kept.loc[fetched, "sha256"] = [downloader.stored_hashes(specs[rid]).sha256 for rid in kept.loc[fetched, "record_id"]]
    for source in manifest.sources:
        rows = kept["source"].eq(source["name"])
        if source["kind"] == "kaggle" and rows.any():
            root = kaggle_folder(source, options)
            kept.loc[rows, "local_path"] = [str(root / p) for p in kept.loc[rows, "source_path"]]
        elif source["kind"] == "dicom" and "local_dir" in source and rows.any():
            base = (manifest.folder / source["local_dir"]).resolve()
            kept.loc[rows & ~remote, "local_path"] = [str(base / p) for p in kept.loc[rows & ~remote, "source_path"]]
    unfound = kept[~kept["record_id"].isin(absent) & ~kept["local_path"].map(lambda p: bool(p) and Path(p).is_file())]
    if absent or len(unfound):
        raise _missing_files_error(resolution, options, kept, absent, unfound, out)
    return kept


def _missing_files_error(
    resolution: Resolution, options: Options, kept: pd.DataFrame, absent: dict[str, dict], unfound: pd.DataFrame,
    out: Path | None,
) -> MissingUpstreamFiles:
    """One error naming every file that could not be had, its list written to a CSV beside ``out``."""
    manifest = resolution.manifest
    planned = dict(zip(*[finish_selection(resolution).kept[c] for c in ("record_id", "split")]))
    kinds = {s["name"]: s["kind"] for s in manifest.sources}
    rows = []
    for row in kept.itertuples():
        if row.record_id in absent:
            entry = absent[row.record_id]
            status, url = entry["status"], entry["url"]
            detail = entry["detail"].removeprefix(f"{url}: ")
        elif row.Index in unfound.index:
            status = "not-in-archive" if kinds.get(row.source) == "kaggle" else "not-in-folder"
            url, detail = row.local_path, f"{row.local_path} does not exist"
        else:
            continue
        rows.append({"source": row.source, "source_path": row.source_path, "split": planned.get(row.record_id, ""),
                     "label": row.label, "status": status, "url": url, "detail": detail})
    target = Path(out).with_name(Path(out).name + MISSING_REPORT_SUFFIX) if out is not None else \
        options.cache / "missing-files" / f"{manifest.name}-{manifest.version}.csv"
    variant.write_missing_report(target, rows)
    where = f"; nothing was written to {out}" if out is not None else ""
    message = "\n".join([
        f"{manifest.path}: {len(rows):,} of {len(kept):,} pinned file(s) could not be fetched; every other file was "
        f"downloaded and is verified in the cache {options.cache}{where}.",
        "Missing per source and split (split: where the file would have gone):",
        *variant.missing_table(rows),
        *variant.missing_lines(rows),
        f"The full list (source, path, split, label, HTTP status, URL) is in {variant.shown_path(target)}",
        variant.missing_files_advice(manifest, target, out=out, mirror=options.mirror, cache_dir=options.cache_dir,
                                     kaggle_archive=options.kaggle_archive),
    ])
    return MissingUpstreamFiles(message, rows, report_path=target)


def check_files(resolution: Resolution, options: Options, downloader: Downloader | None = None) -> tuple[int, list[dict]]:
    """HEAD every file a build of ``resolution`` (what ``plan`` returned) would download; download
    nothing. Returns (files checked, one missing-files row per unreachable file). Files from a
    Kaggle archive or a local folder are not checked (they are not fetched one by one)."""
    manifest = resolution.manifest
    over_quota = resolution.excluded[resolution.excluded["reason"].eq("over-quota")]
    rows = pd.concat([resolution.kept, over_quota], ignore_index=True).fillna({"split": ""})
    rows = rows[rows["download_url"].ne("")]
    specs = {row.record_id: image_spec(manifest, row) for row in rows.itertuples()}
    answers = (downloader or options.downloader()).check_reachable(list(specs.values()), desc="check files (HEAD)")
    unreachable = []
    for row in rows.itertuples():
        answer = answers[specs[row.record_id].cache_key]
        if not answer["reachable"]:
            unreachable.append({"source": row.source, "source_path": row.source_path, "split": row.split, "label": row.label,
                                # A 200 is unreachable only when the announced size differs from the pin.
                                "status": "size" if answer["status"] == 200 else str(answer["status"]),
                                "url": answer["url"], "detail": answer["detail"]})
    return len(specs), unreachable


def kaggle_folder(source: dict, options: Options) -> Path:
    """The extracted Kaggle archive in the cache, from ``--kaggle-archive`` or the Kaggle API.

    The manifest's ``archive_sha256`` binds both ways the archive arrives. A downloaded archive that is
    not a zip (an HTML page answered with 200, a truncated body) is removed from the cache and fetched
    once more; a second failure is an error and leaves nothing in the cache.
    """
    pinned = source.get("archive_sha256", "")
    if options.kaggle_archive:
        archive_path = archive.check_regular_file(Path(options.kaggle_archive))
        digest = publish.sha256_file(archive_path)
        if pinned and digest != pinned:
            raise ChecksumMismatch(
                f"--kaggle-archive {archive_path}: sha256 {digest}, but the manifest pins archive_sha256 {pinned} for "
                f"{source['dataset']} version {source['dataset_version']}. Pass the archive of that version (Kaggle's "
                "dataset page, Download, with that version selected), or drop --kaggle-archive to fetch it."
            )
        return _extracted_kaggle(source, options, archive_path, digest)
    for attempt in (1, 2):
        archive_path = Path(fetch_kaggle_archive(
            source["dataset"], version=source["dataset_version"], cache_dir=options.cache, sha256=pinned,
            base_url=options.kaggle_api, offline=options.offline, progress=options.progress,
            discard_cached=attempt == 2,
        ))
        if zipfile.is_zipfile(archive_path):
            return _extracted_kaggle(source, options, archive_path, publish.sha256_file(archive_path))
        try:
            archive.list_members(archive_path, root=None)  # the error that says what the file is instead
        except ArchiveError as error:
            problem = str(error)
        else:  # pragma: no cover - is_zipfile and ZipFile disagree
            problem = f"{archive_path} is not a zip archive"
        with contextlib.suppress(CxrDatasetError, OSError):  # a read-only cache keeps it; the error still says why
            Downloader(options.cache, offline=True, progress=False).discard(_kaggle_spec(source, options))
        if attempt == 2 or options.offline:
            again = "" if options.offline else " twice"
            raise ArchiveError(
                f"the Kaggle archive of {source['dataset']} was downloaded{again} but is not a zip archive: {problem} "
                "It was removed from the cache. Check the Kaggle credentials and terms, or download the archive by "
                "hand and pass --kaggle-archive PATH" + ("; run without --offline to fetch it again." if options.offline else ".")
            )
        log.warning("the cached Kaggle archive %s is not a zip archive; removed it, downloading it again", archive_path)
    raise AssertionError("unreachable")


def _kaggle_spec(source: dict, options: Options) -> FileSpec:
    return kaggle_archive_spec(source["dataset"], source["dataset_version"], sha256=source.get("archive_sha256", ""),
                               base_url=options.kaggle_api)


def _extracted_kaggle(source: dict, options: Options, archive_path: Path, digest: str) -> Path:
    # Keyed by the archive's bytes: another archive (or version) never reuses a stale extraction.
    extracted = options.cache / "kaggle" / source["dataset"] / "extracted" / digest[:20]
    if extracted.is_dir():  # complete: extraction renames the finished tree into place (works on a read-only cache)
        return extracted
    try:
        extracted.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(extracted) + ".lock")
        lock.acquire()
    except OSError as error:
        raise CxrDatasetError(
            f"cannot extract the Kaggle archive into the cache dir {options.cache} ({error.strerror or error}); pass "
            "--cache-dir (or set COVID19_CXR_CACHE) to a writable folder"
        ) from None
    # Two builds sharing a cache must not both extract: the second would swap the tree under the first.
    try:
        if not extracted.is_dir():
            archive.extract_zip(archive_path, extracted, root=source["archive_root"])
    finally:
        lock.release()
    return extracted


def hash_and_verify(kept: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """sha256 of every source file (hashing only those the downloader has not); a pinned sha256 that
    differs is an error naming the file."""
    kept = kept.copy()
    kept["sha256"] = [s or publish.sha256_file(Path(p)) for p, s in zip(kept["local_path"], kept["sha256"])]
    pinned = kept["sha256_expected"].ne("")
    wrong = kept[pinned & kept["sha256_expected"].ne(kept["sha256"])]
    if len(wrong):
        row = wrong.iloc[0]
        raise CxrDatasetError(
            f"{row['local_path']} ({row['record_id']}): sha256 {row['sha256']} differs from the pinned "
            f"{row['sha256_expected']}; the file changed upstream or the archive is not the pinned version "
            f"({len(wrong)} file(s) differ)"
        )
    unverified = sorted(kept.loc[~pinned & kept["git_blob_sha1"].eq(""), "record_id"])
    return kept, unverified


def conversion_cache(options: Options, settings: convert.ConvertSettings) -> Path:
    # Every library that can change the output bytes is part of the key (convert.output_fingerprint).
    identity = f"{settings.cache_identity()}|{convert.output_fingerprint()}"
    key = f"q{settings.quality}-side{settings.max_side or 'orig'}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"
    return options.cache / "converted" / key


def _conversion_record(target: Path) -> Path:
    """``<sha256>.jpg.json`` beside a converted JPEG: ``{"sha256", "size"}`` of the JPEG (other keys may follow)."""
    return target.with_name(target.name + ".json")


def _cached_conversion_ok(target: Path) -> bool:
    """A cache entry is reused only when its JPEG still hashes to what was recorded when it was written:
    a replaced, truncated or emptied file is converted again."""
    try:
        record = json.loads(_conversion_record(target).read_text(encoding="utf-8"))
        data = target.read_bytes()
    except (OSError, ValueError):
        return False
    return (
        isinstance(record, dict) and record.get("size") == len(data) and len(data) > 0
        and record.get("sha256") == hashlib.sha256(data).hexdigest()
    )


def _store_conversion(target: Path, jpeg: bytes) -> None:
    """JPEG first, then its record, each by atomic rename: a crash in between leaves an entry without a
    record, which is converted again."""
    suffix = f".{os.getpid()}.tmp"  # one writer per process
    record = json.dumps({"sha256": hashlib.sha256(jpeg).hexdigest(), "size": len(jpeg)})
    for path, data in ((target, jpeg), (_conversion_record(target), record.encode())):
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
    """Worker: convert one file into the conversion cache; returns (target path, error) with reason.
    The cached file's name says its conversion path (convert.cache_path); it is reused only while it
    matches its record."""
    source_path, stem, settings = task
    cached = convert.cached_output(Path(stem))
    if cached is not None and _cached_conversion_ok(cached):
        return str(cached), ""
    try:
        result = convert.convert_file(Path(source_path), settings)
    except ConversionError as error:
        return "", f"{error.reason}\t{error}"
    target_path = convert.cache_path(Path(stem), result.conversion)
    _store_conversion(target_path, result.data)
    return str(target_path), ""


def _conversions(kept: pd.DataFrame, options: Options, settings: convert.ConvertSettings) -> Iterator[tuple[str, str]]:
    """(converted path or "", error) for each row, in row order, from ``options.workers`` processes."""
    cache = conversion_cache(options, settings)
    try:
        for prefix in {s[:2] for s in kept["sha256"]}:  # once here, not once per image in the workers
            (cache / prefix).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise CxrDatasetError(
            f"cannot create the conversion cache {cache} ({error.strerror or error}); pass --cache-dir (or set "
            "COVID19_CXR_CACHE) to a writable folder"
        ) from None
    tasks = [(p, str(cache / s[:2] / s), settings) for p, s in zip(kept["local_path"], kept["sha256"])]
    if options.workers <= 1:
        yield from map(_convert_one, tasks)
        return
    with ProcessPoolExecutor(options.workers) as pool:
        yield from pool.map(_convert_one, tasks, chunksize=4)


def _separate_failures(kept: pd.DataFrame, results: list[tuple[str, str]]) -> tuple[pd.DataFrame, pd.DataFrame]:
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


def convert_and_write_shards(
    kept: pd.DataFrame, data_dir: Path, options: Options, settings: convert.ConvertSettings, configs: list | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[tuple[str, str], tuple[int, int]]]:
    """Convert + publish stages together: each image goes into its shard as soon as its conversion
    arrives, so this process writes parquet while the workers convert.

    ``kept`` must be in publish order with ``split`` (and ``flags``) filled; each row goes to the
    shard folder of its partition (``publish.partition_of``). Returns the rows written (with
    ``converted_path``), the rows whose conversion failed (as exclusions) and
    {(folder, split): (rows, bytes)}.
    """
    data_dir.mkdir(parents=True)
    folders = publish.partitions(configs) if configs else [""]
    writers = {
        (folder, name): publish.SplitShardWriter(_mkdir(data_dir / folder), name, max_shard_bytes=options.max_shard_bytes)
        for folder in folders for name in publish.SPLITS
    }
    records = kept.to_dict("records")
    results = []
    bar = tqdm(total=len(records), desc="convert and write", unit="img", disable=not options.progress)
    for record, result in zip(records, _conversions(kept, options, settings)):
        target = result[0]
        if target:
            folder = publish.partition_of(record["flags"], configs) if configs else ""
            writers[(folder, record["split"])].add(publish.publish_row(record, Path(target).read_bytes(), convert.conversion_of(target)))
        results.append(result)
        bar.update()
    bar.close()
    sizes = {}
    for key, writer in writers.items():
        writer.close()
        sizes[key] = (writer.num_rows, writer.num_bytes)
    written, failed = _separate_failures(kept, results)
    return written, failed, sizes


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_card_and_report(resolution: Resolution, staging: Path, options: Options, *, unverified: list[str]) -> dict:
    """The rest of the publish stage and the report stage, beside the shards in ``staging``.

    The card is rendered from the build report and the shards alone (``card.render_card``), so
    ``verify`` can regenerate it byte for byte.
    """
    build_report = make_report(resolution, staging, options, unverified=unverified)
    # The shortcut evidence of a committed certificate whose fingerprint matches this build: stored in
    # the report with the card's other inputs, so verify regenerates the same card later.
    evidence = card_section(build_report).strip().removeprefix(EVIDENCE_HEADING).strip()
    build_report["card"]["extra_sections"].append({"title": EVIDENCE_HEADING.removeprefix("## "), "markdown": evidence})
    (staging / "README.md").write_text(render_card(build_report, publish.read_row_table(staging)), encoding="utf-8")
    report.write_report(staging, build_report)
    return build_report


def make_report(resolution: Resolution, staging: Path, options: Options, *, unverified: list[str]) -> dict:
    manifest, kept, excluded = resolution.manifest, resolution.kept, resolution.excluded
    shards = report.shard_hashes(staging)
    config_shards = {
        c.name: [p for p in shards if p.split("/")[1] in publish.config_folders(c, manifest.configs)] for c in manifest.configs
    }
    fingerprints = report.config_fingerprints(staging, config_shards, workers=options.workers)
    configs = {}
    for config in manifest.configs:
        rows = kept[filters.in_config(kept, config)]
        configs[config.name] = {
            "default": config.default,
            "description": config.description,
            "folders": publish.config_folders(config, manifest.configs),
            "counts": report.count_table(rows),
            "expected_counts": config.expected_counts,
            "counts_match_manifest": not check_counts(manifest, kept, config=config.name),
            "source_label_counts": report.source_label_table(rows),
            "flags": report.flag_summary(rows),
            "duplicate_pairs_across_splits": split.duplicate_pairs_across_splits(rows),
            "patients_in_both_splits": split.patients_in_both(rows),
            "upstream_groups_in_both_splits": split.upstream_groups_in_both(rows),
            "fingerprint": fingerprints[config.name],
            "shards": config_shards[config.name],
        }
    default = manifest.default_config.name
    return {
        "report_schema": report.REPORT_SCHEMA_VERSION,
        "dataset": manifest.name,
        "version": manifest.version,
        "package_version": __version__,
        "manifest_sha256": manifest.sha256(),
        "sources": {
            s["name"]: {k: s[k] for k in ("kind", "repository", "commit", "dataset", "dataset_version") if k in s}
            for s in manifest.sources
        },
        "convert": manifest.data["convert"],
        "conversions": convert.conversion_summary(kept.get("converted_path", pd.Series(dtype=str))),
        "default_config": default,
        "counts": configs[default]["counts"],
        "expected_counts": configs[default]["expected_counts"],
        "source_label_counts": configs[default]["source_label_counts"],
        "candidates": int(len(resolution.candidates)),
        "exclusions_by_reason": report.exclusion_summary(excluded),
        "checks": {
            "counts_match_manifest": not check_counts(manifest, kept),
            "patients_in_both_splits": split.patients_in_both(kept),
            "upstream_groups_in_both_splits": split.upstream_groups_in_both(kept),
            "duplicate_pairs_across_splits": split.duplicate_pairs_across_splits(kept),
            "near_duplicate_pairs_across_splits": report.cross_split_near_duplicates(kept, workers=options.workers),
            "unverified_files": len(unverified),
        },
        "configs": configs,
        "unverified_files": unverified,
        "exclusions": report.exclusion_list(excluded),
        "flagged": report.flagged_list(kept),
        "card": card_inputs(manifest),
        "shards": shards,
        "fingerprint": fingerprints[default],
    }


def build(manifest: Manifest, out: Path, options: Options) -> dict:
    """Build the release ``manifest`` describes into ``out``; returns the build report.

    Every check of ``out`` and of the inputs runs before anything is downloaded (see the module
    docstring). A Ctrl-C that arrives once the release is in place no longer undoes anything: the
    report is returned.
    """
    out = check_output_folder(manifest, out, options)
    if options.kaggle_archive:
        archive.check_regular_file(Path(options.kaggle_archive))
    downloader = options.downloader()  # checks --mirror
    build_report = None
    try:
        with _output_lock(out):
            check_output_folder(manifest, out, options)  # again, now that no other build can change it
            build_report = _build_locked(manifest, out, options, downloader)
    except KeyboardInterrupt:
        if build_report is None:
            raise
        log.warning("interrupted after %s was written; the release is complete", out)
    return build_report


def _build_locked(manifest: Manifest, out: Path, options: Options, downloader: Downloader) -> dict:
    log.info("resolving %s %s from metadata", manifest.name, manifest.version)
    resolution = resolve(manifest, options, downloader)
    _fail_early_if_short(manifest, resolution, out)
    log.info("downloading %d candidate image(s)", len(resolution.kept))
    kept = fetch_images(resolution, options, downloader, out=out)
    kept, unverified = hash_and_verify(kept)
    kept, exact = filters.exact_duplicates_after_download(manifest, kept)
    settings = convert.ConvertSettings(**manifest.data["convert"])
    excluded = pd.concat([resolution.excluded, exact], ignore_index=True)
    failed = excluded.iloc[0:0]
    _remove_stale_staging(out)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.parent))
    (staging / STAGING_MARKER).write_text(f"staging folder of a cxr-dataset build of {out}\n", encoding="utf-8")
    try:
        with _disk_full_is_an_error(f"{out.parent} or the cache {options.cache}"):
            # Selection and split come first, so shards are written while images convert. An image
            # that fails to convert, or two images that turn out to have the same pixels (rare),
            # change the selection: select again and rewrite the shards, from the conversion cache.
            while True:
                selection = finish_selection(Resolution(
                    manifest, resolution.candidates, kept[~kept["record_id"].isin(failed["record_id"])],
                    pd.concat([excluded, failed], ignore_index=True), resolution.decisions,
                ))
                # Too few images is final now; too many may still shrink as images fail to convert.
                _check_selection(manifest, selection, failed, out, shortfall_only=True)
                shutil.rmtree(staging / "data", ignore_errors=True)
                written, new_failures, sizes = convert_and_write_shards(
                    selection.kept, staging / "data", options, settings, manifest.configs)
                if not new_failures.empty:
                    new_failures["detail"] = new_failures["detail"].map(lambda text: portable_paths(text, options, manifest))
                    failed = pd.concat([failed, new_failures], ignore_index=True)
                    continue
                kept, pixel_copies, found = _pixel_duplicates(manifest, kept, written)
                if found:
                    excluded = pd.concat([excluded, pixel_copies], ignore_index=True)
                    continue
                _check_selection(manifest, selection, failed, out)
                break
            selection = Resolution(manifest, selection.candidates, written, selection.excluded, selection.decisions)
            build_report = write_card_and_report(selection, staging, options, unverified=unverified)
            (staging / STAGING_MARKER).unlink()
            _move_into_place(staging, out)
    except KeyboardInterrupt:
        if not staging.exists() and (out / report.REPORT_NAME).is_file():
            # The rename happened: the release is complete and in place; undoing nothing is right.
            log.warning("interrupted after %s was written; the release is complete", out)
            return build_report
        shutil.rmtree(staging, ignore_errors=True)
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return build_report


def portable_paths(text: str, options: Options, manifest: Manifest) -> str:
    """``text`` with this machine's cache and manifest folders written as ``<cache>`` and ``<manifest>``.

    Exclusion details end up in build_report.json, which ``publish`` uploads: they must say which file,
    not where one user's home folder is.
    """
    roots = {"<cache>": options.cache, "<manifest>": manifest.folder}
    for name, root in roots.items():
        for form in {str(Path(os.path.expanduser(root)).resolve()), os.path.abspath(os.path.expanduser(root)), str(root)}:
            if form not in ("", ".", "/"):
                text = text.replace(form.rstrip("/") + "/", name + "/")
    return text


def _pixel_duplicates(manifest: Manifest, kept: pd.DataFrame, written: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, bool]:
    """Mark rows whose converted images are identical (same decoded pixels, different source bytes).

    Returns ``kept`` with the new flags/``duplicate_of`` (or without the copies), the copies it
    excluded, and whether anything changed (then the selection is made again).
    """
    pixels = {rid: publish.sha256_file(Path(p)) for rid, p in zip(written["record_id"], written["converted_path"])}
    table = kept.assign(pixels_sha256=kept["record_id"].map(pixels).fillna(""))
    before = dict(zip(table["record_id"], zip(table["flags"], table["duplicate_of"])))
    marked, copies = filters.exact_duplicates_after_conversion(manifest, table)
    marked = marked.drop(columns="pixels_sha256")
    copies = copies.drop(columns="pixels_sha256", errors="ignore")
    after = dict(zip(marked["record_id"], zip(marked["flags"], marked["duplicate_of"])))
    changed = len(copies) > 0 or after != {rid: before[rid] for rid in after}
    return (marked, copies, True) if changed else (kept, copies.iloc[0:0], False)


def _check_selection(manifest: Manifest, selection: Resolution, failed: pd.DataFrame, out: Path, *, shortfall_only: bool = False) -> None:
    """Exact counts and no patient on both sides, or an error that says why (nothing reaches ``out``)."""
    problems = check_counts(manifest, selection.kept, shortfall_only=shortfall_only)
    if problems:
        unreadable = "".join(f"\n  {r.record_id} ({r.local_path}): {r.reason}: {r.detail}" for r in failed.itertuples())
        raise CountMismatch(
            f"{manifest.path}: the build does not give the expected counts: {'; '.join(problems)}. "
            f"Exclusions by reason: {report.exclusion_summary(selection.excluded)}."
            + (f" Images that could not be converted:{unreadable}" if len(failed) else "")
            + f"\nNothing was written to {out}."
        )
    crossing = split.patients_in_both(selection.kept)
    if crossing:
        raise CxrDatasetError(
            f"{manifest.path}: {len(crossing)} patient group(s) would sit in both splits, e.g. {crossing[:3]}; "
            "an 'upstream' split rule keeps a source's own split, so fix the patient ids or the rules. Nothing was written."
        )


@contextlib.contextmanager
def _disk_full_is_an_error(where: str):
    """ENOSPC/EDQUOT become one clear error; the caller's cleanup leaves no partial output."""
    try:
        yield
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise CxrDatasetError(
            f"the disk holding {where} is full ({error.strerror}); nothing was written to the output folder and "
            "the cache keeps only complete, verified files. Free some space (or pass --cache-dir / --out on another "
            "disk) and run the build again: verified downloads and conversions are reused."
        ) from None


def _fail_early_if_short(manifest: Manifest, resolution: Resolution, out: Path) -> None:
    """Later stages only ever remove images: if metadata alone already gives too few, say so now,
    before gigabytes of downloads, rather than after them."""
    short = check_counts(manifest, finish_selection(resolution).kept, shortfall_only=True)
    if short:
        raise CountMismatch(
            f"{manifest.path}: this release cannot reach its expected counts; metadata and decisions alone give "
            f"{'; '.join(short)}. Nothing was downloaded beyond the metadata and nothing was written to {out}. "
            "`cxr-dataset plan` shows the exclusions by reason."
        )


# ---- the output folder -----------------------------------------------------------------------

STAGING_MARKER = ".cxr-dataset-staging"
"""File in every staging folder until the card is written: what makes a ``.partial-*`` folder ours."""


def check_output_folder(manifest: Manifest, out: Path, options: Options) -> Path:
    """``out`` as an absolute path, if a build may write it; else a CxrDatasetError saying why and what to do.

    Refused: the current folder or one above it; a parent that is a file; a folder that contains or
    sits inside the cache, the manifest folder, ``--kaggle-archive`` or a local source folder; an
    existing ``out`` without ``--overwrite``; with ``--overwrite``, anything but a folder holding a
    ``build_report.json`` this package wrote.
    """
    given = out
    out = Path(os.path.abspath(os.path.expanduser(out)))
    here = Path.cwd()
    if out == here or out in here.parents or out == Path(out.anchor):
        raise CxrDatasetError(
            f"--out {given} is the current folder or one above it; a release is written as a new folder of its own. "
            f"Pass e.g. --out ./{manifest.name}-{manifest.version}"
        )
    for ancestor in out.parents:
        if ancestor.exists() or ancestor.is_symlink():
            if not ancestor.is_dir():
                raise CxrDatasetError(
                    f"--out {given}: {ancestor} is a file, not a folder, so nothing can be written under it; choose "
                    "another --out"
                )
            break
    resolved = out.resolve()
    for label, protected in _protected_paths(manifest, options):
        if resolved == protected or resolved in protected.parents or protected in resolved.parents:
            relation = "is" if resolved == protected else "contains" if resolved in protected.parents else "is inside"
            raise CxrDatasetError(
                f"--out {given} {relation} {label} {protected}; a release must sit in a folder of its own, apart "
                "from the build's inputs and cache. Choose another --out"
            )
    if out.exists() or out.is_symlink():
        if not options.overwrite:
            raise CxrDatasetError(f"{out} already exists; remove it, choose another --out, or pass --overwrite")
        problem = _not_a_release(out)
        if problem:
            raise CxrDatasetError(
                f"--overwrite refuses to replace {out}: {problem}. --overwrite replaces only a release folder this "
                "package wrote (one with its build_report.json); remove the folder yourself if it really should go, "
                "or choose another --out"
            )
    return out


def _protected_paths(manifest: Manifest, options: Options) -> list[tuple[str, Path]]:
    protected = [("the cache dir", options.cache), ("the manifest folder", manifest.folder)]
    if options.kaggle_archive:
        protected.append(("the --kaggle-archive", Path(options.kaggle_archive)))
    for source in manifest.sources:
        if source.get("local_dir"):
            protected.append((f"the local folder of source {source['name']!r}", manifest.folder / source["local_dir"]))
    return [(label, Path(os.path.expanduser(path)).resolve()) for label, path in protected]


def _not_a_release(out: Path) -> str:
    """Why ``out`` is not a release folder this package wrote; "" when it is one."""
    if out.is_symlink():
        return "it is a symbolic link"
    if not out.is_dir():
        return "it is not a folder"
    path = out / report.REPORT_NAME
    try:
        written = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"it holds no {report.REPORT_NAME}"
    except (OSError, ValueError) as error:
        return f"its {report.REPORT_NAME} cannot be read ({type(error).__name__})"
    if not (isinstance(written, dict) and all(key in written for key in ("report_schema", "dataset", "package_version", "fingerprint"))):
        return f"its {report.REPORT_NAME} is not a build report of this package"
    return ""


@contextlib.contextmanager
def _output_lock(out: Path):
    """Hold ``<parent>/.<name>.lock`` for the whole build: one build per output folder at a time."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(out.parent / f".{out.name}.lock"))
        lock.acquire(timeout=0)
    except Timeout:
        raise CxrDatasetError(
            f"another build is writing {out} right now (it holds {out.parent / f'.{out.name}.lock'}); wait for it to "
            "finish, or choose another --out"
        ) from None
    except OSError as error:
        raise CxrDatasetError(
            f"cannot write into {out.parent} ({error.strerror or error}); choose an --out in a writable folder"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _remove_stale_staging(out: Path) -> None:
    """Remove staging folders of earlier builds of ``out`` that died (the caller holds the output lock).

    Whoever holds the lock is the only build of ``out``, so every staging folder with our marker is a
    leftover, whatever its PID says (a PID from another PID namespace, or PID 1, tells nothing).
    Folders without the marker, links and files are left alone.
    """
    for folder in out.parent.glob(f".{out.name}.partial-*"):
        if folder.is_dir() and not folder.is_symlink() and (folder / STAGING_MARKER).is_file():
            shutil.rmtree(folder, ignore_errors=True)
    for folder in out.parent.glob(f".{out.name}.old-*"):
        # A release moved aside by a build that died between its two renames: restore it if out is missing.
        moved = folder / "release"
        if folder.is_dir() and not folder.is_symlink() and moved.is_dir() and not _not_a_release(moved):
            if not out.exists() and not out.is_symlink():
                os.replace(moved, out)
            shutil.rmtree(folder, ignore_errors=True)


def _move_into_place(staging: Path, out: Path) -> None:
    os.chmod(staging, 0o755)  # mkdtemp makes 0700 folders
    if out.exists():
        if _not_a_release(out):  # it changed since the checks (the lock keeps builds out, not people)
            raise CxrDatasetError(f"{out} changed during the build and is no longer a release folder; nothing was replaced")
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, trash / "release")
        try:
            os.replace(staging, out)
        except BaseException:
            os.replace(trash / "release", out)
            raise
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, out)
