"""The pipeline: runs the stages in order and writes a release only when every check passed.

``plan`` resolves a release from metadata, locks and decisions alone (no image downloads).
``build`` then downloads, verifies, converts, splits and publishes. The output folder is written
under a temporary name beside ``out`` and renamed into place at the very end, so a failed or
interrupted build never leaves a half-written release.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pandas as pd
from filelock import FileLock
from tqdm.auto import tqdm

from . import CLASS_NAMES, __version__
from . import archive, convert, filters, publish, report, sources, split
from .card import card_body
from .download import KAGGLE_BASE_URL, Downloader, FileSpec, default_cache_dir, fetch_kaggle_archive
from .errors import ConversionError, CountMismatch, CxrDatasetError
from .manifest import Manifest
from .records import exclude

log = logging.getLogger(__name__)


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
        return self.mirror.rstrip("/") if self.mirror else sources.GITHUB_RAW_BASE

    def downloader(self) -> Downloader:
        allowed = [self.mirror] if self.mirror else []
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

    def counts(self) -> dict[str, dict[str, int]]:
        return report.count_table(self.kept)


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
    links = split.duplicate_patient_links(resolution.excluded, resolution.candidates) + resolution.decisions.patient_links()
    kept = split.assign_splits(kept, manifest.data["split"]["rules"], manifest.data["split"]["seed"], links)
    kept = kept.sort_values(["split", "label", "source", "source_path"], key=_split_order).reset_index(drop=True)
    excluded = pd.concat([resolution.excluded, dropped], ignore_index=True) if len(dropped) else resolution.excluded
    return Resolution(manifest, resolution.candidates, kept, excluded, resolution.decisions)


def _split_order(column: pd.Series) -> pd.Series:
    if column.name == "split":
        return column.map({name: i for i, name in enumerate(publish.SPLITS)})
    if column.name == "label":
        return column.map({name: i for i, name in enumerate(CLASS_NAMES)})
    return column


def plan(manifest: Manifest, options: Options) -> Resolution:
    """Resolve the release from metadata, locks and decisions alone: no image is downloaded."""
    return finish_selection(resolve(manifest, options))


def check_counts(manifest: Manifest, kept: pd.DataFrame, *, shortfall_only: bool = False) -> list[str]:
    """Differences between the kept rows and the manifest's expected counts (empty when exact).

    ``shortfall_only``: report only cells with too few images (later stages can still remove some).
    """
    actual = report.count_table(kept)
    problems = []
    for split_name, expected in manifest.data["expected_counts"].items():
        for label, count in expected.items():
            got = actual.get(split_name, {}).get(label, 0)
            if got < count or (got > count and not shortfall_only):
                problems.append(f"{split_name}/{label}: expected {count}, got {got}")
    return problems


def fetch_images(resolution: Resolution, options: Options, downloader: Downloader) -> pd.DataFrame:
    """Download stage: put every kept row's file in the cache; fill ``local_path``."""
    kept = resolution.kept.copy()
    manifest = resolution.manifest
    remote = kept["download_url"].ne("")
    specs = {
        row.record_id: FileSpec(
            url=row.download_url, cache_key=f"{row.source}/{row.source_path}" if not row.git_blob_sha1 else
            sources.github_cache_key(manifest.source(row.source), row.source_path),
            git_blob_sha1=row.git_blob_sha1, sha256=row.sha256_expected, size=int(row.size),
        )
        for row in kept[remote].itertuples()
    }
    if specs:
        paths = downloader.fetch_all(list(specs.values()), desc="download images")
        kept.loc[remote, "local_path"] = [str(paths[specs[rid].cache_key]) for rid in kept.loc[remote, "record_id"]]
        # The downloader hashed each file as it verified it; hash_and_verify reuses that sha256.
        kept.loc[remote, "sha256"] = [downloader.verified_hashes(specs[rid]).sha256 for rid in kept.loc[remote, "record_id"]]
    for source in manifest.sources:
        rows = kept["source"].eq(source["name"])
        if source["kind"] == "kaggle" and rows.any():
            root = kaggle_folder(source, options)
            kept.loc[rows, "local_path"] = [str(root / p) for p in kept.loc[rows, "source_path"]]
        elif source["kind"] == "dicom" and "local_dir" in source and rows.any():
            base = (manifest.folder / source["local_dir"]).resolve()
            kept.loc[rows & ~remote, "local_path"] = [str(base / p) for p in kept.loc[rows & ~remote, "source_path"]]
    missing = kept[~kept["local_path"].map(lambda p: bool(p) and Path(p).is_file())]
    if len(missing):
        sample = ", ".join(missing["source_path"].head(5))
        raise CxrDatasetError(
            f"{len(missing)} listed file(s) are not in the downloaded sources, e.g. {sample}; "
            "the archive or folder does not match the manifest's file list"
        )
    return kept


