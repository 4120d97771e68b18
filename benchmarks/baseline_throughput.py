"""Training throughput of the baseline, side by side for every installed Keras backend.

    python3 benchmarks/baseline_throughput.py [--backends tensorflow,jax,torch] [--images 300] [--size 1024]
        [--epochs 2] [--release DIR] [--recipe paper] [--batch-size N] [--image-size N]
        [--jit-compile] [--mixed-precision] [--json results.json]

Uses the release in ``--release``, or generates one of ``--images`` synthetic radiograph-like
grayscale JPEGs of ``--size`` pixels a side in the real release's class proportions
(benchmarks/synthetic_release.py), decodes it once (numpy, no framework), then measures each
backend in its own process (Keras loads one backend per process), on the device that backend
picks (the GPU when there is one):

- ``train step``: what a certificate's training runs: ``model.fit`` over one epoch of host batches
  (``data.TrainingBatches`` as a ``keras.utils.PyDataset``: uint8 images and augmentation
  parameters), augmentation applied inside the compiled step (``model.TrainingModel``);
- ``model alone``: the ceiling: ``train_on_batch`` of the bare DCNN on one batch of random float
  images already on the device, as many steps as an epoch (no input, no augmentation);
- ``host batches``: what the numpy side alone delivers (gathering rows and drawing the augmentation
  parameters), the same for every backend.

Each figure is the mean over ``--epochs`` timed epochs after one warm-up epoch (which traces and
compiles the step); "s/epoch" scales it to the real release's 5,614 training images. On a CPU the
figures are CPU figures, and labelled so. Runs use the certificate's settings: deterministic
kernels on, the backend's own choice of compilation (``--jit-compile`` asks for it everywhere).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from covid19_cxr_dataset.baseline._backend import BACKENDS, installed_backends  # noqa: E402
from covid19_cxr_dataset.baseline.data import SplitArrays, TrainingBatches, load_release  # noqa: E402
from covid19_cxr_dataset.baseline.recipe import load_recipe, with_overrides  # noqa: E402

REAL_TRAIN_IMAGES = 5614


def host_batch_rate(arrays: SplitArrays, recipe, epochs: int) -> float:
    """Images/s of the numpy batches alone (rows gathered, parameters drawn)."""
    started, count = time.perf_counter(), 0
    for epoch in range(epochs):
        batches = TrainingBatches(arrays, recipe, seed=0, epoch=epoch)
        for index in range(len(batches)):
            count += len(batches[index][1])
    return count / (time.perf_counter() - started)


# --- one backend, in its own process ------------------------------------------------------------------


def measure_backend(arrays_path: Path, recipe, epochs: int, *, jit_compile: bool, mixed_precision: bool) -> dict:
    """Train-step and model-alone images/s on this process's backend (KERAS_BACKEND, set by the caller)."""
    from covid19_cxr_dataset.baseline._backend import (
        apply_determinism, configure_devices, describe_backend, float32_matmul_precision, import_keras)
    from covid19_cxr_dataset.baseline.model import build_model_from_recipe, build_training_model
    from covid19_cxr_dataset.baseline.train import as_py_dataset, compile_model, mixed_precision_policy

    keras = import_keras()
    configure_devices()
    backend = describe_backend()
    deterministic = not (jit_compile and backend["name"] == "tensorflow")
    apply_determinism(0, deterministic=deterministic, on_gpu=backend["device"] == "GPU")
    policy = mixed_precision_policy(mixed_precision)
    jit = True if jit_compile else None
    with np.load(arrays_path) as saved:
        train = SplitArrays("train", saved["images"], saved["labels"], (), ())

    model = compile_model(build_training_model(build_model_from_recipe(recipe, dtype_policy=policy), recipe), recipe,
                          dtype_policy=policy, jit_compile=jit)

    def fit_epoch(epoch: int) -> None:
        model.fit(as_py_dataset(TrainingBatches(train, recipe, seed=0, epoch=epoch)), epochs=1, shuffle=False,
                  verbose=0)

    started = time.perf_counter()
    fit_epoch(0)  # warm-up: traces and compiles the step (and the last, smaller batch's)
    warmup = time.perf_counter() - started
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        fit_epoch(epoch)
    train_rate = len(train) * epochs / (time.perf_counter() - started)
    compiled = bool(model.jit_compile)
    del model
    keras.backend.clear_session()

    network = compile_model(build_model_from_recipe(recipe, dtype_policy=policy), recipe, dtype_policy=policy,
                            jit_compile=jit)
    size, batch = recipe["model"]["input_size"], recipe["training"]["batch_size"]
    rng = np.random.default_rng(0)
    images = keras.ops.convert_to_tensor(rng.random((batch, size, size, 3), dtype=np.float32))
    onehot = keras.ops.convert_to_tensor(np.eye(3, dtype=np.float32)[rng.integers(0, 3, batch)])
    steps = -(-len(train) // batch)

    def run_epoch() -> None:
        for _ in range(steps):
            logs = network.train_on_batch(images, onehot, return_dict=True)
        float(logs["loss"])  # wait for the device

    started = time.perf_counter()
    run_epoch()
    model_warmup = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(epochs):
        run_epoch()
    model_rate = steps * batch * epochs / (time.perf_counter() - started)
    return {**backend, "jit_compile": compiled, "deterministic": deterministic, "dtype_policy": policy or "float32",
            "float32_matmul": float32_matmul_precision(), "train_img_s": train_rate, "model_img_s": model_rate,
            "warmup_epoch_s": warmup, "model_warmup_epoch_s": model_warmup}


def run_worker(backend: str, arrays_path: Path, args: argparse.Namespace, out: Path) -> dict:
    """``measure_backend`` in a new process with KERAS_BACKEND=backend; its figures, or its error."""
    command = [sys.executable, __file__, "--worker", backend, "--arrays", str(arrays_path), "--recipe", args.recipe,
               "--epochs", str(args.epochs), "--json", str(out)]
    for flag, value in (("--batch-size", args.batch_size), ("--image-size", args.image_size)):
        if value is not None:
            command += [flag, str(value)]
    command += ["--jit-compile"] * args.jit_compile + ["--mixed-precision"] * args.mixed_precision
    environment = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(command, env=environment, capture_output=True, text=True)
    if result.returncode != 0 or not out.is_file():
        return {"name": backend, "error": (result.stderr or result.stdout).strip().splitlines()[-1:] or ["failed"]}
    return json.loads(out.read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--release", type=Path, help="a release folder to read (default: generate one)")
    parser.add_argument("--images", type=int, default=300, help="images in the generated release (default 300)")
    parser.add_argument("--size", type=int, default=1024, help="side of each generated JPEG in pixels (default 1024)")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after the warm-up (default 2)")
    parser.add_argument("--backends", default=None,
                        help=f"comma-separated, from {', '.join(BACKENDS)} (default: every installed one)")
    parser.add_argument("--recipe", default="paper", help="recipe name or path (default paper)")
    parser.add_argument("--batch-size", type=int, default=None, help="override the recipe's batch size")
    parser.add_argument("--image-size", type=int, default=None, help="override the recipe's input size")
    parser.add_argument("--jit-compile", action="store_true", help="ask every backend to compile the step")
    parser.add_argument("--mixed-precision", action="store_true", help="mixed float16 (bfloat16 on a CPU)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--worker", choices=BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument("--arrays", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    recipe = with_overrides(load_recipe(args.recipe), batch_size=args.batch_size, image_size=args.image_size)
    if args.worker:
        figures = measure_backend(args.arrays, recipe, args.epochs, jit_compile=args.jit_compile,
                                  mixed_precision=args.mixed_precision)
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
        return

    backends = [b.strip() for b in args.backends.split(",")] if args.backends else installed_backends()
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown or not backends:
        parser.error(f"--backends {args.backends!r}: choose from {', '.join(BACKENDS)} (installed here: "
                     f"{', '.join(installed_backends()) or 'none'})")
    with tempfile.TemporaryDirectory(prefix="baseline-bench-") as temp:
        release = args.release
        if release is None:
            from synthetic_release import write_synthetic_release

            started = time.perf_counter()
            release = Path(temp) / "release"
            write_synthetic_release(release, images=args.images, size=args.size)
            print(f"generated {release} in {time.perf_counter() - started:.1f} s", flush=True)
        started = time.perf_counter()
        arrays = load_release(release, recipe)
        decode = time.perf_counter() - started
        train = arrays["train"]
        arrays_path = Path(temp) / "train.npz"
        np.savez(arrays_path, images=train.images, labels=train.labels)
        host_rate = host_batch_rate(train, recipe, max(args.epochs, 1))
        print(f"release: {release} ({len(train)} train + {len(arrays['test'])} test images), decoded once on the "
              f"host in {decode:.1f} s; recipe {recipe.name}, batch {recipe['training']['batch_size']}, input "
              f"{recipe['model']['input_size']}; {args.epochs} timed epochs after 1 warm-up; {os.cpu_count()} CPU cores",
              flush=True)
        results = {}
        for backend in backends:
            started = time.perf_counter()
            results[backend] = run_worker(backend, arrays_path, args, Path(temp) / f"{backend}.json")
            print(f"  measured {backend} in {time.perf_counter() - started:.1f} s", flush=True)

    print(f"\n{'backend':<12}{'version':<14}{'device':<26}{'compiled':>9}{'train step':>12}{'model alone':>13}"
          f"{'ratio':>7}{'s/epoch':>9}{'warm-up s':>11}")
    for backend, row in results.items():
        if "error" in row:
            print(f"{backend:<12}failed: {row['error'][0][:100]}")
            continue
        device = row["device"] + (f" {row['device_name']}" if row.get("device_name") else " (CPU figures)")
        row["epoch_s_real_size"] = REAL_TRAIN_IMAGES / row["train_img_s"]
        print(f"{backend:<12}{row['version'][:13]:<14}{device[:25]:<26}{'yes' if row['jit_compile'] else 'no':>9}"
              f"{row['train_img_s']:>12.1f}{row['model_img_s']:>13.1f}{row['train_img_s'] / row['model_img_s']:>7.2f}"
              f"{row['epoch_s_real_size']:>9.1f}{row['warmup_epoch_s']:>11.1f}")
    print(f"(images/s; s/epoch for {REAL_TRAIN_IMAGES:,} training images; host batches alone: "
          f"{host_rate:,.0f} images/s on any backend)")
    if args.json:
        args.json.write_text(json.dumps({
            "recipe": recipe.name, "batch_size": recipe["training"]["batch_size"], "epochs_timed": args.epochs,
            "jit_compile_asked": args.jit_compile, "mixed_precision": args.mixed_precision,
            "release": {"path": str(release), "train": len(train), "test": len(arrays["test"]), "decode_once_s": decode},
            "host_batches_img_s": host_rate, "results": results,
        }, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
