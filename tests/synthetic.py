"""A small synthetic world in the real sources' layouts, for end-to-end builds without internet.

``make_world(tmp)`` returns a ``World``: the files a loopback server must serve (GitHub raw-content
paths ``/<owner>/<repo>/<commit>/<path>`` and the Kaggle API path), the Kaggle zip, and a manifest
folder whose locks pin exactly these bytes. The metadata tables use each source's real columns; the
images are generated in the modes real sources use (L and RGB JPEG, palette, RGBA and 16-bit PNG).

Every row is there to exercise one stage, and ``EXPECTED`` says where each one must end up.
Tests take a world from conftest.py's fixtures (``world``, ``fresh_world``, ``configs_world``)
rather than calling ``make_world`` themselves. ``manifest_text`` is the one manifest.yaml template:
the world's manifest and every other manifest a test writes come from it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import textwrap
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

COHEN = ("ieee8023/covid-chestxray-dataset", "c0" * 20)
FIGURE1 = ("agchung/Figure1-COVID-chestxray-dataset", "f1" * 20)
ACTUALMED = ("agchung/Actualmed-COVID-chestxray-dataset", "a1" * 20)
KAGGLE_DATASET = "paultimothymooney/chest-xray-pneumonia"

COHEN_COLUMNS = (
    "patientid,offset,sex,age,finding,survival,intubated,intubation_present,went_icu,in_icu,needed_supplemental_O2,"
    "extubated,temperature,pO2_saturation,leukocyte_count,neutrophil_count,lymphocyte_count,view,modality,date,location,"
    "folder,filename,doi,url,license,clinical_notes,other_notes,"
).split(",")
FIGURE1_COLUMNS = "patientid,offset,sex,age,finding,survival,temperature,pO2 saturation,view,modality,artifacts/distortion,notes".split(",")
ACTUALMED_COLUMNS = "patientid,offset,sex,age,finding,survival,temperature,pO2 saturation,view,modality,imagename,artifacts/distortion,notes".split(",")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def radiograph(seed: int, size=(120, 96), mode="L", bits=8) -> bytes:
    """A textured grayscale 'film' (distinct per seed), encoded in the given mode as PNG or JPEG."""
    rng = np.random.default_rng(seed)
    h, w = size[1], size[0]
    # A random low-frequency field plus fine noise: films that differ at every scale, so the
    # near-duplicate check has nothing to confuse (identical seeds give identical films).
    coarse = Image.fromarray(rng.integers(20, 235, (6, 8), dtype=np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    base = np.asarray(coarse, dtype=np.float64) + rng.normal(0, 10, (h, w))
    gray = np.clip(base, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    if mode == "JPEG-L":
        Image.fromarray(gray).save(buffer, "JPEG", quality=90)
    elif mode == "JPEG-RGB":
        rgb = np.stack([gray, np.clip(gray.astype(int) + 10, 0, 255).astype(np.uint8), gray], axis=-1)
        Image.fromarray(rgb).save(buffer, "JPEG", quality=90)
    elif mode == "P":
        Image.fromarray(gray).convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(buffer, "PNG")
    elif mode == "RGBA":
        rgba = np.stack([gray, gray, gray, np.full_like(gray, 255)], axis=-1)
        Image.fromarray(rgba, "RGBA").save(buffer, "PNG")
    elif mode == "I;16":
        Image.fromarray((gray.astype(np.uint16) * 257)).save(buffer, "PNG")
    else:
        Image.fromarray(gray).save(buffer, "PNG")
    return buffer.getvalue()


@dataclass
class World:
    root: Path
    served: dict[str, bytes] = field(default_factory=dict)  # URL path -> bytes
    manifest_dir: Path | None = None
    kaggle_zip: Path | None = None

    def add_github(self, repo: tuple[str, str], path: str, data: bytes) -> None:
        self.served[f"/{repo[0]}/{repo[1]}/{path}"] = data


def _csv(columns, rows, encoding="utf-8") -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: row.get(c, "") for c in columns})
    return buffer.getvalue().encode(encoding)


# (patientid, finding, view, modality, folder, filename, image mode, seed, license)
COHEN_ROWS = [
    ("1", "COVID-19", "PA", "X-ray", "images", "c1-a.jpg", "JPEG-L", 1, "CC BY 4.0"),
    ("1", "COVID-19", "AP", "X-ray", "images", "c1-b.jpg", "JPEG-RGB", 2, "CC BY 4.0"),
    ("1", "COVID-19", "L", "X-ray", "images", "c1-lateral.jpg", "JPEG-L", 3, "CC BY 4.0"),
    ("2", "COVID-19", "PA", "X-ray", "images", "c2.png", "P", 4, "CC BY-NC-SA"),
    ("3", "COVID-19, ARDS", "AP Supine", "X-ray", "images", "c3.png", "RGBA", 5, ""),
    ("4", "COVID-19", "Axial", "CT", "images", "c4-ct.jpg", "JPEG-L", 6, ""),
    ("4", "COVID-19", "Axial", "CT", "volumes", "c4.nii.gz", None, 0, ""),
    ("5", "SARS", "PA", "X-ray", "images", "c5-sars.jpg", "JPEG-L", 7, ""),
    ("6", "COVID-19", "PA", "X-ray", "images", "c6-arrow.jpg", "JPEG-L", 8, ""),
    ("7", "COVID-19", "PA", "X-ray", "images", "c7.png", "I;16", 9, "CC BY-NC-ND"),
    ("8", "COVID-19", "PA", "X-ray", "images", "c8-copy-of-c7.png", "I;16", 9, ""),  # same bytes as c7
    ("9", "COVID-19", "PA", "X-ray", "images", "c9.jpg", "JPEG-L", 10, ""),
    ("10", "COVID-19", "AP", "X-ray", "images", "c10-figure1-repost.jpg", "JPEG-L", 11, ""),
]
# (patientid, finding, view, extension, mode, seed)
FIGURE1_ROWS = [
    ("COVID-00001", "COVID-19", "", "jpg", "JPEG-L", 21),   # view decided by review: PA
    ("COVID-00002a", "COVID-19", "AP erect", "jpg", "JPEG-L", 22),
    ("COVID-00002b", "COVID-19", "AP erect", "png", "L", 23),
    ("COVID-00003", "COVID-19", "", "jpg", "JPEG-L", 24),   # view decided by review: L
    ("COVID-00004", "", "", "jpg", "JPEG-L", 25),
    ("COVID-00005", "No finding", "PA", "jpg", "JPEG-L", 26),
    ("COVID-00006", "COVID-19", "PA", "jpg", "JPEG-L", 11),  # the radiograph Cohen re-published (c10)
]
# (patientid, finding, view, imagename, seed)
ACTUALMED_ROWS = [
    ("ANON1", "COVID-19", "PA", "CR.1.1.png", 31),
    ("ANON1", "COVID-19", "AP", "CR.1.2.png", 32),
    ("ANON2", "COVID-19", "PA", "CR.2.1.png", 33),
    ("ANON3", "", "PA", "CR.3.1.png", 34),
    ("ANON4", "No finding", "PA", "CR.4.1.png", 35),
]
# (split, class, filename, subtype)
KAGGLE_FILES = [
    ("train", "NORMAL", "IM-0001-0001.jpeg", "normal"),
    ("train", "NORMAL", "IM-0002-0001.jpeg", "normal"),
    ("train", "NORMAL", "NORMAL2-IM-0001-0001.jpeg", "normal"),
    ("train", "PNEUMONIA", "person1_bacteria_1.jpeg", "bacteria"),
    ("train", "PNEUMONIA", "person1_bacteria_2.jpeg", "bacteria"),
    ("train", "PNEUMONIA", "person1_virus_3.jpeg", "virus"),
    ("train", "PNEUMONIA", "person2_virus_4.jpeg", "virus"),
    ("val", "NORMAL", "NORMAL2-IM-0900-0001.jpeg", "normal"),
    ("val", "PNEUMONIA", "person90_bacteria_5.jpeg", "bacteria"),
    ("test", "NORMAL", "IM-0100-0001.jpeg", "normal"),
    ("test", "PNEUMONIA", "person3_virus_6.jpeg", "virus"),
]

EXPECTED = {
    "train": {"COVID-19": 10, "Normal": 3, "Pneumonia": 4},
    "test": {"COVID-19": 3, "Normal": 2, "Pneumonia": 2},
}
EXPECTED_EXCLUSIONS = {
    "cohen:images/c1-lateral.jpg": "view-lateral",
    "cohen:images/c4-ct.jpg": "modality-not-xray",
    "cohen:volumes/c4.nii.gz": "modality-not-xray",
    "cohen:images/c5-sars.jpg": "label-unmapped",
    "cohen:images/c6-arrow.jpg": "annotation-arrow",
    "cohen:images/c8-copy-of-c7.png": "duplicate-exact",
    "cohen:images/c10-figure1-repost.jpg": "duplicate-near",
    "figure1:images/COVID-00003.jpg": "view-lateral",
    "figure1:images/COVID-00004.jpg": "label-unmapped",
    "figure1:images/COVID-00005.jpg": "label-unmapped",
    "actualmed:images/CR.3.1.png": "label-inconclusive",
    "actualmed:images/CR.4.1.png": "label-unmapped",
}


# The configurations world (make_world(..., configs=True)): 1.0.0's shape, a `paper` default that
# flags instead of excluding and a `curated` subset. Besides the rows above it has a Kaggle file that
# is a byte copy of another across Kaggle's own split, an Actualmed PNG with other bytes but the
# same pixels as CR.1.1.png (found only after conversion), a lesion-text film and an unreviewed file.
CONFIG_EXTRA_KAGGLE = ("test", "NORMAL", "IM-0101-0001.jpeg", "normal")  # same bytes as train/NORMAL/IM-0001-0001.jpeg
CONFIG_FLAGS = {
    "cohen:images/c8-copy-of-c7.png": ["duplicate-exact"],
    "cohen:images/c10-figure1-repost.jpg": ["duplicate-exact", "duplicate-near"],  # listed, and the same bytes too
    "cohen:images/c9.jpg": ["annotation-text"],
    "actualmed:images/CR.2.1.png": ["not-reviewed"],
    "actualmed:images/CR.5.1.png": ["duplicate-exact"],  # same decoded pixels as CR.1.1.png
    "kaggle:chest_xray/train/NORMAL/IM-0001-0001.jpeg": ["duplicate-exact"],  # the test copy is kept
}
CONFIG_DUPLICATE_OF = {
    "cohen:images/c8-copy-of-c7.png": "cohen:images/c7.png",
    "cohen:images/c10-figure1-repost.jpg": "figure1:images/COVID-00006.jpg",
    "actualmed:images/CR.5.1.png": "actualmed:images/CR.1.1.png",
    "kaggle:chest_xray/train/NORMAL/IM-0001-0001.jpeg": "kaggle:chest_xray/test/NORMAL/IM-0101-0001.jpeg",
}
CONFIG_EXPECTED = {
    "paper": {"train": {"COVID-19": 13, "Normal": 3, "Pneumonia": 4}, "test": {"COVID-19": 3, "Normal": 3, "Pneumonia": 2}},
    "curated": {"train": {"COVID-19": 9, "Normal": 2, "Pneumonia": 4}, "test": {"COVID-19": 2, "Normal": 3, "Pneumonia": 2}},
}


def make_world(root: Path, *, extra_zip_entries: bool = True, configs: bool = False) -> World:
    world = World(root=Path(root))
    world.root.mkdir(parents=True, exist_ok=True)
    locks: dict[str, list[tuple[str, str, int]]] = {"cohen": [], "figure1": [], "actualmed": []}

    def publish(name, repo, path, data):
        world.add_github(repo, path, data)
        locks[name].append((path, git_blob_sha1(data), len(data)))

    rows = []
    for pid, finding, view, modality, folder, filename, mode, seed, lic in COHEN_ROWS:
        rows.append({"patientid": pid, "finding": finding, "view": view, "modality": modality, "folder": folder,
                     "filename": filename, "license": lic, "url": "https://example.org/case"})
        if mode and finding.startswith("COVID"):
            publish("cohen", COHEN, f"{folder}/{filename}", radiograph(seed, mode=mode))
        elif mode:
            world.add_github(COHEN, f"{folder}/{filename}", radiograph(seed, mode=mode))
    publish("cohen", COHEN, "metadata.csv", _csv(COHEN_COLUMNS, rows))

    rows = []
    for pid, finding, view, ext, mode, seed in FIGURE1_ROWS:
        rows.append({"patientid": pid, "finding": finding, "view": view, "modality": "X-ray"})
        data = radiograph(seed, size=(150, 120), mode=mode) if seed != 11 else radiograph(seed, mode=mode)
        publish("figure1", FIGURE1, f"images/{pid}.{ext}", data)
    publish("figure1", FIGURE1, "metadata.csv", _csv(FIGURE1_COLUMNS, rows, "iso-8859-1"))

    rows = []
    for pid, finding, view, name, seed in ACTUALMED_ROWS:
        rows.append({"patientid": pid, "finding": finding, "view": view, "modality": "X-ray", "imagename": name,
                     "notes": "Négatif" if not finding else ""})
        publish("actualmed", ACTUALMED, f"images/{name}", radiograph(seed, mode="L"))
    if configs:  # CR.1.1.png's pixels in a PNG with other bytes
        rows.append({"patientid": "ANON5", "finding": "COVID-19", "view": "PA", "modality": "X-ray", "imagename": "CR.5.1.png"})
        with Image.open(io.BytesIO(radiograph(31, mode="L"))) as same:
            buffer = io.BytesIO()
            same.save(buffer, "PNG", compress_level=1)
        publish("actualmed", ACTUALMED, "images/CR.5.1.png", buffer.getvalue())
    publish("actualmed", ACTUALMED, "metadata.csv", _csv(ACTUALMED_COLUMNS, rows, "iso-8859-1"))

    world.kaggle_zip = world.root / "chest-xray-pneumonia.zip"
    kaggle_files = KAGGLE_FILES + ([CONFIG_EXTRA_KAGGLE] if configs else [])
    with zipfile.ZipFile(world.kaggle_zip, "w", zipfile.ZIP_STORED) as archive:
        for index, (split, cls, filename, _) in enumerate(kaggle_files):
            data = radiograph(100 + (index if index < len(KAGGLE_FILES) else 0), size=(110, 90), mode="JPEG-L")
            archive.writestr(f"chest_xray/{split}/{cls}/{filename}", data)
            if extra_zip_entries:
                archive.writestr(f"chest_xray/chest_xray/{split}/{cls}/{filename}", data)
                archive.writestr(f"__MACOSX/chest_xray/{split}/{cls}/._{filename}", b"\0\5\26\7junk")
        if extra_zip_entries:
            archive.writestr("chest_xray/.DS_Store", b"\0\0\0\1Bud1")
    world.served[f"/api/v1/datasets/download/{KAGGLE_DATASET}"] = world.kaggle_zip.read_bytes()

    world.manifest_dir = write_manifest(world.root / "manifest", locks, configs=configs, kaggle_files=kaggle_files)
    return world


def manifest_text(*, name: str, version: str, title: str, sources: str, filters: str, convert: str, split: str,
                  expected_counts: str = "", configs: str = "", **about: str) -> str:
    """The text of a manifest.yaml (docs/MANIFEST.md), the one template every test that writes a
    manifest writes it with, so that a change of the format is made here once.

    Each argument is the YAML of its key's value as it stands in the file: a scalar or a flow
    collection (``{...}``, ``[...]``) on one line stays on the key's line; a block mapping or a
    ``- `` list, even of one line, goes under it, indented two spaces. ``about`` is any optional key placed after ``title`` (``card_license``, ``release_notes``,
    ``known_risks``, ``citations``, ...), in the order given. Give ``expected_counts`` or ``configs``.
    """
    if bool(expected_counts) == bool(configs):
        raise ValueError("give exactly one of expected_counts and configs")

    def entry(key: str, value: str) -> str:
        value = textwrap.dedent(value).strip("\n")
        inline = value.startswith(("{", "[")) or ": " not in value and not value.startswith("- ")
        if "\n" not in value and inline:
            return f"{key}: {value}\n"
        return f"{key}:\n" + textwrap.indent(value, "  ") + "\n"

    sections = {"schema_version": "1", "name": name, "version": version, "title": title, **about, "sources": sources,
                "filters": filters, "convert": convert, "split": split}
    if expected_counts:
        sections["expected_counts"] = expected_counts
    else:
        sections["configs"] = configs
    return "".join(entry(key, value) for key, value in sections.items())


WORLD_SOURCES = f"""\
- name: cohen
  kind: github
  repository: {COHEN[0]}
  commit: {COHEN[1]}
  metadata: {{path: metadata.csv, encoding: utf-8, layout: cohen}}
  image_folder: images
  lock: locks/cohen.tsv
  labels: {{"COVID-19": COVID-19, "COVID-19, ARDS": COVID-19}}
  license: per image
