"""Read a release for training: verify it, decode every image once on the host, serve numpy batches.

The release is ~6k grayscale JPEGs of up to a few thousand pixels a side. Decoding and resizing them
dominates any per-epoch pipeline, so it happens once, on the host, with no deep-learning framework:
the shards are read one row group at a time (pyarrow), decoded with Pillow in threads and resized
with ``resize_bilinear`` (numpy; the reference code's ``tf.image.resize`` bilinear without
antialiasing, operation for operation), and kept as uint8 arrays (train at ``data.train_resize``,
test at ``model.input_size``; one channel for gray images, so 6k x 96 x 96 bytes is ~55 MB).

Each epoch then serves batches from memory (``TrainingBatches``, ``EvaluationBatches``: plain numpy
sequences that ``train.py`` hands to Keras as a ``keras.utils.PyDataset``): a batch is the uint8
images of its rows, the augmentation parameters drawn for it on the host (``augment.py``: numpy
Philox keyed by seed, epoch and batch), one-hot labels and class weights. The model's train step
applies the augmentation on the device. Each epoch's order is a Philox permutation keyed by
``(seed, epoch)``, so the same seed gives the same batches on every backend, whatever the number of
threads preparing them.
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from .. import CLASS_NAMES
from .. import progress as progress_bars
from ..errors import CxrDatasetError, VerificationError
from ..records import SPLITS
from ..release import DATA_DIR, REPORT_NAME, read_report, shard_paths
from .augment import draw_parameters, epoch_order


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


# --- decode and resize, once, on the host ------------------------------------------------------------


RESIZE = ("bilinear", False)
"""The one resize the host implements: ``data.resize_method`` bilinear, ``data.antialias`` false
(the reference code's ``tf.image.resize`` defaults)."""
DECODE_CHUNK = 256


def check_resize(method: str, antialias: bool) -> None:
    if (method, bool(antialias)) != RESIZE:
        raise CxrDatasetError(
            f"resize_method {method!r} with antialias {antialias}: the baseline resizes on the host with the "
            "reference code's resize only (resize_method: bilinear, antialias: false); change the recipe's "
            "'data' section")


@lru_cache(maxsize=64)
def _bilinear_axis(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source pixels and weights along one axis, as TensorFlow's ResizeBilinear computes them
    (half-pixel centres: source position ``(i + 0.5) * in / out - 0.5``, float32 throughout)."""
    scale = np.float32(in_size) / np.float32(out_size)
    position = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(position)
    lower = np.maximum(floor, 0).astype(np.intp)
    upper = np.minimum(np.ceil(position), in_size - 1).astype(np.intp)
    return lower, upper, (position - floor).astype(np.float32)


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, C) uint8 or float -> (height, width, C) float32: ``tf.image.resize(image, (height, width))``
    (bilinear, no antialiasing, aspect ratio not kept), with the same float32 operations in the same
    order: interpolate along x in the upper and lower source rows, then along y."""
    y_lower, y_upper, y_lerp = _bilinear_axis(image.shape[0], height)
    x_lower, x_upper, x_lerp = _bilinear_axis(image.shape[1], width)
    top_rows, bottom_rows = image[y_lower].astype(np.float32), image[y_upper].astype(np.float32)
    x_lerp = x_lerp[None, :, None]
    top_left, top_right = top_rows[:, x_lower], top_rows[:, x_upper]
    bottom_left, bottom_right = bottom_rows[:, x_lower], bottom_rows[:, x_upper]
    top = top_left + (top_right - top_left) * x_lerp
    bottom = bottom_left + (bottom_right - bottom_left) * x_lerp
    return top + (bottom - top) * y_lerp[:, None, None]


def jpeg_decoder() -> str:
    """Which decoder reads JPEG files: libjpeg-turbo's fast integer IDCT through the ``turbojpeg`` wheel
    (what ``tf.io.decode_jpeg`` and so the reference code use), else Pillow's accurate IDCT (Linux on
    Arm, where that wheel does not exist: pixels then differ by a few gray levels)."""
    return "libjpeg-turbo fast integer IDCT (turbojpeg)" if _turbojpeg() is not None else \
        "Pillow (libjpeg accurate integer IDCT)"


@lru_cache(maxsize=1)
def _turbojpeg() -> Any:
    try:  # the ``turbojpeg`` distribution (jpeg_transcode.py uses it too), not PyTurboJPEG
        import turbojpeg
    except ImportError:
        return None
    return turbojpeg if callable(getattr(turbojpeg, "decompress_header", None)) else None


def decode_image(data: bytes) -> np.ndarray:
    """An image file's pixels as (H, W, 1) uint8 for gray, (H, W, 3) for colour (alpha dropped, palette
    expanded), as ``tf.io.decode_image(channels=3)`` decodes them (which repeats a gray channel): JPEG
    with libjpeg-turbo's fast integer IDCT and fancy upsampling (``jpeg_decoder``), PNG with Pillow."""
    turbojpeg = _turbojpeg()
    if turbojpeg is not None and data[:3] == b"\xff\xd8\xff":
        header = turbojpeg.decompress_header(data)
        if header["colorspace"] == turbojpeg.CS.GRAY:
            return np.asarray(turbojpeg.decompress(data, turbojpeg.PF.GRAY, fastdct=True))[:, :, None]
        if header["colorspace"] in (turbojpeg.CS.YCbCr, turbojpeg.CS.RGB):
            return np.asarray(turbojpeg.decompress(data, turbojpeg.PF.RGB, fastdct=True))
    with Image.open(io.BytesIO(data)) as image:
        if image.mode in ("L", "LA"):
            return np.asarray(image.convert("L"))[:, :, None]
        if image.mode not in ("RGB", "RGBA", "P"):
            raise CxrDatasetError(f"image mode {image.mode}: the baseline reads 8-bit gray or colour images, "
                                  "as `cxr-dataset build` writes them")
        return np.asarray(image.convert("RGB"))


def decode_resized(data: bytes, size: int) -> np.ndarray:
    """Decode, resize to (size, size) and round to uint8 (half to even, like ``tf.round``)."""
    resized = resize_bilinear(decode_image(data), size, size)
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)


def decode_split(
    data_dir: Path, split: str, *, size: int, method: str = "bilinear", antialias: bool = False,
    shards: list[Path] | None = None, workers: int | None = None,
) -> SplitArrays:
    """Decode every image of ``split`` once into (n, size, size, 1) uint8, or (..., 3) if any is in colour.

    Pillow decodes (in ``workers`` threads: it releases the GIL), ``resize_bilinear`` resizes as the
    reference code does, the result is rounded to uint8 for the cache.
    """
    check_resize(method, antialias)
    labels: list[int] = []
    sources: list[str] = []
    source_paths: list[str] = []
    images: list[np.ndarray] = []

    def decode(data: bytes) -> np.ndarray:
        return decode_resized(data, size)

    bar = progress_bars.bar(None, desc=f"decode the {split} images (once: every epoch reuses them)", unit="img")
    with bar as shown, ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        chunk: list[bytes] = []
        for jpeg, label, source, source_path in iter_image_rows(data_dir, split, shards):
            labels.append(int(label))
            sources.append(source)
            source_paths.append(source_path)
            chunk.append(jpeg)
            if len(chunk) == DECODE_CHUNK:
                images += pool.map(decode, chunk)
                shown.update(len(chunk))
                chunk = []
        images += pool.map(decode, chunk)
        shown.update(len(chunk))
    channels = max((image.shape[-1] for image in images), default=1)
    stacked = np.stack([np.broadcast_to(image, (size, size, channels)) for image in images]) if images \
        else np.zeros((0, size, size, 1), np.uint8)
    if channels == 3 and (stacked == stacked[..., :1]).all():  # colour files holding gray pixels
        stacked = stacked[..., :1]
    return SplitArrays(split, np.ascontiguousarray(stacked), np.asarray(labels, np.int64), tuple(sources),
                       tuple(source_paths))


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


# --- batches served to Keras ----------------------------------------------------------------------


class TrainingBatches:
    """The training batches of 0-based ``epoch``, as numpy, in the epoch's seeded order.

    ``batches[i]`` is ``(inputs, one-hot labels, class weights)``: ``inputs`` holds ``image`` (uint8
    (b, train_resize, train_resize, c)) and the batch's augmentation parameters
    (``augment.PARAMETERS``), drawn from Philox keyed by ``(seed, epoch, i)``; the class weights are the
    recipe's, per image (what ``fit(class_weight=...)`` would make of them). A pure function of
    ``(arrays, recipe, seed, epoch, i)``: any thread may prepare any batch.
    """

    def __init__(self, arrays: SplitArrays, recipe: Any, *, seed: int, epoch: int):
        self.arrays, self.recipe, self.seed, self.epoch = arrays, recipe, int(seed), int(epoch)
        self.batch_size = int(recipe["training"]["batch_size"])
        self.order = epoch_order(self.seed, self.epoch, len(arrays))
        weights = recipe.class_weight_by_index()
        self.class_weights = np.asarray([weights[index] for index in range(len(CLASS_NAMES))], np.float32)

    def __len__(self) -> int:
        return -(-len(self.arrays) // self.batch_size)

    def rows(self, batch: int) -> np.ndarray:
        if not 0 <= batch < len(self):
            raise IndexError(f"batch {batch} of an epoch of {len(self)}")
        return self.order[batch * self.batch_size:(batch + 1) * self.batch_size]

    def __getitem__(self, batch: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        rows = self.rows(batch)
        labels = self.arrays.labels[rows]
        parameters = draw_parameters(self.recipe, seed=self.seed, epoch=self.epoch, batch=batch, count=len(rows))
        inputs = {"image": self.arrays.images[rows], **parameters}
        return inputs, one_hot(labels), self.class_weights[labels]


class EvaluationBatches:
    """The test split in row order, as numpy: ``({"image": uint8 (b, s, s, c)}, one-hot labels)``, or the
    inputs alone (``with_labels=False``, for ``predict``)."""

    def __init__(self, arrays: SplitArrays, batch_size: int, *, with_labels: bool = True):
        self.arrays, self.batch_size, self.with_labels = arrays, int(batch_size), with_labels

    def __len__(self) -> int:
        return -(-len(self.arrays) // self.batch_size)

    def __getitem__(self, batch: int) -> Any:
        if not 0 <= batch < len(self):
            raise IndexError(f"batch {batch} of {len(self)}")
        rows = slice(batch * self.batch_size, (batch + 1) * self.batch_size)
        inputs = {"image": self.arrays.images[rows]}
        return (inputs, one_hot(self.arrays.labels[rows])) if self.with_labels else inputs


def one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(len(CLASS_NAMES), dtype=np.float32)[np.asarray(labels, np.int64)]
