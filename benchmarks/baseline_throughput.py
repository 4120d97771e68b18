"""Training and inference throughput of the baseline (paper recipe) on this machine, two input pipelines.

    python3 benchmarks/baseline_throughput.py [--images 300] [--size 1024] [--epochs 2]

Generates a release of ``--images`` synthetic radiograph-like grayscale JPEGs of ``--size`` pixels a
side (80% train, 20% test; tests/release_factory.py), then measures, for the paper's model:

- ``release``: the baseline's pipeline (covid19_cxr_dataset.baseline.data): read the parquet shards,
  decode and resize every image once into a uint8 cache, then per epoch gather + augment in a
  parallel tf.data map with prefetching;
- ``reference``: the reference code's pipeline: JPEG files in class folders, and per epoch
  ``list_files`` -> read + decode + augment + resize in a parallel map -> shuffle -> batch -> prefetch.

For each: the one-time decode cost (release only), the input pipeline alone (images/s it can feed,
no model), training images/s (mean over ``--epochs`` epochs after one warm-up epoch that traces the
step) and inference images/s (test split, after a warm-up pass). On a CPU the pipeline and the model
share the same cores, so the pipeline-alone figures say more about feeding a GPU than the training
figures do.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from covid19_cxr_dataset import CLASS_NAMES  # noqa: E402
from covid19_cxr_dataset.baseline.data import Pipelines, iter_image_rows, load_release  # noqa: E402
from covid19_cxr_dataset.baseline.model import build_model_from_recipe  # noqa: E402
from covid19_cxr_dataset.baseline.recipe import load_recipe, with_overrides  # noqa: E402
from covid19_cxr_dataset.baseline.train import compile_model, configure_devices, describe_hardware  # noqa: E402


def _release_factory():
    spec = importlib.util.spec_from_file_location("release_factory", REPO / "tests" / "release_factory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def radiograph_like(label: int, split: str, index: int, size: tuple[int, int]) -> np.ndarray:
    """Smooth chest-film-like image (two dark lung fields, bright mediastinum, mild grain): JPEGs of a
    realistic size, unlike pure noise."""
    width, height = size
    rng = np.random.default_rng([label, index, 0 if split == "train" else 1])
    yy, xx = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    image = 170 - 60 * np.exp(-(((xx - 0.32) / 0.14) ** 2 + ((yy - 0.5) / 0.28) ** 2))
    image -= 60 * np.exp(-(((xx - 0.68) / 0.14) ** 2 + ((yy - 0.5) / 0.28) ** 2))
    image += 25 * label * np.exp(-(((xx - 0.5 - rng.uniform(-0.2, 0.2)) / 0.1) ** 2 + ((yy - 0.55) / 0.1) ** 2))
    image += rng.normal(0, 4, (height, width))
    return np.clip(image, 0, 255).astype(np.uint8)


def timed_fit(model, datasets, class_weight) -> float:
    """Seconds to fit one epoch per dataset in ``datasets``."""
    started = time.perf_counter()
    for dataset in datasets:
        model.fit(dataset, epochs=1, class_weight=class_weight, shuffle=False, verbose=0)
    return time.perf_counter() - started


def input_rate(make_dataset, minimum_images: int = 3000) -> float:
    """Images/s the pipeline alone delivers: one warm-up pass (traces the map), then passes over
    fresh epochs until at least ``minimum_images`` images went through."""
    for _ in make_dataset(0):
        pass
    started, count, epoch = time.perf_counter(), 0, 1
    while count < minimum_images:
        for images, *_ in make_dataset(epoch):
            count += int(images.shape[0])
        epoch += 1
    return count / (time.perf_counter() - started)


def bench_release(release: Path, recipe, epochs: int) -> dict[str, float]:
    import keras

    started = time.perf_counter()
    arrays = load_release(release, recipe)
    decode = time.perf_counter() - started
    pipelines = Pipelines(arrays, recipe, seed=0)
    n_train, n_test = len(arrays["train"]), len(arrays["test"])
    pipeline_rate = input_rate(lambda epoch: pipelines.train_epoch(100 + epoch))
    model = compile_model(build_model_from_recipe(recipe), recipe)
    weights = recipe.class_weight_by_index()
    timed_fit(model, [pipelines.train_epoch(0)], weights)  # warm-up: traces the train step
    train_seconds = timed_fit(model, [pipelines.train_epoch(e) for e in range(1, epochs + 1)], weights)
    test = pipelines.test_batches(with_labels=False)
    model.predict(test, verbose=0)
    started = time.perf_counter()
    model.predict(test, verbose=0)
    infer_seconds = time.perf_counter() - started
    keras.backend.clear_session()
    return {"decode_once_s": decode, "decode_once_img_s": (n_train + n_test) / decode,
            "pipeline_img_s": pipeline_rate, "train_img_s": n_train * epochs / train_seconds,
            "infer_img_s": n_test / infer_seconds}


def write_jpeg_folders(release: Path, root: Path) -> None:
    """The release's images as <root>/<split>/<CLASS>/<name>.jpg, the reference code's layout."""
    folder_names = {"COVID-19": "COVID19", "Normal": "NORMAL", "Pneumonia": "PNEUMONIA"}
    for split in ("train", "test"):
        for index, (jpeg, label, _, _) in enumerate(iter_image_rows(release, split)):
            folder = root / split / folder_names[CLASS_NAMES[label]]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{index:05d}.jpg").write_bytes(jpeg)


def reference_datasets(root: Path, recipe, seed: int):
    """The reference code's tf.data pipeline (per-file read + decode + augment every epoch)."""
    import tensorflow as tf

    size = recipe["model"]["input_size"]
    resize = recipe["data"]["train_resize"]
    aug = recipe["augmentation"]
    batch = recipe["training"]["batch_size"]

    def load_image(path, train: bool):
        label = tf.where(tf.strings.regex_full_match(path, ".*COVID19.*"), 0,
                         tf.where(tf.strings.regex_full_match(path, ".*NORMAL.*"), 1, 2))
        image = tf.cast(tf.io.decode_jpeg(tf.io.read_file(path), channels=3), tf.float32) / 255.0
        if train:
            image = tf.image.random_flip_left_right(image)
            image = tf.image.random_brightness(image, aug["brightness_max_delta"])
            image = tf.image.random_contrast(image, *aug["contrast_range"])
            image = tf.image.random_saturation(image, *aug["saturation_range"])
            image = tf.image.resize(image, (resize, resize))
            image = tf.image.random_crop(image, (size, size, 3))
        image = tf.image.resize(image, (size, size))
        return image, tf.one_hot(label, len(CLASS_NAMES))

    train = (tf.data.Dataset.list_files(str(root / "train" / "*" / "*.jpg"), seed=seed)
             .map(lambda p: load_image(p, True), num_parallel_calls=tf.data.AUTOTUNE)
             .shuffle(1280, seed=seed).batch(batch).prefetch(tf.data.AUTOTUNE))
    test = (tf.data.Dataset.list_files(str(root / "test" / "*" / "*.jpg"), shuffle=False)
            .map(lambda p: load_image(p, False)[0], num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch).prefetch(tf.data.AUTOTUNE))
    return train, test


