"""The paper's training augmentation: parameters drawn on the host, applied inside the compiled step.

Every random number of the augmentation is drawn here with numpy's Philox generator keyed by
``(seed, epoch, batch)`` (``draw_parameters``), so a seed gives the same parameters on every Keras
backend and every device, whatever the number of threads or the order batches are prepared in.
The batch then reaches the model as uint8 images plus these parameters, and
``apply_augmentation`` (``keras.ops`` only, traced into the train step by every backend) applies
them on the device: per image, in the paper's order, a horizontal flip, a brightness delta, a
contrast factor around the image's mean, a saturation factor (colour images only: it leaves a gray
image unchanged), then a random crop from ``data.train_resize`` to ``model.input_size``. As in the
reference code, values are not clipped back to [0, 1] after brightness and contrast.

The flip and the crop only choose pixels, so they are one gather (the flip mirrors the crop window);
the contrast mean is taken over the whole resized image before the crop, as the reference code does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

PARAMETERS = ("flip", "brightness", "contrast", "saturation", "top", "left")
"""The per-image parameters of one batch, in the order of the uniform draws (one column each)."""
ORDER_STREAM = 0xFFFF_FFFF
"""The Philox key's batch half for an epoch's row order (a batch number never reaches it)."""
INVERSE_255 = np.float32(1 / 255)
"""Pixels to [0, 1] by multiplying with this, not dividing by 255: graph optimizers turn a division by
a constant into this multiplication in some graphs and not in others, so writing the multiplication
keeps every path's pixels bitwise equal."""
MASK_64 = (1 << 64) - 1


