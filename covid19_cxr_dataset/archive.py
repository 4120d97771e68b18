"""Safe zip extraction for the Kaggle archive (and any other zip a source ships).

The archive comes from a download or from a path the user gives (``--kaggle-archive``), so every entry
is checked before a byte is written:

* refused (:class:`~covid19_cxr_dataset.errors.ArchiveError` naming the archive and the entry): names
  with ``..`` components, absolute paths, drive letters or NUL bytes; symlink entries (a zip may
  carry ``S_IFLNK`` in its external attributes, and a link could point anywhere); two entries that
  would land on the same file; an uncompressed total above ``max_total_bytes``; an entry that
  inflates more than ``max_ratio`` times (a zip bomb).
* skipped: macOS metadata (``__MACOSX/`` trees, ``._*`` AppleDouble files, ``.DS_Store``), entries
  outside the ``root`` folder, and the nested duplicate ``<root>/<root>/`` tree that the real
  Kaggle archive carries next to ``<root>/train`` etc.

Extraction writes into a temporary sibling of ``dest_dir`` and renames it into place at the end, so
an interrupted or refused extraction never leaves a half-extracted folder behind. It records the
size and sha256 of every file it wrote (``EXTRACTION_RECORD`` inside the tree); ``check_extracted``
holds the tree to that record on every use and extracts a changed or missing file again, so a cache
never hands over bytes that did not come out of the archive.

Paths are reported as they appear in the archive (``chest_xray/train/NORMAL/IM-0115-0001.jpeg``):
they are the ``source_path`` of Kaggle records.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import stat
import zipfile
import zlib
from pathlib import Path

from . import progress as progress_bars
from .download import file_sha256
from .errors import ArchiveError
from .staging import make_hidden_folder, replace_folder, short_name

log = logging.getLogger(__name__)

DEFAULT_MAX_TOTAL_BYTES = 16 * 1024**3
"""Cap on the uncompressed size of what is extracted (the Kaggle archive holds about 1.2 GB)."""

DEFAULT_MAX_RATIO = 200.0
"""Cap on one entry's uncompressed/compressed ratio; JPEG images barely compress, zip bombs reach 1000+."""

_RATIO_FLOOR = 1024 * 1024  # Tiny entries (text, empty files) may compress well without being bombs.
_COPY_CHUNK = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")
_METADATA_NAMES = {".DS_Store"}

EXTRACTION_RECORD = ".extraction.json"
"""Inside an extracted tree: {"files": {archive path: [size, sha256]}} of every file extraction wrote."""


def extract_zip(
    zip_path: Path,
    dest_dir: Path,
    *,
    root: str | None = "chest_xray",
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    max_ratio: float = DEFAULT_MAX_RATIO,
) -> list[str]:
    """Extract the files of ``zip_path`` under ``root/`` into ``dest_dir``; return their archive paths.

    ``dest_dir/<archive path>`` is where each returned path lands. ``root=None`` extracts every
    (safe, non-metadata) entry. An existing ``dest_dir`` is replaced as a whole once the new tree is
    complete. The returned list is sorted.

    Raises:
        ArchiveError: the file is missing or not a zip, holds an unsafe entry (see the module
            docstring), holds nothing under ``root/``, is corrupt (CRC error), or the disk is full.
    """
    zip_path = Path(zip_path)
    dest_dir = Path(dest_dir)
    with _open_zip(zip_path) as archive:
        plan = _plan(archive, zip_path, root, max_total_bytes, max_ratio)
        dest_dir.parent.mkdir(parents=True, exist_ok=True)
        # Not mkdtemp (0700): the tree is renamed into the cache as it is, and a shared cache must stay
        # readable by the other users the umask lets in.
        staging = make_hidden_folder(dest_dir.parent, f".{short_name(dest_dir.name)}.", ".partial")
        try:
            written = {name: _extract_entry(archive, zip_path, info, name, staging) for info, name in progress_bars.track(
                plan, desc=f"extract {zip_path.name} into the cache (once per archive)", unit="file")}
            _write_record(staging, written)
            replace_folder(staging, dest_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    log.info("extracted %d files from %s into %s", len(plan), zip_path, dest_dir)
    return sorted(name for _, name in plan)


def list_members(zip_path: Path, *, root: str | None = "chest_xray") -> list[str]:
    """The archive paths :func:`extract_zip` would extract (same checks, nothing written), sorted."""
    zip_path = Path(zip_path)
    with _open_zip(zip_path) as archive:
        plan = _plan(archive, zip_path, root, DEFAULT_MAX_TOTAL_BYTES, DEFAULT_MAX_RATIO)
    return sorted(name for _, name in plan)


def read_member(zip_path: Path, member: str, *, max_bytes: int = 256 * 1024**2) -> bytes:
    """The bytes of one entry, read without extracting anything else.

    Raises:
        ArchiveError: not a zip, no such (safe, regular) entry, larger than ``max_bytes``, or corrupt.
    """
    zip_path = Path(zip_path)
    with _open_zip(zip_path) as archive:
        try:
            info = archive.getinfo(member)
        except KeyError:
            raise ArchiveError(
                f"{zip_path} has no entry {member!r}; expected the archive path as listed by list_members "
                "(e.g. 'chest_xray/train/NORMAL/IM-0115-0001.jpeg'). Check the path or the archive version."
            ) from None
        _check_entry(info, zip_path)
        if info.file_size > max_bytes:
            raise ArchiveError(
                f"{zip_path}: entry {member!r} is {info.file_size} bytes uncompressed, above the {max_bytes}-byte "
                "limit for a single read; extract the archive instead."
            )
        try:
            return archive.read(info)
        except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError) as exc:
            raise _corrupt(zip_path, member, exc) from None


