"""filters.py and split.py on small record tables: reasons, flags, duplicate links, groups, quota."""

from __future__ import annotations

import textwrap

import pandas as pd
import pytest

from covid19_cxr_dataset import filters, manifest as manifest_module, split
from covid19_cxr_dataset.records import new_record_table

from synthetic import manifest_text


def _manifest(tmp_path, *, configs: str = "", quota: str = "", decisions: dict[str, str] | None = None):
    folder = tmp_path / "m"
    (folder / "decisions").mkdir(parents=True)
    (folder / "files.csv").write_text("path,sha256,label,patient_id\n")
    names = {}
    for kind, text in (decisions or {}).items():
        (folder / "decisions" / f"{kind}.csv").write_text(textwrap.dedent(text))
        names[kind] = f"decisions/{kind}.csv"
    decision_lines = "".join(f"  {k}: {v}\n" for k, v in names.items())
    filters = ("modalities: [X-ray]\nfrontal_views: [PA, AP]\nlateral_views: [L]\nexact_duplicates: true\n"
               + (f"decisions:\n{decision_lines}" if names else "") + quota)
    (folder / "manifest.yaml").write_text(manifest_text(
        name="t", version="0.0.1", title="t",
        sources="- {name: a, kind: dicom, files: files.csv, license: x}\n- {name: b, kind: dicom, files: files.csv, license: x}",
        filters=filters, convert="{quality: 95}", split="seed: s\nrules:\n  - {method: patient-hash, test_images: 2}",
        **({"configs": configs} if configs else {"expected_counts": "train: {COVID-19: 1}"}),
    ))
    return manifest_module.load(folder)


PAPER_CURATED = """\
paper:
  default: true
  flag_instead_of_excluding: [annotation-text, duplicate-near, duplicate-exact, not-reviewed]
  expected_counts: {train: {COVID-19: 1}}
curated:
  leave_out_flagged: true
  expected_counts: {train: {COVID-19: 1}}
"""


def _rows(*specs):
    rows = []
    for spec in specs:
        source, path, patient = spec[:3]
        extra = spec[3] if len(spec) > 3 else {}
        rows.append({"record_id": f"{source}:{path}", "source": source, "source_path": path, "patient_id": f"{source}:{patient}",
                     "label": "COVID-19", "finding": "COVID-19", "view": "PA", "modality": "X-ray", **extra})
    return new_record_table(rows)


DECISIONS = {
    "annotations": """\
        source,source_path,decision,reason,note
        a,arrow.png,exclude,annotation-arrow,arrow
        a,text.png,exclude,annotation-text,score text
        a,clean.png,keep,,tinted
        """,
    "duplicates": """\
        source,source_path,duplicate_of_source,duplicate_of_path,method,distance,note
        a,copy.png,b,original.png,near,0.01,re-post
        """,
    "unreviewed": """\
        source,source_path,note
        b,big.png,not obtained
        """,
}
TABLE = (
    ("a", "clean.png", "1"), ("a", "arrow.png", "2"), ("a", "text.png", "3"), ("a", "copy.png", "4"),
    ("b", "original.png", "40"), ("b", "big.png", "5"), ("a", "lateral.png", "6", {"view": "L"}),
    ("a", "ct.png", "7", {"modality": "CT"}), ("a", "sars.png", "8", {"label": ""}),
    ("a", "blob-1.png", "9", {"git_blob_sha1": "f" * 40}), ("b", "blob-2.png", "10", {"git_blob_sha1": "f" * 40}),
)


def test_without_configs_every_finding_excludes_with_its_reason(tmp_path):
    manifest = _manifest(tmp_path, decisions=DECISIONS)
    table = _rows(*TABLE)
    kept, excluded = filters.metadata_filters(manifest, table, filters.load_decisions(manifest, table))
    reasons = dict(zip(excluded["source_path"], excluded["reason"]))
    assert reasons == {
        "arrow.png": "annotation-arrow", "text.png": "annotation-text", "copy.png": "duplicate-near", "big.png": "not-reviewed",
        "lateral.png": "view-lateral", "ct.png": "modality-not-xray", "sars.png": "label-unmapped", "blob-2.png": "duplicate-exact",
    }
    assert set(kept["source_path"]) == {"clean.png", "original.png", "blob-1.png"}
    twins = dict(zip(excluded["source_path"], excluded["duplicate_of"]))
    assert twins["copy.png"] == "b:original.png" and twins["blob-2.png"] == "a:blob-1.png" and twins["arrow.png"] == ""


def test_flagged_reasons_stay_with_flags_and_the_subset_leaves_them_out(tmp_path):
    manifest = _manifest(tmp_path, configs=PAPER_CURATED, decisions=DECISIONS)
    table = _rows(*TABLE)
    kept, excluded = filters.metadata_filters(manifest, table, filters.load_decisions(manifest, table))
    assert dict(zip(excluded["source_path"], excluded["reason"])) == {
        "arrow.png": "annotation-arrow", "lateral.png": "view-lateral", "ct.png": "modality-not-xray", "sars.png": "label-unmapped"}
    flags = dict(zip(kept["source_path"], kept["flags"]))
    assert flags == {"clean.png": (), "text.png": ("annotation-text",), "copy.png": ("duplicate-near",), "original.png": (),
                     "big.png": ("not-reviewed",), "blob-1.png": (), "blob-2.png": ("duplicate-exact",)}
    assert list(kept["source_path"]) == [r[1] for r in TABLE if r[1] in flags]  # order unchanged
    curated = kept[filters.in_config(kept, manifest.config("curated"))]
    assert set(curated["source_path"]) == {"clean.png", "original.png", "blob-1.png"}
    assert dict(zip(kept["source_path"], kept["duplicate_of"]))["copy.png"] == "b:original.png"