def philox(seed: int, epoch: int, stream: int) -> np.random.Generator:
    """numpy's Philox generator keyed by ``(seed, epoch, stream)``: the key's first word is the seed
    (any int, taken modulo 2 ** 64), its second ``epoch * 2 ** 32 + stream``."""
    if not 0 <= stream <= ORDER_STREAM or epoch < 0:
        raise ValueError(f"epoch {epoch} and stream {stream}: expected epoch >= 0 and 0 <= stream < 2 ** 32")
    key = np.array([int(seed) & MASK_64, (int(epoch) << 32 | int(stream)) & MASK_64], dtype=np.uint64)
    return np.random.Generator(np.random.Philox(key=key))


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The training rows of 0-based ``epoch`` in their seeded order (batches are consecutive slices)."""
    return philox(seed, epoch, ORDER_STREAM).permutation(n)


def draw_parameters(recipe: Any, *, seed: int, epoch: int, batch: int, count: int) -> dict[str, np.ndarray]:
    """The augmentation parameters of ``count`` images of batch ``batch`` of 0-based ``epoch``.

    One (count, 6) matrix of uniform draws in [0, 1), one column per entry of ``PARAMETERS``, always
    all six (a recipe that turns a step off does not shift the others' numbers), mapped to each
    parameter's range in float64 and handed over as float32 (``flip``, ``top``, ``left``: int32).
    A step that the recipe turns off gets its neutral value (no flip, delta 0).
    """
    aug = recipe["augmentation"]
    size, resize = recipe["model"]["input_size"], recipe["data"]["train_resize"]
    uniform = philox(seed, epoch, batch).random((count, len(PARAMETERS)))
    draws = dict(zip(PARAMETERS, uniform.T))

    def scaled(name: str, low: float, high: float) -> np.ndarray:
        return (low + (high - low) * draws[name]).astype(np.float32)

    positions = resize - size + 1
    max_delta = float(aug["brightness_max_delta"])
    return {
        "flip": (draws["flip"] < 0.5).astype(np.int32) if aug["horizontal_flip"] else np.zeros(count, np.int32),
        "brightness": scaled("brightness", -max_delta, max_delta),
        "contrast": scaled("contrast", *aug["contrast_range"]),
        "saturation": scaled("saturation", *aug["saturation_range"]),
        "top": np.minimum(np.floor(draws["top"] * positions), positions - 1).astype(np.int32),
        "left": np.minimum(np.floor(draws["left"] * positions), positions - 1).astype(np.int32),
    }


def apply_augmentation(inputs: dict[str, Any], *, size: int) -> Any:
    """(uint8 images (b, R, R, c) and their parameters) -> float32 RGB crops (b, size, size, 3), with
    ``keras.ops`` only, so every backend traces it into its train step. ``c`` is 1 (gray) or 3."""
    from ._backend import import_keras

    ops = import_keras().ops
    images = inputs["image"]
    resize, channels = int(images.shape[1]), int(images.shape[-1])
    pixels = ops.cast(images, "float32")
    # The contrast step's per-image mean, from the sum of the integer pixel values: a float32 sum of
    # integers stays exact (below 2 ** 24, i.e. up to ~256 x 256 pixels a channel) in any order, so it
    # does not depend on how a backend or device splits the reduction. A flip keeps the mean; a
    # brightness delta shifts it by the delta.
    mean = ops.sum(pixels, axis=(1, 2), keepdims=True) * np.float32(1 / (255 * resize * resize))
    x = ops.take(ops.reshape(pixels, (-1, channels)), _crop_indices(ops, inputs, resize, size), axis=0)
    x = x * INVERSE_255
    delta = ops.reshape(inputs["brightness"], (-1, 1, 1, 1))
    x, mean = x + delta, mean + delta
    x = (x - mean) * ops.reshape(inputs["contrast"], (-1, 1, 1, 1)) + mean
    if channels == 3:
        return _adjust_saturation(ops, x, ops.reshape(inputs["saturation"], (-1, 1, 1, 1)))
    return ops.tile(x, (1, 1, 1, 3))


def _adjust_saturation(ops: Any, x: Any, factor: Any) -> Any:
    """``tf.image.adjust_saturation`` without the trip through HSV: HSV saturation ``S = (max - min) / max``
    is scaled by ``factor`` and clipped to [0, 1] while hue and value stay, which moves every channel
    along the line from the pixel's maximum: ``c' = max - (max - c) * S' / S``. A pixel whose maximum
    is not positive has ``S = 0`` there and becomes its maximum in every channel, as in TensorFlow.
    (Keras's ``ops.image`` HSV conversions disagreed between backends under XLA; this is elementwise.)"""
    maximum = ops.max(x, axis=-1, keepdims=True)
    positive = maximum > 0
    saturation = ops.where(positive, (maximum - ops.min(x, axis=-1, keepdims=True)) / ops.where(positive, maximum, 1.0),
                           0.0)
    scaled = ops.clip(saturation * factor, 0.0, 1.0)
    ratio = ops.where(saturation > 0, scaled / ops.where(saturation > 0, saturation, 1.0), 0.0)
    return maximum - (maximum - x) * ratio


def _crop_indices(ops: Any, inputs: dict[str, Any], resize: int, size: int) -> Any:
    """Flat indices (b, size, size) into the batch's (b * R * R) pixels of each image's crop window,
    mirrored where the image is flipped (flipping then cropping at ``left`` reads column
    ``R - 1 - left - j``)."""
    window = ops.arange(size, dtype="int32")
    top, left = ops.reshape(inputs["top"], (-1, 1)), ops.reshape(inputs["left"], (-1, 1))
    flip = ops.reshape(inputs["flip"], (-1, 1))
    rows = top + window  # (b, size)
    columns = flip * (resize - 1 - left - window) + (1 - flip) * (left + window)
    # each image's offset in the flattened batch, without the batch size (unknown while Keras traces)
    image_index = ops.cumsum(ops.ones_like(inputs["top"]), axis=0) - 1
    first = ops.reshape(image_index * (resize * resize), (-1, 1, 1))
    return first + ops.expand_dims(rows * resize, 2) + ops.expand_dims(columns, 1)


def to_model_input(images: Any) -> Any:
    """uint8 images already at the model's input size (b, s, s, c) -> float32 RGB in [0, 1] (``keras.ops``)."""
    from ._backend import import_keras

    ops = import_keras().ops
    x = ops.cast(images, "float32") * INVERSE_255
    return x if int(images.shape[-1]) == 3 else ops.tile(x, (1, 1, 1, 3))
