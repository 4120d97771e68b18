"""Per-class shortcut evidence (issue 26): AUC intervals, the fast linear probes, the source hold-out, the card.

The synthetic releases tell their classes apart only inside the lung region: a bright shape of the same
area per class (square, horizontal bar, vertical bar), so no intensity statistic or border pixel carries
the label. Where a test needs a shortcut, some films also carry a mark outside the lung region: a bright
square in each corner (four, so the DCNN's flips and crops keep it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from covid19_cxr_dataset import CLASS_NAMES, evidence
from covid19_cxr_dataset.baseline.class_evidence import auc, class_evidence, difference_interval, flagged_classes
from covid19_cxr_dataset.baseline.linear_probes import (
    FEATURE_GROUPS,
    fast_probes,
    fit_softmax_regression,
    hidden_mask,
    metadata_probe,
    read_probe_table,
)
from covid19_cxr_dataset.release import shard_paths
from release_factory import brightness_image, make_release
from test_baseline import needs_tensorflow, tiny_recipe_values, write_recipe

SOURCES = ("cohen", "figure1", "actualmed")
MINORITY_COVID = {"train": {"COVID-19": 30, "Normal": 60, "Pneumonia": 62},
                  "test": {"COVID-19": 12, "Normal": 24, "Pneumonia": 84}}
"""COVID-19 is one test image in ten; the train split's majority class (Pneumonia) is 70% of the test split."""
SIDE = 64


def lung_image(label: int, split: str, index: int, size: tuple[int, int], *, shape: int | None = None,
               mark: bool = False) -> np.ndarray:
    """Noise, plus a bright shape of 144 pixels inside the lung region whose form is the class (or ``shape``);
    ``mark``: a bright 8 x 8 square in each corner, outside the lung region."""
    width, height = size
    rng = np.random.default_rng([label, index, 11 if split == "train" else 12, int(mark)])
    image = rng.normal(110, 20, (height, width))
    cy, cx = height // 2 + int(rng.integers(-3, 4)), width // 2 + int(rng.integers(-3, 4))
    half_y, half_x = {0: (6, 6), 1: (3, 12), 2: (12, 3)}[label if shape is None else shape]
    image[cy - half_y:cy + half_y, cx - half_x:cx + half_x] += 90
    if mark:
        for rows in (slice(2, 10), slice(-10, -2)):
            for columns in (slice(2, 10), slice(-10, -2)):
                image[rows, columns] = 250
    return np.clip(image, 0, 255).astype(np.uint8)


def covid_source(label: int, split: str, index: int) -> str:
    return SOURCES[index % 3] if label == 0 else "kaggle"


def tables(release: Path):
    return tuple(read_probe_table(shard_paths(release / "data", split)) for split in ("train", "test"))


@pytest.fixture(scope="module")
def marked(tmp_path_factory):
    """Only COVID-19 films carry the mark; COVID-19 is a small minority of the test split."""
    release = make_release(tmp_path_factory.mktemp("marked"), counts=MINORITY_COVID, size=(SIDE, SIDE),
                           source_fn=covid_source, image_fn=lambda l, s, i, size: lung_image(l, s, i, size, mark=l == 0))
    train, test = tables(release)
    return release, fast_probes(train, test, seed=1)


@pytest.fixture(scope="module")
def unmarked(tmp_path_factory):
    release = make_release(tmp_path_factory.mktemp("unmarked"), counts=MINORITY_COVID, size=(SIDE, SIDE),
                           source_fn=covid_source, image_fn=lung_image)
    return release, fast_probes(*tables(release), seed=1)


def figure1_marked_image(label: int, split: str, index: int, size: tuple[int, int]) -> np.ndarray:
    """figure1's COVID-19 films look like Pneumonia inside the lungs and carry the mark; the other sources'
    COVID-19 films have the COVID-19 shape and no mark."""
    if label == 0 and covid_source(label, split, index) == "figure1":
        return lung_image(label, split, index, size, shape=2, mark=True)
    return lung_image(label, split, index, size)


@pytest.fixture(scope="module")
def source_marked(tmp_path_factory):
    counts = {"train": {name: 45 for name in CLASS_NAMES}, "test": {name: 30 for name in CLASS_NAMES}}
    release = make_release(tmp_path_factory.mktemp("source-marked"), counts=counts, size=(SIDE, SIDE),
                           source_fn=covid_source, image_fn=figure1_marked_image)
    return release, fast_probes(*tables(release), seed=1)


# --- the statistics --------------------------------------------------------------------------------


def test_auc_is_the_pairwise_rank_statistic_with_ties_counted_half():
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 6, 60).astype(float)  # many ties
    positive = rng.random(60) < 0.3
    pairs = [(a > b) + 0.5 * (a == b) for a in scores[positive] for b in scores[~positive]]
    assert auc(scores, positive) == pytest.approx(np.mean(pairs))
    assert auc(scores, np.ones(60, bool)) is None and auc(scores, np.zeros(60, bool)) is None


