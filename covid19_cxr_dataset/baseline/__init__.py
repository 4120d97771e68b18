"""The paper's DCNN baseline: certify a release by training Zhong's model on it (Keras 3 on TensorFlow,
JAX or PyTorch; extras ``baseline``, ``baseline-jax``, ``baseline-torch``).

    from covid19_cxr_dataset.baseline import run_baseline
    certificate = run_baseline("release/", "certificate/", recipe="paper", backend="jax")

One module per concern: ``_backend`` (which Keras backend, chosen before Keras is imported; its
determinism switches and device), ``recipe`` (the YAML recipe and its schema), ``data`` (verify the
release, decode and resize once on the host, numpy batches), ``augment`` (augmentation parameters
drawn on the host, applied in the compiled step), ``model`` (the DCNN and its training wrapper),
``train`` (compile, fit one epoch at a time, predict), ``evaluate`` (the paper's metrics, pure
numpy), ``certificate`` (verdict, JSON, PNGs, summary) and ``run`` (``run_baseline``, which calls
them in order). Importing this package needs no deep-learning framework; the functions that train
raise ``errors.CxrDatasetError`` with the install command of the chosen backend when it is missing.
"""

from .recipe import PAPER_RECIPE, Recipe, RecipeError, available_recipes, load_recipe
from .run import DEFAULT_SEED, run_baseline

__all__ = ["DEFAULT_SEED", "PAPER_RECIPE", "Recipe", "RecipeError", "available_recipes", "load_recipe", "run_baseline"]
