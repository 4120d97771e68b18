"""Click helpers every ``cxr-dataset`` command shares (``cli.py`` holds the commands): one readable
line and exit code 1 for the project's own errors, and one line and 128 + the signal's number for
Ctrl-C, SIGTERM and SIGHUP (``fail_cleanly``; ``interrupts``), the manifest a command line names
(``load_manifest``), the options of every command that reads a manifest and its sources
(``release_options``, ``command_options``), ``--fingerprint`` values checked before any work
(``FINGERPRINT_OPTION``), and the checks a command makes before its work: the files it will write
(``output_file``), the baseline's release and folder (``check_baseline_inputs``); ``plan
--check-files``'s report (``check_files``). ``-v``/``-q`` anywhere on the line is ``cli_verbosity``.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import click

from . import interrupts, progress
from .errors import CxrDatasetError


def fail_cleanly(command):
    """Turn the project's own errors into one readable line and exit code 1, and Ctrl-C / SIGTERM into
    one line and 130 / 143 (no traceback)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except CxrDatasetError as error:
            click.echo(f"error: {error}", err=True)
            interrupts.exiting()
            sys.exit(1)
        except KeyboardInterrupt as stopped:
            click.echo(f"{interrupts.describe(stopped)}: nothing was written to the output folder; the download cache "
                       "keeps verified files", err=True)
            interrupts.exiting()  # the cleanup is done: a second Ctrl-C must not turn exit 130 into -2
            sys.exit(interrupts.exit_code(stopped))

    return wrapper


def load_manifest(version: str | None, manifest_path: Path | None, name: str):
    """The manifest ``--version``/``--manifest``/``--name`` name (no version: the newest bundled release)."""
    from . import manifest

    if manifest_path is not None:
        if version is not None:
            raise click.UsageError("pass either --version (a bundled release) or --manifest (a folder), not both")
        return manifest.load(manifest_path)
    if version is None:
        releases = manifest.available()
        if not releases:
            raise CxrDatasetError("no manifests found; pass --manifest PATH")
        versions = [v for n, v, _ in releases if n == name]
        if not versions:
            known = ", ".join(sorted({n for n, _, _ in releases}))
            raise CxrDatasetError(
                f"no release named {name!r} under {manifest.manifests_root()}; known names: {known}. "
                "Pass one of them with --name, or a manifest folder with --manifest PATH (`cxr-dataset manifests` lists them)"
            )
        version = ([v for v in versions if "+" not in v] or versions)[-1]  # the newest release, not a local variant
    try:
        return manifest.load(manifest.find(version, name))
    except CxrDatasetError as error:
        if "+" not in version:
            raise
        raise CxrDatasetError(f"{error} {version} is a local version: a variant lives in its own folder; pass "
                              "--manifest DIR (the folder `cxr-dataset new-variant` wrote).") from None


def command_options(cache_dir, mirror, offline, workers, quiet, kaggle_archive=None, overwrite=False):
    """The library's ``Options`` from the shared command-line options (``-q`` anywhere silences the bars)."""
    from .options import Options

    return Options(
        cache_dir=cache_dir, mirror=mirror, offline=offline, workers=workers or (os.cpu_count() or 1),
        progress=not quiet and progress.is_enabled(), kaggle_archive=kaggle_archive, overwrite=overwrite,
    )


