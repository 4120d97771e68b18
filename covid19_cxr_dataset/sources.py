"""Sources stage: where a record is born.

Each source kind turns its upstream metadata into rows of the record table (see records.py):

* ``github`` — a repository pinned at a commit. Its metadata table is downloaded (pinned by git blob
  id in the manifest's lock file) and parsed with one of two layouts: ``cohen``
  (ieee8023/covid-chestxray-dataset: ``folder``/``filename`` columns) or ``chung`` (agchung's
  Figure1 and Actualmed repositories: ``imagename`` column, or the image named after ``patientid``).
  Files are fetched one by one from raw-content URLs at the commit, never as a generated zip.
* ``kaggle`` — paultimothymooney/chest-xray-pneumonia. The files are pinned by name, split and class
  in the manifest's file list; the archive comes from the Kaggle API or ``--kaggle-archive``.
* ``dicom`` — a list of DICOM files with checksums, from URLs or a local folder.

Patient ids are normalized here so that one patient has one id across the whole build.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path, PurePosixPath
from urllib.parse import quote

import pandas as pd

from . import safe_load
from .errors import ManifestError
from .manifest import Manifest
from .records import new_record_table

GITHUB_RAW_BASE = "https://raw.githubusercontent.com"
KAGGLE_SUBTYPES = ("normal", "bacteria", "virus")


# ---- locks and lists -------------------------------------------------------------------------

def read_lock(path: Path) -> dict[str, tuple[str, int]]:
    """A GitHub lock file (``path<TAB>git_blob_sha1<TAB>size``) as {path: (blob, size or -1)}."""
    lock: dict[str, tuple[str, int]] = {}
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle, delimiter="\t")
            header = next(reader, None)
            if header is None:
                raise ManifestError(f"{path}: the lock file is empty; expected a header 'path<TAB>git_blob_sha1<TAB>size' "
                                    "and one row per file (`cxr-dataset lock github` writes it)")
            if header[:2] != ["path", "git_blob_sha1"]:
                raise ManifestError(f"{path}: expected a header 'path<TAB>git_blob_sha1<TAB>size', found {header}")
            for number, row in enumerate(reader, start=2):
                if len(row) < 2 or not re.fullmatch(r"[0-9a-f]{40}", row[1]):
                    raise ManifestError(f"{path}:{number}: expected a path and a 40-character git blob id, found {row}")
                check_relative_path(row[0], f"{path}:{number}")
                size = int(row[2]) if len(row) > 2 and row[2].isdigit() else -1
                lock[row[0]] = (row[1], size)
    except (UnicodeDecodeError, csv.Error) as error:
        raise ManifestError(f"{path}: not a UTF-8 tab-separated lock file ({error}); regenerate it with `cxr-dataset lock github`") from None
    return lock


def check_relative_path(name: str, where: str) -> None:
    """``name`` must be a plain relative POSIX path inside its source: no ``..``, no absolute path, no NUL.

    Names in lock files and file lists become cache paths and URLs; one that climbs out would read or
    write outside the cache.
    """
    parts = name.split("/")
    if (
        not name
        or "\0" in name
        or "\\" in name
        or name.startswith("/")
        or re.match(r"^[A-Za-z]:", name)
        or any(part in ("", ".", "..") for part in parts)
        or any(ord(c) < 32 for c in name)
    ):
        raise ManifestError(
            f"{where}: file name {name!r} is not a plain relative path (no '..', '.', empty or absolute parts, "
            "no backslash, NUL or control characters); fix the row or regenerate the list"
        )


def read_kaggle_files(path: Path) -> pd.DataFrame:
    """The Kaggle file list: ``split,class,filename,subtype[,sha256]`` (sha256 may be empty)."""
    table = safe_load.csv_table(path)
    missing = {"split", "class", "filename", "subtype"} - set(table.columns)
    if missing:
        raise ManifestError(f"{path}: missing columns {sorted(missing)}; expected split,class,filename,subtype,sha256")
    if "sha256" not in table.columns:
        table["sha256"] = ""
    bad = table[~table["sha256"].str.fullmatch(r"([0-9a-f]{64})?")]
    if len(bad):
        raise ManifestError(f"{path}: row {bad.index[0] + 2} has a malformed sha256 {bad.iloc[0]['sha256']!r}")
    for number, (_, row) in enumerate(table.iterrows(), start=2):
        for column in ("split", "class", "filename"):
            value = row[column]
            if "/" in value:
                raise ManifestError(f"{path}:{number}: {column} {value!r} holds a '/'; expected one folder or file name")
            check_relative_path(value, f"{path}:{number}")
    return table


# ---- github ----------------------------------------------------------------------------------

def github_url(source: dict, path: str, base: str = GITHUB_RAW_BASE) -> str:
    return f"{base.rstrip('/')}/{source['repository']}/{source['commit']}/{quote(path)}"


def github_cache_key(source: dict, path: str) -> str:
    return f"github/{source['repository']}/{source['commit']}/{path}"


def metadata_pin(manifest: Manifest, source: dict) -> tuple[str, int]:
    lock = read_lock(manifest.file(source["lock"]))
    path = source["metadata"]["path"]
    if path not in lock:
        raise ManifestError(f"{manifest.file(source['lock'])}: the metadata file {path!r} of source {source['name']!r} is not pinned; add its git blob id")
    return lock[path]


def read_metadata_csv(path: Path, encoding: str) -> pd.DataFrame:
    try:
        text = Path(path).read_bytes().decode(encoding)
    except LookupError:
        raise ManifestError(
            f"metadata encoding {encoding!r} (the manifest's metadata.encoding) is not a text encoding Python knows; "
            "use e.g. utf-8 or iso-8859-1"
        ) from None
    except UnicodeDecodeError as error:
        raise ManifestError(
            f"{path}: the metadata table is not {encoding} text (byte 0x{error.object[error.start]:02x} at offset "
            f"{error.start}); set the manifest's metadata.encoding to the file's encoding (e.g. iso-8859-1)"
        ) from None
    try:
        table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, csv.Error) as error:
        raise ManifestError(f"{path}: the metadata table is not parseable CSV ({str(error).strip() or type(error).__name__}); "
                            "the pinned file or the manifest's metadata layout is wrong") from None
    table.columns = [c.strip() for c in table.columns]
    return table.loc[:, [c for c in table.columns if c and not c.startswith("Unnamed")]]


def github_records(
    manifest: Manifest, source: dict, metadata: pd.DataFrame, base_url: str = GITHUB_RAW_BASE,
    lock: dict[str, tuple[str, int]] | None = None,
) -> pd.DataFrame:
    """Rows for one GitHub source from its parsed metadata table (``lock`` defaults to the manifest's)."""
    if lock is None:
        lock = read_lock(manifest.file(source["lock"]))
    layout = source["metadata"]["layout"]
    folder = source["image_folder"].strip("/")
    labels = source["labels"]
    by_stem = {PurePosixPath(p).stem: p for p in lock if p.startswith(folder + "/")}
    rows = []
    for index, meta in metadata.iterrows():
        if layout == "cohen":
            path = f"{meta['folder'].strip() or folder}/{meta['filename'].strip()}"
            patient = meta["patientid"].strip()
            license_text = meta.get("license", "").strip()
        else:  # chung
            name = meta.get("imagename", "").strip()
            patient = meta["patientid"].strip()
            path = f"{folder}/{name}" if name else by_stem.get(patient, f"{folder}/{patient}")
            patient = _chung_patient(patient)
            license_text = source["license"]
        _check_row(manifest, source, index, meta, path)
        finding = meta["finding"].strip()
        blob, size = lock.get(path, ("", -1))
        rows.append(
            {
                "record_id": f"{source['name']}:{path}",
                "source": source["name"],
                "source_path": path,
                "patient_id": f"{source['name']}:{patient}",
                "finding": finding,
                "label": labels.get(finding, ""),
                "view": meta.get("view", "").strip(),
                "modality": meta.get("modality", "").strip(),
                "license": license_text,
                "download_url": github_url(source, path, base_url),
                "git_blob_sha1": blob,
                "size": size,
            }
        )
    table = new_record_table(rows)
    repeated = table[table["record_id"].duplicated()]
    if len(repeated):
        # Cohen lists a few files twice; one image is one record, the first row's metadata wins.
        table = table.drop_duplicates("record_id", keep="first")
    return table.reset_index(drop=True)


def _chung_patient(patient: str) -> str:
    """Figure1 suffixes one patient's studies with letters: COVID-00003a and COVID-00003b are one patient."""
    match = re.fullmatch(r"(COVID-\d+)[a-z]", patient)
    return match.group(1) if match else patient


def _check_row(manifest: Manifest, source: dict, index: int, meta: pd.Series, path: str) -> None:
    if not meta.get("patientid", "").strip():
        raise ManifestError(
            f"metadata of source {source['name']!r} ({source['metadata']['path']} at {source['commit'][:12]}), "
            f"row {index + 2}: empty patientid for {path}; the metadata layout {source['metadata']['layout']!r} does not fit this file"
        )


# ---- kaggle ----------------------------------------------------------------------------------

_KAGGLE_PATIENT = (
    re.compile(r"^(person\d+_(?:bacteria|virus))_\d+"),  # person numbers run per subtype series
    re.compile(r"^((?:NORMAL2-)?IM-\d+)-"),
)


def kaggle_patient(filename: str) -> str:
    """Patient key from a Kermany file name (see docs/MANIFEST.md for why the subtype is part of it)."""
    for pattern in _KAGGLE_PATIENT:
        match = pattern.match(filename)
        if match:
            return match.group(1)
    raise ManifestError(f"Kaggle file name {filename!r} does not follow personN_<subtype>_M or [NORMAL2-]IM-NNNN-MMMM")


def kaggle_records(manifest: Manifest, source: dict) -> pd.DataFrame:
    files = read_kaggle_files(manifest.file(source["files"]))
    root = source["archive_root"].strip("/")
    unknown = sorted(set(files["class"]) - set(source["labels"]))
    if unknown:
        raise ManifestError(f"{manifest.file(source['files'])}: classes {unknown} have no entry in source {source['name']!r} labels")
    rows = [
        {
            "record_id": f"{source['name']}:{root}/{f.split}/{f['class']}/{f.filename}",
            "source": source["name"],
            "source_path": f"{root}/{f.split}/{f['class']}/{f.filename}",
            "patient_id": f"{source['name']}:{kaggle_patient(f.filename)}",
            "finding": f.subtype,
            "label": source["labels"][f["class"]],
            "view": source.get("view", "AP"),
            "modality": "X-ray",
            "license": source["license"],
            "upstream_split": f.split,
            "sha256_expected": f.sha256,
        }
        for _, f in files.iterrows()
    ]
    return new_record_table(rows)


# ---- dicom -----------------------------------------------------------------------------------

def dicom_records(manifest: Manifest, source: dict) -> pd.DataFrame:
    """Rows from a DICOM file list: ``path,sha256,label,patient_id[,view,license,url]``."""
    listing = manifest.file(source["files"])
    files = safe_load.csv_table(listing)
    missing = {"path", "sha256", "label", "patient_id"} - set(files.columns)
    if missing:
        raise ManifestError(f"{listing}: missing columns {sorted(missing)}; expected path,sha256,label,patient_id[,view,license,url]")
    if "base_url" not in source and "local_dir" not in source and "url" not in files.columns:
        raise ManifestError(f"{manifest.path}: source {source['name']!r} needs base_url, local_dir or a url column in {listing.name}")
    rows = []
    for number, (_, f) in enumerate(files.iterrows(), start=2):
        check_relative_path(f.path, f"{listing}:{number}")
        url = f.get("url", "") or (f"{source['base_url'].rstrip('/')}/{quote(f.path)}" if "base_url" in source else "")
        rows.append(
            {
                "record_id": f"{source['name']}:{f.path}",
                "source": source["name"],
                "source_path": f.path,
                "patient_id": f"{source['name']}:{f.patient_id}",
                "finding": f.label,
                "label": source.get("labels", {}).get(f.label, f.label),
                "view": f.get("view", ""),
                "modality": "X-ray",
                "license": f.get("license", "") or source["license"],
                "download_url": url,
                "sha256_expected": f.sha256,
            }
        )
    return new_record_table(rows)
