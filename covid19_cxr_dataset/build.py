"""The build: the order of the stages, and the loop that converts images into their shards.

``plan`` (``plan.py``) resolves a release from metadata alone; ``build`` then runs download (``fetch``,
through ``download/``) -> hash and exact-duplicate checks -> convert and shards together
(``convert_cache``, ``shards``: ``convert_and_write_shards``) -> report (``report.assemble``), the
shortcut evidence (``evidence``) and the card (``card``), which this module hands their inputs, inside
a staging folder that is renamed into place only when every check passed (``staging``). Exclusion
details are written without this machine's folders (``portable_paths``).

Selection and split are made before conversion, so each image is written to its shard as its
conversion arrives; an image that fails to convert, or two images with the same decoded pixels,
change the selection, which is then made again and the shards rewritten from the conversion cache
(``_convert_and_publish``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path

import pandas as pd

from . import archive, card, convert, convert_cache, evidence, fetch, filters, generated, progress, release, report, shards, split, staging
from .counts import check_counts, exclusion_summary
from .download import Downloader, file_sha256
from .errors import CountMismatch, CxrDatasetError
from .manifest import Manifest
from .options import Options
from .plan import Resolution, absent_from_release, finish_selection, plan, resolve
from .records import SPLITS

log = logging.getLogger(__name__)


# ---- build: download, convert, shards, report, card ----------------------------------------------

def build(manifest: Manifest, out: Path, options: Options) -> dict:
    """Build the release ``manifest`` describes into ``out``; returns the build report.

    Every check of ``out`` and of the inputs runs before anything is downloaded (``staging``). A
    Ctrl-C that arrives once the release is in place no longer undoes anything: the report is returned.
    """
    out = _check_output_folder(manifest, out, options)
    if options.kaggle_archive:
        archive.check_regular_file(Path(options.kaggle_archive))
    downloader = options.downloader()  # checks --mirror
    build_report = None
    try:
        with staging.output_lock(out), progress.enabled(options.progress):  # every bar of the build follows -q
            _check_output_folder(manifest, out, options)  # again, now that no other build can change it
            build_report = _build_locked(manifest, out, options, downloader)
    except KeyboardInterrupt:
        if build_report is None:
            raise
        log.warning("interrupted after %s was written; the release is complete", out)
    return build_report


def _check_output_folder(manifest: Manifest, out: Path, options: Options) -> Path:
    protected = [("the cache dir", options.cache), ("the manifest folder", manifest.folder)]
    if options.kaggle_archive:
        protected.append(("the --kaggle-archive", Path(options.kaggle_archive)))
    protected += [folder for source in manifest.sources for folder in source.local_folders(manifest)]
    return staging.check_output_folder(out, suggestion=f"{manifest.name}-{manifest.version}", protected=protected,
                                       overwrite=options.overwrite)


def _build_locked(manifest: Manifest, out: Path, options: Options, downloader: Downloader) -> dict:
    log.info("resolving %s %s from metadata", manifest.name, manifest.version)
    resolution = resolve(manifest, options, downloader)
    _fail_early_if_short(manifest, resolution, out)
    log.info("downloading %d candidate image(s)", len(resolution.kept))
    kept = fetch.fetch_images(resolution, options, downloader, out=out, planned_splits=lambda: _planned_splits(resolution))
    kept, unverified = fetch.hash_and_verify(kept)
    kept, exact = filters.exact_duplicates_after_download(manifest, kept)
    resolution = Resolution(manifest, resolution.candidates, kept, pd.concat([resolution.excluded, exact], ignore_index=True),
                            resolution.decisions)
    build_report = None
    with staging.staging_folder(out, disk=f"{out.parent} or the cache {options.cache}") as stage:
        selection = _convert_and_publish(resolution, stage.folder / "data", options, out)
        build_report = report.assemble(manifest, selection.candidates, selection.kept, selection.excluded, stage.folder,
                                       unverified=unverified, workers=options.workers, card_inputs=card.card_inputs(manifest),
                                       absent=absent_from_release(selection))
        # The shortcut evidence needs the fingerprints: it joins the card's inputs once the report has them.
        build_report["card"]["extra_sections"].append(evidence.card_extra_section(build_report, manifest.folder / evidence.CERTIFICATES_FOLDER))
        generated.write_generated(stage.folder, build_report)  # README.md, croissant.json, unpinned-files.csv
        release.write_report(stage.folder, build_report)
        stage.commit()
    return build_report


def _planned_splits(resolution: Resolution) -> dict[str, str]:
    """{record_id: split} the selection would give: where each missing file would have gone."""
    kept = finish_selection(resolution).kept
    return dict(zip(kept["record_id"], kept["split"]))


def _convert_and_publish(resolution: Resolution, data_dir: Path, options: Options, out: Path) -> Resolution:
    """Select, split, convert and write the shards, again until the selection stops changing.

    An image that fails to convert, or two images that turn out to have the same decoded pixels
    (rare), change the selection: it is made again and the shards rewritten, from the conversion
    cache. Returns the final selection, its ``kept`` rows as written (with ``converted_path``).
    """
    manifest = resolution.manifest
    settings = convert.ConvertSettings(**manifest.convert)
    kept, excluded = resolution.kept, resolution.excluded
    failed = excluded.iloc[0:0]
    why = ""  # why the shards are written again, for the progress bar
    while True:
        selection = finish_selection(Resolution(
            manifest, resolution.candidates, kept[~kept["record_id"].isin(failed["record_id"])],
            pd.concat([excluded, failed], ignore_index=True), resolution.decisions,
        ))
        # Too few images is final now; too many may still shrink as images fail to convert.
        _check_selection(manifest, selection, failed, out, shortfall_only=True)
        shutil.rmtree(data_dir, ignore_errors=True)
        written, new_failures, _ = convert_and_write_shards(selection.kept, data_dir, options, settings, manifest.configs,
                                                            desc="convert and write shards" + why)
        if not new_failures.empty:
            new_failures["detail"] = new_failures["detail"].map(lambda text: portable_paths(text, options.cache, manifest.folder))
            failed = pd.concat([failed, new_failures], ignore_index=True)
            why = f" again ({len(new_failures):,} failed to convert)"
            log.info("%d image(s) failed to convert: the selection and split are made again and the shards rewritten "
                     "(converted images come from the cache)", len(new_failures))
            continue
        kept, pixel_copies, found = _pixel_duplicates(manifest, kept, written)
        if found:
            excluded = pd.concat([excluded, pixel_copies], ignore_index=True)
            why = " again (identical pixels found)"
            log.info("%d image(s) have the same decoded pixels as another: the selection and split are made again and "
                     "the shards rewritten (converted images come from the cache)", len(pixel_copies) or 1)
            continue
        _check_selection(manifest, selection, failed, out)
        return Resolution(manifest, selection.candidates, written, selection.excluded, selection.decisions)


def convert_and_write_shards(
    kept: pd.DataFrame, data_dir: Path, options: Options, settings: convert.ConvertSettings, configs: list | None = None,
    *, desc: str = "convert and write shards",
) -> tuple[pd.DataFrame, pd.DataFrame, dict[tuple[str, str], tuple[int, int]]]:
    """Convert and shards stages together: each image goes into its shard as soon as its conversion
    arrives, so this process writes parquet while the workers convert.

    ``kept`` must be in publish order with ``split`` (and ``flags``) filled; each row goes to the
    shard folder of its partition (``shards.partition_of``). Returns the rows written (with
    ``converted_path``), the rows whose conversion failed (as exclusions) and
    {(folder, split): (rows, bytes)}.
    """
    data_dir.mkdir(parents=True)
    folders = shards.partitions(configs) if configs else [""]
    writers = {}
    for folder in folders:
        (data_dir / folder).mkdir(parents=True, exist_ok=True)
        for name in SPLITS:
            writers[(folder, name)] = shards.SplitShardWriter(data_dir / folder, name, max_shard_bytes=options.max_shard_bytes)
    records = kept.to_dict("records")
    results = []
    bar = progress.bar(len(records), desc=desc, unit="img", enabled=options.progress)
    # closing: a stop (Ctrl-C, SIGTERM, an error) ends the workers at once instead of waiting for every queued image
    with contextlib.closing(convert_cache.conversions(kept, options.cache, settings, options.workers)) as converted:
        for record, result in zip(records, converted):
            target = result[0]
            if target:
                folder = shards.partition_of(record["flags"], configs) if configs else ""
                writers[(folder, record["split"])].add(shards.publish_row(record, Path(target).read_bytes(), convert_cache.conversion_of(target)))
            results.append(result)
            bar.update()
    bar.close()
    sizes = {}
    for key, writer in writers.items():
        writer.close()
        sizes[key] = (writer.num_rows, writer.num_bytes)
    written, failed = convert_cache.separate_failures(kept, results)
    return written, failed, sizes


def portable_paths(text: str, cache: Path, manifest_folder: Path) -> str:
    """``text`` with this machine's cache and manifest folders written as ``<cache>`` and ``<manifest>``.

    Exclusion details end up in build_report.json, which ``cxr-dataset publish`` uploads: they must say which file,
    not where one user's home folder is.
    """
    roots = {"<cache>": cache, "<manifest>": manifest_folder}
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
    pixels = {rid: file_sha256(Path(p)) for rid, p in progress.track(
        list(zip(written["record_id"], written["converted_path"])), desc="hash converted images (identical pixels?)", unit="img")}
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
            f"{manifest.where}: the build does not give the expected counts: {'; '.join(problems)}. "
            f"Exclusions by reason: {exclusion_summary(selection.excluded)}."
            + (f" Images that could not be converted:{unreadable}" if len(failed) else "")
            + f"\nNothing was written to {out}."
        )
    crossing = split.patients_in_both(selection.kept)
    if crossing:
        raise CxrDatasetError(
            f"{manifest.where}: {len(crossing)} patient group(s) would sit in both splits, e.g. {crossing[:3]}; "
            "an 'upstream' split rule keeps a source's own split, so fix the patient ids or the rules. Nothing was written."
        )


def _fail_early_if_short(manifest: Manifest, resolution: Resolution, out: Path) -> None:
    """Later stages only ever remove images: if metadata alone already gives too few, say so now,
    before gigabytes of downloads, rather than after them."""
    short = check_counts(manifest, finish_selection(resolution).kept, shortfall_only=True)
    if short:
        raise CountMismatch(
            f"{manifest.where}: this release cannot reach its expected counts; metadata and decisions alone give "
            f"{'; '.join(short)}. Nothing was downloaded beyond the metadata and nothing was written to {out}. "
            "`cxr-dataset plan` shows the exclusions by reason."
        )