def check_regular_file(path: Path, option: str = "--kaggle-archive") -> Path:
    """``path`` if it is a readable regular file (after symlinks); else an ArchiveError naming ``option``.

    A device (``/dev/zero``), FIFO or socket would be hashed or read for ever; a folder is not an archive.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise ArchiveError(f"{option} {path}: cannot read it ({exc.strerror or exc}); expected the downloaded .zip file") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a device, pipe or socket, not a regular file"
        raise ArchiveError(
            f"{option} {path} is {kind}; expected the dataset's .zip file as downloaded (a regular file). "
            "Pass the path of the downloaded archive."
        )
    if not os.access(path, os.R_OK):
        raise ArchiveError(f"{option} {path} is not readable by this user; fix its permissions or copy it elsewhere")
    return path


def read_extraction_record(tree: Path) -> dict[str, tuple[int, str]] | None:
    """{archive path: (size, sha256)} that extraction recorded in ``tree``; None for a tree without one
    (extracted by an older version of this package) or with an unreadable one."""
    try:
        files = json.loads((Path(tree) / EXTRACTION_RECORD).read_text(encoding="utf-8"))["files"]
        return {str(name): (int(entry[0]), str(entry[1])) for name, entry in files.items()}
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def check_extracted(tree: Path, zip_path: Path, *, progress: bool = False) -> dict[str, str]:
    """Hold the extracted ``tree`` of ``zip_path`` to its extraction record; returns {archive path: sha256}.

    Every recorded file is hashed; one that changed size or bytes, or disappeared, is extracted again
    from ``zip_path`` (written beside it and renamed into place) and checked once more. Nothing in the
    tree is handed over unchecked: the returned hashes are those of the bytes now on disk.

    Raises:
        ArchiveError: the tree has no readable record, a file cannot be restored (the archive no
            longer holds it, or gives other bytes than it gave at extraction), or the tree is read-only.
    """
    tree, zip_path = Path(tree), Path(zip_path)
    record = read_extraction_record(tree)
    if record is None:
        raise ArchiveError(f"{tree} has no readable {EXTRACTION_RECORD}; remove the folder so that the archive is extracted again")
    checked, damaged = {}, []
    for name, (size, sha256) in progress_bars.track(sorted(record.items()), unit="file", enabled=progress, leave=False,
                                                    desc="check extracted archive files (sha256 against the extraction record)"):
        path = tree.joinpath(*name.split("/"))
        try:
            intact = path.is_file() and path.stat().st_size == size and file_sha256(path) == sha256
        except OSError:
            intact = False
        if intact:
            checked[name] = sha256
        else:
            damaged.append(name)
    if damaged:
        log.warning("%d file(s) of the extracted archive %s changed or disappeared in the cache; extracting them again "
                    "from %s: %s", len(damaged), tree, zip_path, ", ".join(damaged[:5]) + (" ..." if len(damaged) > 5 else ""))
        with _open_zip(zip_path) as archive:
            for name in damaged:
                checked[name] = _restore_member(archive, zip_path, tree, name, record[name])
    return checked


def _restore_member(archive: zipfile.ZipFile, zip_path: Path, tree: Path, name: str, recorded: tuple[int, str]) -> str:
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise ArchiveError(
            f"{zip_path} no longer holds {name!r}, which was extracted from it into {tree} and has changed there; "
            "remove that folder and build again with the archive the release pins"
        ) from None
    _check_entry(info, zip_path)
    target = tree.joinpath(*name.split("/"))
    temp = target.with_name(f".{target.name}.{os.getpid()}.restore")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        temp.unlink(missing_ok=True)
        size, sha256 = _extract_to(archive, zip_path, info, temp)
        if (size, sha256) != tuple(recorded):
            raise ArchiveError(
                f"{zip_path}: entry {name!r} gives sha256 {sha256} ({size} bytes), but extraction into {tree} recorded "
                f"{recorded[1]} ({recorded[0]} bytes); the archive changed. Remove {tree} and build again."
            )
        os.replace(temp, target)
    except OSError as exc:
        raise ArchiveError(
            f"{target} changed in the cache and cannot be extracted again from {zip_path} ({exc.strerror or exc}); "
            "make the cache writable, or pass --cache-dir (or set COVID19_CXR_CACHE) to a writable folder"
        ) from None
    finally:
        temp.unlink(missing_ok=True)
    return sha256


# ---- internals -----------------------------------------------------------------------------------


def _open_zip(zip_path: Path) -> zipfile.ZipFile:
    if not zip_path.is_file():  # is_file() is False for devices and FIFOs too: nothing is read from them
        raise ArchiveError(
            f"archive {zip_path} does not exist (or is not a file); expected the downloaded zip. Check the path "
            "given to --kaggle-archive."
        )
    try:
        return zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        with open(zip_path, "rb") as handle:
            head = handle.read(64)
        looks = (
            "it looks like an HTML page (a login or error page saved instead of the archive)"
            if head.lstrip().startswith(b"<")
            else f"it starts with {head[:8]!r}" if head else "it is empty"
        )
        raise ArchiveError(
            f"{zip_path} is not a zip archive ({zip_path.stat().st_size} bytes; {looks}; {exc}). Expected the "
            "dataset's .zip as downloaded from Kaggle: a partial download is not a valid zip either. Download it "
            "again (the Kaggle dataset page's Download button) and pass its path."
        ) from None


def _check_entry(info: zipfile.ZipInfo, zip_path: Path) -> str:
    """The entry's normalized relative path; ArchiveError if it could escape or is a link."""
    name = info.filename
    # Zips written on Windows may use backslashes; treat them as separators so '..\\' cannot hide.
    parts = name.replace("\\", "/").split("/")
    if "\0" in name or name.startswith(("/", "\\")) or _DRIVE.match(name):
        raise ArchiveError(
            f"{zip_path}: entry {name!r} has an absolute path or drive letter; expected paths relative to the "
            "archive root. Refusing the whole archive: it is not the expected download."
        )
    if ".." in parts:
        raise ArchiveError(
            f"{zip_path}: entry {name!r} climbs out of the extraction folder ('..'); refusing the whole "
            "archive: it is not the expected download."
        )
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise ArchiveError(
            f"{zip_path}: entry {name!r} is a symbolic link; expected regular files only. Refusing the whole "
            "archive: it is not the expected download."
        )
    return "/".join(part for part in parts if part not in ("", "."))