def test_bootstrap_is_stratified_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(6)
    y = np.repeat([0, 1, 2], [10, 30, 60])
    probs = rng.dirichlet([1, 1, 1], y.size)
    probs[y == 0, 0] += rng.uniform(0, 0.6, 10)  # COVID-19 somewhat separable
    first = class_evidence(y, probs, CLASS_NAMES, seed=3, resamples=500)
    assert first == class_evidence(y, probs, CLASS_NAMES, seed=3, resamples=500)
    assert first != class_evidence(y, probs, CLASS_NAMES, seed=4, resamples=500)
    for row in first["classes"].values():
        assert row["auc_interval"]["low"] <= row["auc"] <= row["auc_interval"]["high"]
        assert 0 <= row["recall_interval"]["low"] <= row["recall"] <= row["recall_interval"]["high"] <= 1
    # always answering COVID-19: the balanced accuracy is 1/3 in every resample only because each
    # resample keeps every class's count (a plain bootstrap would move it)
    always = class_evidence(y, np.tile([0.9, 0.05, 0.05], (y.size, 1)), CLASS_NAMES, resamples=300)
    assert always["balanced_accuracy"] == pytest.approx(1 / 3)
    assert always["balanced_accuracy_interval"] == pytest.approx({"low": 1 / 3, "high": 1 / 3})
    assert always["classes"]["COVID-19"]["auc"] == 0.5  # constant scores: every pair a tie


def test_a_class_flags_only_with_enough_test_images_on_each_side():
    def perfect(positives: int) -> dict:
        y = np.array([0] * positives + [1] * 20 + [2] * 20)  # at least 10 needed on each side
        return class_evidence(y, np.eye(3)[y] * 0.8 + 0.1, CLASS_NAMES, resamples=200)

    few, enough = perfect(9), perfect(10)
    assert few["classes"]["COVID-19"]["auc_interval"] == {"low": 1.0, "high": 1.0}
    assert "COVID-19" not in flagged_classes(few) and "COVID-19" in flagged_classes(enough)


def test_recall_drop_interval_is_newcombes():
    """Newcombe (Statistics in Medicine 1998), method 10, his examples (a) and (c)."""
    assert difference_interval((56, 70), (48, 80)) == pytest.approx({"low": 0.0524, "high": 0.3339}, abs=1e-4)
    assert difference_interval((9, 10), (3, 10)) == pytest.approx({"low": 0.1705, "high": 0.8090}, abs=1e-4)