def kaggle_folder(source: dict, options: Options) -> Path:
    """The extracted Kaggle archive in the cache, from ``--kaggle-archive`` or the Kaggle API."""
    archive_path = Path(options.kaggle_archive or fetch_kaggle_archive(
        source["dataset"], version=source["dataset_version"], cache_dir=options.cache,
        sha256=source.get("archive_sha256", ""), base_url=options.kaggle_api, offline=options.offline,
        progress=options.progress,
    ))
    # Keyed by the archive's bytes: another archive (or version) never reuses a stale extraction.
    extracted = options.cache / "kaggle" / source["dataset"] / "extracted" / publish.sha256_file(archive_path)[:20]
    extracted.parent.mkdir(parents=True, exist_ok=True)
    # Two builds sharing a cache must not both extract: the second would swap the tree under the first.
    with FileLock(str(extracted) + ".lock"):
        if not extracted.is_dir():
            archive.extract_zip(archive_path, extracted, root=source["archive_root"])
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


def _convert_one(task: tuple[str, str, convert.ConvertSettings]) -> tuple[str, str]:
    """Worker: convert one file into the conversion cache; returns (target path, error) with reason.
    The cached file's name says its conversion path (convert.cache_path)."""
    source_path, stem, settings = task
    cached = convert.cached_output(Path(stem))
    if cached is not None:
        return str(cached), ""
    try:
        result = convert.convert_file(Path(source_path), settings)
    except ConversionError as error:
        return "", f"{error.reason}\t{error}"
    target_path = convert.cache_path(Path(stem), result.conversion)
    temporary = target_path.with_name(f"{target_path.name}.{os.getpid()}.tmp")  # one writer per process
    temporary.write_bytes(result.data)
    os.replace(temporary, target_path)
    return str(target_path), ""


def _conversions(kept: pd.DataFrame, options: Options, settings: convert.ConvertSettings) -> Iterator[tuple[str, str]]:
    """(converted path or "", error) for each row, in row order, from ``options.workers`` processes."""
    cache = conversion_cache(options, settings)
    for prefix in {s[:2] for s in kept["sha256"]}:  # once here, not once per image in the workers
        (cache / prefix).mkdir(parents=True, exist_ok=True)
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
    kept: pd.DataFrame, data_dir: Path, options: Options, settings: convert.ConvertSettings
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, tuple[int, int]]]:
    """Convert + publish stages together: each image goes into its split's shard as soon as its
    conversion arrives, so this process writes parquet while the workers convert.

    ``kept`` must be in publish order with ``split`` filled. Returns the rows written (with
    ``converted_path``), the rows whose conversion failed (as exclusions) and {split: (rows, bytes)}.
    """
    data_dir.mkdir(parents=True)
    writers = {name: publish.SplitShardWriter(data_dir, name, max_shard_bytes=options.max_shard_bytes) for name in publish.SPLITS}
    records = kept.to_dict("records")
    results = []
    bar = tqdm(total=len(records), desc="convert and write", unit="img", disable=not options.progress)
    for record, result in zip(records, _conversions(kept, options, settings)):
        target = result[0]
        if target:
            writers[record["split"]].add(publish.publish_row(record, Path(target).read_bytes(), convert.conversion_of(target)))
        results.append(result)
        bar.update()
    bar.close()
    sizes = {}
    for name, writer in writers.items():
        writer.close()
        sizes[name] = (writer.num_rows, writer.num_bytes)
    written, failed = _separate_failures(kept, results)
    return written, failed, sizes


