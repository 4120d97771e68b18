"""Shortcut probes, release configurations, seeds, the quick-check verdict and the card's evidence section.

The image probes train the tiny recipe of test_baseline.py on synthetic releases whose label is
written into the border (a bright corner square per class), or into the centre only; the metadata
probe reads releases whose classes differ only in image size, or not at all.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from covid19_cxr_dataset import CLASS_NAMES, evidence, release as release_format
from covid19_cxr_dataset.baseline.certificate import QUICK_CHECK, SINGLE_SEED_NOTE, compare_with_reference
from covid19_cxr_dataset.baseline.evaluate import evaluate_predictions, wilson_interval
from covid19_cxr_dataset.baseline.linear_probes import ProbeTable, metadata_probe, read_probe_table, source_probe
from covid19_cxr_dataset.baseline.probes import FAST_PROBE_NAMES, blank_centre, centre_mask, resolve_probes
from covid19_cxr_dataset.release import config_fingerprint, resolve_config
from covid19_cxr_dataset.errors import CxrDatasetError, VerificationError
from covid19_cxr_dataset.release import shard_paths
from release_factory import make_release
from test_baseline import needs_tensorflow, tiny_recipe_values, write_recipe

# --- synthetic releases ----------------------------------------------------------------------------


def noise(label: int, split: str, index: int, size: tuple[int, int], salt: int = 0) -> np.ndarray:
    width, height = size
    rng = np.random.default_rng([label, index, salt, 0 if split == "train" else 1])
    return rng.normal(110, 25, (height, width))


def corner_label_image(label: int, split: str, index: int, size: tuple[int, int]) -> np.ndarray:
    """The label is written into the border only: a square in each corner, bright for COVID-19, dark for
    Normal, none for Pneumonia (like a marker or a collimation edge); the centre is the same noise for
    every class. Four corners, so flips and crops of the augmentation keep it."""
    image = noise(label, split, index, size, salt=5)
    side = size[1] // 3
    if label in (0, 1):
        level = 250 if label == 0 else 5
        for rows in (slice(None, side), slice(-side, None)):
            for columns in (slice(None, side), slice(-side, None)):
                image[rows, columns] = level
    return np.clip(image, 0, 255).astype(np.uint8)


def centre_label_image(label: int, split: str, index: int, size: tuple[int, int]) -> np.ndarray:
    """The label is in the centre only (a disc whose brightness is the class); the border is noise."""
    width, height = size
    image = noise(label, split, index, size, salt=6)
    yy, xx = np.mgrid[0:height, 0:width]
    disc = (yy - height / 2) ** 2 + (xx - width / 2) ** 2 < (min(size) / 4) ** 2
    image[disc] = (40, 130, 220)[label]
    return np.clip(image, 0, 255).astype(np.uint8)


def size_label_image(label: int, split: str, index: int, size: tuple[int, int]) -> np.ndarray:
    """Identical content statistics for every class; only the image size tells the class."""
    side = (48, 64, 80)[label]
    return np.clip(noise(label, split, index, (side, side), salt=7), 0, 255).astype(np.uint8)


def same_everything_image(label: int, split: str, index: int, size: tuple[int, int]) -> np.ndarray:
    return np.clip(noise(label, split, index, size, salt=8), 0, 255).astype(np.uint8)


def tables(release: Path) -> tuple[ProbeTable, ProbeTable]:
    return tuple(read_probe_table(shard_paths(release / "data", split)) for split in ("train", "test"))


# --- blanking, intervals, verdict (no TensorFlow) -----------------------------------------------------


def test_blanking_fills_the_centre_with_the_border_mean_and_keeps_the_border():
    image = np.full((1, 20, 20, 1), 200, np.uint8)
    image[0, :3, :, 0] = 10  # top rows darker: the fill is the border's own mean
    box = blank_centre(image, "box", 0.7)
    mask = centre_mask(20, 20, "box", 0.7)
    assert mask.sum() == 14 * 14  # 70% of each side
    border = image[0, ~mask, 0]
    assert (box[0, mask, 0] == np.rint(border.mean())).all()
    assert (box[0, ~mask] == image[0, ~mask]).all()
    ellipse = centre_mask(20, 20, "ellipse", 0.7)
    assert ellipse.sum() < mask.sum() and not ellipse[3, 3] and mask[3, 3]  # the ellipse keeps the box's corners


def test_wilson_interval_stays_inside_zero_one():
    assert wilson_interval(10, 10) == pytest.approx({"low": 0.7225, "high": 1.0}, abs=1e-4)
    assert wilson_interval(0, 5)["low"] == 0.0
    assert wilson_interval(8, 10) == pytest.approx({"low": 0.4902, "high": 0.9433}, abs=1e-4)
    assert wilson_interval(0, 0) == {"low": None, "high": None}


def test_reference_band_is_clipped_to_zero_one_and_overrides_give_quick_check():
    y = np.array([0] * 10 + [1] * 10 + [2] * 10)
    probs = np.eye(3)[y] * 0.9 + 0.1 / 3
    metrics = evaluate_predictions(y, probs, bootstrap_resamples=0)
    reference = {"citation": "x", "figures": {"covid19_accuracy": {"value": 0.98, "tolerance": 0.05, "source": "s"}}}
    rows, verdict = compare_with_reference(metrics, reference)
    assert rows[0]["band"] == [pytest.approx(0.93), 1.0] and verdict == "pass"  # not 93%-103%
    reference["figures"]["covid19_accuracy"]["value"] = 0.2  # far off: would be "review"
    assert compare_with_reference(metrics, reference, overridden=True)[1] == QUICK_CHECK
    cells = metrics["confusion_matrix"]["row_fraction_intervals"]
    assert all(0 <= cell["low"] <= cell["high"] <= 1 for row in cells for cell in row)


def test_seed_spread_can_excuse_a_figure_below_its_band():
    reference = {"citation": "x", "figures": {"accuracy": {"value": 0.80, "tolerance": 0.02, "source": "s"}}}
    runs = [{"accuracy": 0.70}, {"accuracy": 0.74}, {"accuracy": 0.83}]  # mean 0.757: below, paper inside range
    rows, verdict = compare_with_reference(runs[0], reference, runs=runs)
    assert rows[0]["status"] == "below" and rows[0]["within_seed_spread"] and verdict == "review"
    assert rows[0]["seeds"]["n"] == 3 and rows[0]["seeds"]["min"] == 0.70
    assert compare_with_reference(runs[0], reference, runs=runs[:2])[1] == "fail"  # 0.80 outside 0.70-0.74


def test_probe_names_are_checked():
    """The names pick DCNN probes; the fast ones run anyway, so naming them asks for nothing more."""
    assert resolve_probes(True) == ("border", "lung")
    assert resolve_probes(True, gpu=True) == ("border", "lung", "holdout")
    assert resolve_probes(["all"]) == ("border", "lung", "holdout")
    assert resolve_probes(["metadata", "lung"]) == ("lung",) and resolve_probes(["source"]) == ()
    assert resolve_probes(None) == ()
    with pytest.raises(CxrDatasetError, match="unknown probe"):
        resolve_probes(["borders"])


# --- metadata and source probes (no TensorFlow) ------------------------------------------------------


def test_metadata_probe_flags_classes_that_differ_only_in_image_size(tmp_path):
    release = make_release(tmp_path / "sizes", per_class={"train": 20, "test": 10}, image_fn=size_label_image)
    train, test = tables(release)
    assert sorted(set(train.widths.tolist())) == [48, 64, 80]
    result = metadata_probe(train, test)
    assert result["accuracy"] >= 0.95 and result["flagged"] is True
    assert result["majority_rate"] == pytest.approx(1 / 3)
    assert 0 <= result["accuracy_interval"]["low"] <= result["accuracy"] <= result["accuracy_interval"]["high"] <= 1


def test_metadata_probe_is_not_flagged_when_metadata_carries_nothing(tmp_path):
    release = make_release(tmp_path / "same", per_class={"train": 20, "test": 10}, size=(48, 48),
                           image_fn=same_everything_image)
    result = metadata_probe(*tables(release))
    assert result["flagged"] is False
    assert result["accuracy"] < 0.6  # chance is 1/3 on 30 test images


def test_source_probe_needs_two_sources_and_finds_a_source_signature():
    def table(n: int, seed: int) -> ProbeTable:
        rng = np.random.default_rng(seed)
        sources = tuple("cohen" if i % 2 else "figure1" for i in range(n))
        thumbs = rng.normal(0.5, 0.1, (n, 24, 24)).astype(np.float32)
        thumbs[[i for i, s in enumerate(sources) if s == "figure1"], :3, :] += 0.4  # a header bar on one source
        ones = np.ones(n)
        return ProbeTable(np.zeros(n, np.int64), sources, ones, ones, ("jpeg",) * n, None, ones, ones, thumbs)

    result = source_probe(table(40, 1), table(20, 2))
    assert result["status"] == "ran" and result["classes"] == ["cohen", "figure1"]
    assert result["accuracy"] >= 0.95 and result["flagged"] is True and result["majority_rate"] == 0.5
    single = table(10, 3)
    single = ProbeTable(single.labels, ("cohen",) * 10, *[getattr(single, f) for f in
                        ("widths", "heights", "formats", "conversions", "means", "stds", "thumbnails")])
    assert source_probe(single, single)["status"] == "skipped"


# --- configurations --------------------------------------------------------------------------------


def test_configurations_from_a_new_and_an_old_build_report(tmp_path):
    release = make_release(tmp_path / "release", per_class={"train": 2, "test": 2}, size=(32, 32))
    old = release_format.read_report(release)
    legacy = resolve_config(release, old)
    assert legacy.name == "paper" and legacy.shards is None
    assert config_fingerprint(release, legacy) == old["fingerprint"] == release_format.fingerprint(release)
    with pytest.raises(VerificationError, match="build_report.json.*no configuration 'curated'.*--config paper"):
        resolve_config(release, old, "curated")

    shards = sorted(release_format.shard_hashes(release))
    curated_shards = [s for s in shards if "/test-" in s]  # a subset of files, as the release format has it
    curated = {"default": False, "counts": {"test": old["counts"]["test"]}, "fingerprint": "", "shards": curated_shards}
    new = {**old, "configs": {"paper": {"default": True, "counts": old["counts"], "fingerprint": old["fingerprint"],
                                        "shards": shards}, "curated": curated}}
    curated["fingerprint"] = config_fingerprint(release, resolve_config(release, {**new, "configs": {
        **new["configs"], "curated": {**curated, "fingerprint": "x"}}}, "curated"))
    chosen = resolve_config(release, new, "curated")
    assert chosen.shard_paths(release, "train") == [] and len(chosen.shard_paths(release, "test")) == 1
    assert chosen.fingerprint != old["fingerprint"]
    assert resolve_config(release, new).name == "paper"  # the default
    assert release_format.stated_fingerprints(new) == {"paper": old["fingerprint"], "curated": curated["fingerprint"]}
    assert release_format.stated_fingerprints(old) == {"paper": old["fingerprint"]}


# --- image probes (TensorFlow, tiny recipe) ----------------------------------------------------------


def probe_recipe_values() -> dict:
    """The tiny recipe, 4 epochs: enough for the tiny network to read a corner square or a centre disc."""
    values = tiny_recipe_values()
    values["training"].update(epochs=4, learning_rate={"values": [3e-3, 1e-3, 3e-4], "boundaries": [2, 3]})
    return values


def probe_run(root: Path, image_fn, *, probes=("border",), **kwargs):
    from covid19_cxr_dataset.baseline import run_baseline

    release = make_release(root / "release", per_class={"train": 24, "test": 10}, size=(40, 40), image_fn=image_fn)
    lines: list[str] = []
    certificate = run_baseline(release, root / "out", recipe=write_recipe(root / "tiny.yaml", probe_recipe_values()),
                               seed=3, probes=probes, progress=lines.append, **kwargs)
    return certificate, root / "out", lines


@pytest.fixture(scope="module")
def border_run(tmp_path_factory):
    needs_tensorflow()
    return probe_run(tmp_path_factory.mktemp("border"), corner_label_image, probes=("border", "metadata"),
                     probe_epochs=4)


def test_border_probe_finds_a_label_written_into_the_border(border_run):
    certificate, out, lines = border_run
    probe = certificate["probes"]["border"]
    assert probe["status"] == "ran" and probe["accuracy"] >= 0.9 and probe["flagged"] is True
    assert {"COVID-19", "Normal"} <= set(probe["separated_classes"])  # the two classes with a corner square
    assert probe["model_kind"] == "dcnn" and probe["accuracy_rule"]["flagged"] is True  # balanced classes: both rules see it
    assert probe["blanked"]["shape"] == "box" and probe["epochs"] == probe["recipe_epochs"] == 4
    assert set(probe["per_class_recall"]) == set(CLASS_NAMES)
    summary = (out / "certificate.md").read_text(encoding="utf-8")
    row = next(line for line in summary.splitlines() if line.startswith("| border | DCNN |"))
    assert "## Shortcut evidence" in summary and "**yes: COVID-19" in row
    assert "With the centre of every film blanked, the DCNN still tells COVID-19" in summary
    assert json.loads((out / "certificate.json").read_text(encoding="utf-8"))["probes"]["border"]["flagged"] is True
    epoch_lines = [line for line in lines if line.startswith("epoch ")]
    assert len(epoch_lines) == 4 + 4 and all("images/s" in line and "ETA" in line for line in epoch_lines)
    assert epoch_lines[-1].endswith("ETA 0:00  [border probe]")


def test_border_probe_stays_near_chance_when_the_border_carries_nothing(tmp_path):
    needs_tensorflow()
    certificate, out, _ = probe_run(tmp_path, centre_label_image)
    probe = certificate["probes"]["border"]
    assert certificate["metrics"]["accuracy"] >= 0.8  # the label is there, in the centre
    assert probe["flagged"] is False and probe["accuracy"] < 0.6
    assert probe["epochs"] == 3 and probe["recipe_epochs"] == 4  # a CPU's cheap default: at most 3 epochs
    assert probe["separated_classes"] == [] and certificate["probes"]["linear-border"]["flagged"] is False
    summary = (out / "certificate.md").read_text(encoding="utf-8")
    assert next(line for line in summary.splitlines() if line.startswith("| border | DCNN")).endswith("| no |")


def test_certificate_records_config_tables_and_a_place_for_the_training_path(border_run):
    certificate, _, _ = border_run
    dataset = certificate["dataset"]
    assert dataset["config"]["name"] == "paper" and dataset["config"]["fingerprint"] == dataset["fingerprint"]
    assert isinstance(certificate["run_info"], dict)
    assert certificate["verdict_notes"] == [SINGLE_SEED_NOTE]
    tables = {(r["table"], r["row"], r["column"]) for r in certificate["reference"]["tables_comparison"]}
    assert ("table3", "covid19", "loss") in tables and ("table5", "Normal", "Pneumonia") in tables
    assert len(tables) == 12 + 3 + 9  # every figure of Tables 3, 4 and 5 of the paper recipe
    for row in certificate["reference"]["tables_comparison"]:
        if row["interval"] and row["column"] != "loss":
            assert 0 <= row["interval"]["low"] <= row["interval"]["high"] <= 1, row


def test_card_section_shows_a_committed_certificate_whose_fingerprint_matches(border_run, tmp_path):
    certificate, _, _ = border_run
    root = tmp_path / "manifest" / "certificates"
    (root / "0.0.0-test" / "tiny-test").mkdir(parents=True)
    (root / "0.0.0-test" / "tiny-test" / "certificate.json").write_text(json.dumps(certificate), encoding="utf-8")
    fingerprint = certificate["dataset"]["fingerprint"]
    section = evidence.card_section({"fingerprint": fingerprint}, root)
    assert section.startswith("## Shortcut evidence") and "**yes: COVID-19" in section
    assert "`certificates/0.0.0-test/tiny-test`" in section and fingerprint in section and str(tmp_path) not in section
    other = evidence.card_section({"fingerprint": "0" * 64}, root)
    assert "No shortcut-probe certificate has been made yet for configuration `paper`" in other
    both = evidence.card_section({"fingerprint": fingerprint, "configs": {
        "paper": {"default": True, "fingerprint": fingerprint}, "curated": {"default": False, "fingerprint": "1" * 64}}},
        root)
    paper, curated = both.split("### Configuration `curated`")
    assert "### Configuration `paper`" in paper and "**yes: COVID-19" in paper
    assert "No shortcut-probe certificate has been made yet for configuration `curated`" in curated
    assert "--config curated --probes" in curated


# --- CLI: quick check, seeds -----------------------------------------------------------------------


def walk_intervals(value, path="$"):
    """Every {low, high} interval of a certificate except the losses' (a loss is not a fraction)."""
    if isinstance(value, dict):
        if value.get("column") == "loss":
            return
        if {"low", "high"} <= set(value) and value["low"] is not None and "loss" not in path:
            yield path, value["low"], value["high"]
        for key, item in value.items():
            yield from walk_intervals(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from walk_intervals(item, f"{path}[{index}]")


def test_quick_check_exits_zero_and_says_it_certifies_nothing(tmp_path):
    needs_tensorflow()
    from covid19_cxr_dataset.cli import main

    release = make_release(tmp_path / "release", per_class={"train": 6, "test": 4}, size=(40, 40))
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe_values())
    result = CliRunner().invoke(main, ["baseline", "--data", str(release), "--out", str(tmp_path / "out"),
                                       "--recipe", str(recipe), "--epochs", "1", "--probes"])
    assert result.exit_code == 0, result.output
    assert "verdict: quick-check" in result.output and "certifies nothing" in result.output
    assert "probe border (dcnn): " in result.output and "probe lung (dcnn): " in result.output
    assert "probe linear-film (linear): reference (AUC COVID-19 " in result.output
    assert "probe source (linear): not run (the train split's COVID-19 images come from 1 source(s)" in result.output
    certificate = json.loads((tmp_path / "out" / "certificate.json").read_text(encoding="utf-8"))
    assert certificate["verdict"] == "quick-check"
    assert "certifies nothing" in (tmp_path / "out" / "certificate.md").read_text(encoding="utf-8")
    intervals = list(walk_intervals(certificate))
    assert intervals and all(0 <= low <= high <= 1 for _, low, high in intervals), intervals
    assert all(0 <= row["band"][0] <= row["band"][1] <= 1 for row in certificate["reference"]["comparison"])
    assert (tmp_path / "out" / "training_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_seeds_record_each_run_and_their_spread(tmp_path):
    needs_tensorflow()
    from covid19_cxr_dataset.baseline import run_baseline

    release = make_release(tmp_path / "release", per_class={"train": 8, "test": 4}, size=(40, 40))
    values = tiny_recipe_values()
    values["training"]["epochs"] = 2
    certificate = run_baseline(release, tmp_path / "out", recipe=write_recipe(tmp_path / "r.yaml", values),
                               seed=7, seeds=2, progress=False)
    assert certificate["seeds"]["all"] == [7, 8] and certificate["spread"]["n_seeds"] == 2
    assert [run["seed"] for run in certificate["runs"]] == [8]
    accuracy = certificate["spread"]["accuracy"]
    assert accuracy["min"] <= accuracy["mean"] <= accuracy["max"]
    assert all(row["seeds"]["n"] == 2 for row in certificate["reference"]["comparison"] if "seeds" in row)
    assert all(len(row["runs"]) == 2 for row in certificate["reference"]["tables_comparison"])
    assert SINGLE_SEED_NOTE not in certificate["verdict_notes"]
    assert "Over 2 seeds" in (tmp_path / "out" / "certificate.md").read_text(encoding="utf-8")


# --- a release built by `cxr-dataset build`, certified with probes -----------------------------------


@pytest.mark.slow
def test_build_then_baseline_with_probes_through_the_cli(world, tmp_path):
    """The user's journey: build from (loopback) sources, then `baseline --probes`; the card of the build
    says no certificate exists yet, and the certificate's shortcut section renders for that card."""
    needs_tensorflow()
    from covid19_cxr_dataset.cli import main
    from loopback import LoopbackServer

    with LoopbackServer(dict(world.served)) as server:
        built = CliRunner().invoke(main, ["build", "--manifest", str(world.manifest_dir), "--mirror", server.base_url,
                                          "--cache-dir", str(tmp_path / "cache"), "--kaggle-archive",
                                          str(world.kaggle_zip), "--out", str(tmp_path / "release"), "-q"])
    assert built.exit_code == 0, built.output
    card = (tmp_path / "release" / "README.md").read_text(encoding="utf-8")
    assert "## Shortcut evidence" in card and "No shortcut-probe certificate has been made yet" in card
    recipe = write_recipe(tmp_path / "tiny.yaml", probe_recipe_values())
    result = CliRunner().invoke(main, ["baseline", "--data", str(tmp_path / "release"), "--out", str(tmp_path / "cert"),
                                       "--recipe", str(recipe), "--probes", "--quiet"])
    assert result.exit_code in (0, 3), result.output
    certificate = json.loads((tmp_path / "cert" / "certificate.json").read_text(encoding="utf-8"))
    assert set(certificate["probes"]) == {"border", "lung", *FAST_PROBE_NAMES}
    assert certificate["dataset"]["fingerprint"] == release_format.read_report(tmp_path / "release")["fingerprint"]
    root = tmp_path / "manifest" / "certificates"
    (root / "tiny").mkdir(parents=True)
    (root / "tiny" / "certificate.json").write_text(json.dumps(certificate), encoding="utf-8")
    section = evidence.card_section(release_format.read_report(tmp_path / "release"), root)
    assert "| border |" in section and "| metadata |" in section


def test_per_image_loss_is_the_loss_keras_reports():
    needs_tensorflow()
    import keras

    from covid19_cxr_dataset.baseline.evaluate import per_image_loss

    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 50)
    probs = rng.dirichlet([0.5, 0.5, 0.5], 50)
    expected = keras.losses.CategoricalCrossentropy(label_smoothing=0.12)(np.eye(3)[y], probs)
    assert per_image_loss(y, probs, label_smoothing=0.12).mean() == pytest.approx(float(expected), rel=1e-5)
