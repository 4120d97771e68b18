"""The baseline on any Keras 3 backend: the host side (decode, resize, augmentation parameters, batches)
is the same whichever backend trains, and the backends apply the augmentation alike.

Backends other than the test process's own run in subprocesses (Keras loads one backend per
process); a backend's comparison is skipped only where that backend is not installed. ``-m slow``
adds whole runs through the CLI on PyTorch and JAX.
"""

from __future__ import annotations

import copy
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from covid19_cxr_dataset import CLASS_NAMES
from covid19_cxr_dataset.baseline import PAPER_RECIPE, load_recipe
from covid19_cxr_dataset.baseline._backend import BACKENDS, installed_backends, select_backend
from covid19_cxr_dataset.baseline.augment import INVERSE_255, PARAMETERS, draw_parameters, epoch_order
from covid19_cxr_dataset.baseline.data import (
    EvaluationBatches,
    TrainingBatches,
    decode_resized,
    load_release,
    resize_bilinear,
)
from covid19_cxr_dataset.baseline.recipe import RecipeError, recipe_from_values
from covid19_cxr_dataset.baseline.train import resolve_run_options
from covid19_cxr_dataset.errors import CxrDatasetError
from release_factory import make_release
from test_baseline import current_backend, needs_keras

REPO = Path(__file__).resolve().parents[1]
BLOCK_FRAMEWORKS = "import sys\nfor _name in {names!r}: sys.modules[_name] = None\n"


def small_recipe_values() -> dict:
    values = copy.deepcopy(PAPER_RECIPE)
    values["name"] = "backend-test"
    values["model"].update(input_size=32, blocks=[{"filters": 4, "convs": 1}, {"filters": 8, "convs": 1}],
                           dense=[16], dropout=[0.1])
    values["data"]["train_resize"] = 38
    values["augmentation"]["contrast_range"] = [0.8, 1.2]
    values["training"].update(epochs=2, batch_size=8, class_weights={"COVID-19": 3, "Normal": 2, "Pneumonia": 1},
                              learning_rate={"values": [3e-3, 1e-3], "boundaries": [1]})
    values["evaluation"]["bootstrap_resamples"] = 20
    values["reference"]["figures"] = {}  # verdict no-reference: the CLI exits 0
    return values


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("backends")
    return make_release(root / "release", per_class={"train": 7, "test": 3}, size=(44, 40))  # 21 train: 8, 8, 5


def run_python(code: str, *, backend: str | None = None, block: tuple[str, ...] = ()) -> str:
    """Run ``code`` in a new interpreter (``KERAS_BACKEND=backend``; ``block``: modules made unimportable)."""
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
                   "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)])}
    if backend:
        environment["KERAS_BACKEND"] = backend
    prefix = BLOCK_FRAMEWORKS.format(names=block) if block else ""
    result = subprocess.run([sys.executable, "-c", prefix + textwrap.dedent(code)], cwd=REPO, capture_output=True,
                            text=True, env=environment, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


# --- decode and resize on the host -----------------------------------------------------------------


def test_resize_bilinear_by_hand():
    image = np.array([[0, 100], [200, 60]], np.uint8)[:, :, None]
    assert np.array_equal(resize_bilinear(image, 2, 2)[..., 0], image[..., 0])  # same size: unchanged
    # 2 -> 4 with half-pixel centres: source positions -0.25, 0.25, 0.75, 1.25, clamped at the edges
    row = resize_bilinear(np.array([[0, 100]], np.uint8)[:, :, None], 1, 4)[0, :, 0]
    assert row.tolist() == [0.0, 25.0, 75.0, 100.0]
    assert resize_bilinear(np.full((7, 9, 1), 37, np.uint8), 3, 5).tolist() == np.full((3, 5, 1), 37.0).tolist()
    # 4 -> 2: position (i + 0.5) * 2 - 0.5 = 0.5, 2.5: the mean of each pair
    assert resize_bilinear(np.array([[0, 10, 20, 30]], np.uint8)[:, :, None], 1, 2)[0, :, 0].tolist() == [5.0, 25.0]


def encoded_images() -> dict[str, bytes]:
    """Image files of the kinds a release or its sources hold, at sizes that resize up and down."""
    rng = np.random.default_rng(4)
    gray = rng.normal(128, 50, (211, 173)).clip(0, 255).astype(np.uint8)
    colour = rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)
    files = {}

    def save(name: str, image: Image.Image, fmt: str, **options) -> None:
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        files[name] = buffer.getvalue()

    save("gray-jpeg", Image.fromarray(gray), "JPEG", quality=92)
    save("gray-progressive-jpeg", Image.fromarray(gray[:40, :61]), "JPEG", quality=80, progressive=True)
    save("colour-jpeg-420", Image.fromarray(colour), "JPEG", quality=85, subsampling=2)
    save("colour-jpeg-444", Image.fromarray(colour), "JPEG", quality=85, subsampling=0)
    save("gray-png", Image.fromarray(gray), "PNG")
    save("rgb-png", Image.fromarray(colour), "PNG")
    save("rgba-png", Image.fromarray(np.dstack([colour, colour[..., :1]])), "PNG")
    save("palette-png", Image.fromarray(colour).convert("P"), "PNG")
    return files


