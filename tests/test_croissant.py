"""croissant.json: built from the synthetic sources, it is valid Croissant that mlcroissant reads back,
record for record, as the shards hold them; verify regenerates it like the card.
"""

from __future__ import annotations

import collections
import io
import json
import shutil
from pathlib import Path

import mlcroissant
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from covid19_cxr_dataset import CLASS_NAMES, manifest as manifest_module, release as release_format, shards
from covid19_cxr_dataset.build import Options, build
from covid19_cxr_dataset.columns import COLUMNS
from covid19_cxr_dataset.croissant import CONFORMS_TO
from covid19_cxr_dataset.verify import verify_release

from loopback import LoopbackServer
from release_factory import make_release
from synthetic import CONFIG_EXPECTED, EXPECTED, KAGGLE_FILES

# The only thing mlcroissant asks for that a reproducible build cannot give: a publication date.
ALLOWED_WARNINGS = ("datePublished",)


def _built(world, tmp_path_factory, name: str) -> Path:
    """A build of the shared synthetic ``world`` (conftest.py; read, never edited) into a folder of its own."""
    root = tmp_path_factory.mktemp(name)
    with LoopbackServer(dict(world.served)) as server:
        options = Options(cache_dir=root / "cache", mirror=server.base_url, workers=2, progress=False,
                          kaggle_archive=world.kaggle_zip)
        build(manifest_module.load(world.manifest_dir), root / "out", options)
    return root / "out"


@pytest.fixture(scope="module")
def with_configs(configs_world, tmp_path_factory) -> Path:
    return _built(configs_world, tmp_path_factory, "croissant-configs")


@pytest.fixture(scope="module")
def one_config(world, tmp_path_factory) -> Path:
    return _built(world, tmp_path_factory, "croissant")


def load(out: Path) -> mlcroissant.Dataset:
    dataset = mlcroissant.Dataset(jsonld=str(out / "croissant.json"))
    issues = dataset.metadata.ctx.issues
    assert not issues.errors, issues.report()
    assert all(any(allowed in w for allowed in ALLOWED_WARNINGS) for w in issues.warnings), issues.report()
    return dataset


def shard_rows(out: Path, config: dict) -> dict[str, list[dict]]:
    """{split: rows without images} of one configuration, read from its shards with pyarrow."""
    found: dict[str, list[dict]] = collections.defaultdict(list)
    for path in config["shards"]:
        split = Path(path).name.split("-", 1)[0]
        found[split] += pq.read_table(out / path, columns=["source", "source_path", "label", "flags", "patient_group"]).to_pylist()
    return found


def records_by_split(dataset: mlcroissant.Dataset, config: str) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = collections.defaultdict(list)
    for record in dataset.records(record_set=config):
        found[record[f"{config}/split"].decode()].append(record)
    return found


@pytest.mark.parametrize("which", ["with_configs", "one_config"])
def test_mlcroissant_reads_every_configuration_record_for_record(which, request):
    out = request.getfixturevalue(which)
    built = json.loads((out / "build_report.json").read_text())
    dataset = load(out)
    expected_counts = CONFIG_EXPECTED if which == "with_configs" else {"default": EXPECTED}
    assert set(built["configs"]) == set(expected_counts)
    for name, config in built["configs"].items():
        records = records_by_split(dataset, name)
        rows = shard_rows(out, config)
        assert {s: len(r) for s, r in records.items()} == {s: len(r) for s, r in rows.items()}
        assert {s: sum(c.values()) for s, c in expected_counts[name].items()} == {s: len(r) for s, r in records.items()}
        for split, split_records in records.items():
            counted = collections.Counter(CLASS_NAMES[r[f"{name}/label"]] for r in split_records)
            assert {c: counted.get(c, 0) for c in CLASS_NAMES} == expected_counts[name][split]
            # every row, with its columns, as the shards hold it
            assert sorted((r[f"{name}/source"].decode(), r[f"{name}/source_path"].decode(), r[f"{name}/label"],
                           tuple(f.decode() for f in r[f"{name}/flags"]), r[f"{name}/patient_group"].decode())
                          for r in split_records) == \
                sorted((r["source"], r["source_path"], r["label"], tuple(r["flags"]), r["patient_group"]) for r in rows[split])


def test_images_come_back_with_the_shards_pixels(with_configs):
    dataset = load(with_configs)
    shard = sorted((with_configs / "data" / "curated").glob("train-*.parquet"))[0]
    stored = {r["source_path"]: r["image"]["bytes"] for r in pq.read_table(shard, columns=["source_path", "image"]).to_pylist()}
    seen = 0
    for record in dataset.records(record_set="curated"):
        path = record["curated/source_path"].decode()
        if path in stored:
            with Image.open(io.BytesIO(stored[path])) as image:
                assert np.array_equal(np.asarray(record["curated/image"].convert("L")), np.asarray(image.convert("L")))
            seen += 1
    assert seen == len(stored)