def bench_reference(release: Path, root: Path, recipe, epochs: int) -> dict[str, float]:
    import keras

    write_jpeg_folders(release, root)
    train, test = reference_datasets(root, recipe, seed=0)
    n_train = sum(1 for _ in (root / "train").glob("*/*.jpg"))
    n_test = sum(1 for _ in (root / "test").glob("*/*.jpg"))
    pipeline_rate = input_rate(lambda epoch: train)
    model = compile_model(build_model_from_recipe(recipe), recipe)
    weights = recipe.class_weight_by_index()
    timed_fit(model, [train], weights)
    train_seconds = timed_fit(model, [train] * epochs, weights)
    model.predict(test, verbose=0)
    started = time.perf_counter()
    model.predict(test, verbose=0)
    infer_seconds = time.perf_counter() - started
    keras.backend.clear_session()
    return {"pipeline_img_s": pipeline_rate, "train_img_s": n_train * epochs / train_seconds,
            "infer_img_s": n_test / infer_seconds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300, help="images in the generated release (default 300)")
    parser.add_argument("--size", type=int, default=1024, help="side of each generated JPEG in pixels (default 1024)")
    parser.add_argument("--epochs", type=int, default=2, help="timed training epochs after the warm-up (default 2)")
    parser.add_argument("--recipe", default="paper", help="recipe name or path (default paper)")
    parser.add_argument("--batch-size", type=int, default=None, help="override the recipe's batch size")
    args = parser.parse_args(argv)

    import tensorflow as tf

    configure_devices()
    tf.keras.utils.set_random_seed(0)
    recipe = with_overrides(load_recipe(args.recipe), batch_size=args.batch_size)
    per_class_train = max(1, round(args.images * 0.8 / 3))
    per_class_test = max(1, round(args.images * 0.2 / 3))
    hardware = describe_hardware()
    with tempfile.TemporaryDirectory(prefix="baseline-bench-") as temp:
        started = time.perf_counter()
        release = _release_factory().make_release(
            Path(temp) / "release", per_class={"train": per_class_train, "test": per_class_test},
            size=(args.size, args.size), image_fn=radiograph_like)
        generated = time.perf_counter() - started
        shard_bytes = sum(p.stat().st_size for p in (release / "data").glob("*.parquet"))
        mean_kb = shard_bytes / 1024 / (3 * (per_class_train + per_class_test))
        print(f"device: {hardware['name']} ({hardware['device']}, {hardware['cpu_count']} CPU cores), "
              f"TensorFlow {hardware['tensorflow']}")
        print(f"release: {3 * per_class_train} train + {3 * per_class_test} test images, {args.size}x{args.size} "
              f"JPEG (~{mean_kb:.0f} KB each), generated in {generated:.1f} s; recipe {recipe.name}, "
              f"batch {recipe['training']['batch_size']}, {args.epochs} timed epochs after 1 warm-up")
        ours = bench_release(release, recipe, args.epochs)
        reference = bench_reference(release, Path(temp) / "jpeg", recipe, args.epochs)

    print(f"\n{'pipeline':<34}{'input only':>14}{'train':>12}{'inference':>12}   (images/s)")
    print(f"{'release (decode once, cached)':<34}{ours['pipeline_img_s']:>14.1f}{ours['train_img_s']:>12.1f}"
          f"{ours['infer_img_s']:>12.1f}")
    print(f"{'reference (per-file JPEG decode)':<34}{reference['pipeline_img_s']:>14.1f}"
          f"{reference['train_img_s']:>12.1f}{reference['infer_img_s']:>12.1f}")
    print(f"\nrelease pipeline one-time decode: {ours['decode_once_s']:.1f} s "
          f"({ours['decode_once_img_s']:.1f} images/s), paid once per run instead of every epoch")


if __name__ == "__main__":
    main()
