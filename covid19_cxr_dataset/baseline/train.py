"""Training: seeds and determinism, the device, the paper's optimizer and loss, one epoch at a time.

``model.fit`` is called once per epoch (``initial_epoch=epoch``) with that epoch's seeded dataset
and learning rate, which keeps every epoch's order and augmentation a pure function of the seed,
and lets the caller report each epoch as it ends. The compiled train step is traced once and reused.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from typing import Any, Callable

import numpy as np

from .. import CLASS_NAMES
from ._backend import import_keras, import_tensorflow
from .data import Pipelines

Progress = Callable[[str], None]


def set_determinism(seed: int, *, deterministic: bool = True) -> None:
    """Seed Python, numpy and TensorFlow; with ``deterministic``, make TF's ops deterministic.

    Op determinism is process-wide and cannot be switched off again; Keras turns XLA off under it.
    """
    tf = import_tensorflow()
    keras = import_keras()
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def configure_devices() -> list[Any]:
    """The GPUs TensorFlow sees (memory growth on, so the process does not grab every GPU's memory)."""
    tf = import_tensorflow()
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialized by an earlier call in this process
            pass
    return gpus


def describe_hardware(mixed_precision_policy: str | None = None) -> dict[str, Any]:
    """What ran the training: GPU names (or the CPU model), core count and library versions."""
    tf = import_tensorflow()
    keras = import_keras()
    gpus = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        gpus.append({"name": details.get("device_name", gpu.name),
                     "compute_capability": list(details.get("compute_capability", ()))})
    cpu = cpu_model()
    return {
        "device": "GPU" if gpus else "CPU",
        "name": gpus[0]["name"] if gpus else cpu,
        "gpus": gpus,
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "dtype_policy": mixed_precision_policy or "float32",
    }


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mixed_precision_policy(enabled: bool) -> str | None:
    """``mixed_float16`` on a GPU; ``mixed_bfloat16`` on CPU, where float16 math is slow; None when off."""
    if not enabled:
        return None
    tf = import_tensorflow()
    return "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"


def compile_model(model: Any, recipe: Any, *, dtype_policy: str | None = None) -> Any:
    """Adam, categorical cross-entropy with label smoothing, and the paper's metrics."""
    keras = import_keras()
    training = recipe["training"]
    settings = training["optimizer"]
    optimizer = keras.optimizers.Adam(
        learning_rate=recipe.learning_rate(0),
        beta_1=settings["beta_1"], beta_2=settings["beta_2"], epsilon=settings["epsilon"],
    )
    if dtype_policy == "mixed_float16":  # float16 gradients underflow without loss scaling
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=training["label_smoothing"]),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy"),
                 keras.metrics.Precision(name="precision"),
                 keras.metrics.Recall(name="recall")],
    )
    return model


def train(model: Any, pipelines: Pipelines, recipe: Any, *, progress: Progress | None = None) -> list[dict[str, Any]]:
    """Train for ``training.epochs``; returns one dict per epoch (learning rate, train/test metrics, seconds)."""
    training = recipe["training"]
    epochs = training["epochs"]
    class_weight = recipe.class_weight_by_index()
    validation = pipelines.test_batches() if training["validate_each_epoch"] else None
    history = []
    for epoch in range(epochs):
        learning_rate = recipe.learning_rate(epoch)
        model.optimizer.learning_rate = learning_rate
        started = time.perf_counter()
        result = model.fit(
            pipelines.train_epoch(epoch),
            epochs=epoch + 1,
            initial_epoch=epoch,
            class_weight=class_weight,
            validation_data=validation,
            shuffle=False,  # the epoch's dataset is already in its seeded order
            verbose=0,
        )
        row = {"epoch": epoch + 1, "learning_rate": learning_rate}
        row.update({name: float(values[-1]) for name, values in result.history.items()})
        row["seconds"] = time.perf_counter() - started
        history.append(row)
        if progress:
            progress(format_epoch(row, epochs))
    return history


def format_epoch(row: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}", f"lr {row['learning_rate']:.1e}",
             f"loss {row['loss']:.4f}", f"accuracy {row['accuracy']:.4f}"]
    if "val_loss" in row:
        parts += [f"test loss {row['val_loss']:.4f}", f"test accuracy {row['val_accuracy']:.4f}"]
    parts.append(f"{row['seconds']:.1f} s")
    return "  ".join(parts)


def predict(model: Any, pipelines: Pipelines) -> np.ndarray:
    """Softmax probabilities (n, 3) for the test split, in row order."""
    probs = model.predict(pipelines.test_batches(with_labels=False), verbose=0)
    return np.asarray(probs, dtype=np.float64).reshape(-1, len(CLASS_NAMES))


def evaluate_loss(model: Any, pipelines: Pipelines) -> float:
    """Test loss (label-smoothed cross-entropy, no class weights), as ``model.evaluate`` reports it."""
    return float(model.evaluate(pipelines.test_batches(), verbose=0, return_dict=True)["loss"])