def test_metadata_a_user_and_a_search_engine_read(with_configs):
    doc = json.loads((with_configs / "croissant.json").read_text())
    built = json.loads((with_configs / "build_report.json").read_text())
    assert doc["conformsTo"] == CONFORMS_TO and doc["@type"] == "sc:Dataset"
    assert doc["name"] == built["dataset"] and doc["version"] == built["version"]
    assert doc["citeAs"].startswith(f"@misc{{{built['dataset']}-{built['version']},") and "url" not in doc  # not published
    assert set(doc["license"]) == {"CC BY 4.0", "CC BY-NC-ND", "CC BY-NC-SA", "research use",
                                   "not stated (the original publisher's terms apply)"}
    for field in ("rai:dataCollection", "rai:dataPreprocessingProtocol", "rai:dataAnnotationProtocol", "rai:dataBiases",
                  "rai:dataLimitations", "rai:personalSensitiveInformation", "rai:dataUseCases"):
        assert doc[field].strip(), field
    assert "DeGrave" in doc["rai:dataBiases"]  # the manifest's known risks
    # each shard is a FileObject with its sha256 and size; each configuration a FileSet over its folders
    objects = {d["contentUrl"]: d for d in doc["distribution"] if d["@type"] == "cr:FileObject"}
    assert {p: (o["sha256"], o["contentSize"]) for p, o in objects.items()} == \
        {p: (s["sha256"], f"{s['bytes']} B") for p, s in built["shards"].items()}
    sets = {d["@id"]: d["includes"] for d in doc["distribution"] if d["@type"] == "cr:FileSet"}
    assert sets == {"paper-shards": ["data/curated/*.parquet", "data/flagged/*.parquet"], "curated-shards": ["data/curated/*.parquet"]}
    # each configuration's record set: every shard column (patient_group included) and the report's fingerprint
    for name, config in built["configs"].items():
        record_set = next(r for r in doc["recordSet"] if r["@id"] == name)
        assert [f["@id"] for f in record_set["field"]] == [f"{name}/split"] + [f"{name}/{c}" for c in shards.FEATURES]
        assert f"--fingerprint {name}={config['fingerprint']}" in record_set["description"]
    labels = next(r for r in doc["recordSet"] if r["@id"] == "labels")
    assert [d["labels/name"] for d in labels["data"]] == list(CLASS_NAMES)


def test_every_column_is_a_field_with_its_words():
    assert list(COLUMNS) == list(shards.FEATURES)  # the card's Columns sentence and the Croissant fields say the same


def test_verify_regenerates_croissant_like_the_card(with_configs, tmp_path):
    release = Path(shutil.copytree(with_configs, tmp_path / "release"))
    assert verify_release(release).ok
    path = release / "croissant.json"
    path.write_text(path.read_text().replace('"isLiveDataset": false', '"isLiveDataset": true'))
    problems = [p for p in verify_release(release).problems if p.file == "croissant.json"]
    assert [p.check for p in problems] == ["generated"] and "isLiveDataset" in problems[0].expected
    path.unlink()
    assert [(p.file, p.check, p.actual) for p in verify_release(release).problems] == [("croissant.json", "generated", "no such file")]


def test_unpinned_files_are_a_file_of_the_release_the_card_links(one_config, tmp_path):
    built = json.loads((one_config / "build_report.json").read_text())
    listed = (one_config / "unpinned-files.csv").read_text().splitlines()
    assert listed[0] == "source,source_path" and len(listed) - 1 == len(KAGGLE_FILES) == len(built["unverified_files"])
    assert sorted(":".join(line.split(",", 1)) for line in listed[1:]) == sorted(built["unverified_files"])
    card = (one_config / "README.md").read_text()
    assert f"{len(KAGGLE_FILES)} file(s) were used without a recorded sha256" in card
    assert "[`unpinned-files.csv`](unpinned-files.csv)" in card and "chest_xray/train/NORMAL" not in card
    release = Path(shutil.copytree(one_config, tmp_path / "release"))
    (release / "unpinned-files.csv").write_text("source,source_path\n")
    assert [(p.file, p.check) for p in verify_release(release).problems] == [("unpinned-files.csv", "generated")]


def test_a_release_without_configurations_has_one_record_set(tmp_path):
    release = make_release(tmp_path / "release", per_class={"train": 3, "test": 2}, size=(24, 24))
    assert verify_release(release).ok
    # named as every reader of the folder names it (release.LEGACY_CONFIG: verify, cite, baseline)
    records = records_by_split(load(release), release_format.LEGACY_CONFIG)
    assert {s: len(r) for s, r in records.items()} == {"train": 9, "test": 6}


def test_the_cards_pytorch_tensorflow_jax_block_runs(with_configs, monkeypatch):
    import importlib.util

    card = (with_configs / "README.md").read_text()
    block = card.split("## Use it with PyTorch / TensorFlow / JAX")[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert 'with_format("torch"' in block and 'with_format("jax"' in block and "to_tf_dataset(" in block
    missing = [name for name in ("torch", "jax") if importlib.util.find_spec(name) is None]  # run what this machine has
    code = "\n".join(line for line in block.splitlines() if not any(f'"{name}"' in line for name in missing))
    monkeypatch.chdir(with_configs.parent)
    namespace: dict = {}
    exec(code.replace("path/to/this/folder", with_configs.name), namespace)  # noqa: S102 - the card's own example
    images, labels = next(iter(namespace["tf_train"]))
    assert tuple(images.shape[1:]) == (224, 224) and len(labels) == len(images)
    assert sum(1 for _ in namespace["records"]) == sum(sum(c.values()) for c in CONFIG_EXPECTED["paper"].values())