@pytest.mark.parametrize("name", sorted(encoded_images()))
def test_host_decode_and_resize_are_tensorflows_bit_for_bit(name):
    """The reference code's decode + resize (tf.io.decode_image, tf.image.resize bilinear), rounded to
    uint8 as the cache stores it, equals the host's numpy path exactly."""
    tf = pytest.importorskip("tensorflow")
    data = encoded_images()[name]
    for size in (96, 80, 32):
        decoded = tf.io.decode_image(data, channels=3, expand_animations=False)
        reference = tf.image.resize(decoded, (size, size)).numpy()
        ours = decode_resized(data, size)
        assert np.array_equal(np.broadcast_to(ours, reference.shape),
                              np.clip(np.rint(reference), 0, 255).astype(np.uint8)), (name, size)
    image = np.random.default_rng(2).integers(0, 256, (131, 77, 3), dtype=np.uint8)
    for height, width in ((96, 96), (80, 33), (200, 150), (131, 77)):
        assert np.array_equal(resize_bilinear(image, height, width),
                              tf.image.resize(image, (height, width)).numpy())  # float32, bit for bit


@pytest.mark.real
def test_host_decode_and_resize_are_tensorflows_on_the_real_files(real_fixtures):
    tf = pytest.importorskip("tensorflow")
    from covid19_cxr_dataset.convert import convert_file

    files = sorted(p for p in real_fixtures.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:24]
    assert files
    for path in files:
        for data in (path.read_bytes(), convert_file(path).data):  # the upstream file and the release's copy
            reference = tf.image.resize(tf.io.decode_image(data, channels=3, expand_animations=False), (96, 96))
            expected = np.clip(np.rint(reference.numpy()), 0, 255).astype(np.uint8)
            assert np.array_equal(np.broadcast_to(decode_resized(data, 96), expected.shape), expected), path


def test_a_resize_the_host_does_not_implement_is_refused_with_the_key():
    values = small_recipe_values()
    values["data"].update(resize_method="bicubic")
    with pytest.raises(RecipeError, match="key 'data.resize_method': 'bicubic'.*bilinear, antialias false"):
        recipe_from_values(values, source="variant.yaml")


# --- augmentation parameters and batches: numpy, the same for every backend -------------------------


def test_augmentation_parameters_are_keyed_by_seed_epoch_and_batch():
    recipe = load_recipe("paper")
    first = draw_parameters(recipe, seed=7, epoch=3, batch=11, count=500)
    again = draw_parameters(recipe, seed=7, epoch=3, batch=11, count=500)
    assert all(np.array_equal(first[name], again[name]) for name in PARAMETERS)
    for other in ({"seed": 8, "epoch": 3, "batch": 11}, {"seed": 7, "epoch": 4, "batch": 11},
                  {"seed": 7, "epoch": 3, "batch": 12}):
        changed = draw_parameters(recipe, count=500, **other)
        assert not any(np.array_equal(first[name], changed[name]) for name in ("brightness", "contrast", "top"))
    assert first["flip"].dtype == first["top"].dtype == np.int32 and first["contrast"].dtype == np.float32
    assert set(np.unique(first["flip"])) == {0, 1} and 200 < first["flip"].sum() < 300
    assert np.abs(first["brightness"]).max() <= 0.1 and first["brightness"].min() < -0.09
    assert 0.1 <= first["contrast"].min() and first["contrast"].max() <= 0.2
    assert 0 <= first["saturation"].min() and first["saturation"].max() <= 5.0
    assert set(np.unique(first["top"])) == set(range(17)) == set(np.unique(first["left"]))  # 96 - 80 + 1 offsets
    # turning a step off gives its neutral value and leaves the other parameters' numbers alone
    values = copy.deepcopy(PAPER_RECIPE)
    values["augmentation"]["horizontal_flip"] = False
    no_flip = draw_parameters(recipe_from_values(values, source="test"), seed=7, epoch=3, batch=11, count=500)
    assert not no_flip["flip"].any() and np.array_equal(no_flip["contrast"], first["contrast"])
    # an epoch's order is a permutation keyed by (seed, epoch); a negative seed is a seed too
    assert sorted(epoch_order(-5, 2, 50).tolist()) == list(range(50))
    assert not np.array_equal(epoch_order(5, 2, 50), epoch_order(5, 3, 50))


