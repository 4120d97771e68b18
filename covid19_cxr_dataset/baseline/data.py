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

Two ways feed the training split to the model, both with these batches and seeds:

- ``cached`` (``Pipelines``): the decoded split stays in host memory and a tf.data pipeline gathers
  and augments each batch on the CPU, then Keras copies it to the device; the default on a CPU.
- ``resident`` (``ResidentPipelines``): the decoded split is copied once to the training device as
  one tensor, and each batch is gathered and augmented there by the same pure-TF augmentation,
  inside the train step (``train.py``), so the host sends only a batch of indices per step. The
  default when TensorFlow sees a GPU; selectable on a CPU too, where it runs the same code.

The augmentation's stateless ops name their algorithm (Philox) instead of letting each device pick,
so a seed draws the same numbers on a CPU, a GPU or under XLA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow.parquet as pq

from .. import CLASS_NAMES
from .. import progress as progress_bars
from ..errors import CxrDatasetError, VerificationError
from ..records import SPLITS
from ..release import DATA_DIR, REPORT_NAME, read_report, shard_paths
from ._backend import import_tensorflow

DECODE_BATCH = 64
PIPELINE_PATHS = ("auto", "resident", "cached")
RANDOM_ALGORITHM = "philox"
INVERSE_255 = np.float32(1 / 255)
"""Pixels to [0, 1] by multiplying with this, not dividing by 255: TensorFlow's graph optimizer
turns a division by a constant into this multiplication in some graphs and not in others (eager,
tf.function, tf.data and XLA disagreed by an ulp), so writing the multiplication keeps every path's
batches bitwise equal."""


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

    ``shards``: the split's shard files of one configuration (``release.resolve_config``); default: all of them.
    """
    paths = shard_paths(Path(data_dir) / DATA_DIR, split) if shards is None else shards
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
    batches = []
    with progress_bars.bar(None, desc=f"decode the {split} images (once: every epoch reuses them)", unit="img") as shown:
        for batch in dataset:
            batches.append(batch.numpy())
            shown.update(len(batches[-1]))
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
        return tf.random.stateless_uniform(shape, seed, minval=low, maxval=high, alg=RANDOM_ALGORITHM)

    def augment(images: Any, seed: Any) -> Any:
        count = tf.shape(images)[0]
        seeds = tf.random.experimental.stateless_split(seed, num=6, alg=RANDOM_ALGORITHM)
        pixels = tf.cast(images, tf.float32)
        x = pixels * INVERSE_255
        # The contrast step's per-image mean, from the sum of the integer pixel values: a float32
        # sum of integers stays exact (below 2 ** 24, i.e. up to ~256 x 256 pixels a channel) in any
        # order, so it does not depend on how a device splits the reduction. A flip keeps the mean;
        # a brightness delta shifts it by the delta.
        area = int(images.shape[1]) * int(images.shape[2])
        mean = tf.reduce_sum(pixels, axis=[1, 2], keepdims=True) * np.float32(1 / (255 * area))
        if aug["horizontal_flip"]:
            flip = uniform([count, 1, 1, 1], seeds[0], 0.0, 1.0) < 0.5
            x = tf.where(flip, tf.reverse(x, axis=[2]), x)
        if aug["brightness_max_delta"] > 0:
            max_delta = aug["brightness_max_delta"]
            delta = uniform([count, 1, 1, 1], seeds[1], -max_delta, max_delta)
            x, mean = x + delta, mean + delta
        x = (x - mean) * uniform([count, 1, 1, 1], seeds[2], *aug["contrast_range"]) + mean
        if channels == 3:
            hue, saturation, value = tf.unstack(tf.image.rgb_to_hsv(x), axis=-1)
            factor = uniform([count, 1, 1], seeds[3], *aug["saturation_range"])
            x = tf.image.hsv_to_rgb(tf.stack([hue, tf.clip_by_value(saturation * factor, 0, 1), value], axis=-1))
        window = tf.range(size)
        top = tf.random.stateless_uniform([count, 1], seeds[4], 0, resize - size + 1, dtype=tf.int32,
                                          alg=RANDOM_ALGORITHM)
        left = tf.random.stateless_uniform([count, 1], seeds[5], 0, resize - size + 1, dtype=tf.int32,
                                           alg=RANDOM_ALGORITHM)
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
            if self.path == "cached":
                self._train_images = tf.constant(self.train.images)
                self._train_onehot = tf.one_hot(self.train.labels, len(CLASS_NAMES))
            self._test_images = tf.constant(self.test.images)
            self._test_onehot = tf.one_hot(self.test.labels, len(CLASS_NAMES))
        self._augment = make_augment(recipe, channels=self.train.images.shape[-1])

    path = "cached"

    @property
    def batches_per_epoch(self) -> int:
        return -(-len(self.train) // self.batch_size)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The training rows of 0-based ``epoch`` in their seeded order (batches are consecutive slices)."""
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.train))

    def train_epoch(self, epoch: int) -> Any:
        """Batches of (augmented float32 images, one-hot labels) for 0-based ``epoch``."""
        tf = import_tensorflow()
        order = self.epoch_order(epoch)
        batches = self.batches_per_epoch
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
            batch = tf.tile(tf.cast(tf.gather(images, index), tf.float32) * INVERSE_255, repeat)
            return (batch, tf.gather(onehot, index)) if with_labels else batch

        return indices.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)


# --- the training split resident on the device ----------------------------------------------------


