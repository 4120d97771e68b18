"""Read a release for training: verify it, decode every image once, feed tf.data from memory.

The release is ~6k grayscale JPEGs of up to a few thousand pixels a side. Decoding and resizing them
dominates any per-epoch pipeline, so it happens once: the shards are read one row group at a time
(pyarrow), decoded and resized in a parallel tf.data map, and kept as uint8 arrays (train at
``data.train_resize``, test at ``model.input_size``; one channel for gray images, so 6k x 96 x 96
bytes is ~55 MB). Each epoch then only gathers, augments and batches in memory, a batch at a time
in parallel maps with prefetching, and repeats the gray channel to the model's three: a few CPU
cores keep a GPU fed.

Augmentation is done per batch (each image its own draws) with stateless random ops seeded by
``(seed, epoch * batches_per_epoch + batch)``, and each epoch's order comes from
``numpy.random.default_rng([seed, epoch])``: the same seed gives the same batches whatever the
number of parallel calls or threads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow.parquet as pq

from .. import CLASS_NAMES
from ..errors import VerificationError
from ..publish import SPLITS, shard_paths
from ..report import REPORT_NAME, fingerprint, read_report
from ._backend import import_tensorflow

DECODE_BATCH = 64


@dataclass(frozen=True)
class SplitArrays:
    """One split decoded once: images (n, size, size, channels) uint8, labels (n,) int64, row identity.

    ``channels`` is 1 when every image of the split is gray (the release's images are), else 3; the
    pipelines repeat a gray channel to the model's 3 at the end, so augmentation does a third of the work.
    """

    split: str
    images: np.ndarray
    labels: np.ndarray
    sources: tuple[str, ...]
    source_paths: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def counts(self) -> dict[str, int]:
        return {name: int((self.labels == index).sum()) for index, name in enumerate(CLASS_NAMES)}


# --- the release ---------------------------------------------------------------------------------


def read_release_report(data_dir: Path) -> dict[str, Any]:
    path = Path(data_dir) / REPORT_NAME
    if not path.is_file():
        raise VerificationError(f"{path}: not found; expected a release folder written by `cxr-dataset build`")
    report = read_report(data_dir)
    for key in ("fingerprint", "counts"):
        if key not in report:
            raise VerificationError(f"{path}: no '{key}' key; the release's build report is incomplete, rebuild it")
    return report


def verify_fingerprint(data_dir: Path, report: dict[str, Any], *, workers: int | None = None) -> str:
    """Recompute the release's fingerprint and refuse it if it differs from its build report."""
    actual = fingerprint(data_dir, workers=workers or os.cpu_count() or 1)
    expected = report["fingerprint"]
    if actual != expected:
        raise VerificationError(
            f"{Path(data_dir) / REPORT_NAME}: fingerprint {expected}, but the shards in "
            f"{Path(data_dir) / 'data'} give {actual}; images or labels changed after the build. "
            "Rebuild the release or fetch it again (or pass verify_fingerprint=False to train on it anyway)"
        )
    return actual


def verify_counts(data_dir: Path, report: dict[str, Any], arrays: dict[str, SplitArrays]) -> None:
    """The decoded splits must hold the counts the build report states (cheap; no fingerprint needed)."""
    for split, split_arrays in arrays.items():
        expected = {name: int(n) for name, n in report["counts"].get(split, {}).items()}
        actual = split_arrays.counts()
        if {k: v for k, v in expected.items() if v} != {k: v for k, v in actual.items() if v}:
            raise VerificationError(
                f"{Path(data_dir) / REPORT_NAME}: {split} counts {expected}, but the shards hold {actual}; "
                "rebuild the release or fetch it again"
            )


def iter_image_rows(
    data_dir: Path, split: str, shards: list[Path] | None = None
) -> Iterator[tuple[bytes, int, str, str]]:
    """(jpeg bytes, label, source, source_path) of a split, one parquet row group in memory at a time.

    ``shards``: the split's shard files of one configuration (``release_config``); default: all of them.
    """
    paths = shard_paths(Path(data_dir) / "data", split) if shards is None else shards
    if not paths:
        raise VerificationError(f"{Path(data_dir) / 'data'}: no {split}-*.parquet shards; is this a release folder?")
    for path in paths:
        parquet = pq.ParquetFile(path)
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group, columns=["image", "label", "source", "source_path"])
            images = table.column("image").combine_chunks()
            image_bytes = images.field("bytes").to_pylist()
            labels = table.column("label").to_pylist()
            sources = table.column("source").to_pylist()
            source_paths = table.column("source_path").to_pylist()
            yield from zip(image_bytes, labels, sources, source_paths)


