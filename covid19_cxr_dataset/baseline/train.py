"""Training on any Keras 3 backend: run options, the paper's optimizer and loss, one epoch at a time.

``model.fit`` is called once per epoch (``initial_epoch=epoch``) with that epoch's batches
(``data.TrainingBatches`` as a ``keras.utils.PyDataset``) and learning rate, which keeps every
epoch's order and augmentation a pure function of the seed and lets the caller report each epoch as
it ends. The train step Keras compiles (``jit_compile``: XLA on TensorFlow and JAX, ``torch.compile``
on PyTorch) holds the augmentation (``model.TrainingModel``); it is traced once and reused.
``model.evaluate`` and ``model.predict`` read the test split the same way (``data.EvaluationBatches``).
"""

from __future__ import annotations

import os
import platform
import sys
import time
from typing import Any, Callable

import numpy as np

from .. import CLASS_NAMES
from .. import progress as progress_bars
from ..errors import CxrDatasetError
from ._backend import (
    accelerator,
    determinism_record,
    describe_backend,
    float32_matmul_precision,
    import_keras,
)
from .data import SplitArrays, EvaluationBatches, TrainingBatches

Progress = Callable[[str], None]
BATCH_WORKERS = 1
"""Batches are prepared in the training loop's thread. Keras's PyDataset with more workers drops
batches of the first epoch on JAX (its first batch, taken to build the model, restarts the
workers' queue); a batch costs the host well under a millisecond (gather + Philox draws), and the
backends dispatch the step asynchronously, so nothing is gained by threads."""


def resolve_run_options(backend: str, *, jit_compile: bool | None, deterministic: bool | None) -> tuple[bool | None, bool]:
    """(jit_compile for ``compile_model``, deterministic), refusing combinations that cannot run.

    ``deterministic=None``: on, except where the compiled step cannot be deterministic (TensorFlow
    with ``jit_compile``). ``jit_compile=None``: Keras's choice for the backend (JAX: compiled;
    TensorFlow: XLA unless op determinism is on; PyTorch: eager). TensorFlow's XLA has no
    deterministic MaxPool gradient (it raises at the first step), so it needs determinism off.
    """
    if backend == "tensorflow" and jit_compile and deterministic:
        raise CxrDatasetError(
            "jit_compile=True needs deterministic=False on TensorFlow: XLA has no deterministic implementation "
            "of the MaxPool gradient the DCNN needs. Pass deterministic=False (the CLI's --jit-compile does), "
            "drop jit_compile to keep bitwise-repeatable runs, or train on JAX (--backend jax), whose compiled "
            "step is deterministic")
    if deterministic is None:
        deterministic = not (backend == "tensorflow" and jit_compile)
    return jit_compile, bool(deterministic)


def mixed_precision_policy(enabled: bool) -> str | None:
    """``mixed_float16`` on a GPU; ``mixed_bfloat16`` on CPU, where float16 math is slow; None when off."""
    if not enabled:
        return None
    return "mixed_float16" if accelerator()["device"] == "GPU" else "mixed_bfloat16"


def compile_model(model: Any, recipe: Any, *, dtype_policy: str | None = None,
                  jit_compile: bool | None = None) -> Any:
    """Adam, categorical cross-entropy with label smoothing, and the paper's metrics.

    ``jit_compile`` is Keras's setting for ``fit``/``evaluate``/``predict`` (None: Keras's "auto").
    """
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
        jit_compile="auto" if jit_compile is None else jit_compile,
    )
    return model


def as_py_dataset(batches: Any, *, workers: int = BATCH_WORKERS) -> Any:
    """A numpy batch sequence (``len`` and ``[i]``) as a ``keras.utils.PyDataset``, prepared ahead in threads."""
    keras = import_keras()

    class Batches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=8)

        def __len__(self) -> int:
            return len(batches)

        def __getitem__(self, index: int) -> Any:
            return batches[index]

    return Batches()