def test_training_batches_cover_the_split_once_per_epoch_with_class_weights(release):
    recipe = recipe_from_values(small_recipe_values(), source="test")
    arrays = load_release(release, recipe)
    assert arrays["train"].images.shape == (21, 38, 38, 1) and arrays["test"].images.shape == (9, 32, 32, 1)
    batches = TrainingBatches(arrays["train"], recipe, seed=5, epoch=1)
    assert len(batches) == 3
    rows = np.concatenate([batches.rows(i) for i in range(3)])
    assert sorted(rows.tolist()) == list(range(21))
    inputs, onehot, weights = batches[2]
    assert set(inputs) == {"image", *PARAMETERS} and inputs["image"].shape == (5, 38, 38, 1)
    assert inputs["image"].dtype == np.uint8 and onehot.shape == (5, 3) and onehot.dtype == np.float32
    labels = arrays["train"].labels[batches.rows(2)]
    assert onehot.argmax(axis=1).tolist() == labels.tolist()
    assert weights.tolist() == [{0: 3.0, 1: 2.0, 2: 1.0}[label] for label in labels]
    with pytest.raises(IndexError):
        batches[3]
    test_inputs, test_onehot = EvaluationBatches(arrays["test"], 4)[2]
    assert test_inputs["image"].shape == (1, 32, 32, 1) and test_onehot.argmax(1).tolist() == [arrays["test"].labels[8]]


def test_batches_are_made_without_any_deep_learning_framework(release, tmp_path):
    """The augmentation stream is numpy alone: a process that cannot import Keras, TensorFlow, JAX or
    PyTorch reads the release and makes the same batches, bit for bit, as this one."""
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(yaml.safe_dump(small_recipe_values()), encoding="utf-8")
    out = tmp_path / "batches.npz"
    run_python(f"""
        import numpy as np
        from covid19_cxr_dataset.baseline.data import TrainingBatches, load_release
        from covid19_cxr_dataset.baseline.recipe import load_recipe
        recipe = load_recipe({str(recipe_path)!r})
        batches = TrainingBatches(load_release({str(release)!r}, recipe)["train"], recipe, seed=5, epoch=4)
        inputs, onehot, weights = batches[1]
        np.savez({str(out)!r}, onehot=onehot, weights=weights, **inputs)
        import sys
        assert not {{'keras', 'tensorflow', 'jax', 'torch'}} & {{n for n, m in sys.modules.items() if m is not None}}
        """, block=("keras", "tensorflow", "jax", "torch"))
    recipe = recipe_from_values(small_recipe_values(), source="test")
    inputs, onehot, weights = TrainingBatches(load_release(release, recipe)["train"], recipe, seed=5, epoch=4)[1]
    saved = np.load(out)
    assert all(np.array_equal(saved[name], value) for name, value in inputs.items())
    assert np.array_equal(saved["onehot"], onehot) and np.array_equal(saved["weights"], weights)


# --- the augmentation applied by each backend ------------------------------------------------------