def decode_split(
    data_dir: Path, split: str, *, size: int, method: str = "bilinear", antialias: bool = False,
    shards: list[Path] | None = None,
) -> SplitArrays:
    """Decode every image of ``split`` once into (n, size, size, 1) uint8, or (..., 3) if any is in color.

    The resize is ``tf.image.resize`` on the decoded image, as the reference code does it (bilinear,
    no antialiasing, aspect ratio not kept); the result is rounded to uint8 for the cache.
    """
    tf = import_tensorflow()
    labels: list[int] = []
    sources: list[str] = []
    source_paths: list[str] = []

    def image_bytes() -> Iterator[bytes]:
        for jpeg, label, source, source_path in iter_image_rows(data_dir, split, shards):
            labels.append(int(label))
            sources.append(source)
            source_paths.append(source_path)
            yield jpeg

    def decode(jpeg: Any) -> Any:
        image = tf.io.decode_image(jpeg, channels=3, expand_animations=False)  # gray -> 3 equal channels
        image = tf.image.resize(image, (size, size), method=method, antialias=antialias)
        return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)

    dataset = (
        tf.data.Dataset.from_generator(image_bytes, output_signature=tf.TensorSpec((), tf.string))
        .map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(DECODE_BATCH)
        .prefetch(2)
    )
    batches = [batch.numpy() for batch in dataset]
    images = np.concatenate(batches) if batches else np.zeros((0, size, size, 3), np.uint8)
    if np.array_equal(images[..., 0], images[..., 1]) and np.array_equal(images[..., 0], images[..., 2]):
        images = np.ascontiguousarray(images[..., :1])
    return SplitArrays(split, images, np.asarray(labels, np.int64), tuple(sources), tuple(source_paths))


def load_release(data_dir: Path, recipe: Any, *, shards: dict[str, list[Path]] | None = None) -> dict[str, SplitArrays]:
    """Both splits decoded: train at ``data.train_resize`` (for the random crop), test at the model input.

    ``shards``: {split: shard files} of one configuration; default: every shard of the release.
    """
    data = recipe["data"]
    sizes = {"train": data["train_resize"], "test": recipe["model"]["input_size"]}
    method, antialias = data["resize_method"], data["antialias"]
    return {split: decode_split(data_dir, split, size=sizes[split], method=method, antialias=antialias,
                                shards=None if shards is None else shards[split])
            for split in SPLITS}


# --- tf.data pipelines ---------------------------------------------------------------------------