- name: figure1
  kind: github
  repository: {FIGURE1[0]}
  commit: {FIGURE1[1]}
  metadata: {{path: metadata.csv, encoding: iso-8859-1, layout: chung}}
  image_folder: images
  lock: locks/figure1.tsv
  labels: {{"COVID-19": COVID-19}}
  license: research use
- name: actualmed
  kind: github
  repository: {ACTUALMED[0]}
  commit: {ACTUALMED[1]}
  metadata: {{path: metadata.csv, encoding: iso-8859-1, layout: chung}}
  image_folder: images
  lock: locks/actualmed.tsv
  labels: {{"COVID-19": COVID-19}}
  inconclusive_findings: [""]
  license: research use
- name: kaggle
  kind: kaggle
  dataset: {KAGGLE_DATASET}
  dataset_version: 2
  archive_root: chest_xray
  files: locks/kaggle.csv
  labels: {{NORMAL: Normal, PNEUMONIA: Pneumonia}}
  license: CC BY 4.0
"""
WORLD_FILTERS = """\
modalities: [X-ray]
exclude_paths_under: [volumes/]
frontal_views: [PA, AP, AP Supine, AP erect]
lateral_views: [L]
exact_duplicates: true
decisions:
  views: decisions/views.csv
  annotations: decisions/annotations.csv
  duplicates: decisions/duplicates.csv
  exclusions: decisions/exclusions.csv
