"""archive.py: what a Kaggle-like zip extracts to, and which archives are refused."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import pytest

from covid19_cxr_dataset import archive
from covid19_cxr_dataset.errors import ArchiveError

IMAGE = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4  # JPEG-ish bytes, poorly compressible enough


def make_zip(path: Path, entries: dict[str, bytes], *, symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as handle:
        for name, data in entries.items():
            handle.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            handle.writestr(info, target)
    return path


def kaggle_like(path: Path) -> Path:
    """The real archive's quirks: __MACOSX, .DS_Store, AppleDouble files and a nested duplicate tree."""
    return make_zip(path, {
        "chest_xray/train/NORMAL/IM-0115-0001.jpeg": IMAGE,
        "chest_xray/train/PNEUMONIA/person1_bacteria_1.jpeg": IMAGE[::-1],
        "chest_xray/test/NORMAL/IM-0001-0001.jpeg": IMAGE + b"1",
        "chest_xray/val/NORMAL/NORMAL2-IM-1427-0001.jpeg": IMAGE + b"2",
        "chest_xray/.DS_Store": b"mac",
        "chest_xray/train/.DS_Store": b"mac",
        "chest_xray/chest_xray/train/NORMAL/IM-0115-0001.jpeg": IMAGE,
        "chest_xray/chest_xray/.DS_Store": b"mac",
        "__MACOSX/chest_xray/._.DS_Store": b"apple",
        "chest_xray/__MACOSX/chest_xray/train/NORMAL/._IM-0115-0001.jpeg": b"apple",
        "chest_xray/train/NORMAL/._IM-0115-0001.jpeg": b"apple",
    })


EXPECTED = [
    "chest_xray/test/NORMAL/IM-0001-0001.jpeg",
    "chest_xray/train/NORMAL/IM-0115-0001.jpeg",
    "chest_xray/train/PNEUMONIA/person1_bacteria_1.jpeg",
    "chest_xray/val/NORMAL/NORMAL2-IM-1427-0001.jpeg",
]


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def assert_nothing_left(parent: Path, dest: Path) -> None:
    assert not dest.exists()
    assert not parent.exists() or [p.name for p in parent.iterdir() if p.name.startswith(".")] == []


def test_extracts_images_and_skips_mac_metadata_and_the_nested_duplicate(tmp_path):
    zip_path = kaggle_like(tmp_path / "archive.zip")
    dest = tmp_path / "out" / "kaggle"
    assert archive.extract_zip(zip_path, dest) == EXPECTED
    assert files_under(dest) == [archive.EXTRACTION_RECORD, *EXPECTED]  # the record of what was written
    assert sorted(archive.read_extraction_record(dest)) == EXPECTED
    assert (dest / "chest_xray/train/PNEUMONIA/person1_bacteria_1.jpeg").read_bytes() == IMAGE[::-1]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["kaggle"]  # no staging folder left


def test_list_members_and_read_member_need_no_extraction(tmp_path):
    zip_path = kaggle_like(tmp_path / "archive.zip")
    assert archive.list_members(zip_path) == EXPECTED
    assert archive.read_member(zip_path, "chest_xray/test/NORMAL/IM-0001-0001.jpeg") == IMAGE + b"1"
    with pytest.raises(ArchiveError, match="no entry 'chest_xray/nope.jpeg'"):
        archive.read_member(zip_path, "chest_xray/nope.jpeg")
    with pytest.raises(ArchiveError, match="limit"):
        archive.read_member(zip_path, EXPECTED[0], max_bytes=10)
    assert files_under(tmp_path) == ["archive.zip"]


def test_root_none_keeps_everything_but_metadata(tmp_path):
    zip_path = make_zip(tmp_path / "a.zip", {"x/a.txt": b"a", "b.txt": b"b", "__MACOSX/._b.txt": b"m"})
    assert archive.extract_zip(zip_path, tmp_path / "out", root=None) == ["b.txt", "x/a.txt"]