def make_augment(recipe: Any, *, channels: int = 3) -> Callable[[Any, Any], Any]:
    """The training augmentation of one batch: (uint8 images at train_resize, seed) -> float32 RGB crops.

    Each image gets its own draws, as with the reference code's per-image ``tf.image.random_*``
    ops, from the same distributions, in the paper's order: horizontal flip, brightness delta,
    contrast factor (around each image's per-channel mean), saturation factor, then a random crop
    to ``model.input_size``. Done on whole batches, it costs a few vectorized ops per batch instead
    of a dozen small ops per image, so a few CPU cores feed a GPU. Like the reference code, values
    are not clipped back to [0, 1] after brightness and contrast.

    With ``channels=1`` (gray images) the saturation step is skipped, since it leaves a gray image
    unchanged, and the channel is repeated to RGB after the crop.
    """
    tf = import_tensorflow()  # here, not in the traced function: AutoGraph would try to convert it
    aug = recipe["augmentation"]
    size = recipe["model"]["input_size"]
    resize = recipe["data"]["train_resize"]

    def uniform(shape: Any, seed: Any, low: float, high: float) -> Any:
        return tf.random.stateless_uniform(shape, seed, minval=low, maxval=high)

    def augment(images: Any, seed: Any) -> Any:
        count = tf.shape(images)[0]
        seeds = tf.random.experimental.stateless_split(seed, num=6)
        x = tf.cast(images, tf.float32) / 255.0
        if aug["horizontal_flip"]:
            flip = uniform([count, 1, 1, 1], seeds[0], 0.0, 1.0) < 0.5
            x = tf.where(flip, tf.reverse(x, axis=[2]), x)
        if aug["brightness_max_delta"] > 0:
            delta = aug["brightness_max_delta"]
            x = x + uniform([count, 1, 1, 1], seeds[1], -delta, delta)
        mean = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
        x = (x - mean) * uniform([count, 1, 1, 1], seeds[2], *aug["contrast_range"]) + mean
        if channels == 3:
            hue, saturation, value = tf.unstack(tf.image.rgb_to_hsv(x), axis=-1)
            factor = uniform([count, 1, 1], seeds[3], *aug["saturation_range"])
            x = tf.image.hsv_to_rgb(tf.stack([hue, tf.clip_by_value(saturation * factor, 0, 1), value], axis=-1))
        window = tf.range(size)
        top = tf.random.stateless_uniform([count, 1], seeds[4], 0, resize - size + 1, dtype=tf.int32)
        left = tf.random.stateless_uniform([count, 1], seeds[5], 0, resize - size + 1, dtype=tf.int32)
        x = tf.gather(x, top + window, axis=1, batch_dims=1)
        x = tf.gather(x, left + window, axis=2, batch_dims=1)
        return x if channels == 3 else tf.tile(x, [1, 1, 1, 3])

    return augment


class Pipelines:
    """tf.data pipelines over decoded splits; each epoch's training order and augmentation is seeded."""

    def __init__(self, arrays: dict[str, SplitArrays], recipe: Any, *, seed: int):
        tf = import_tensorflow()
        self.recipe = recipe
        self.seed = int(seed)
        self.batch_size = int(recipe["training"]["batch_size"])
        self.train, self.test = arrays["train"], arrays["test"]
        # one copy of each split as a host tensor (tf.data runs on the CPU; a tensor on the GPU would
        # be copied back for every batch); the per-epoch datasets gather from it by index
        with tf.device("/CPU:0"):
            self._train_images = tf.constant(self.train.images)
            self._train_onehot = tf.one_hot(self.train.labels, len(CLASS_NAMES))
            self._test_images = tf.constant(self.test.images)
            self._test_onehot = tf.one_hot(self.test.labels, len(CLASS_NAMES))
        self._augment = make_augment(recipe, channels=self.train.images.shape[-1])

    def train_epoch(self, epoch: int) -> Any:
        """Batches of (augmented float32 images, one-hot labels) for 0-based ``epoch``."""
        tf = import_tensorflow()
        n = len(self.train)
        order = np.random.default_rng([self.seed, epoch]).permutation(n)
        batches = -(-n // self.batch_size)
        images, onehot, augment, seed = self._train_images, self._train_onehot, self._augment, self.seed

        def load(batch: Any, index: Any) -> tuple[Any, Any]:
            batch_seed = tf.stack([tf.constant(seed, tf.int64), epoch * batches + batch])
            return augment(tf.gather(images, index), batch_seed), tf.gather(onehot, index)

        return (
            tf.data.Dataset.from_tensor_slices(order)
            .batch(self.batch_size)
            .enumerate()
            .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .prefetch(tf.data.AUTOTUNE)
        )

    def test_batches(self, *, with_labels: bool = True) -> Any:
        """Batches of the test split as float32 [0, 1] (already at the model's input size)."""
        tf = import_tensorflow()
        indices = tf.data.Dataset.range(len(self.test)).batch(self.batch_size)
        images, onehot = self._test_images, self._test_onehot

        repeat = [1, 1, 1, 3 // int(self.test.images.shape[-1])]

        def load(index: Any) -> Any:
            batch = tf.tile(tf.cast(tf.gather(images, index), tf.float32) / 255.0, repeat)
            return (batch, tf.gather(onehot, index)) if with_labels else batch

        return indices.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)
