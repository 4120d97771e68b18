"""The paper's DCNN (Zhong, arXiv 2007.09695, Figure 3), built with Keras 3 on any backend.

Four blocks of 3x3 'same' convolutions, each block followed by 2x2 max pooling. The classifier sees
two views of the features: the global max of every block's pooled output (multi-scale, 352 values
for the paper's filters) and the flattened last convolution of the last block before its pooling
(10x10x128 = 12,800 values for an 80x80 input). With the defaults this has 63,148,835 parameters,
almost all of them (53.9M) in the first dense layer that reads the flattened map.

``TrainingModel`` wraps it for training and evaluation: it takes the uint8 batches of
``data.TrainingBatches`` / ``data.EvaluationBatches`` and turns them into the network's float input
inside the step that Keras compiles (``augment.apply_augmentation`` for training batches,
``augment.to_model_input`` for test batches), so the augmentation runs on the training device.
"""

from __future__ import annotations

from typing import Any, Sequence

from .. import CLASS_NAMES
from ._backend import import_keras
from .augment import apply_augmentation, to_model_input

PAPER_BLOCKS = ((32, 2), (64, 2), (128, 3), (128, 3))
PAPER_PARAMETER_COUNT = 63_148_835


def build_model(
    *,
    input_size: int = 80,
    blocks: Sequence[tuple[int, int]] = PAPER_BLOCKS,
    dense: Sequence[int] = (4096, 2048),
    dropout: Sequence[float] = (0.5, 0.4),
    activation: str = "elu",
    num_classes: int = len(CLASS_NAMES),
    dtype_policy: str | None = None,
) -> Any:
    """The DCNN as a ``keras.Model``; the defaults are the paper's.

    ``blocks`` holds ``(filters, convolutions)`` per block. ``dtype_policy`` (``"mixed_float16"``,
    ``"mixed_bfloat16"``) sets the compute dtype of every layer but the softmax, which stays float32
    so probabilities and the loss are computed at full precision.
    """
    keras = import_keras()
    layers = keras.layers
    if len(dense) != len(dropout):
        raise ValueError(f"dense {list(dense)} and dropout {list(dropout)} need the same length")
    policy = {"dtype": dtype_policy} if dtype_policy else {}

    inputs = keras.Input(shape=(input_size, input_size, 3), name="image")
    x = inputs
    block_maxima = []
    last_conv = None
    for block_index, (filters, convolutions) in enumerate(blocks, start=1):
        for conv_index in range(1, convolutions + 1):
            x = layers.Conv2D(filters, (3, 3), padding="same", activation=activation,
                              name=f"block{block_index}_conv{conv_index}", **policy)(x)
        last_conv = x
        x = layers.MaxPooling2D((2, 2), name=f"block{block_index}_pool", **policy)(x)
        block_maxima.append(layers.GlobalMaxPooling2D(name=f"block{block_index}_global_max", **policy)(x))

    multi_scale = layers.Concatenate(name="block_maxima", **policy)(block_maxima) if len(block_maxima) > 1 \
        else block_maxima[0]
    spatial = layers.Flatten(name="last_conv_flat", **policy)(last_conv)
    x = layers.Concatenate(name="features", **policy)([multi_scale, spatial])
    for index, (units, rate) in enumerate(zip(dense, dropout), start=1):
        x = layers.Dense(units, activation=activation, name=f"dense{index}", **policy)(x)
        x = layers.Dropout(rate, name=f"dropout{index}", **policy)(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities", dtype="float32")(x)
    return keras.Model(inputs=inputs, outputs=outputs, name="zhong_dcnn")


def build_model_from_recipe(recipe: Any, *, dtype_policy: str | None = None) -> Any:
    """``build_model`` with the architecture of a ``recipe.Recipe``."""
    model = recipe["model"]
    return build_model(
        input_size=model["input_size"],
        blocks=[(block["filters"], block["convs"]) for block in model["blocks"]],
        dense=model["dense"],
        dropout=model["dropout"],
        activation=model["activation"],
        dtype_policy=dtype_policy,
    )


def build_training_model(network: Any, recipe: Any) -> Any:
    """``network`` (``build_model``'s) behind the uint8 input and augmentation of the baseline's batches."""
    return _training_model_class()(network, input_size=recipe["model"]["input_size"])


_TRAINING_MODEL: Any = None


def _training_model_class() -> Any:
    """The ``keras.Model`` subclass, defined on first use (Keras is imported only then)."""
    global _TRAINING_MODEL
    if _TRAINING_MODEL is None:
        keras = import_keras()

        class TrainingModel(keras.Model):
            """A dict of uint8 ``image`` and, for training batches, augmentation parameters -> probabilities."""

            def __init__(self, network: Any, *, input_size: int, **kwargs: Any):
                super().__init__(name=f"{network.name}_training", **kwargs)
                self.network = network
                self.input_size = int(input_size)

            def call(self, inputs: Any, training: bool = False) -> Any:
                if "contrast" in inputs:  # a training batch: augment, then crop to the input size
                    x = apply_augmentation(inputs, size=self.input_size)
                else:
                    x = to_model_input(inputs["image"])
                return self.network(x, training=training)

        _TRAINING_MODEL = TrainingModel
    return _TRAINING_MODEL
