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
* ``check_output_file`` / ``write_output_file`` — a file a command writes where the user says (``plan
  --json``, ``--missing-report``): refused inside a protected folder (a manifest folder, the cache) and
  where it cannot be written, checked before the work, written atomically (a temporary file renamed).
* ``short_name`` — the names of the lock, staging and moved-aside folders beside ``out`` (and of the
  missing-files report), kept under the file system's 255-byte limit whatever the length of ``out``'s name.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import logging
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from . import interrupts
from .errors import CxrDatasetError
from .release import REPORT_NAME, read_report

log = logging.getLogger(__name__)

STAGING_MARKER = ".cxr-dataset-staging"
"""File in every staging folder until the card is written: what makes a ``.partial-*`` folder ours."""

NAME_LIMIT_BYTES = 255
"""The longest file or folder name most file systems accept (ext4, XFS, APFS, NTFS in characters)."""

SHORT_NAME_BYTES = 180
"""The longest name kept as it is in the names made from it (``short_name``): room for ``.`` and a
suffix such as ``.partial-<pid>-<random>`` within the 255 bytes a file name may have."""


def short_name(name: str, limit: int = SHORT_NAME_BYTES) -> str:
    """``name`` if it fits in ``limit`` bytes, else its first characters and a hash of the whole name
    (the same name always gives the same result, so a lock or staging folder is found again)."""
    if len(name.encode()) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    head = name.encode()[:limit - len(digest) - 1].decode(errors="ignore")
    return f"{head}~{digest}"