def numpy_augmentation(inputs: dict[str, np.ndarray], size: int) -> np.ndarray:
    """The paper's augmentation of one batch, written out in numpy with the step's float32 operations."""
    images = inputs["image"]
    resize, channels = images.shape[1], images.shape[-1]
    out = []
    for index, image in enumerate(images.astype(np.float32)):
        mean = image.sum(axis=(0, 1), keepdims=True) * np.float32(1 / (255 * resize * resize))
        if inputs["flip"][index]:
            image = image[:, ::-1]
        top, left = inputs["top"][index], inputs["left"][index]
        x = image[top:top + size, left:left + size] * INVERSE_255
        delta = inputs["brightness"][index]
        x, mean = x + delta, mean + delta
        x = (x - mean) * inputs["contrast"][index] + mean
        if channels == 3:
            maximum, minimum = x.max(axis=-1, keepdims=True), x.min(axis=-1, keepdims=True)
            saturation = np.where(maximum > 0, (maximum - minimum) / np.where(maximum > 0, maximum, 1), 0)
            scaled = np.clip(saturation * inputs["saturation"][index], 0, 1)
            ratio = np.where(saturation > 0, scaled / np.where(saturation > 0, saturation, 1), 0)
            x = maximum - (maximum - x) * ratio.astype(np.float32)
        out.append(np.broadcast_to(x, (size, size, 3)))
    return np.stack(out).astype(np.float32)


AUGMENT_ON_BACKEND = """
    import numpy as np, keras
    from covid19_cxr_dataset.baseline.augment import apply_augmentation
    backend = keras.backend.backend()
    step = lambda batch: apply_augmentation(batch, size=80)
    if backend == "jax":
        import jax
        compiled_step = jax.jit(step)
    elif backend == "tensorflow":
        import tensorflow as tf
        compiled_step = tf.function(step, jit_compile=True)
    else:
        compiled_step = None  # torch.compile needs a C++ toolchain; op by op is what Keras runs by default
    results = {{}}
    for name in {names!r}:
        inputs = dict(np.load({folder!r} + "/" + name + ".npz"))
        tensors = {{key: keras.ops.convert_to_tensor(value) for key, value in inputs.items()}}
        results[name] = keras.ops.convert_to_numpy(step(tensors))
        if compiled_step is not None:
            results[name + "-compiled"] = keras.ops.convert_to_numpy(compiled_step(tensors))
    np.savez({folder!r} + "/" + backend + ".npz", **results)
"""


def test_every_installed_backend_applies_the_same_augmentation(tmp_path):
    """One seed's batches (gray, as the release's images are, and colour), augmented by each installed
    backend: bit for bit the numpy reference when run op by op; within a float32 rounding when XLA
    compiles the step (it fuses multiply-adds)."""
    backends = installed_backends()
    assert backends, "no Keras backend installed"
    recipe = load_recipe("paper")
    expected = {}
    for channels, name in ((1, "gray"), (3, "colour")):
        images = np.random.default_rng(channels).integers(0, 256, (9, 96, 96, channels), dtype=np.uint8)
        inputs = {"image": images, **draw_parameters(recipe, seed=3, epoch=2, batch=5, count=9)}
        np.savez(tmp_path / f"{name}.npz", **inputs)
        expected[name] = numpy_augmentation(inputs, 80)
        assert expected[name].min() < 0.4 < expected[name].max()
    for backend in backends:
        run_python(AUGMENT_ON_BACKEND.format(names=sorted(expected), folder=str(tmp_path)), backend=backend)
        result = np.load(tmp_path / f"{backend}.npz")
        for name, reference in expected.items():
            assert np.array_equal(result[name], reference), (backend, name)
            if f"{name}-compiled" in result:
                assert np.abs(result[f"{name}-compiled"] - reference).max() <= 1e-6, (backend, name)


def test_saturation_is_tensorflows_adjust_saturation():
    tf = pytest.importorskip("tensorflow")
    keras = needs_keras()
    from covid19_cxr_dataset.baseline.augment import _adjust_saturation

    x = np.random.default_rng(5).random((5, 9, 9, 3)).astype(np.float32) * 1.4 - 0.2  # unclipped, as in training
    factors = np.float32([0.0, 0.5, 1.0, 2.0, 5.0]).reshape(-1, 1, 1, 1)
    ours = keras.ops.convert_to_numpy(_adjust_saturation(keras.ops, keras.ops.convert_to_tensor(x), factors))
    reference = np.stack([tf.image.adjust_saturation(image, float(f)).numpy() for image, f in zip(x, factors.ravel())])
    assert np.abs(ours - reference).max() < 2e-6


# --- choosing the backend ---------------------------------------------------------------------------