def _skip_reason(name: str, is_dir: bool, root: str | None) -> str:
    parts = name.split("/")
    if "__MACOSX" in parts:
        return "macOS metadata"
    if not is_dir and (parts[-1] in _METADATA_NAMES or parts[-1].startswith("._")):
        return "macOS metadata"
    if root:
        if parts[0] != root:
            return f"outside {root}/"
        if len(parts) > 1 and parts[1] == root:
            return f"nested duplicate {root}/{root}/ tree"
    return ""


def _plan(
    archive: zipfile.ZipFile, zip_path: Path, root: str | None, max_total_bytes: int, max_ratio: float
) -> list[tuple[zipfile.ZipInfo, str]]:
    """Check every entry (skipped ones too: one unsafe entry taints the archive) and pick the files."""
    root = root.strip("/") if root else None
    chosen: list[tuple[zipfile.ZipInfo, str]] = []
    seen: dict[str, str] = {}
    skipped: dict[str, int] = {}
    top_level: set[str] = set()
    total = 0
    for info in archive.infolist():
        name = _check_entry(info, zip_path)
        if not name:
            continue
        top_level.add(name.split("/")[0])
        reason = _skip_reason(name, info.is_dir(), root)
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        if info.is_dir():
            continue
        folded = name.casefold()  # Case-insensitive disks would merge these two into one file.
        if folded in seen:
            raise ArchiveError(
                f"{zip_path}: entries {seen[folded]!r} and {info.filename!r} would be extracted to the same file; "
                "expected unique paths. The archive is not the expected download."
            )
        seen[folded] = info.filename
        if info.file_size > _RATIO_FLOOR and info.file_size > max_ratio * max(info.compress_size, 1):
            raise ArchiveError(
                f"{zip_path}: entry {info.filename!r} inflates from {info.compress_size} to {info.file_size} bytes "
                f"(more than {max_ratio:g} times); refusing a likely zip bomb. Expected images that barely "
                "compress."
            )
        total += info.file_size
        if total > max_total_bytes:
            raise ArchiveError(
                f"{zip_path}: the files to extract exceed {max_total_bytes} bytes uncompressed (at entry "
                f"{info.filename!r}); refusing a likely zip bomb. If this archive is genuine, raise max_total_bytes."
            )
        chosen.append((info, name))
    if skipped:
        log.info("%s: skipped %s", zip_path, ", ".join(f"{n} ({r})" for r, n in sorted(skipped.items())))
    if root and not chosen:
        raise ArchiveError(
            f"{zip_path} holds no files under {root}/; its top level holds {sorted(top_level)[:10]}. Expected the "
            f"dataset's archive with a {root}/ folder: check that this is the right download."
        )
    return chosen


