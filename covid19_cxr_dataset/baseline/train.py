"""Training: seeds and determinism, the device, the paper's optimizer and loss, one epoch at a time.

Cached path (``data.Pipelines``): ``model.fit`` is called once per epoch (``initial_epoch=epoch``)
with that epoch's seeded dataset and learning rate, which keeps every epoch's order and
augmentation a pure function of the seed, and lets the caller report each epoch as it ends. The
compiled train step is traced once and reused.

Resident path (``data.ResidentPipelines``): ``ResidentTrainer`` runs the same epochs itself. Its
step is Keras's own ``model.train_step`` (loss, class weights as sample weights, loss scaling,
metrics: what ``fit`` runs) traced together with the batch's gather and augmentation from the
device-resident split into one ``tf.function``, optionally compiled with XLA (``jit_compile``).
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
from ._backend import import_keras, import_tensorflow
from ..errors import CxrDatasetError
from .data import Pipelines, ResidentPipelines, resolve_pipeline_path

Progress = Callable[[str], None]


def set_determinism(seed: int, *, deterministic: bool = True) -> None:
    """Seed Python, numpy and TensorFlow; with ``deterministic``, make TF's ops deterministic.

    Op determinism is process-wide; without ``deterministic`` it is switched off again (TensorFlow's
    ``disable_op_determinism`` is not exported under ``tf.config``), so a run's setting never leaks
    from an earlier run in the same process. Keras turns XLA off under it.
    """
    tf = import_tensorflow()
    keras = import_keras()
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    else:
        from tensorflow.python.framework import config as tf_config

        tf_config.disable_op_determinism()


def check_run_options(*, pipeline: str, jit_compile: bool, deterministic: bool) -> str:
    """Refuse option combinations that cannot run, before any long step; returns the resolved path.

    XLA has no deterministic kernel for MaxPool's gradient (TensorFlow raises UnimplementedError
    at the first step, on a CPU as on a GPU), so ``jit_compile`` needs op determinism off.
    """
    path = resolve_pipeline_path(pipeline)
    if jit_compile and deterministic:
        raise CxrDatasetError(
            "jit_compile=True needs deterministic=False: XLA has no deterministic implementation of the "
            "MaxPool gradient the DCNN needs. Pass deterministic=False (the CLI's --jit-compile does), or "
            "drop jit_compile to keep bitwise-repeatable runs"
        )
    return path


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


def compile_model(model: Any, recipe: Any, *, dtype_policy: str | None = None,
                  jit_compile: bool | None = None) -> Any:
    """Adam, categorical cross-entropy with label smoothing, and the paper's metrics.

    ``jit_compile`` is Keras's setting for ``fit``/``evaluate``/``predict`` (None: Keras's "auto",
    which is XLA on a GPU unless op determinism is on; Keras also refuses True under determinism).
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


class ResidentTrainer:
    """Epochs of the resident path: one traced call per batch, whose only host inputs are indices.

    The step gathers and augments the batch on the device (``ResidentPipelines.training_batch``),
    turns the recipe's class weights into per-image sample weights (as ``fit(class_weight=...)``
    does) and runs ``model.train_step``. With ``jit_compile`` the whole step, augmentation
    included, is one XLA computation. That needs op determinism off (XLA has no deterministic
    MaxPool gradient; ``check_run_options`` refuses the combination), and under XLA the stateless
    random ops and Keras's dropout draw other numbers for the same seed than outside it: an XLA run
    repeats itself on a CPU, but is not numerically the non-XLA run. On a GPU, a rerun shows how
    repeatable it is (benchmarks/device_certify.sh runs it twice).
    """

    def __init__(self, model: Any, pipelines: ResidentPipelines, recipe: Any, *, jit_compile: bool = False):
        tf = import_tensorflow()
        self.model, self.pipelines, self.jit_compile = model, pipelines, bool(jit_compile)
        weights = recipe.class_weight_by_index()
        with tf.device(pipelines.device):
            class_weights = tf.constant([weights[index] for index in range(len(CLASS_NAMES))], tf.float32)

        def train_step(index: Any, counter: Any) -> Any:
            images, onehot = pipelines.training_batch(index, counter)
            sample_weight = tf.reduce_sum(onehot * class_weights, axis=-1)
            return model.train_step((images, onehot, sample_weight))

        def test_step(index: Any) -> Any:
            return model.test_step(pipelines.test_batch(index))

        self.train_step = tf.function(train_step, jit_compile=self.jit_compile, autograph=False)
        self.test_step = tf.function(test_step, jit_compile=self.jit_compile, autograph=False)

    def _metrics(self) -> dict[str, float]:
        return {name: float(value) for name, value in self.model.get_metrics_result().items()}

    def fit_epoch(self, epoch: int, on_batch: Callable[[], Any] | None = None) -> dict[str, float]:
        """Train 0-based ``epoch`` at the optimizer's current learning rate; the epoch's train metrics.
        ``on_batch()`` is called after each batch is dispatched (a progress bar)."""
        tf = import_tensorflow()
        self.model.reset_metrics()
        with tf.device(self.pipelines.device):
            for index, counter in self.pipelines.epoch_batches(epoch):
                self.train_step(index, counter)
                if on_batch is not None:
                    on_batch()
        return self._metrics()  # reading them waits for the device to finish the epoch

    def evaluate(self) -> dict[str, float]:
        """Test loss and metrics (no class weights), as ``fit``'s validation reports them."""
        tf = import_tensorflow()
        self.model.reset_metrics()
        with tf.device(self.pipelines.device):
            for index in self.pipelines.test_index_batches():
                self.test_step(index)
        return self._metrics()