"""
WORLD_SPLIT = """\
seed: tiny-seed
rules:
  - {source: kaggle, method: upstream, map: {train: train, val: test, test: test}}
  - {label: COVID-19, method: patient-hash, test_images: 3}
"""
WORLD_EXPECTED_COUNTS = "train: {COVID-19: 10, Normal: 3, Pneumonia: 4}\ntest: {COVID-19: 3, Normal: 2, Pneumonia: 2}\n"
CONFIGS_YAML = """\
paper:
  default: true
  description: Every film the paper's rule keeps; marks other than arrows and every duplicate are flagged.
  flag_instead_of_excluding: [annotation-text, annotation-other, duplicate-exact, duplicate-near, not-reviewed]
  expected_counts:
    train: {COVID-19: 13, Normal: 3, Pneumonia: 4}
    test: {COVID-19: 3, Normal: 3, Pneumonia: 2}
curated:
  description: paper without the flagged films.
  leave_out_flagged: true
  expected_counts:
    train: {COVID-19: CURATED_TRAIN_COVID, Normal: 2, Pneumonia: 4}
    test: {COVID-19: CURATED_TEST_COVID, Normal: 3, Pneumonia: 2}
"""


def write_manifest(folder: Path, locks, *, configs: bool = False, kaggle_files=KAGGLE_FILES,
                   curated_covid: tuple[int, int] = (9, 2)) -> Path:
    (folder / "locks").mkdir(parents=True)
    (folder / "decisions").mkdir()
    for name, rows in locks.items():
        lines = ["path\tgit_blob_sha1\tsize"] + [f"{p}\t{b}\t{s}" for p, b, s in sorted(rows)]
        (folder / "locks" / f"{name}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    kaggle = ["split,class,filename,subtype,sha256"] + [f"{s},{c},{f},{t}," for s, c, f, t in kaggle_files]
    (folder / "locks" / "kaggle.csv").write_text("\n".join(kaggle) + "\n", encoding="utf-8")
    (folder / "decisions" / "views.csv").write_text(
        "source,source_path,view,note\n"
        "figure1,images/COVID-00001.jpg,PA,reviewed: frontal PA\n"
        "figure1,images/COVID-00003.jpg,L,reviewed: lateral\n", encoding="utf-8")
    (folder / "decisions" / "annotations.csv").write_text(
        "source,source_path,decision,reason,note\n"
        "cohen,images/c6-arrow.jpg,exclude,annotation-arrow,green arrow at the right lower zone\n"
        "cohen,images/c2.png,keep,,purple cast is not a mark\n"
        + ("cohen,images/c9.jpg,exclude,annotation-text,severity score written over the lungs\n" if configs else ""),
        encoding="utf-8")
    if configs:
        (folder / "decisions" / "unreviewed.csv").write_text(
            "source,source_path,note\nactualmed,images/CR.2.1.png,not obtained for review\n", encoding="utf-8")
    (folder / "decisions" / "duplicates.csv").write_text(
        "source,source_path,duplicate_of_source,duplicate_of_path,method,distance,note\n"
        "cohen,images/c10-figure1-repost.jpg,figure1,images/COVID-00006.jpg,near,0.01,Cohen re-published the Figure1 case\n",
        encoding="utf-8")
    (folder / "decisions" / "exclusions.csv").write_text("source,source_path,reason,note\n", encoding="utf-8")
    if configs:
        counts = {"configs": CONFIGS_YAML.replace("CURATED_TRAIN_COVID", str(curated_covid[0]))
                  .replace("CURATED_TEST_COVID", str(curated_covid[1]))}
        filters = WORLD_FILTERS + "  unreviewed: decisions/unreviewed.csv\n"
    else:
        counts, filters = {"expected_counts": WORLD_EXPECTED_COUNTS}, WORLD_FILTERS
    manifest = manifest_text(
        name="tiny", version="0.0.1", title="Tiny synthetic release for tests", card_license="other",
        release_notes="test release", known_risks="Shortcuts, as DeGrave et al. showed.",
        citations="- {key: zhong2020, text: 'Zhong 2020', bibtex: '@article{zhong2020, title={T}}'}",
        sources=WORLD_SOURCES, filters=filters, convert="{quality: 95, max_side: null}", split=WORLD_SPLIT, **counts,
    )
    (folder / "manifest.yaml").write_text(manifest, encoding="utf-8")
    return folder
