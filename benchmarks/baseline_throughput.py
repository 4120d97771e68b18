"""Training throughput of the baseline (paper recipe), side by side: our input paths, the reference
code's, and the model alone.

    python3 benchmarks/baseline_throughput.py [--images 300] [--size 1024] [--epochs 2]
        [--release DIR] [--jit-compile] [--mixed-precision] [--paths resident,reference,model,cached]
        [--json results.json]

Uses the release in ``--release``, or generates one of ``--images`` synthetic radiograph-like
grayscale JPEGs of ``--size`` pixels a side in the real release's class proportions
(benchmarks/synthetic_release.py). Then, for the paper's model, on the device TensorFlow picks
(the GPU when there is one), measures training images/s:

- (a) ``resident``: this package's GPU path (``data.ResidentPipelines`` + ``train.ResidentTrainer``):
  the decoded training split kept on the device, each batch gathered and augmented there inside
  the train step; the host sends indices only;
- (b) ``reference``: the reference code's pipeline: JPEG files in class folders, and per epoch
  ``list_files`` -> read + decode + augment + resize in a parallel map -> shuffle -> batch ->
  prefetch, fed to ``model.fit``;
- (c) ``model``: the ceiling: the same train step on synthetic tensors already on the device (no
  input pipeline, no augmentation);
- ``cached``: this package's CPU path (``data.Pipelines``): decoded once into host memory, then per
  epoch gather + augment in a tf.data map, fed to ``model.fit``.

Each figure is the mean over ``--epochs`` timed epochs after one warm-up epoch (which traces and,
with ``--jit-compile``, XLA-compiles the step); "s/epoch" scales it to the real release's 5,614
training images. "input only" is what the input path alone delivers (no model). The targets of
issue 17 are printed against the figures: (a) >= 0.8 x (c), and one epoch of 5,614 images <= 1 s.
On a CPU the pipeline and the model share the same cores and the figures are CPU figures, labelled so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from covid19_cxr_dataset import CLASS_NAMES  # noqa: E402
from covid19_cxr_dataset.baseline.data import (  # noqa: E402
    Pipelines, ResidentPipelines, iter_image_rows, load_release, make_augment)
from covid19_cxr_dataset.baseline.model import build_model_from_recipe  # noqa: E402
from covid19_cxr_dataset.baseline.recipe import load_recipe, with_overrides  # noqa: E402
from covid19_cxr_dataset.baseline.train import (  # noqa: E402
    ResidentTrainer, compile_model, configure_devices, describe_hardware, mixed_precision_policy)
from synthetic_release import write_synthetic_release  # noqa: E402

REAL_TRAIN_IMAGES = 5614
PATHS = ("resident", "reference", "model", "cached")


def new_model(recipe, policy, jit_compile):
    import keras

    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    return compile_model(build_model_from_recipe(recipe, dtype_policy=policy), recipe, dtype_policy=policy,
                         jit_compile=jit_compile)


def timed_fit(model, datasets, class_weight) -> float:
    """Seconds to fit one epoch per dataset in ``datasets``."""
    started = time.perf_counter()
    for dataset in datasets:
        model.fit(dataset, epochs=1, class_weight=class_weight, shuffle=False, verbose=0)
    return time.perf_counter() - started


def input_rate(make_batches, epochs: int) -> float:
    """Images/s the input path alone delivers: one warm-up pass (traces), then ``epochs`` timed passes."""
    for _ in make_batches(0):
        pass
    started, count = time.perf_counter(), 0
    for epoch in range(1, epochs + 1):
        last = None
        for images, *_ in make_batches(epoch):
            count += int(images.shape[0])
            last = images
        if last is not None:
            last.numpy()  # wait for the device
    return count / (time.perf_counter() - started)


def bench_resident(arrays, recipe, epochs, policy, jit_compile) -> dict[str, float]:
    pipelines = ResidentPipelines(arrays, recipe, seed=0)
    pipeline_rate = input_rate(pipelines.train_epoch, epochs)
    model = new_model(recipe, policy, None)
    trainer = ResidentTrainer(model, pipelines, recipe, jit_compile=jit_compile)
    started = time.perf_counter()
    trainer.fit_epoch(0)  # warm-up: traces (and compiles) the step
    warmup = time.perf_counter() - started
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        trainer.fit_epoch(epoch)
    seconds = time.perf_counter() - started
    return {"input_img_s": pipeline_rate, "train_img_s": len(arrays["train"]) * epochs / seconds,
            "warmup_epoch_s": warmup, "device": pipelines.placed_on, "storage_dtype": pipelines.storage_dtype}


def bench_model_alone(recipe, n_train, epochs, policy, jit_compile) -> dict[str, float]:
    """The train step on one batch of random images already on the device, as many steps as an epoch."""
    import tensorflow as tf

    model = new_model(recipe, policy, None)
    size, batch = recipe["model"]["input_size"], recipe["training"]["batch_size"]
    device = "/GPU:0" if tf.config.list_physical_devices("GPU") else "/CPU:0"
    rng = np.random.default_rng(0)
    with tf.device(device):
        images = tf.constant(rng.random((batch, size, size, 3), dtype=np.float32))
        onehot = tf.one_hot(tf.constant(rng.integers(0, len(CLASS_NAMES), batch)), len(CLASS_NAMES))
        weights = tf.ones([batch])
    step = tf.function(lambda: model.train_step((images, onehot, weights)), jit_compile=jit_compile, autograph=False)
    steps = -(-n_train // batch)

    def run_epoch():
        for _ in range(steps):
            logs = step()
        float(logs["loss"])  # wait for the device

    started = time.perf_counter()
    run_epoch()
    warmup = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(epochs):
        run_epoch()
    return {"train_img_s": steps * batch * epochs / (time.perf_counter() - started), "warmup_epoch_s": warmup}


def bench_cached(arrays, recipe, epochs, policy, jit_compile) -> dict[str, float]:
    pipelines = Pipelines(arrays, recipe, seed=0)
    pipeline_rate = input_rate(lambda epoch: pipelines.train_epoch(100 + epoch), epochs)
    model = new_model(recipe, policy, jit_compile or None)
    weights = recipe.class_weight_by_index()
    warmup = timed_fit(model, [pipelines.train_epoch(0)], weights)
    seconds = timed_fit(model, [pipelines.train_epoch(e) for e in range(1, epochs + 1)], weights)
    return {"input_img_s": pipeline_rate, "train_img_s": len(arrays["train"]) * epochs / seconds,
            "warmup_epoch_s": warmup, "keras_jit_compile": bool(model.jit_compile)}


def write_jpeg_folders(release: Path, root: Path) -> None:
    """The release's images as <root>/<split>/<CLASS>/<name>.jpg, the reference code's layout."""
    folder_names = {"COVID-19": "COVID19", "Normal": "NORMAL", "Pneumonia": "PNEUMONIA"}
    for split in ("train", "test"):
        for index, (jpeg, label, _, _) in enumerate(iter_image_rows(release, split)):
            folder = root / split / folder_names[CLASS_NAMES[label]]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{index:05d}.jpg").write_bytes(jpeg)


def reference_dataset(root: Path, recipe, seed: int):
    """The reference code's training pipeline (per-file read + decode + augment every epoch)."""
    import tensorflow as tf

    size = recipe["model"]["input_size"]
    resize = recipe["data"]["train_resize"]
    aug = recipe["augmentation"]
    batch = recipe["training"]["batch_size"]

    def load_image(path):
        label = tf.where(tf.strings.regex_full_match(path, ".*COVID19.*"), 0,
                         tf.where(tf.strings.regex_full_match(path, ".*NORMAL.*"), 1, 2))
        image = tf.cast(tf.io.decode_jpeg(tf.io.read_file(path), channels=3), tf.float32) / 255.0
        image = tf.image.random_flip_left_right(image)
        image = tf.image.random_brightness(image, aug["brightness_max_delta"])
        image = tf.image.random_contrast(image, *aug["contrast_range"])
        image = tf.image.random_saturation(image, *aug["saturation_range"])
        image = tf.image.resize(image, (resize, resize))
        image = tf.image.random_crop(image, (size, size, 3))
        return image, tf.one_hot(label, len(CLASS_NAMES))

    return (tf.data.Dataset.list_files(str(root / "train" / "*" / "*.jpg"), seed=seed)
            .map(load_image, num_parallel_calls=tf.data.AUTOTUNE)
            .shuffle(1280, seed=seed).batch(batch).prefetch(tf.data.AUTOTUNE))