def _extract_entry(archive: zipfile.ZipFile, zip_path: Path, info: zipfile.ZipInfo, name: str, staging: Path) -> tuple[int, str]:
    """Write one entry under ``staging``; returns its (size, sha256) as written."""
    target = staging.joinpath(*name.split("/"))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        return _extract_to(archive, zip_path, info, target)
    except OSError as exc:
        raise ArchiveError(
            f"could not write {info.filename!r} from {zip_path} into {staging.parent}: {exc.strerror or exc}. "
            "Nothing was left half-extracted; free some disk space or extract elsewhere."
        ) from None


def _extract_to(archive: zipfile.ZipFile, zip_path: Path, info: zipfile.ZipInfo, target: Path) -> tuple[int, str]:
    """Stream one entry into the new file ``target`` (never an existing one); returns (size, sha256)."""
    written = 0
    digest = hashlib.sha256()
    try:
        # "xb": never overwrite, even if a path check above were ever wrong.
        with archive.open(info) as source, open(target, "xb") as sink:
            while chunk := source.read(_COPY_CHUNK):
                written += len(chunk)
                if written > info.file_size:  # zipfile caps reads at file_size; this is a second fence
                    raise ArchiveError(f"{zip_path}: entry {info.filename!r} inflates beyond its declared size")
                digest.update(chunk)
                sink.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError) as exc:
        raise _corrupt(zip_path, info.filename, exc) from None
    return written, digest.hexdigest()


def _write_record(tree: Path, written: dict[str, tuple[int, str]]) -> None:
    text = json.dumps({"files": {name: list(entry) for name, entry in sorted(written.items())}}, indent=0)
    (tree / EXTRACTION_RECORD).write_text(text + "\n", encoding="utf-8")


def _corrupt(zip_path: Path, member: str, exc: BaseException) -> ArchiveError:
    return ArchiveError(
        f"{zip_path}: entry {member!r} cannot be read ({type(exc).__name__}: {exc}); the archive is corrupt, "
        "truncated or encrypted. Download it again and pass its path."
    )
