"""Lazy imports of the optional ``baseline`` extra (TensorFlow, matplotlib).

The rest of the package must import without TensorFlow, so every baseline module imports it through
these functions, inside the function that needs it, never at module level.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import CxrDatasetError

INSTALL_HINT = "pip install 'covid19-cxr-dataset[baseline]'"


def import_tensorflow() -> Any:
    """Return the ``tensorflow`` module, or raise CxrDatasetError saying how to install it."""
    # TensorFlow logs a screenful of C++ INFO lines on import; keep errors and warnings only,
    # unless the user chose a level.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError as error:
        raise CxrDatasetError(
            f"the baseline needs TensorFlow, which is not installed ({error}); run: {INSTALL_HINT}"
        ) from error
    return tf


def import_keras() -> Any:
    import_tensorflow()
    import keras

    return keras


def import_figure() -> Any:
    """Return ``matplotlib.figure.Figure``.

    Figures made from this class directly render with Agg and never touch pyplot's global backend,
    so the baseline works headless and does not change the caller's matplotlib state.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise CxrDatasetError(
            f"the baseline's plots need matplotlib, which is not installed ({error}); run: {INSTALL_HINT}"
        ) from error
    return Figure