def train(model: Any, arrays: dict[str, SplitArrays], recipe: Any, *, seed: int,
          progress: Progress | None = None) -> list[dict[str, Any]]:
    """Train for ``training.epochs``; returns one dict per epoch (learning rate, train/test metrics, seconds)."""
    training = recipe["training"]
    epochs = training["epochs"]
    validation = as_py_dataset(EvaluationBatches(arrays["test"], training["batch_size"])) \
        if training["validate_each_epoch"] else None
    history = []
    for epoch in range(epochs):
        learning_rate = recipe.learning_rate(epoch)
        model.optimizer.learning_rate = learning_rate
        started = time.perf_counter()
        row: dict[str, Any] = {"epoch": epoch + 1, "learning_rate": learning_rate}
        # A CPU epoch takes minutes: a bar over its batches, gone once the epoch's line is printed.
        batches = TrainingBatches(arrays["train"], recipe, seed=seed, epoch=epoch)
        bar = progress_bars.bar(len(batches), desc=f"epoch {epoch + 1}/{epochs}: train", unit="batch",
                                enabled=progress is not None, leave=False)
        result = model.fit(
            as_py_dataset(batches),
            epochs=epoch + 1,
            initial_epoch=epoch,
            validation_data=validation,
            shuffle=False,  # the epoch's batches are already in their seeded order
            verbose=0,
            callbacks=[_batch_callback(bar)],
        )
        bar.close()
        row.update({name: float(values[-1]) for name, values in result.history.items()})
        row["seconds"] = time.perf_counter() - started
        history.append(row)
        if progress:
            progress(format_epoch(row, epochs))
    return history


def _batch_callback(bar: Any) -> Any:
    """A Keras callback that moves ``bar`` on by one after each training batch."""
    keras = import_keras()

    class BatchBar(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            bar.update()

    return BatchBar()


def format_epoch(row: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}", f"lr {row['learning_rate']:.1e}",
             f"loss {row['loss']:.4f}", f"accuracy {row['accuracy']:.4f}"]
    if "val_loss" in row:
        parts += [f"test loss {row['val_loss']:.4f}", f"test accuracy {row['val_accuracy']:.4f}"]
    parts.append(f"{row['seconds']:.1f} s")
    return "  ".join(parts)


def predict(model: Any, test: SplitArrays, batch_size: int) -> np.ndarray:
    """Softmax probabilities (n, 3) for the test split, in row order."""
    probs = model.predict(as_py_dataset(EvaluationBatches(test, batch_size, with_labels=False)), verbose=0)
    return np.asarray(probs, dtype=np.float64).reshape(-1, len(CLASS_NAMES))


def evaluate_loss(model: Any, test: SplitArrays, batch_size: int) -> float:
    """Test loss (label-smoothed cross-entropy, no class weights), as ``model.evaluate`` reports it."""
    return float(model.evaluate(as_py_dataset(EvaluationBatches(test, batch_size)), verbose=0, return_dict=True)["loss"])


def describe_hardware(mixed_precision_policy: str | None = None) -> dict[str, Any]:
    """What ran the training: the backend's device (GPU name or the CPU model), core count, versions."""
    backend = describe_backend()
    cpu = cpu_model()
    return {
        "device": backend["device"],
        "name": backend["device_name"] or cpu,
        "gpu_count": backend["device_count"],
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "backend": backend["name"],
        "backend_version": backend["version"],
        "keras": backend["keras"],
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


def describe_run(model: Any, *, dtype_policy: str | None, deterministic: bool) -> dict[str, Any]:
    """The certificate's ``backend`` block: which Keras backend (name, version), on which device, with
    which precision, whether Keras compiled the step, and the determinism switches in effect."""
    backend = describe_backend()
    return {
        "name": backend["name"],
        "version": backend["version"],
        "keras": backend["keras"],
        "device": backend["device"],
        "device_name": backend["device_name"],
        "jit_compile": bool(model.jit_compile),  # what Keras used, whatever was asked
        "precision": {"dtype_policy": dtype_policy or "float32", "mixed_precision": dtype_policy is not None,
                      "float32_matmul": float32_matmul_precision()},
        "deterministic": deterministic,
        "determinism": determinism_record(),
        "input": "host batches (keras.utils.PyDataset of uint8 images and augmentation parameters drawn with "
                 "numpy Philox), augmented inside the compiled step",
    }