def test_unknown_backend_and_a_switch_after_keras_is_imported_are_refused():
    with pytest.raises(CxrDatasetError, match="backend 'mxnet': expected one of tensorflow, jax, torch"):
        select_backend("mxnet")
    backend = current_backend()
    other = next(name for name in BACKENDS if name != backend)
    with pytest.raises(CxrDatasetError, match=f"already imported .* '{backend}' backend.*KERAS_BACKEND={other}"):
        select_backend(other)
    assert select_backend(backend) == backend


def test_run_options_that_cannot_run_are_refused_before_any_work(release, tmp_path):
    assert resolve_run_options("tensorflow", jit_compile=True, deterministic=None) == (True, False)
    assert resolve_run_options("jax", jit_compile=None, deterministic=None) == (None, True)
    assert resolve_run_options("jax", jit_compile=True, deterministic=True) == (True, True)
    with pytest.raises(CxrDatasetError, match="jit_compile=True needs deterministic=False on TensorFlow.*MaxPool"):
        resolve_run_options("tensorflow", jit_compile=True, deterministic=True)
    from covid19_cxr_dataset.baseline import run_baseline

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(small_recipe_values()), encoding="utf-8")
    if current_backend() == "tensorflow":
        with pytest.raises(CxrDatasetError, match="jit_compile=True needs deterministic=False"):
            run_baseline(release, tmp_path / "out", recipe=recipe, jit_compile=True, deterministic=True, progress=False)
    with pytest.raises(CxrDatasetError, match="backend 'theano'"):
        run_baseline(release, tmp_path / "out", recipe=recipe, backend="theano", progress=False)
    assert not (tmp_path / "out").exists()


# --- whole runs on another backend (subprocesses) ---------------------------------------------------


def cli_run(release: Path, out: Path, recipe: Path, backend: str, *, block: tuple[str, ...] = (),
            extra: tuple[str, ...] = ()) -> dict:
    run_python(f"""
        import sys
        from covid19_cxr_dataset.cli import main
        sys.argv = ["cxr-dataset", "baseline", "--data", {str(release)!r}, "--out", {str(out)!r}, "--recipe",
                    {str(recipe)!r}, "--backend", {backend!r}, "--seed", "4", "--quiet", *{list(extra)!r}]
        try:
            main()
        except SystemExit as stop:
            assert stop.code in (0, None), stop.code
        if {"tensorflow" in block!r}:  # blocked: nothing on the way may have needed it
            assert sys.modules.get("tensorflow") is None
        """, block=block)
    return json.loads((out / "certificate.json").read_text(encoding="utf-8"))


def test_a_jax_run_end_to_end_never_imports_tensorflow(release, tmp_path):
    """`cxr-dataset baseline --backend jax` in a process where TensorFlow cannot be imported (a GPU
    machine with JAX and no TensorFlow) certifies the release and names its backend."""
    pytest.importorskip("jax")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(small_recipe_values()), encoding="utf-8")
    certificate = cli_run(release, tmp_path / "out", recipe, "jax", block=("tensorflow",))
    backend = certificate["backend"]
    assert backend["name"] == "jax" and backend["jit_compile"] is True and backend["determinism"]["enabled"] is True
    assert "--xla_gpu_deterministic_ops=true" in backend["determinism"]["xla_flags"]
    assert certificate["verdict"] == "no-reference" and certificate["metrics"]["n"] == 9
    assert [row["epoch"] for row in certificate["history"]] == [1, 2]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "jax", "tensorflow"])
def test_a_run_on_each_backend_learns_and_repeats_itself(tmp_path, backend):
    """The tiny recipe of test_baseline.py on a release whose class is its brightness, twice per backend
    through the CLI: it learns the class, and the same seed gives the same numbers."""
    pytest.importorskip(backend)
    from test_baseline import tiny_recipe_values, write_recipe

    release = make_release(tmp_path / "release", per_class={"train": 30, "test": 10}, size=(40, 40))
    values = tiny_recipe_values()
    values["reference"]["figures"] = {}
    recipe = write_recipe(tmp_path / "tiny.yaml", values)
    first, second = (cli_run(release, tmp_path / f"out{n}", recipe, backend) for n in range(2))
    assert first["backend"]["name"] == backend and first["backend"]["deterministic"] is True
    assert first["metrics"]["accuracy"] > 0.8
    assert first["metrics"] == second["metrics"]
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in first["history"]] == \
        [{k: v for k, v in row.items() if k != "seconds"} for row in second["history"]]
    assert set(CLASS_NAMES) == set(first["metrics"]["per_class"])
