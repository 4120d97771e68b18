"""The paper's DCNN baseline: certify a release by training Zhong's model on it (extra ``baseline``).

    from covid19_cxr_dataset.baseline import run_baseline
    certificate = run_baseline("release/", "certificate/", recipe="paper")

One module per concern: ``recipe`` (the YAML recipe and its schema), ``model`` (the DCNN),
``data`` (verify the release, decode once, tf.data pipelines), ``train`` (seeds, device, fit),
``evaluate`` (the paper's metrics, pure numpy), ``certificate`` (verdict, JSON, PNGs, summary) and
``run`` (``run_baseline``, which calls them in order). Importing this package needs no TensorFlow;
the functions that train raise ``errors.CxrDatasetError`` with the install command when it is missing.
"""

from .recipe import PAPER_RECIPE, Recipe, RecipeError, available_recipes, load_recipe
from .run import DEFAULT_SEED, run_baseline

__all__ = ["DEFAULT_SEED", "PAPER_RECIPE", "Recipe", "RecipeError", "available_recipes", "load_recipe", "run_baseline"]
