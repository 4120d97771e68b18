"""The Keras 3 backend the baseline trains on (TensorFlow, JAX or PyTorch), and lazy imports.

The rest of the package must import without any deep-learning framework, so every baseline module
gets Keras through ``import_keras`` inside the function that needs it, never at module level. The
backend is chosen the Keras way: ``KERAS_BACKEND`` (``tensorflow``, the default; ``jax``;
``torch``), which ``select_backend`` (``cxr-dataset baseline --backend``) sets before Keras is
imported. Keras reads it once per process, so a process that has imported Keras trains on that
backend only; another backend needs another process.

Determinism switches that a framework reads from the environment when it starts (XLA's flag for
deterministic GPU kernels under JAX, cuBLAS's workspace setting under PyTorch) are set by
``prepare_backend`` before the import; the ones that are set at run time (TensorFlow's op
determinism, PyTorch's deterministic algorithms) by ``apply_determinism``. Both are recorded in the
certificate as found in effect (``determinism_record``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from typing import Any

from ..errors import CxrDatasetError

BACKENDS = ("tensorflow", "jax", "torch")
DEFAULT_BACKEND = "tensorflow"
EXTRAS = {"tensorflow": "baseline", "jax": "baseline-jax", "torch": "baseline-torch"}
FRAMEWORK_DISTRIBUTIONS = {"tensorflow": ("tensorflow", "tensorflow-cpu"), "jax": ("jax",), "torch": ("torch",)}
JAX_DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops=true"
"""XLA's switch for deterministic GPU kernels (scatter, reductions); read once, when JAX starts."""
CUBLAS_WORKSPACE = ":4096:8"
"""cuBLAS needs a fixed workspace to be deterministic; read once, when CUDA starts."""


def install_hint(backend: str) -> str:
    return f"pip install 'covid19-cxr-dataset[{EXTRAS.get(backend, 'baseline')}]'"


def installed_backends() -> list[str]:
    """The backends whose framework can be imported here (without importing it)."""
    return [name for name in BACKENDS if importlib.util.find_spec(name) is not None]


def requested_backend() -> str:
    """The backend Keras will use (or uses): Keras's own if imported, else ``KERAS_BACKEND``, else TensorFlow."""
    keras = sys.modules.get("keras")
    if keras is not None:
        return keras.backend.backend()
    return os.environ.get("KERAS_BACKEND") or DEFAULT_BACKEND


def select_backend(name: str | None) -> str:
    """Make ``name`` the backend Keras loads (sets ``KERAS_BACKEND``); None keeps the current choice.

    Raises CxrDatasetError for an unknown name, or when Keras is already imported with another
    backend in this process (Keras cannot switch; start a new process).
    """
    if name is None:
        name = requested_backend()
    if name not in BACKENDS:
        raise CxrDatasetError(f"backend {name!r}: expected one of {', '.join(BACKENDS)} (Keras 3 backends)")
    keras = sys.modules.get("keras")
    if keras is not None and keras.backend.backend() != name:
        raise CxrDatasetError(
            f"Keras is already imported in this process with the {keras.backend.backend()!r} backend, so the "
            f"baseline cannot train on {name!r} here; run it in a new process (KERAS_BACKEND={name} or "
            f"`cxr-dataset baseline --backend {name}`)")
    os.environ["KERAS_BACKEND"] = name
    return name


def prepare_backend(name: str | None = None, *, deterministic: bool = True) -> str:
    """Select the backend and set the determinism switches its framework reads when it starts.

    Only effective before that framework is imported in this process; afterwards what is in effect
    is what ``determinism_record`` reports.
    """
    backend = select_backend(name)
    if deterministic and backend == "jax" and "jax" not in sys.modules:
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_gpu_deterministic_ops" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} {JAX_DETERMINISTIC_FLAG}".strip()
    if deterministic and backend == "torch" and "torch" not in sys.modules:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    _startup_defaults(backend)
    return backend


def _startup_defaults(backend: str) -> None:
    if backend == "tensorflow":
        # TensorFlow logs a screenful of C++ INFO lines on import; keep errors and warnings only
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if backend == "jax":
        # one process, one model: JAX need not reserve 75% of the GPU's memory up front
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def import_framework(backend: str | None = None) -> Any:
    """The backend's framework module (``tensorflow``, ``jax``, ``torch``), or CxrDatasetError saying how
    to install it."""
    backend = backend or requested_backend()
    try:
        return importlib.import_module(backend)
    except ImportError as error:
        others = [name for name in installed_backends() if name != backend]
        also = f"; installed here: {', '.join(others)} (choose one with --backend or KERAS_BACKEND)" if others else ""
        raise CxrDatasetError(
            f"the baseline's Keras backend is {backend!r}, which is not installed ({error}); run: "
            f"{install_hint(backend)}{also}") from error


def import_keras() -> Any:
    """``keras`` on the selected backend (its framework imported first, with a clear error if missing)."""
    backend = select_backend(None)
    _startup_defaults(backend)
    import_framework(backend)
    try:
        import keras
    except ImportError as error:
        raise CxrDatasetError(f"the baseline needs Keras 3, which is not installed ({error}); run: "
                              f"{install_hint(backend)}") from error
    if not hasattr(keras, "ops"):
        raise CxrDatasetError(f"the baseline needs Keras 3, found Keras {keras.__version__}; run: {install_hint(backend)}")
    return keras