def train(model: Any, pipelines: Pipelines, recipe: Any, *, progress: Progress | None = None,
          jit_compile: bool = False) -> list[dict[str, Any]]:
    """Train for ``training.epochs``; returns one dict per epoch (learning rate, train/test metrics, seconds).

    ``ResidentPipelines`` train through ``ResidentTrainer`` (``jit_compile``: XLA for its steps);
    ``Pipelines`` through ``model.fit`` (XLA as ``compile_model`` set it).
    """
    training = recipe["training"]
    epochs = training["epochs"]
    class_weight = recipe.class_weight_by_index()
    resident = ResidentTrainer(model, pipelines, recipe, jit_compile=jit_compile) \
        if isinstance(pipelines, ResidentPipelines) else None
    validation = pipelines.test_batches() if training["validate_each_epoch"] and not resident else None
    history = []
    for epoch in range(epochs):
        learning_rate = recipe.learning_rate(epoch)
        model.optimizer.learning_rate = learning_rate
        started = time.perf_counter()
        row: dict[str, Any] = {"epoch": epoch + 1, "learning_rate": learning_rate}
        # A CPU epoch takes minutes: a bar over its batches, gone once the epoch's line is printed.
        bar = progress_bars.bar(pipelines.batches_per_epoch, desc=f"epoch {epoch + 1}/{epochs}: train", unit="batch",
                                enabled=progress is not None, leave=False)
        if resident:
            row.update(resident.fit_epoch(epoch, on_batch=bar.update))
            if training["validate_each_epoch"]:
                row.update({f"val_{name}": value for name, value in resident.evaluate().items()})
        else:
            result = model.fit(
                pipelines.train_epoch(epoch),
                epochs=epoch + 1,
                initial_epoch=epoch,
                class_weight=class_weight,
                validation_data=validation,
                shuffle=False,  # the epoch's dataset is already in its seeded order
                verbose=0,
                callbacks=[_batch_callback(bar)],
            )
            row.update({name: float(values[-1]) for name, values in result.history.items()})
        bar.close()
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


def describe_run(model: Any, pipelines: Pipelines, *, dtype_policy: str | None, jit_compile: bool) -> dict[str, Any]:
    """Which input path trained, on which device, with which precision and compilation (the
    certificate's ``run_info``). ``path``: ``gpu-resident``/``cpu-resident`` (split on that device,
    augmented there) or ``cpu-cached`` (host tf.data pipeline feeding ``model.fit``)."""
    tf = import_tensorflow()
    if isinstance(pipelines, ResidentPipelines):
        device = pipelines.placed_on
        info: dict[str, Any] = {
            "path": ("gpu" if ":GPU:" in device.upper() else "cpu") + "-resident",
            "device": device,
            "jit_compile": bool(jit_compile),
            "storage_dtype": pipelines.storage_dtype,
            "resident_bytes": pipelines.resident_bytes,
        }
    else:
        gpus = tf.config.list_physical_devices("GPU")
        info = {
            "path": "cpu-cached",
            "device": "/GPU:0" if gpus else "/CPU:0",
            "jit_compile": bool(model.jit_compile),  # what Keras used, whatever was asked
        }
        if jit_compile and not model.jit_compile:
            info["jit_compile_note"] = "asked for, but Keras turns XLA off under op determinism"
    return {**info, "mixed_precision": dtype_policy is not None, "dtype_policy": dtype_policy or "float32",
            "augmentation_random_algorithm": "philox"}


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
