"""The baseline's resident input path (training split on the device, augmented there), run on a CPU.

The resident path is what a GPU run takes by default; on a CPU it runs the same code when asked
for (``pipeline="resident"``), so these tests check it without a GPU: its batches, their seeding,
that it feeds exactly what the cached tf.data path feeds, and whole runs through it.
"""

from __future__ import annotations

import copy
import json
import math
import os

import numpy as np
import pytest
import yaml

from covid19_cxr_dataset import CLASS_NAMES
from covid19_cxr_dataset.baseline import PAPER_RECIPE
from covid19_cxr_dataset.errors import CxrDatasetError
from release_factory import make_release

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TRAIN_PER_CLASS, TEST_PER_CLASS, BATCH = 7, 3, 8  # 21 training images: 2 full batches and one of 5


def small_recipe_values(*, augment: bool = True) -> dict:
    values = copy.deepcopy(PAPER_RECIPE)
    values["name"] = "resident-test"
    values["model"].update(input_size=32, blocks=[{"filters": 4, "convs": 1}, {"filters": 8, "convs": 1}],
                           dense=[16], dropout=[0.1])
    values["data"]["train_resize"] = 38
    values["augmentation"]["contrast_range"] = [0.8, 1.2]
    if not augment:
        values["augmentation"].update(horizontal_flip=False, brightness_max_delta=0.0,
                                      contrast_range=[1.0, 1.0 + 1e-7])
    values["training"].update(epochs=2, batch_size=BATCH, class_weights={"COVID-19": 3, "Normal": 2, "Pneumonia": 1},
                              learning_rate={"values": [3e-3, 1e-3], "boundaries": [1]})
    values["evaluation"]["bootstrap_resamples"] = 20
    values["reference"]["figures"] = {}  # verdict no-reference: the CLI exits 0
    return values


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    pytest.importorskip("tensorflow")
    root = tmp_path_factory.mktemp("resident")
    return make_release(root / "release", per_class={"train": TRAIN_PER_CLASS, "test": TEST_PER_CLASS}, size=(44, 40))


def load(release, values):
    from covid19_cxr_dataset.baseline.data import load_release
    from covid19_cxr_dataset.baseline.recipe import recipe_from_values

    recipe = recipe_from_values(values, source="test")
    return load_release(release, recipe), recipe


def as_numpy(batches):
    return [(images.numpy(), labels.numpy()) for images, labels in batches]


def test_resident_batches_have_the_model_input_shape_dtype_range_and_labels(release):
    from covid19_cxr_dataset.baseline.data import ResidentPipelines

    arrays, recipe = load(release, small_recipe_values())
    pipelines = ResidentPipelines(arrays, recipe, seed=5)
    assert pipelines.placed_on.endswith("CPU:0") and pipelines.storage_dtype == "uint8"
    assert pipelines.resident_bytes == 21 * 38 * 38 + 9 * 32 * 32 + 4 * 3 * (21 + 9)  # gray images + one-hot
    batches = as_numpy(pipelines.train_epoch(0))
    assert [len(images) for images, _ in batches] == [8, 8, 5]
    order = pipelines.epoch_order(0)
    assert sorted(order.tolist()) == list(range(21))
    for number, (images, onehot) in enumerate(batches):
        assert images.shape[1:] == (32, 32, 3) and images.dtype == np.float32
        assert np.isfinite(images).all() and -0.5 < images.min() and images.max() < 1.5
        assert (images[..., 0] == images[..., 2]).all()  # gray stays gray
        assert onehot.dtype == np.float32 and (onehot.sum(axis=1) == 1).all()
        rows = order[number * BATCH:(number + 1) * BATCH]
        assert onehot.argmax(axis=1).tolist() == arrays["train"].labels[rows].tolist()


def test_resident_augmentation_is_a_function_of_seed_and_epoch(release):
    from covid19_cxr_dataset.baseline.data import ResidentPipelines

    arrays, recipe = load(release, small_recipe_values())
    first = as_numpy(ResidentPipelines(arrays, recipe, seed=5).train_epoch(1))
    again = as_numpy(ResidentPipelines(arrays, recipe, seed=5).train_epoch(1))
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(first, again))
    other_epoch = as_numpy(ResidentPipelines(arrays, recipe, seed=5).train_epoch(2))
    other_seed = as_numpy(ResidentPipelines(arrays, recipe, seed=6).train_epoch(1))
    assert not np.array_equal(first[0][0], other_epoch[0][0])
    assert not np.array_equal(first[0][0], other_seed[0][0])