def import_tensorflow() -> Any:
    """``tensorflow``, for the code that only runs on that backend."""
    return import_framework("tensorflow")


def backend_version(backend: str) -> str:
    for distribution in FRAMEWORK_DISTRIBUTIONS[backend]:
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return getattr(sys.modules.get(backend), "__version__", "unknown")


def accelerator() -> dict[str, Any]:
    """The device the backend trains on: {"device": "GPU" or "CPU", "name", "count"}; "name" is None on a CPU."""
    backend = import_keras().backend.backend()
    if backend == "tensorflow":
        tf = import_tensorflow()
        gpus = tf.config.list_physical_devices("GPU")
        names = [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name) for gpu in gpus]
    elif backend == "jax":
        import jax

        names = [device.device_kind for device in jax.devices() if device.platform == "gpu"]
    else:
        import torch

        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
            if torch.cuda.is_available() else []
    return {"device": "GPU" if names else "CPU", "name": names[0] if names else None, "count": len(names)}


def configure_devices() -> None:
    """TensorFlow: memory growth on every GPU (the process does not grab all their memory at once)."""
    if import_keras().backend.backend() != "tensorflow":
        return
    tf = import_tensorflow()
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialized by an earlier call in this process
            pass


def apply_determinism(seed: int, *, deterministic: bool, on_gpu: bool) -> None:
    """Seed Python, numpy and the backend; switch the backend's deterministic kernels on or off.

    TensorFlow's op determinism and PyTorch's deterministic algorithms are process-wide; without
    ``deterministic`` they are switched off again, so a run's setting never leaks from an earlier
    run in the same process. PyTorch has no deterministic CUDA kernel for some backward passes
    (it would stop the run), so on a GPU it warns instead (``warn_only``; recorded). JAX's switch is
    the XLA flag ``prepare_backend`` sets before JAX starts (a CPU's XLA is deterministic anyway).
    """
    keras = import_keras()
    keras.utils.set_random_seed(seed)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        tf = import_tensorflow()
        if deterministic:
            tf.config.experimental.enable_op_determinism()
        else:
            from tensorflow.python.framework import config as tf_config  # not exported under tf.config

            tf_config.disable_op_determinism()
    elif backend == "torch":
        import torch

        torch.use_deterministic_algorithms(deterministic, warn_only=deterministic and on_gpu)
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cudnn.benchmark = not deterministic


def determinism_record() -> dict[str, Any]:
    """The determinism switches in effect now, as the backend reports them."""
    backend = import_keras().backend.backend()
    if backend == "tensorflow":
        from tensorflow.python.framework import config as tf_config

        return {"switch": "tf.config.experimental.enable_op_determinism",
                "enabled": bool(tf_config.is_op_determinism_enabled())}
    if backend == "jax":
        flags = os.environ.get("XLA_FLAGS", "")
        return {"switch": f"XLA_FLAGS={JAX_DETERMINISTIC_FLAG} (GPU kernels; XLA on a CPU is deterministic)",
                "enabled": JAX_DETERMINISTIC_FLAG in flags.split(), "xla_flags": flags}
    import torch

    return {"switch": "torch.use_deterministic_algorithms, cudnn.deterministic",
            "enabled": bool(torch.are_deterministic_algorithms_enabled()),
            "warn_only": bool(torch.is_deterministic_algorithms_warn_only_enabled()),
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
            "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG")}


def float32_matmul_precision() -> str:
    """How the backend computes float32 matrix products and convolutions on this device (TF32 or full)."""
    backend = import_keras().backend.backend()
    if backend == "tensorflow":
        tf = import_tensorflow()
        allowed = tf.config.experimental.tensor_float_32_execution_enabled()
        return "TF32 allowed on Ampere and newer GPUs" if allowed else "float32"
    if backend == "jax":
        import jax

        setting = jax.config.jax_default_matmul_precision
        return f"jax_default_matmul_precision={setting}" + (" (TF32 on Ampere and newer GPUs)" if setting is None else "")
    import torch

    return (f"torch float32_matmul_precision={torch.get_float32_matmul_precision()}, "
            f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}")


def describe_backend() -> dict[str, Any]:
    """Name and version of the backend and of Keras, and the device it trains on."""
    keras = import_keras()
    backend = keras.backend.backend()
    device = accelerator()
    return {"name": backend, "version": backend_version(backend), "keras": keras.__version__,
            "device": device["device"], "device_name": device["name"], "device_count": device["count"]}


def import_figure() -> Any:
    """Return ``matplotlib.figure.Figure``.

    Figures made from this class directly render with Agg and never touch pyplot's global backend,
    so the baseline works headless and does not change the caller's matplotlib state.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise CxrDatasetError(
            f"the baseline's plots need matplotlib, which is not installed ({error}); run: "
            f"{install_hint(requested_backend())}"
        ) from error
    return Figure
