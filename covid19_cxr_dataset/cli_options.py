"""Click helpers every ``cxr-dataset`` command shares (``cli.py`` holds the commands): one readable
line and exit code 1 for the project's own errors (``fail_cleanly``), the manifest a command line
names (``load_manifest``), the options of every command that reads a manifest and its sources
(``release_options``, ``command_options``), ``--fingerprint`` values checked before any work
(``FINGERPRINT_OPTION``), and a window in which Ctrl-C is ignored (``sigint_ignored``).
``-v``/``-q`` anywhere on the line is ``cli_verbosity``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
from pathlib import Path

import click

from . import progress
from .errors import CxrDatasetError


def fail_cleanly(command):
    """Turn the project's own errors into one readable line and exit code 1 (no traceback)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except CxrDatasetError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted: nothing was written to the output folder; the download cache keeps verified files", err=True)
            sys.exit(130)

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
        version = versions[-1]
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


@contextlib.contextmanager
def sigint_ignored():
    """Ctrl-C ignored inside the block (main thread only): once a release is in place, printing its
    summary must not fail the command."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


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