def release_options(command):
    """The options every command that reads a manifest and its sources shares."""
    decorators = [
        click.option("--version", "version", metavar="VERSION", help="Release to use (see `cxr-dataset manifests`); default: the newest."),
        click.option("--manifest", "manifest_path", type=click.Path(exists=True, path_type=Path),
                     help="A manifest folder (or its manifest.yaml) instead of a bundled release: for your own variants."),
        click.option("--name", default="covid19-cxr", show_default=True, help="Dataset name under builder_manifests/."),
        click.option("--cache-dir", type=click.Path(path_type=Path), envvar="COVID19_CXR_CACHE",
                     help="Download cache. [default: $COVID19_CXR_CACHE or ~/.cache/covid19-cxr-dataset]"),
        click.option("--mirror", metavar="URL", help="Base URL replacing https://raw.githubusercontent.com (institutional mirror; same <owner>/<repo>/<commit>/<path> layout)."),
        click.option("--offline", is_flag=True, help="Use only the cache; fail listing every file that is missing."),
        click.option("--workers", type=click.IntRange(1, 256), help="Parallel workers for download and conversion. [default: all cores]"),
        click.option("--quiet", "-q", is_flag=True, help="No progress bars or progress messages."),
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


def _anchors(ctx, param, values):
    """``--fingerprint [CONFIG=]HEX`` values, checked before any work (a malformed one is a usage error)."""
    from .anchors import parse

    try:
        return [parse(value) for value in values]
    except CxrDatasetError as error:
        raise click.BadParameter(str(error).removeprefix("--fingerprint "), ctx=ctx, param=param) from None


FINGERPRINT_OPTION = click.option(
    "--fingerprint", "fingerprints", multiple=True, metavar="[CONFIG=]HEX", callback=_anchors,
    help="A fingerprint from outside the folder (a paper, a citation, the Hub tag message) that it must match: "
         "CONFIG=HEX for one configuration, HEX for any of them; at least 16 hex digits. Repeatable.")


def pin_status(loaded) -> str:
    unpinned = sum(source.unpinned_files(loaded) for source in loaded.sources)
    if unpinned:
        return f"builds as pinned (GitHub by commit and blob id); {unpinned:,} Kaggle file(s) without a recorded sha256"
    return "builds as pinned (every file by checksum)"


def output_file(path: Path, option: str, manifest, options) -> Path:
    """A file a command will write (``plan --json``, ``--missing-report``), checked before the work: not in
    the manifest's folder, the bundled manifests or the cache, and in a folder that can be written."""
    from .manifest import manifests_root
    from .staging import check_output_file

    protected = [("the manifest folder", manifest.folder), ("the manifests folder", manifests_root()),
                 ("the cache dir", options.cache)]
    return check_output_file(path, option=option, protected=protected)


def default_missing_report(manifest) -> Path:
    """Where ``plan --check-files`` writes the unreachable files unless told: ./<name>-<version>.missing-files.csv."""
    return Path(f"{manifest.name}-{manifest.version}.missing-files.csv")


def check_files(manifest, resolution, options, missing_report: Path, deadline: float | None = None) -> list[dict]:
    """plan --check-files: HEAD every file, print what is unreachable, write the missing-files report
    to ``missing_report`` (checked before, ``output_file``)."""
    from . import missing
    from .fetch import check_files as head_every_file
    from .naming import shown_path

    checked, unreachable = head_every_file(resolution, options, **({} if deadline is None else {"deadline": deadline}))
    where = options.mirror or "raw.githubusercontent.com"
    click.echo(f"  files: {checked - len(unreachable):,} of {checked:,} reachable on {where} (HEAD requests; nothing downloaded;"
               " Kaggle files come from the archive and are not checked)")
    if not unreachable:
        return []
    click.echo("  unreachable per source and split (split: where the file would go):")
    for line in missing.missing_table(unreachable):
        click.echo("  " + line)
    missing.write_missing_report(missing_report, unreachable, option="--missing-report")
    click.echo(f"  wrote {shown_path(missing_report)} ({len(unreachable):,} files: source, path, split, label, HTTP status, URL)")
    click.echo(missing.missing_files_advice(manifest, missing_report, mirror=options.mirror, cache_dir=options.cache_dir))
    return unreachable


def check_baseline_inputs(data_dir: Path, out: Path, config: str | None) -> None:
    """Before TensorFlow is even imported: the release has the splits the baseline trains and evaluates
    on, and ``--out`` can be written (a run of hours must not end in a crash)."""
    from .release import require_splits
    from .staging import check_writable_folder

    require_splits(data_dir, config, option="--data")
    check_writable_folder(out, option="--out", protected=[("the release folder", data_dir)])