def test_the_regression_fits_in_the_span_of_the_images_when_they_are_fewer_than_the_features():
    """With fewer images than features the fit runs in their span; it must give the same model."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(30, 80))
    y = rng.integers(0, 3, 30)
    reduced = fit_softmax_regression(x, y, 3, steps=200, tolerance=0)
    padded = fit_softmax_regression(np.vstack([x, x, x]), np.concatenate([y, y, y]), 3, steps=200, tolerance=0)
    assert np.abs(reduced.probabilities(x) - padded.probabilities(x)).max() < 1e-3  # same loss: triplicated rows


def test_views_hide_what_they_say():
    lung, border, corners = (hidden_mask(view, 100, 100) for view in ("lung", "border", "corners"))
    assert not hidden_mask("film", 100, 100).any()
    assert border[50, 50] and lung[50, 50] and corners[50, 50]  # the centre: hidden by every blanked view
    assert not lung[16, 16] and border[16, 16]  # the box's corner region: shown by the lung view only
    assert not corners[5, 5] and not corners[95, 5] and corners[5, 50] and not border[5, 50]  # a border edge's middle
    assert (~corners).sum() == 4 * 20 * 20


# --- the three synthetic releases -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["linear-border", "linear-lung", "linear-corners"])
def test_a_mark_only_covid19_carries_flags_the_blanked_views_by_class(marked, name):
    """The shortcut of one minority class: flagged by the per-class rule, while the old accuracy rule
    (accuracy against the majority-class rate) misses it: the probe scores below that rate."""
    _, results = marked
    probe = results[name]
    covid = probe["per_class"]["classes"]["COVID-19"]
    assert probe["flagged"] is True and "COVID-19" in probe["separated_classes"]
    assert covid["auc_interval"]["low"] > 0.6 and covid["recall"] >= 0.9
    assert probe["majority_class"] == "Pneumonia" and probe["majority_rate"] == pytest.approx(0.7)
    assert probe["accuracy"] < probe["majority_rate"]
    assert probe["accuracy_rule"]["flagged"] is False  # what the old rule says
    assert "Normal" not in probe["separated_classes"]  # Normal and Pneumonia differ only inside the lungs
    recovered = probe["recovery"]["linear film"]["COVID-19"]
    assert recovered["auc_ratio"] >= 0.95 and recovered["reference_auc"] == 1.0
    assert probe["model_kind"] == "linear" and probe["role"] == "probe"


def test_without_a_mark_no_probe_is_flagged(unmarked):
    _, results = unmarked
    assert {name for name, probe in results.items() if probe["flagged"]} == set()
    film = results["linear-film"]  # the reference sees the lungs and separates every class, by design
    assert film["role"] == "reference" and film["separated_classes"] == list(CLASS_NAMES)
    for name in ("linear-border", "linear-lung", "linear-corners", "metadata"):
        assert results[name]["separated_classes"] == [], name
    assert results["source"]["status"] == "ran" and results["linear-holdout"]["status"] == "ran"


def test_a_source_specific_mark_shows_as_a_recall_drop_when_that_source_is_held_out(source_marked):
    _, results = source_marked
    holdout = results["linear-holdout"]
    assert holdout["model_kind"] == "linear" and set(holdout["sources"]) == set(SOURCES)
    assert holdout["flagged_sources"] == ["figure1"]
    figure1 = holdout["sources"]["figure1"]
    assert figure1["held_out"]["n"] == 15 + 10  # both splits' figure1 COVID-19 films: none was trained on
    assert figure1["held_out"]["recall"] <= 0.1 and figure1["in_distribution"]["recall"] >= 0.9
    assert figure1["in_distribution"]["sources"] == ["actualmed", "cohen"]
    assert figure1["seen"]["recall"] >= 0.9  # trained with figure1, the mark finds them
    assert figure1["drop_interval"]["low"] > 0.5
    assert holdout["sources"]["cohen"]["held_out"]["recall"] >= 0.6  # cohen's films look like the others'


def test_the_metadata_probe_says_which_features_carry_the_label(tmp_path):
    def sized(label, split, index, size):
        side = (48, 64, 80)[label]
        return lung_image(1, split, index + 100 * label, (side, side))  # same content for every class

    train, test = tables(make_release(tmp_path / "sizes", per_class={"train": 20, "test": 10}, image_fn=sized))
    result = metadata_probe(train, test)
    groups = result["feature_groups"]
    assert set(groups) == set(FEATURE_GROUPS) and result["flagged"] is True
    assert groups["size"]["flagged"] is True and groups["size"]["separated_classes"] == list(CLASS_NAMES)
    assert groups["size"]["features"] == ["width", "height", "aspect", "log_pixels"]
    assert groups["file format"]["flagged"] is False  # every source file is a .png here
    assert "gray_levels_log2" in groups["bit depth and encoding"]["features"]


# --- the certificate and the card -------------------------------------------------------------------


def certificate_of(results: dict, **extra) -> dict:
    """What a certificate carries for the card, without training: the fast probes alone."""
    return {"dataset": {"fingerprint": "f" * 64, "config": {"name": "paper"}}, "recipe": {"name": "tiny"},
            "metrics": {"accuracy": 0.9, "n": 120}, "probes": results,
            "probes_info": {"flag_rule": "the flag rule"}, **extra}


def test_the_card_section_shows_per_class_numbers_and_says_the_accuracy_rule_missed_it(marked):
    _, results = marked
    section = evidence.shortcut_markdown(certificate_of(results))
    row = next(line for line in section.splitlines() if line.startswith("| linear-lung |"))
    auc_cell = row.split(" | ")[3]
    covid = results["linear-lung"]["per_class"]["classes"]["COVID-19"]
    assert auc_cell == f"{covid['auc']:.2f} [{covid['auc_interval']['low']:.2f}, {covid['auc_interval']['high']:.2f}]"
    assert "**yes: COVID-19" in row and "| (reference) |" in section
    assert "| COVID-19 AUC [95%] | Normal AUC [95%] | Pneumonia AUC [95%] | balanced accuracy [95%] |" in section
    assert "the accuracy rule alone would not have flagged it" in section
    assert "of the linear whole-film reference's COVID-19 AUC" in section
    assert "| intensity |" in section  # the metadata feature groups


def test_the_card_section_shows_the_hold_out_table(source_marked):
    _, results = source_marked
    section = evidence.shortcut_markdown(certificate_of(results))
    row = next(line for line in section.splitlines() if line.startswith("| figure1 | linear |"))
    assert "(n=25)" in row and row.endswith("| **yes** |")
    figure1 = results["linear-holdout"]["sources"]["figure1"]
    assert (f"figure1 held out: {100 * figure1['held_out']['recall']:.1f}% of its 25 COVID-19 films found, against "
            f"{100 * figure1['in_distribution']['recall']:.1f}% of 20 from the sources it was trained on") in section
    assert "does not carry over to a source the model has not seen" in section


# --- the DCNN probes and the certificate (TensorFlow, tiny recipe) -------------------------------------


def tiny_probe_recipe(tmp_path: Path) -> Path:
    values = tiny_recipe_values()
    values["training"].update(epochs=4, learning_rate={"values": [3e-3, 1e-3, 3e-4], "boundaries": [2, 3]})
    return write_recipe(tmp_path / "tiny.yaml", values)


def test_certificate_carries_per_class_evidence_for_the_model_and_every_probe(marked, tmp_path):
    needs_tensorflow()
    from covid19_cxr_dataset.baseline import run_baseline

    release, _ = marked
    certificate = run_baseline(release, tmp_path / "out", recipe=tiny_probe_recipe(tmp_path), seed=3,
                               probes=("lung",), probe_epochs=4, progress=False)
    full = certificate["metrics"]["per_class_evidence"]
    assert set(full["classes"]) == set(CLASS_NAMES) and full["bootstrap"]["resamples"] == 2000
    probes = certificate["probes"]
    assert {name for name, p in probes.items() if p["model_kind"] == "linear"} == {
        "linear-film", "linear-border", "linear-lung", "linear-corners", "source", "metadata", "linear-holdout"}
    lung = probes["lung"]
    assert lung["model_kind"] == "dcnn" and lung["epochs"] == 4 and set(lung["per_class"]["classes"]) == set(CLASS_NAMES)
    assert set(lung["recovery"]["full model"]) == set(CLASS_NAMES)
    # the DCNN with the lungs blanked finds COVID-19 from the corner marks; the old rule does not see it
    assert "COVID-19" in lung["separated_classes"] and lung["accuracy_rule"]["flagged"] is False
    assert lung["recovery"]["full model"]["COVID-19"]["auc_ratio"] >= 0.9
    assert probes["linear-lung"]["flagged"] is True  # the fast probe, on every certificate
    assert certificate["probes_info"]["fast_probes"] and certificate["probes_info"]["dcnn_probes"] == ["lung"]
    summary = (tmp_path / "out" / "certificate.md").read_text(encoding="utf-8")
    assert "| full model | DCNN | the whole film |" in summary and "| lung | DCNN |" in summary
    assert "| linear-lung | linear |" in summary and "of the full model's COVID-19 AUC" in summary
    stored = json.loads((tmp_path / "out" / "certificate.json").read_text(encoding="utf-8"))
    assert stored["probes"]["linear-lung"]["separated_classes"] == probes["linear-lung"]["separated_classes"]


def dark_corners_on_figure1(label: int, split: str, index: int, size: tuple[int, int]) -> np.ndarray:
    """Classes by brightness (what the tiny DCNN learns in a few epochs); figure1's COVID-19 films are as bright
    as Pneumonia and carry a dark square in each corner, the other sources' COVID-19 films are dark."""
    if label == 0 and covid_source(label, split, index) == "figure1":
        image = brightness_image(2, split, index + 1000, size).copy()
        side = size[1] // 3
        for rows in (slice(None, side), slice(-side, None)):
            for columns in (slice(None, side), slice(-side, None)):
                image[rows, columns] = 5
        return image
    return brightness_image(label, split, index, size)