def test_exact_duplicate_keeps_an_unflagged_copy(tmp_path):
    manifest = _manifest(tmp_path, configs=PAPER_CURATED)
    table = _rows(("a", "x.png", "1", {"sha256": "1" * 64, "flags": ("annotation-text",)}), ("b", "y.png", "2", {"sha256": "1" * 64}))
    kept, excluded = filters.exact_duplicates_after_download(manifest, table)
    assert excluded.empty
    assert dict(zip(kept["source_path"], kept["duplicate_of"])) == {"x.png": "b:y.png", "y.png": ""}
    assert dict(zip(kept["source_path"], kept["flags"])) == {"x.png": ("annotation-text", "duplicate-exact"), "y.png": ()}


def test_exact_duplicates_setting_is_honoured_after_download(tmp_path):
    manifest = _manifest(tmp_path, configs=PAPER_CURATED)
    manifest.data["filters"]["exact_duplicates"] = False
    table = _rows(("a", "x.png", "1", {"sha256": "1" * 64}), ("b", "y.png", "2", {"sha256": "1" * 64}))
    kept, excluded = filters.exact_duplicates_after_download(manifest, table)
    assert len(kept) == 2 and excluded.empty and kept["flags"].map(len).eq(0).all()


def test_kaggle_decisions_may_name_paths_inside_the_archive_root(tmp_path):
    manifest = _manifest(tmp_path)
    manifest.data["sources"].append({"name": "kaggle", "kind": "kaggle", "archive_root": "chest_xray"})
    decided = pd.DataFrame({"source": ["kaggle", "kaggle"], "source_path": ["train/NORMAL/a.jpeg", "chest_xray/test/NORMAL/b.jpeg"],
                            "duplicate_of_source": ["kaggle", "kaggle"], "duplicate_of_path": ["test/NORMAL/b.jpeg", "train/NORMAL/c.jpeg"]})
    fixed = filters._archive_paths(manifest, decided)
    assert list(fixed["source_path"]) == ["chest_xray/train/NORMAL/a.jpeg", "chest_xray/test/NORMAL/b.jpeg"]
    assert list(fixed["duplicate_of_path"]) == ["chest_xray/test/NORMAL/b.jpeg", "chest_xray/train/NORMAL/c.jpeg"]


def test_quota_keeps_the_documented_order(tmp_path):
    manifest = _manifest(tmp_path, quota="quota:\n  COVID-19: {keep: 2, order: ['source:b,a', source_path]}\n")
    table = _rows(("a", "1.png", "1"), ("a", "0.png", "2"), ("b", "9.png", "3"), ("a", "2.png", "4"))
    kept, excluded = filters.apply_quota(manifest, table)
    assert list(kept["source_path"]) == ["0.png", "9.png"]
    assert set(excluded["reason"]) == {"over-quota"} and len(excluded) == 2


def test_split_joins_patients_through_duplicate_of_not_message_text():
    candidates = _rows(("a", "x.png", "1"), ("b", "y.png", "2"), *[("a", f"s{i}.png", f"s{i}") for i in range(6)])
    copy = candidates.iloc[[0]].assign(duplicate_of="b:y.png", detail="same radiograph as b:y.png")
    reworded = copy.assign(detail="a re-post; the kept file is b:y.png, see the note")
    links = split.duplicate_patient_links(copy, candidates)
    assert links == [("a:1", "b:2")] == split.duplicate_patient_links(reworded, candidates)
    rules = [{"method": "patient-hash", "test_images": 3}]
    for seed in ("one", "two", "three", "four"):
        assigned = split.assign_splits(candidates, rules, seed, links)
        sides = dict(zip(assigned["source_path"], assigned["split"]))
        assert sides["x.png"] == sides["y.png"], seed
        assert (assigned["split"] == "test").sum() == 3
        assert split.patients_in_both(assigned) == [] and split.duplicate_pairs_across_splits(assigned.assign(duplicate_of="")) == []


def test_reviewed_patient_links_and_duplicates_group_across_sources():
    table = _rows(("a", "1.png", "p"), ("a", "2.png", "p"), ("b", "3.png", "q"), ("b", "4.png", "r"))
    groups = split.patient_groups(table, [("a:p", "b:q"), ("b:q", "b:r")])
    assert groups.nunique() == 1 and set(groups) == {"a:p"}


def test_upstream_split_crossings_are_reported_not_moved():
    table = _rows(("k", "train/1.jpeg", "person1", {"upstream_split": "train"}), ("k", "test/2.jpeg", "person2", {"upstream_split": "test"}))
    table.loc[1, "duplicate_of"] = "k:train/1.jpeg"
    links = split.duplicate_patient_links(table, table)
    assigned = split.assign_splits(table, [{"method": "upstream", "map": {"train": "train", "test": "test"}}], "s", links)
    assert list(assigned["split"]) == ["train", "test"]  # the source's own split stays
    assert split.patients_in_both(assigned) == []  # not an error of this package's rules ...
    assert split.upstream_groups_in_both(assigned) == ["k:person1"]  # ... but reported
    assert split.duplicate_pairs_across_splits(assigned) == [{"record_id": "k:test/2.jpeg", "duplicate_of": "k:train/1.jpeg", "splits": ["test", "train"]}]


@pytest.mark.parametrize("reason", ["view-not-frontal"])
def test_view_not_stated_and_not_reviewed_is_excluded(tmp_path, reason):
    manifest = _manifest(tmp_path)
    table = _rows(("a", "x.png", "1", {"view": ""}))
    _, excluded = filters.metadata_filters(manifest, table, filters.Decisions())
    assert list(excluded["reason"]) == [reason] and "not stated" in excluded["detail"].iloc[0]