def test_extracting_again_replaces_the_previous_tree(tmp_path):
    dest = tmp_path / "out"
    archive.extract_zip(kaggle_like(tmp_path / "one.zip"), dest)
    (dest / "stale.txt").write_text("from an older run")
    second = make_zip(tmp_path / "two.zip", {"chest_xray/train/NORMAL/new.jpeg": IMAGE})
    assert archive.extract_zip(second, dest) == ["chest_xray/train/NORMAL/new.jpeg"]
    assert files_under(dest) == [archive.EXTRACTION_RECORD, "chest_xray/train/NORMAL/new.jpeg"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.zip", "out", "two.zip"]


@pytest.mark.parametrize(
    "name",
    [
        "chest_xray/../../evil.jpeg",
        "../evil.jpeg",
        "chest_xray/train/..\\..\\evil.jpeg",
        "/etc/passwd",
        "C:/Windows/evil.jpeg",
        "C:\\evil.jpeg",
        "\\\\server\\share\\evil.jpeg",
    ],
)
def test_unsafe_paths_are_refused_naming_archive_and_entry(tmp_path, name):
    zip_path = make_zip(tmp_path / "bad.zip", {"chest_xray/train/NORMAL/ok.jpeg": IMAGE, name: b"evil"})
    dest = tmp_path / "out" / "kaggle"
    with pytest.raises(ArchiveError) as caught:
        archive.extract_zip(zip_path, dest)
    assert str(zip_path) in str(caught.value) and repr(name) in str(caught.value)
    assert_nothing_left(tmp_path / "out", dest)
    assert not (tmp_path / "evil.jpeg").exists()


def test_unsafe_entries_are_refused_even_inside_skipped_folders(tmp_path):
    zip_path = make_zip(tmp_path / "bad.zip", {"chest_xray/a.jpeg": IMAGE, "__MACOSX/../../x": b"evil"})
    with pytest.raises(ArchiveError, match="climbs out"):
        archive.list_members(zip_path)


def test_symlink_entries_are_refused(tmp_path):
    zip_path = make_zip(
        tmp_path / "link.zip", {"chest_xray/a.jpeg": IMAGE}, symlinks={"chest_xray/b.jpeg": "/etc/passwd"}
    )
    dest = tmp_path / "out" / "kaggle"
    with pytest.raises(ArchiveError, match=r"'chest_xray/b.jpeg' is a symbolic link") as caught:
        archive.extract_zip(zip_path, dest)
    assert str(zip_path) in str(caught.value)
    assert_nothing_left(tmp_path / "out", dest)


def test_a_file_that_is_not_a_zip_is_refused(tmp_path):
    page = tmp_path / "archive.zip"
    page.write_bytes(b"<!DOCTYPE html><html>Sign in to Kaggle</html>")
    with pytest.raises(ArchiveError, match="not a zip archive") as caught:
        archive.extract_zip(page, tmp_path / "out")
    assert "HTML page" in str(caught.value) and str(page) in str(caught.value)
    with pytest.raises(ArchiveError, match="does not exist"):
        archive.extract_zip(tmp_path / "missing.zip", tmp_path / "out")
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(kaggle_like(tmp_path / "whole.zip").read_bytes()[:300])
    with pytest.raises(ArchiveError, match="not a zip archive"):
        archive.extract_zip(truncated, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_archive_without_the_root_folder_is_refused(tmp_path):
    zip_path = make_zip(tmp_path / "other.zip", {"images/a.jpeg": IMAGE})
    with pytest.raises(ArchiveError, match=r"no files under chest_xray/; its top level holds \['images'\]"):
        archive.extract_zip(zip_path, tmp_path / "out")


def test_zip_bombs_are_refused(tmp_path):
    bomb = make_zip(tmp_path / "bomb.zip", {"chest_xray/zeros.jpeg": b"\0" * (8 * 1024 * 1024)})
    with pytest.raises(ArchiveError, match="zip bomb") as caught:
        archive.extract_zip(bomb, tmp_path / "out")
    assert "'chest_xray/zeros.jpeg'" in str(caught.value)
    with pytest.raises(ArchiveError, match="exceed 1000 bytes"):
        archive.extract_zip(kaggle_like(tmp_path / "k.zip"), tmp_path / "out", max_total_bytes=1000)
    assert not (tmp_path / "out").exists()


def test_colliding_entries_are_refused(tmp_path):
    zip_path = make_zip(tmp_path / "dup.zip", {"chest_xray/A.jpeg": IMAGE, "chest_xray/a.jpeg": IMAGE})
    with pytest.raises(ArchiveError, match="same file"):
        archive.extract_zip(zip_path, tmp_path / "out")


def test_corrupt_entry_leaves_no_half_extracted_folder(tmp_path):
    zip_path = tmp_path / "crc.zip"
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED) as handle:
        handle.writestr("chest_xray/a.jpeg", IMAGE)
        handle.writestr("chest_xray/b.jpeg", b"B" * 2000)
    data = bytearray(zip_path.read_bytes())
    data[data.index(b"B" * 2000) + 1000] ^= 0xFF  # flip one stored byte: the CRC no longer matches
    zip_path.write_bytes(bytes(data))
    dest = tmp_path / "out" / "kaggle"
    with pytest.raises(ArchiveError, match=r"'chest_xray/b.jpeg' cannot be read"):
        archive.extract_zip(zip_path, dest)
    assert_nothing_left(tmp_path / "out", dest)