@pytest.mark.parametrize("augment", [False, True], ids=["no-augmentation", "paper-augmentation"])
def test_resident_and_cached_paths_feed_bitwise_identical_batches(release, augment):
    from covid19_cxr_dataset.baseline.data import Pipelines, ResidentPipelines

    arrays, recipe = load(release, small_recipe_values(augment=augment))
    cached = as_numpy(Pipelines(arrays, recipe, seed=5).train_epoch(3))
    resident = as_numpy(ResidentPipelines(arrays, recipe, seed=5).train_epoch(3))
    as_float16 = as_numpy(ResidentPipelines(arrays, recipe, seed=5, storage_dtype="float16").train_epoch(3))
    assert len(cached) == len(resident) == len(as_float16) == 3
    for (x_cached, y_cached), (x_resident, y_resident), (x_half, _) in zip(cached, resident, as_float16):
        assert np.array_equal(x_cached, x_resident) and np.array_equal(y_cached, y_resident)
        assert np.array_equal(x_resident, x_half)  # a GPU's float16 storage holds the same pixels
    if not augment:  # nothing but a crop: pixels stay in [0, 1]
        images, _ = resident[0]
        assert images.min() >= 0 and images.max() <= 1


def test_unknown_pipeline_and_xla_under_determinism_are_refused_before_any_work(release, tmp_path):
    from covid19_cxr_dataset.baseline import run_baseline

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(small_recipe_values()), encoding="utf-8")
    with pytest.raises(CxrDatasetError, match="pipeline 'gpu': expected one of auto, resident, cached"):
        run_baseline(release, tmp_path / "out", recipe=recipe, pipeline="gpu", progress=False)
    with pytest.raises(CxrDatasetError, match="jit_compile=True needs deterministic=False.*MaxPool"):
        run_baseline(release, tmp_path / "out", recipe=recipe, jit_compile=True, progress=False)
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def runs(release, tmp_path_factory):
    """The same short run through both paths: resident from the CLI, cached from Python."""
    from click.testing import CliRunner

    from covid19_cxr_dataset.baseline import run_baseline
    from covid19_cxr_dataset.cli import main

    root = tmp_path_factory.mktemp("runs")
    recipe = root / "r.yaml"
    recipe.write_text(yaml.safe_dump(small_recipe_values()), encoding="utf-8")
    result = CliRunner().invoke(main, ["baseline", "--data", str(release), "--out", str(root / "resident"), "--recipe",
                                       str(recipe), "--seed", "4", "--pipeline", "resident", "--quiet"])
    assert result.exit_code == 0, result.output
    resident = json.loads((root / "resident" / "certificate.json").read_text(encoding="utf-8"))
    cached = run_baseline(release, root / "cached", recipe=recipe, seed=4, pipeline="cached", progress=False)
    return result, resident, cached


def test_resident_run_gives_finite_metrics_and_says_which_path_ran(runs):
    result, resident, _ = runs
    assert "verdict: no-reference" in result.output
    info = resident["run_info"]
    assert info["path"] == "cpu-resident" and info["device"].endswith("CPU:0")
    assert info["jit_compile"] is False and info["mixed_precision"] is False and info["dtype_policy"] == "float32"
    assert resident["seeds"]["op_determinism"] is True
    assert [row["epoch"] for row in resident["history"]] == [1, 2]
    for row in resident["history"]:
        assert {"loss", "accuracy", "precision", "recall", "val_loss", "val_accuracy"} <= set(row)
        assert all(math.isfinite(value) for value in row.values())
    assert resident["metrics"]["n"] == 9 and math.isfinite(resident["metrics"]["loss"])


def test_resident_and_cached_runs_train_the_same_numbers(runs):
    _, resident, cached = runs
    assert cached["run_info"]["path"] == "cpu-cached"

    def without_seconds(history):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in history]

    assert without_seconds(resident["history"]) == without_seconds(cached["history"])
    assert resident["metrics"] == cached["metrics"]


@pytest.mark.slow
def test_xla_resident_run_repeats_itself(release, tmp_path):
    """With jit_compile the step is one XLA computation (op determinism off); on a CPU a rerun with
    the same seed gives the same numbers."""
    from covid19_cxr_dataset.baseline import run_baseline

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(small_recipe_values()), encoding="utf-8")
    certificates = [run_baseline(release, tmp_path / f"out{n}", recipe=recipe, seed=4, pipeline="resident",
                                 jit_compile=True, deterministic=False, progress=False) for n in range(2)]
    assert all(c["run_info"]["jit_compile"] is True and c["seeds"]["op_determinism"] is False for c in certificates)
    assert certificates[0]["metrics"] == certificates[1]["metrics"]
    assert all(math.isfinite(row["loss"]) for row in certificates[0]["history"])
    assert set(CLASS_NAMES) == set(certificates[0]["metrics"]["per_class"])