def bench_reference(release: Path, root: Path, recipe, epochs, policy, jit_compile) -> dict[str, float]:
    write_jpeg_folders(release, root)
    train = reference_dataset(root, recipe, seed=0)
    n_train = sum(1 for _ in (root / "train").glob("*/*.jpg"))
    pipeline_rate = input_rate(lambda epoch: train, epochs)
    model = new_model(recipe, policy, jit_compile or None)
    weights = recipe.class_weight_by_index()
    warmup = timed_fit(model, [train], weights)
    seconds = timed_fit(model, [train] * epochs, weights)
    return {"input_img_s": pipeline_rate, "train_img_s": n_train * epochs / seconds, "warmup_epoch_s": warmup,
            "keras_jit_compile": bool(model.jit_compile)}


def augmentation_agreement(recipe) -> dict[str, float]:
    """Max |difference| between one augmented batch computed on the host CPU, on the training device,
    and under XLA on that device (same seed). 0.0: bitwise equal."""
    import tensorflow as tf

    resize = recipe["data"]["train_resize"]
    images = np.random.default_rng(1).integers(0, 256, (recipe["training"]["batch_size"], resize, resize, 1),
                                               dtype=np.uint8)
    augment = make_augment(recipe, channels=1)
    seed = tf.constant([7, 11], tf.int64)
    with tf.device("/CPU:0"):
        host = augment(tf.constant(images), seed).numpy()
    device = "/GPU:0" if tf.config.list_physical_devices("GPU") else "/CPU:0"
    with tf.device(device):
        stored = tf.constant(images.astype("float16" if "GPU" in device else "uint8"))
        plain = tf.function(augment, autograph=False)(stored, seed).numpy()
        xla = tf.function(augment, jit_compile=True, autograph=False)(stored, seed).numpy()
    return {"device_vs_host": float(np.abs(plain - host).max()), "xla_vs_host": float(np.abs(xla - host).max())}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--release", type=Path, help="a release folder to read (default: generate one)")
    parser.add_argument("--images", type=int, default=300, help="images in the generated release (default 300)")
    parser.add_argument("--size", type=int, default=1024, help="side of each generated JPEG in pixels (default 1024)")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after the warm-up (default 2)")
    parser.add_argument("--recipe", default="paper", help="recipe name or path (default paper)")
    parser.add_argument("--batch-size", type=int, default=None, help="override the recipe's batch size")
    parser.add_argument("--image-size", type=int, default=None, help="override the recipe's input size")
    parser.add_argument("--jit-compile", action="store_true", help="XLA for every path's train step")
    parser.add_argument("--mixed-precision", action="store_true", help="mixed float16 (bfloat16 on a CPU)")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"which to measure (default {','.join(PATHS)})")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = sorted(set(paths) - set(PATHS))
    if unknown:
        parser.error(f"unknown --paths {unknown}; choose from {', '.join(PATHS)}")

    configure_devices()
    recipe = with_overrides(load_recipe(args.recipe), batch_size=args.batch_size, image_size=args.image_size)
    policy = mixed_precision_policy(args.mixed_precision)
    hardware = describe_hardware(policy)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="baseline-bench-") as temp:
        release = args.release
        if release is None:
            started = time.perf_counter()
            release = Path(temp) / "release"
            write_synthetic_release(release, images=args.images, size=args.size)
            print(f"generated {release} in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        arrays = load_release(release, recipe)
        decode = time.perf_counter() - started
        n_train, n_test = len(arrays["train"]), len(arrays["test"])
        label = "GPU" if hardware["device"] == "GPU" else "CPU (these are CPU figures, not GPU ones)"
        print(f"device: {hardware['name']} [{label}], {hardware['cpu_count']} CPU cores, TensorFlow "
              f"{hardware['tensorflow']}; dtype {hardware['dtype_policy']}, jit_compile {args.jit_compile}")
        print(f"release: {release} ({n_train} train + {n_test} test images), decoded once in {decode:.1f} s; "
              f"recipe {recipe.name}, batch {recipe['training']['batch_size']}, input {recipe['model']['input_size']}, "
              f"{args.epochs} timed epochs after 1 warm-up")
        for path in paths:
            started = time.perf_counter()
            if path == "resident":
                results[path] = bench_resident(arrays, recipe, args.epochs, policy, args.jit_compile)
            elif path == "model":
                results[path] = bench_model_alone(recipe, n_train, args.epochs, policy, args.jit_compile)
            elif path == "cached":
                results[path] = bench_cached(arrays, recipe, args.epochs, policy, args.jit_compile)
            else:
                results[path] = bench_reference(release, Path(temp) / "jpeg", recipe, args.epochs, policy,
                                                args.jit_compile)
            print(f"  measured {path} in {time.perf_counter() - started:.1f} s", flush=True)
    agreement = augmentation_agreement(recipe)

    titles = {"resident": "(a) resident (on-device augment)", "reference": "(b) reference (per-file decode)",
              "model": "(c) model alone (ceiling)", "cached": "    cached (host tf.data)"}
    print(f"\n{'path':<36}{'input only':>12}{'train':>10}{'s/epoch':>10}{'warm-up s':>11}   "
          f"(images/s; s/epoch for {REAL_TRAIN_IMAGES:,} images; {label.split(' ')[0]})")
    for path in paths:
        row = results[path]
        row["epoch_s_real_size"] = REAL_TRAIN_IMAGES / row["train_img_s"]
        feed = f"{row['input_img_s']:>12.1f}" if "input_img_s" in row else f"{'-':>12}"
        print(f"{titles[path]:<36}{feed}{row['train_img_s']:>10.1f}{row['epoch_s_real_size']:>10.2f}"
              f"{row['warmup_epoch_s']:>11.1f}")
    if "resident" in results and "model" in results:
        ratio = results["resident"]["train_img_s"] / results["model"]["train_img_s"]
        epoch = results["resident"]["epoch_s_real_size"]
        print(f"\ntarget (a) >= 0.8 x (c): {ratio:.2f} x -> {'met' if ratio >= 0.8 else 'not met'}")
        print(f"target one epoch of {REAL_TRAIN_IMAGES:,} images <= 1 s: {epoch:.2f} s -> "
              f"{'met' if epoch <= 1 else 'not met'}")
    print(f"augmentation, one batch, max |difference|: device vs host CPU {agreement['device_vs_host']:.3g}, "
          f"XLA vs host CPU {agreement['xla_vs_host']:.3g}")
    if args.json:
        args.json.write_text(json.dumps({
            "hardware": hardware, "recipe": recipe.name, "batch_size": recipe["training"]["batch_size"],
            "jit_compile": args.jit_compile, "dtype_policy": policy or "float32", "epochs_timed": args.epochs,
            "release": {"path": str(release), "train": n_train, "test": n_test, "decode_once_s": decode},
            "results": results, "augmentation_agreement": agreement,
        }, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