def resolve_pipeline_path(path: str) -> str:
    """``cached`` or ``resident``; ``auto`` is ``resident`` when TensorFlow sees a GPU, else ``cached``."""
    if path not in PIPELINE_PATHS:
        raise CxrDatasetError(f"pipeline {path!r}: expected one of {', '.join(PIPELINE_PATHS)}")
    if path != "auto":
        return path
    return "resident" if import_tensorflow().config.list_physical_devices("GPU") else "cached"


def make_pipelines(arrays: dict[str, SplitArrays], recipe: Any, *, seed: int, path: str = "auto") -> "Pipelines":
    """The pipelines of ``path`` (see ``resolve_pipeline_path``) over decoded splits."""
    if resolve_pipeline_path(path) == "resident":
        return ResidentPipelines(arrays, recipe, seed=seed)
    return Pipelines(arrays, recipe, seed=seed)


class ResidentPipelines(Pipelines):
    """Both decoded splits copied once to the training device; each batch is gathered and augmented there.

    ``training_batch`` and ``test_batch`` are pure TF ops on tensors of that device, meant to be
    traced into the train and test steps (``train.ResidentTrainer``), so a step's only input from
    the host is a batch of row indices and a counter. The batches, their order and their
    augmentation seeds are those of ``Pipelines.train_epoch``: the two paths feed the same data.

    Storage is uint8 on a CPU. On a GPU it is float16 (twice the bytes: ~104 MB for the paper's
    5,614 x 96 x 96 training split): TensorFlow registers no GPU kernel that gathers uint8, so
    outside XLA the gather would silently run on the CPU and copy the split back at every step;
    float16 holds 0..255 exactly, so the batches are the same. ``test_batches`` (predictions and
    the test loss after training) stays the host tf.data pipeline of ``Pipelines``.
    """

    path = "resident"

    def __init__(self, arrays: dict[str, SplitArrays], recipe: Any, *, seed: int,
                 device: str | None = None, storage_dtype: str | None = None):
        tf = import_tensorflow()
        super().__init__(arrays, recipe, seed=seed)
        self.device = device or ("/GPU:0" if tf.config.list_physical_devices("GPU") else "/CPU:0")
        self.storage_dtype = storage_dtype or ("float16" if "GPU" in self.device.upper() else "uint8")
        classes = len(CLASS_NAMES)
        with tf.device(self.device):
            self._resident_images = tf.constant(self.train.images.astype(self.storage_dtype))
            self._resident_onehot = tf.one_hot(tf.constant(self.train.labels), classes)
            self._resident_test_images = tf.constant(self.test.images.astype(self.storage_dtype))
            self._resident_test_onehot = tf.one_hot(tf.constant(self.test.labels), classes)
        self._test_repeat = [1, 1, 1, 3 // int(self.test.images.shape[-1])]
        self._batch_function: Any = None

    @property
    def placed_on(self) -> str:
        """The device TensorFlow put the resident training split on (full device name)."""
        return self._resident_images.device

    @property
    def resident_bytes(self) -> int:
        return int(sum(t.shape.num_elements() * t.dtype.size for t in
                       (self._resident_images, self._resident_onehot,
                        self._resident_test_images, self._resident_test_onehot)))

    def training_batch(self, index: Any, counter: Any) -> tuple[Any, Any]:
        """(augmented float32 RGB images, one-hot labels) of training rows ``index``, augmentation seed
        ``(seed, counter)`` with ``counter = epoch * batches_per_epoch + batch``. Traceable."""
        tf = import_tensorflow()
        seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(counter, tf.int64)])
        images = self._augment(tf.gather(self._resident_images, index), seed)
        return images, tf.gather(self._resident_onehot, index)

    def test_batch(self, index: Any) -> tuple[Any, Any]:
        """(float32 RGB [0, 1] images, one-hot labels) of test rows ``index``. Traceable."""
        tf = import_tensorflow()
        images = tf.cast(tf.gather(self._resident_test_images, index), tf.float32) * INVERSE_255
        return tf.tile(images, self._test_repeat), tf.gather(self._resident_test_onehot, index)

    def _index_batches(self, order: np.ndarray) -> list[Any]:
        tf = import_tensorflow()
        with tf.device(self.device):
            return [tf.constant(order[start:start + self.batch_size].astype(np.int64))
                    for start in range(0, len(order), self.batch_size)]

    def epoch_batches(self, epoch: int) -> list[tuple[Any, Any]]:
        """(row indices on the device, augmentation counter) of every training batch of 0-based ``epoch``."""
        tf = import_tensorflow()
        first = epoch * self.batches_per_epoch
        return [(index, tf.constant(first + batch, tf.int64))
                for batch, index in enumerate(self._index_batches(self.epoch_order(epoch)))]

    def test_index_batches(self) -> list[Any]:
        """Row indices on the device of every test batch, in row order."""
        return self._index_batches(np.arange(len(self.test)))

    def train_epoch(self, epoch: int) -> Iterator[tuple[Any, Any]]:
        """The batches of ``epoch`` as tensors on the device, one traced call per batch (for tests and
        the benchmark: training traces ``training_batch`` into its step instead)."""
        tf = import_tensorflow()
        if self._batch_function is None:
            self._batch_function = tf.function(self.training_batch, autograph=False)
        with tf.device(self.device):
            for index, counter in self.epoch_batches(epoch):
                yield self._batch_function(index, counter)
