"""A release with two configurations (1.0.0's shape) built from the synthetic sources: one folder,
``load_dataset(dir)`` gives ``paper``, ``load_dataset(dir, "curated")`` the unflagged subset."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest

from covid19_cxr_dataset import CLASS_NAMES, manifest as manifest_module
from covid19_cxr_dataset.build import Options, build, plan
from covid19_cxr_dataset.plan import plan_document
from covid19_cxr_dataset.verify import verify_release

from loopback import LoopbackServer
from synthetic import CONFIG_DUPLICATE_OF, CONFIG_EXPECTED, CONFIG_FLAGS


@pytest.fixture(scope="module")
def server(configs_world):
    with LoopbackServer(dict(configs_world.served)) as running:
        yield running


@pytest.fixture(scope="module")
def built(configs_world, server, tmp_path_factory):
    root = tmp_path_factory.mktemp("built")
    options = Options(cache_dir=root / "cache", mirror=server.base_url, workers=2, progress=False, kaggle_archive=configs_world.kaggle_zip)
    report = build(manifest_module.load(configs_world.manifest_dir), root / "out", options)
    return root / "out", report, options


def _counts(split) -> dict[str, int]:
    labels = split["label"]
    return {name: labels.count(i) for i, name in enumerate(CLASS_NAMES)}


def test_load_dataset_gives_paper_by_default_and_curated_by_name(built):
    out, report, _ = built
    paper = datasets.load_dataset(str(out))
    curated = datasets.load_dataset(str(out), "curated")
    assert {s: _counts(paper[s]) for s in paper} == CONFIG_EXPECTED["paper"]
    assert {s: _counts(curated[s]) for s in curated} == CONFIG_EXPECTED["curated"]
    assert {name: c["counts"] for name, c in report["configs"].items()} == CONFIG_EXPECTED
    assert report["counts"] == CONFIG_EXPECTED["paper"] and report["configs"]["paper"]["default"] is True
    # flags and duplicate links are columns; curated is paper's unflagged rows, each on the same side
    rows = {f"{r['source']}:{r['source_path']}": (s, r) for s in paper for r in paper[s]}
    assert {rid: r["flags"] for rid, (_, r) in rows.items() if r["flags"]} == CONFIG_FLAGS
    assert {rid: r["duplicate_of"] for rid, (_, r) in rows.items() if r["duplicate_of"]} == CONFIG_DUPLICATE_OF
    curated_rows = {f"{r['source']}:{r['source_path']}": s for s in curated for r in curated[s]}
    assert set(curated_rows) == set(rows) - set(CONFIG_FLAGS)
    assert all(rows[rid][0] == side for rid, side in curated_rows.items())


def test_no_image_is_stored_twice(built):
    out, report, _ = built
    seen = []
    for shard in sorted((out / "data").rglob("*.parquet")):
        table = pq.read_table(shard, columns=["source", "source_path"])
        seen += [f"{a}:{b}" for a, b in zip(table.column("source").to_pylist(), table.column("source_path").to_pylist())]
    assert len(seen) == len(set(seen)) == sum(sum(c.values()) for c in CONFIG_EXPECTED["paper"].values())
    assert sorted(p.parent.name for p in (out / "data").rglob("*.parquet")) == ["curated", "curated", "flagged", "flagged"]
    assert report["configs"]["curated"]["shards"] == [p for p in report["shards"] if p.startswith("data/curated/")]
    assert sorted(report["configs"]["paper"]["shards"]) == sorted(report["shards"])


def test_rows_are_in_a_seeded_shuffled_order(built):
    out, _, _ = built
    table = pq.read_table(next((out / "data" / "curated").glob("train-*.parquet")), columns=["source", "source_path", "label"])
    ids = [f"{a}:{b}" for a, b in zip(table.column("source").to_pylist(), table.column("source_path").to_pylist())]
    assert ids == sorted(ids, key=lambda rid: hashlib.sha256(f"tiny-seed\0row-order\0{rid}".encode()).hexdigest())
    labels = table.column("label").to_pylist()
    assert labels != sorted(labels)  # not grouped by class


def test_duplicates_are_grouped_and_a_source_split_crossing_is_reported_not_moved(built):
    out, report, _ = built
    paper = report["configs"]["paper"]
    assert paper["duplicate_pairs_across_splits"] == [{
        "record_id": "kaggle:chest_xray/train/NORMAL/IM-0001-0001.jpeg",
        "duplicate_of": "kaggle:chest_xray/test/NORMAL/IM-0101-0001.jpeg", "splits": ["train", "test"]}]
    assert paper["upstream_groups_in_both_splits"] == ["kaggle:IM-0001"]
    assert report["configs"]["curated"]["duplicate_pairs_across_splits"] == []
    assert report["checks"]["patients_in_both_splits"] == []  # none that this package's rules placed
    card = (out / "README.md").read_text()
    assert "Across the source's own split:** 1 duplicate pair(s)" in card and "not moved" in card


def test_card_declares_both_configurations_over_shared_shards(built):
    out, report, _ = built
    card = (out / "README.md").read_text()
    header = card.split("---\n")[1]
    assert "config_name: paper\n  default: true" in header
    assert "    - data/curated/train-*.parquet\n    - data/flagged/train-*.parquet" in header
    assert "- config_name: curated\n  data_files:\n  - split: train\n    path: data/curated/train-*.parquet" in header
    for name, config in report["configs"].items():
        assert f"fingerprint of `{name}` (every column of every row; the configuration's name, default and data files): `{config['fingerprint']}`" in card
    assert report["fingerprint"] == report["configs"]["paper"]["fingerprint"] != report["configs"]["curated"]["fingerprint"]
    assert "deterministic shuffled order" in card and "`not-reviewed` | 1 |" in card
    assert verify_release(out).ok


def test_pixel_duplicates_found_at_build_time_are_flagged_not_dropped(built, configs_world, server, tmp_path):
    out, report, options = built
    flagged = {f"{r['source']}:{r['source_path']}": r for r in report["flagged"]}
    assert flagged["actualmed:images/CR.5.1.png"]["duplicate_of"] == "actualmed:images/CR.1.1.png"
    # plan (metadata only) cannot see it: its curated counts have one COVID-19 and one Normal image more
    resolution = plan(manifest_module.load(configs_world.manifest_dir), options)
    assert resolution.counts("paper") == CONFIG_EXPECTED["paper"]
    document = plan_document(resolution)
    assert document["configs"]["paper"]["matches"] is True and document["configs"]["curated"]["matches"] is False
    row = next(f for f in document["files"] if f["source_path"] == "images/c9.jpg")
    assert row == {"source": "cohen", "source_path": "images/c9.jpg", "label": "COVID-19", "patient_id": "cohen:9",
                   "split": row["split"], "patient_group": "cohen:9", "excluded": "", "flags": ["annotation-text"], "duplicate_of": "", "in_curated": False}
    arrow = next(f for f in document["files"] if f["source_path"] == "images/c6-arrow.jpg")
    assert arrow["excluded"] == "annotation-arrow" and arrow["in_curated"] is False
    json.dumps(document)


def test_an_extra_card_section_is_part_of_the_generated_card(built, tmp_path):
    import shutil

    from covid19_cxr_dataset import release as release_format
    from covid19_cxr_dataset.card import render_card

    out = Path(shutil.copytree(built[0], tmp_path / "release"))
    data = release_format.read_report(out)
    data["card"]["extra_sections"] = [{"title": "Shortcut evidence", "markdown": "A probe separates the classes by **source**."}]
    release_format.write_report(out, data)
    (out / "README.md").write_text(render_card(data, release_format.read_row_table(out)), encoding="utf-8")
    card = (out / "README.md").read_text()
    assert card.index("## Known risks") < card.index("## Shortcut evidence\n\nA probe separates") < card.index("## Licenses")
    assert verify_release(out).ok
    (out / "README.md").write_text(card.replace("by **source**", "by nothing"), encoding="utf-8")
    assert [p.check for p in verify_release(out).problems] == ["card-generated"]


def test_fingerprint_of_one_configuration_and_its_shards(built):
    from covid19_cxr_dataset import release as release_format

    out, report, _ = built
    assert release_format.fingerprint(out, config="curated") == report["configs"]["curated"]["fingerprint"]
    assert release_format.fingerprint(out) == report["fingerprint"]
    curated = release_format.config_shard_paths(out, "curated", "train")
    assert [p.relative_to(out).as_posix() for p in curated] == ["data/curated/train-00000-of-00001.parquet"]
    assert len(release_format.config_shard_paths(out, "paper", "train")) == 2


def test_plan_prints_the_counts_to_record_when_a_configuration_differs(configs_world, server, tmp_path):
    from click.testing import CliRunner

    from covid19_cxr_dataset.cli import main

    result = CliRunner().invoke(main, ["plan", "--manifest", str(configs_world.manifest_dir), "--mirror", server.base_url,
                                       "--cache-dir", str(tmp_path), "-q"])
    assert result.exit_code == 2  # metadata cannot see the pixel and byte copies the build finds
    assert result.output.count("counts match the manifest") == 1  # paper
    assert "COUNTS DIFFER: curated: train/COVID-19: expected 9, got 10; curated: train/Normal: expected 2, got 3" in result.output
    assert "configs.curated.expected_counts:\n    train: {COVID-19: 10, Normal: 3, Pneumonia: 4}\n    test: {COVID-19: 2, Normal: 3, Pneumonia: 2}" in result.output


def test_the_release_factory_writes_the_report_the_build_writes(built, tmp_path):
    """tests/release_factory.py (and benchmarks/synthetic_release.py through it) write build_report.json
    with the build's own assembly: the same keys at every level as this build's report; a release
    from before configurations lacks only the two keys configurations added."""
    from covid19_cxr_dataset.release import read_report
    from release_factory import make_release

    _, report, _ = built

    def keys(data: dict) -> dict:
        return {"top": set(data), "checks": set(data["checks"]), "card": set(data["card"]),
                "conversions": set(data["conversions"]), "card.variant": set(data["card"]["variant"]),
                "configs": {name: set(c) for name, c in data.get("configs", {}).items()}}

    made = read_report(make_release(tmp_path / "configs", per_class={"train": 4, "test": 4}, size=(16, 16), configs=True))
    assert keys(made) == keys(report)
    legacy = read_report(make_release(tmp_path / "legacy", per_class={"train": 1, "test": 1}, size=(16, 16)))
    assert keys(legacy) == {**keys(report), "top": set(report) - {"configs", "default_config"}, "configs": {}}