@pytest.mark.slow
def test_dcnn_hold_out_trains_once_per_source_and_finds_the_drop(tmp_path):
    needs_tensorflow()
    from covid19_cxr_dataset.baseline import run_baseline

    counts = {"train": {name: 45 for name in CLASS_NAMES}, "test": {name: 30 for name in CLASS_NAMES}}
    release = make_release(tmp_path / "release", counts=counts, size=(40, 40), source_fn=covid_source,
                           image_fn=dark_corners_on_figure1)
    lines: list[str] = []
    certificate = run_baseline(release, tmp_path / "out", recipe=tiny_probe_recipe(tmp_path), seed=3,
                               probes=("holdout",), probe_epochs=4, progress=lines.append)
    holdout = certificate["probes"]["holdout"]
    assert holdout["model_kind"] == "dcnn" and set(holdout["sources"]) == set(SOURCES)
    assert sum(line.endswith("[holdout figure1]") for line in lines) == 4  # one training per source, 4 epochs
    figure1 = holdout["sources"]["figure1"]
    assert figure1["held_out"]["n"] == 10  # the DCNN hold-out reads the test films only
    assert figure1["seen"]["recall"] >= 0.9 and figure1["held_out"]["recall"] <= 0.2
    assert holdout["flagged_sources"] == ["figure1"]
    assert "| figure1 | DCNN |" in (tmp_path / "out" / "certificate.md").read_text(encoding="utf-8")
