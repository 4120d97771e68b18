"""The output folder: checked before anything is downloaded, written under a temporary name, renamed
into place only when the whole release is written.

* ``check_output_folder`` — ``out`` may not be the current folder or one above it, its parent may
  not be a file, and it may neither contain nor sit inside a protected path (the cache, the manifest
  folder, an input archive, a local source folder). ``overwrite`` replaces only a folder that is a
  release this package wrote (its ``build_report.json`` says so).
* ``output_lock`` — ``<parent>/.<name>.lock`` (a :mod:`filelock` lock, released by the kernel when
  the process dies, in any PID namespace), held from the checks to the rename, so a second build of
  the same ``out`` stops at once with a clear error.
* ``staging_folder`` — a ``.<name>.partial-*`` folder beside ``out`` carrying ``STAGING_MARKER``; the
  lock holder removes leftover ones (they can only belong to dead builds). A full disk becomes one
  clear error; any failure removes the folder, so nothing half-written is left.
* ``replace_folder`` — the rename into place: an existing folder is moved aside first and restored if
  the second rename fails (also used for the extracted Kaggle archive).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from .errors import CxrDatasetError
from .release import REPORT_NAME, read_report

log = logging.getLogger(__name__)

STAGING_MARKER = ".cxr-dataset-staging"
"""File in every staging folder until the card is written: what makes a ``.partial-*`` folder ours."""


def check_output_folder(out: Path, *, suggestion: str, protected: list[tuple[str, Path]], overwrite: bool) -> Path:
    """``out`` as an absolute path, if a build may write it; else a CxrDatasetError saying why and what to do.

    ``suggestion`` is the ``--out`` offered when ``out`` is the current folder; ``protected`` lists
    (label, path) of the build's inputs and cache.
    """
    given = out
    out = Path(os.path.abspath(os.path.expanduser(out)))
    here = Path.cwd()
    if out == here or out in here.parents or out == Path(out.anchor):
        raise CxrDatasetError(
            f"--out {given} is the current folder or one above it; a release is written as a new folder of its own. "
            f"Pass e.g. --out ./{suggestion}"
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
    for label, path in protected:
        path = Path(os.path.expanduser(path)).resolve()
        if resolved == path or resolved in path.parents or path in resolved.parents:
            relation = "is" if resolved == path else "contains" if resolved in path.parents else "is inside"
            raise CxrDatasetError(
                f"--out {given} {relation} {label} {path}; a release must sit in a folder of its own, apart "
                "from the build's inputs and cache. Choose another --out"
            )
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise CxrDatasetError(f"{out} already exists; remove it, choose another --out, or pass --overwrite")
        problem = not_a_release(out)
        if problem:
            raise CxrDatasetError(
                f"--overwrite refuses to replace {out}: {problem}. --overwrite replaces only a release folder this "
                "package wrote (one with its build_report.json); remove the folder yourself if it really should go, "
                "or choose another --out"
            )
    return out


def not_a_release(out: Path) -> str:
    """Why ``out`` is not a release folder this package wrote; "" when it is one."""
    if out.is_symlink():
        return "it is a symbolic link"
    if not out.is_dir():
        return "it is not a folder"
    try:
        written = read_report(out)
    except FileNotFoundError:
        return f"it holds no {REPORT_NAME}"
    except (OSError, ValueError) as error:
        return f"its {REPORT_NAME} cannot be read ({type(error).__name__})"
    if not (isinstance(written, dict) and all(key in written for key in ("report_schema", "dataset", "package_version", "fingerprint"))):
        return f"its {REPORT_NAME} is not a build report of this package"
    return ""


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
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


class Staging:
    """A staging folder for ``out`` (``folder``); ``commit()`` renames it into place."""

    def __init__(self, out: Path):
        self.out = out
        self.folder = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.parent))
        (self.folder / STAGING_MARKER).write_text(f"staging folder of a cxr-dataset build of {out}\n", encoding="utf-8")

    def commit(self) -> None:
        (self.folder / STAGING_MARKER).unlink()
        move_into_place(self.folder, self.out)

    @property
    def in_place(self) -> bool:
        """True once the rename happened: the release is complete at ``out``."""
        return not self.folder.exists() and (self.out / REPORT_NAME).is_file()


@contextlib.contextmanager
def staging_folder(out: Path, *, disk: str) -> Iterator[Staging]:
    """A fresh staging folder for ``out`` (the caller holds the output lock), removed on any failure.

    A full disk (ENOSPC/EDQUOT) inside the block becomes one CxrDatasetError naming ``disk``. A
    Ctrl-C that arrives once ``commit()`` renamed the folder into place is not an error any more:
    the release is complete, so it is logged and swallowed.
    """
    remove_stale_staging(out)
    staging = Staging(out)
    try:
        with disk_full_is_an_error(disk):
            yield staging
    except KeyboardInterrupt:
        if staging.in_place:
            log.warning("interrupted after %s was written; the release is complete", out)
            return
        shutil.rmtree(staging.folder, ignore_errors=True)
        raise
    except BaseException:
        shutil.rmtree(staging.folder, ignore_errors=True)
        raise


@contextlib.contextmanager
def disk_full_is_an_error(where: str) -> Iterator[None]:
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


def remove_stale_staging(out: Path) -> None:
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
        if folder.is_dir() and not folder.is_symlink() and moved.is_dir() and not not_a_release(moved):
            if not out.exists() and not out.is_symlink():
                os.replace(moved, out)
            shutil.rmtree(folder, ignore_errors=True)


def move_into_place(staging: Path, out: Path) -> None:
    """Rename the finished release ``staging`` to ``out``, replacing an older release there."""
    os.chmod(staging, 0o755)  # mkdtemp makes 0700 folders
    if out.exists() and not_a_release(out):  # it changed since the checks (the lock keeps builds out, not people)
        raise CxrDatasetError(f"{out} changed during the build and is no longer a release folder; nothing was replaced")
    replace_folder(staging, out)


def replace_folder(new: Path, dest: Path) -> None:
    """Move the finished folder ``new`` to ``dest``. An existing ``dest`` is first moved aside to
    ``.<name>.old-*/release`` beside it, put back if the second rename fails, and removed after it."""
    if not dest.exists():
        os.replace(new, dest)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
    os.replace(dest, aside / "release")
    try:
        os.replace(new, dest)
    except BaseException:
        os.replace(aside / "release", dest)
        shutil.rmtree(aside, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)