def _umask() -> int:
    """The process's umask, read without changing it (Linux); 0o022 when it cannot be read."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def make_hidden_folder(parent: Path, prefix: str, suffix: str = "") -> Path:
    """A new, uniquely named folder in ``parent`` (like ``tempfile.mkdtemp``) with the permissions the
    umask gives a new folder, not mkdtemp's 0700: what is renamed into a shared cache or a release stays
    readable by the others the umask lets in."""
    for _ in range(100):
        folder = parent / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            folder.mkdir(mode=0o777)
        except FileExistsError:
            continue
        return folder
    raise FileExistsError(f"no free name for a new folder {prefix}*{suffix} in {parent}")


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
    if len(out.name.encode()) > NAME_LIMIT_BYTES:
        raise CxrDatasetError(
            f"--out {given}: the folder name is {len(out.name.encode())} bytes long; file systems allow {NAME_LIMIT_BYTES}. "
            "Choose a shorter --out"
        )
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


def lock_path(out: Path) -> Path:
    """The output lock of ``out``: ``<parent>/.<name>.lock``."""
    return out.parent / f".{short_name(out.name)}.lock"


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold ``<parent>/.<name>.lock`` for the whole build: one build per output folder at a time."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_path(out)))
        lock.acquire(timeout=0)
    except Timeout:
        raise CxrDatasetError(
            f"another build is writing {out} right now (it holds {lock_path(out)}); wait for it to "
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
        self.folder = Path(tempfile.mkdtemp(prefix=f".{short_name(out.name)}.partial-{os.getpid()}-", dir=out.parent))
        (self.folder / STAGING_MARKER).write_text(f"staging folder of a cxr-dataset build of {out}\n", encoding="utf-8")

    def commit(self) -> None:
        (self.folder / STAGING_MARKER).unlink()
        move_into_place(self.folder, self.out)
        interrupts.work_complete()  # the release is in place: the program ignores Ctrl-C/SIGTERM from now on

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
    for folder in out.parent.glob(f".{glob.escape(short_name(out.name))}.partial-*"):
        if folder.is_dir() and not folder.is_symlink() and (folder / STAGING_MARKER).is_file():
            shutil.rmtree(folder, ignore_errors=True)
    for folder in out.parent.glob(f".{glob.escape(short_name(out.name))}.old-*"):
        # A release moved aside by a build that died between its two renames: restore it if out is missing.
        moved = folder / "release"
        if folder.is_dir() and not folder.is_symlink() and moved.is_dir() and not not_a_release(moved):
            if not out.exists() and not out.is_symlink():
                os.replace(moved, out)
            shutil.rmtree(folder, ignore_errors=True)


def move_into_place(staging: Path, out: Path) -> None:
    """Rename the finished release ``staging`` to ``out``, replacing an older release there."""
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700 folders; a release is for others to read too
    if out.exists() and not_a_release(out):  # it changed since the checks (the lock keeps builds out, not people)
        raise CxrDatasetError(f"{out} changed during the build and is no longer a release folder; nothing was replaced")
    replace_folder(staging, out)


def replace_folder(new: Path, dest: Path) -> None:
    """Move the finished folder ``new`` to ``dest``. An existing ``dest`` is first moved aside to
    ``.<name>.old-*/release`` beside it, put back if the second rename fails, and removed after it."""
    if not dest.exists():
        os.replace(new, dest)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{short_name(dest.name)}.old-", dir=dest.parent))
    os.replace(dest, aside / "release")
    try:
        os.replace(new, dest)
    except BaseException:
        os.replace(aside / "release", dest)
        shutil.rmtree(aside, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)


# ---- output files ----------------------------------------------------------------------------------

def _protected_folder_holding(resolved: Path, protected) -> tuple[str, Path] | None:
    """(label, folder) of the first ``protected`` folder that is or holds ``resolved`` (links resolved), else None."""
    for label, folder in protected:
        folder = Path(os.path.expanduser(folder)).resolve()
        if resolved == folder or folder in resolved.parents:
            return label, folder
    return None


def check_output_file(path: Path, *, option: str, protected: list[tuple[str, Path]]) -> Path:
    """``path`` as an absolute path, if a command may write the file there; else a CxrDatasetError naming
    ``option``, the path, why, and the fix. ``protected``: (label, folder) of places no output may land
    in (a manifest folder, the manifests root, the cache), checked with every link resolved."""
    given = path
    path = Path(os.path.abspath(os.path.expanduser(path)))
    resolved = path.resolve()
    inside = _protected_folder_holding(resolved, protected)
    if inside is not None:
        label, folder = inside
        raise CxrDatasetError(
            f"{option} {given} is inside {label} {folder}; writing it there would change files this package "
            f"reads (or a manifest's checksum). Choose a path outside it, e.g. {option} ./{path.name}"
        )
    if path.is_dir():
        raise CxrDatasetError(f"{option} {given} is a folder; pass a file name, e.g. {option} {given / path.name}")
    if path.exists() and not path.is_file():
        raise CxrDatasetError(f"{option} {given} is a device, pipe or socket, not a regular file; pass a file name")
    parent = path.parent
    for ancestor in (parent, *parent.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise CxrDatasetError(f"{option} {given}: {ancestor} is a file, not a folder, so nothing can be written "
                                      f"under it; choose another {option}")
            break
    if len(path.name.encode()) > NAME_LIMIT_BYTES:
        raise CxrDatasetError(f"{option} {given}: the file name is {len(path.name.encode())} bytes; file systems allow "
                              f"{NAME_LIMIT_BYTES}. Choose a shorter name")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=parent, prefix=".cxr-dataset-probe-", delete=True)
        probe.close()
    except OSError as error:
        raise CxrDatasetError(f"{option} {given}: cannot write into {parent} ({error.strerror or error}); choose a "
                              f"{option} in a folder you can write") from None
    return path


def write_output_file(path: Path, text: str, *, option: str) -> Path:
    """Write ``text`` to ``path`` atomically (a temporary file beside it, renamed over it): a reader sees
    the old file or the new one, never half of it, and a failure leaves the old one as it was."""
    path = Path(path)
    temporary = None
    try:
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", newline="", dir=path.parent, prefix=f".{short_name(path.name)}.",
                                         delete=False) as handle:
            temporary = Path(handle.name)
            handle.write(text)
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except OSError as error:
        raise CxrDatasetError(f"{option} {path}: cannot write it ({error.strerror or error}); nothing was changed there. "
                              f"Free some space or choose another {option}") from None
    finally:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
    return path


def check_writable_folder(folder: Path, *, option: str, protected: list[tuple[str, Path]] = ()) -> Path:
    """``folder`` as an absolute path, if a command can write files into it (creating it if needed); else a
    CxrDatasetError naming ``option``, the folder, why and the fix. Checked by writing (and removing) a
    probe in it or, when it does not exist yet, in its first existing parent: nothing is left behind."""
    given = folder
    folder = Path(os.path.abspath(os.path.expanduser(folder)))
    inside = _protected_folder_holding(folder.resolve(), protected)
    if inside is not None:
        label, path = inside
        raise CxrDatasetError(f"{option} {given} is inside {label} {path}; choose a folder of its own, outside it")
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p.is_symlink())
    if not existing.is_dir():
        where = "is a file" if existing == folder else f"is under {existing}, a file"
        raise CxrDatasetError(f"{option} {given} {where}, not a folder; choose another {option}")
    try:
        probe = tempfile.mkdtemp(prefix=".cxr-dataset-probe-", dir=existing)
        os.rmdir(probe)
    except OSError as error:
        raise CxrDatasetError(f"{option} {given}: cannot write into {existing} ({error.strerror or error}); choose an "
                              f"{option} in a folder you can write") from None
    return folder
