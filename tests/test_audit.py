"""Lesion-mark detector (audit.py) and the reviewed decisions CSVs of release 1.0.0."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from covid19_cxr_dataset import audit
from covid19_cxr_dataset.records import REASONS

REAL = os.environ.get("COVID19_CXR_REAL_FIXTURES", "")
real = pytest.mark.skipif(not REAL, reason="COVID19_CXR_REAL_FIXTURES is not set")
DECISIONS = Path(__file__).resolve().parents[1] / "builder_manifests" / "covid19-cxr" / "1.0.0" / "decisions"


def gray_film(size: int = 512) -> Image.Image:
    """A gray gradient with some texture: a stand-in for a radiograph."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size]
    values = 60 + 120 * np.sin(np.pi * x / size) * (0.5 + 0.5 * y / size) + rng.normal(0, 6, (size, size))
    return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8)).convert("RGB")


def draw_arrow(image: Image.Image, colour=(230, 30, 30)) -> Image.Image:
    draw = ImageDraw.Draw(image)
    draw.line([(150, 150), (230, 230)], fill=colour, width=6)
    draw.polygon([(240, 240), (205, 235), (235, 205)], fill=colour)
    return image


def test_coloured_arrow_on_gray_film_is_flagged():
    result = audit.audit_image(draw_arrow(gray_film()))
    assert result.flagged
    assert result.reason == "annotation-arrow"
    left, top, right, bottom = result.boxes[0]
    assert left <= 150 and top <= 150 and right >= 235 and bottom >= 235


def test_coloured_circle_is_flagged_as_circle():
    image = gray_film()
    ImageDraw.Draw(image).ellipse([(180, 180), (320, 300)], outline=(255, 230, 0), width=4)
    result = audit.audit_image(image)
    assert result.flagged
    assert result.reason == "annotation-circle"


def test_uniform_tint_is_not_a_lesion_mark():
    film = np.asarray(gray_film(), dtype=np.float32)
    tinted = Image.fromarray(np.clip(film * np.array([1.0, 0.75, 1.05]) + np.array([25, 0, 30]), 0, 255).astype(np.uint8))
    result = audit.audit_image(tinted)
    assert not result.flagged
    assert "colour-cast" in result.flags


def test_tint_does_not_hide_an_arrow():
    film = np.asarray(draw_arrow(gray_film(), colour=(20, 230, 20)), dtype=np.float32)
    tinted = Image.fromarray(np.clip(film * np.array([1.0, 0.8, 1.0]) + np.array([30, 0, 30]), 0, 255).astype(np.uint8))
    assert audit.audit_image(tinted).flagged


def test_coloured_scanner_text_near_the_border_is_not_flagged():
    image = gray_film()
    draw = ImageDraw.Draw(image)
    for row in range(3):
        draw.text((380, 10 + 12 * row), "RX TORACE 12/03/2020", fill=(0, 220, 220))
    result = audit.audit_image(image)
    assert not result.flagged


def test_grayscale_film_without_marks_is_clean():
    result = audit.audit_image(gray_film().convert("L"))
    assert not result.flagged and result.reason == ""


def test_label_components_counts_8_connected_blobs():
    mask = np.zeros((8, 8), dtype=bool)
    mask[1, 1] = mask[2, 2] = True  # diagonal neighbours: one component
    mask[5:7, 5:7] = True
    labels, count = audit.label_components(mask)
    assert count == 2
    assert labels[1, 1] == labels[2, 2] != labels[5, 5]


def test_audit_paths_returns_one_row_per_image(tmp_path):
    clean, marked = tmp_path / "clean.png", tmp_path / "marked.png"
    gray_film().save(clean)
    draw_arrow(gray_film()).save(marked)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    table = audit.audit_paths([clean, marked, tmp_path / "broken.png"])
    assert list(table.columns) == ["path", "score", "flags", "reason", "boxes"]
    assert table["reason"].tolist() == ["", "annotation-arrow", ""]
    assert table["flags"].iloc[2].startswith("error:")


@real
@pytest.mark.parametrize("name", ["extubation-13.jpg", "radiol.2020200490.fig3.jpeg", "2-chest-filmc.jpg"])
def test_real_annotated_films_are_flagged(name):
    result = audit.audit_image(Path(REAL) / "cohen" / "images" / name)
    assert result.flagged, result
    assert result.reason == "annotation-arrow"