def write_card_and_report(
    resolution: Resolution, staging: Path, options: Options, *, unverified: list[str], split_sizes: dict[str, tuple[int, int]]
) -> dict:
    """The rest of the publish stage and the report stage, beside the shards in ``staging``."""
    manifest = resolution.manifest
    build_report = make_report(resolution, staging, options, unverified=unverified)
    header = publish.card_yaml(
        split_sizes=split_sizes, license_id=manifest.data.get("card_license", "other"),
        pretty_name=manifest.data["title"], version=manifest.version,
    )
    publish.write_card(staging, header_yaml=header, body_markdown=card_body(manifest, build_report, resolution.kept))
    report.write_report(staging, build_report)
    return build_report


def make_report(resolution: Resolution, staging: Path, options: Options, *, unverified: list[str]) -> dict:
    manifest, kept, excluded = resolution.manifest, resolution.kept, resolution.excluded
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
        "counts": report.count_table(kept),
        "expected_counts": manifest.data["expected_counts"],
        "source_label_counts": report.source_label_table(kept),
        "candidates": int(len(resolution.candidates)),
        "exclusions_by_reason": report.exclusion_summary(excluded),
        "checks": {
            "counts_match_manifest": not check_counts(manifest, kept),
            "patients_in_both_splits": split.patients_in_both(kept),
            "near_duplicate_pairs_across_splits": report.cross_split_near_duplicates(kept, workers=options.workers),
            "unverified_files": len(unverified),
        },
        "unverified_files": unverified,
        "exclusions": report.exclusion_list(excluded),
        "shards": report.shard_hashes(staging),
        "fingerprint": report.fingerprint(staging, workers=options.workers),
    }


def build(manifest: Manifest, out: Path, options: Options) -> dict:
    """Build the release ``manifest`` describes into ``out``; returns the build report."""
    out = Path(out)
    if out.exists() and not options.overwrite:
        raise CxrDatasetError(f"{out} already exists; remove it, choose another --out, or pass --overwrite")
    downloader = options.downloader()
    log.info("resolving %s %s from metadata", manifest.name, manifest.version)
    resolution = resolve(manifest, options, downloader)
    _fail_early_if_short(manifest, resolution, out)
    log.info("downloading %d candidate image(s)", len(resolution.kept))
    kept = fetch_images(resolution, options, downloader)
    kept, unverified = hash_and_verify(kept)
    kept, exact = filters.exclude_exact_duplicates(kept, "sha256", [s["name"] for s in manifest.sources])
    settings = convert.ConvertSettings(**manifest.data["convert"])
    excluded = pd.concat([resolution.excluded, exact], ignore_index=True)
    failed = excluded.iloc[0:0]
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(out)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.parent))
    try:
        with _disk_full_is_an_error(f"{out.parent} or the cache {options.cache}"):
            # Selection and split come first, so shards are written while images convert. An image
            # that fails to convert (rare) changes the selection: select again and rewrite the
            # shards, from the conversion cache this time.
            while True:
                selection = finish_selection(Resolution(
                    manifest, resolution.candidates, kept[~kept["record_id"].isin(failed["record_id"])],
                    pd.concat([excluded, failed], ignore_index=True), resolution.decisions,
                ))
                # Too few images is final now; too many may still shrink as images fail to convert.
                _check_selection(manifest, selection, failed, out, shortfall_only=True)
                shutil.rmtree(staging / "data", ignore_errors=True)
                written, new_failures, sizes = convert_and_write_shards(selection.kept, staging / "data", options, settings)
                if new_failures.empty:
                    _check_selection(manifest, selection, failed, out)
                    break
                failed = pd.concat([failed, new_failures], ignore_index=True)
            selection = Resolution(manifest, selection.candidates, written, selection.excluded, selection.decisions)
            build_report = write_card_and_report(selection, staging, options, unverified=unverified, split_sizes=sizes)
            _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return build_report


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


def _remove_stale_staging(out: Path) -> None:
    """Remove hidden staging folders of earlier builds of ``out`` that were killed (their process is gone)."""
    for folder in out.parent.glob(f".{out.name}.partial-*"):
        pid = folder.name.rsplit(".partial-", 1)[-1].split("-", 1)[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _move_into_place(staging: Path, out: Path) -> None:
    os.chmod(staging, 0o755)  # mkdtemp makes 0700 folders
    if out.exists():
        trash = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, trash)
        os.replace(staging, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, out)