@real
@pytest.mark.parametrize(
    "name", ["covid-19-caso-95-1-15.png", "tpmd200203f2-a.png", "F2DE909F-E19C-4900-92F5-8F435B031AC6.jpeg"]
)
def test_real_colour_that_is_not_a_lesion_mark_is_not_flagged(name):
    result = audit.audit_image(Path(REAL) / "cohen" / "images" / name)
    assert not result.flagged, result


# --- decisions CSVs -----------------------------------------------------------------------------

DECISION_COLUMNS = {
    "views.csv": ["source", "source_path", "view", "note"],
    "annotations.csv": ["source", "source_path", "decision", "reason", "note"],
    "duplicates.csv": ["source", "source_path", "duplicate_of_source", "duplicate_of_path", "method", "distance", "note"],
    "exclusions.csv": ["source", "source_path", "reason", "note"],
}
SOURCES = {"cohen", "figure1", "actualmed", "kaggle"}


def read_decisions(name: str) -> list[dict]:
    with open(DECISIONS / name, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == DECISION_COLUMNS[name]
        return list(reader)


def tree_paths(source: str) -> set[str]:
    if source == "kaggle":  # no tree: the release's file list, as the records' source_path
        with open(DECISIONS.parent / "locks" / "kaggle.csv", encoding="utf-8", newline="") as handle:
            return {f"chest_xray/{r['split']}/{r['class']}/{r['filename']}" for r in csv.DictReader(handle)}
    with open(Path(REAL) / source / "tree.tsv", encoding="utf-8", newline="") as handle:
        return {row["path"] for row in csv.DictReader(handle, delimiter="\t")}


@pytest.mark.parametrize("name", sorted(DECISION_COLUMNS))
def test_decisions_parse_with_known_codes_notes_and_no_repeats(name):
    rows = read_decisions(name)
    assert rows or name == "exclusions.csv", f"{name} is empty"
    keys = [(row["source"], row["source_path"]) for row in rows]
    assert len(keys) == len(set(keys)), f"{name} names an image twice"
    for row in rows:
        assert row["source"] in SOURCES
        assert row["note"].strip(), f"{name}: {row['source_path']} has no note"
        if name == "views.csv":
            assert row["view"] in {"PA", "AP", "AP Supine", "L", "other"}
        if name == "annotations.csv":
            assert row["decision"] in {"keep", "exclude"}
            if row["decision"] == "exclude":
                assert row["reason"] in REASONS
                assert row["reason"].startswith("annotation-") or row["reason"] == "not-a-radiograph"
            else:
                assert row["reason"] == ""
        if name == "exclusions.csv":
            assert row["reason"] in REASONS
        if name == "duplicates.csv":
            assert row["duplicate_of_source"] in SOURCES
            assert row["method"] in {"git-blob", "near-duplicate", "exact"}  # filters: "exact" -> duplicate-exact
            assert float(row["distance"]) >= 0
            assert (row["source"], row["source_path"]) != (row["duplicate_of_source"], row["duplicate_of_path"])


def test_decisions_do_not_contradict_each_other():
    dropped = {(r["source"], r["source_path"]) for r in read_decisions("duplicates.csv")}
    kept_twins = {(r["duplicate_of_source"], r["duplicate_of_path"]) for r in read_decisions("duplicates.csv")}
    assert not dropped & kept_twins, "a kept twin is itself dropped as a duplicate: chain the pair to the final copy"
    excluded = {(r["source"], r["source_path"]) for r in read_decisions("exclusions.csv")}
    excluded |= {(r["source"], r["source_path"]) for r in read_decisions("annotations.csv") if r["decision"] == "exclude"}
    assert not kept_twins & excluded, "a kept twin is excluded for another reason: keep the other copy instead"


@real
@pytest.mark.parametrize("name", sorted(DECISION_COLUMNS))
def test_decisions_name_only_files_of_the_pinned_trees(name):
    trees = {source: tree_paths(source) for source in SOURCES}
    for row in read_decisions(name):
        assert row["source_path"] in trees[row["source"]], row
        if name == "duplicates.csv":
            assert row["duplicate_of_path"] in trees[row["duplicate_of_source"]], row
