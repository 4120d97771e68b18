"""Recipes: every number the baseline trains and judges with, as data (YAML + JSON schema).

A recipe is named (``paper`` -> ``baseline/recipes/paper.yaml`` in a checkout) or given by path.
The top-level ``baseline/`` folder is not inside the package, so an installed wheel has no recipe
files; ``PAPER_RECIPE`` below is a copy of ``paper.yaml``'s values, used for the name ``paper`` when
no checkout is found (a test keeps the two equal). A certificate records the resolved values, where
they came from and their sha256, so a run never depends on which copy was read.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .. import CLASS_NAMES
from .. import safe_load
from ..errors import CxrDatasetError

RECIPES_DIR = Path(__file__).resolve().parents[2] / "baseline" / "recipes"
"""``baseline/recipes`` of the checkout this module runs from (absent in an installed wheel)."""

REFERENCE_METRICS = (
    "accuracy",
    "precision",
    "recall",
    "macro_f1",
    "covid19_accuracy",
    "covid19_precision",
    "covid19_recall",
    *(f"{name}_{measure}" for name in CLASS_NAMES for measure in ("precision", "recall", "f1")),
)
"""Figures a recipe's ``reference`` block may state (see ``evaluate.reference_value``)."""


class RecipeError(CxrDatasetError):
    """A recipe file is missing, not YAML, or breaks the recipe schema."""


def _strict_object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
    }


_POSITIVE_INT = {"type": "integer", "minimum": 1}
_FRACTION = {"type": "number", "minimum": 0, "maximum": 1}
_RANGE = {"type": "array", "items": {"type": "number", "minimum": 0}, "minItems": 2, "maxItems": 2}
_NUMBER = {"type": "number", "minimum": 0}
_CLASS_ROWS = {"type": "object", "propertyNames": {"enum": list(CLASS_NAMES)}}

TABLE3_ROWS = ("train", "test", "covid19")
TABLE3_COLUMNS = ("loss", "accuracy", "precision", "recall")

PAPER_TABLES_SCHEMA: dict[str, Any] = _strict_object(
    {
        "table3": _strict_object({
            "source": {"type": "string", "minLength": 1},
            "rows": _strict_object({row: _strict_object({column: _NUMBER for column in TABLE3_COLUMNS}, required=[])
                                    for row in TABLE3_ROWS}, required=[]),
        }),
        "table4": _strict_object({
            "source": {"type": "string", "minLength": 1},
            "rows": {**_CLASS_ROWS, "additionalProperties": _strict_object({"mean": _FRACTION, "low": _FRACTION,
                                                                            "high": _FRACTION})},
        }),
        "table5": _strict_object({
            "source": {"type": "string", "minLength": 1},
            "rows": {**_CLASS_ROWS, "additionalProperties": {**_CLASS_ROWS, "additionalProperties": _FRACTION}},
        }),
    },
    required=[],
)
"""The paper's Tables 3 (loss, accuracy, precision, recall of train, test and the COVID-19 test images),
4 (mean predicted probability of the true class per class, with its 95% interval) and 5 (confusion
matrix as row fractions: true class -> predicted class), for the certificate's side-by-side comparison."""

RECIPE_SCHEMA: dict[str, Any] = _strict_object(
    {
        "name": {"type": "string", "minLength": 1},
        "description": {"type": "string"},
        "model": _strict_object(
            {
                "input_size": _POSITIVE_INT,
                "blocks": {
                    "type": "array",
                    "minItems": 1,
                    "items": _strict_object({"filters": _POSITIVE_INT, "convs": _POSITIVE_INT}),
                },
                "activation": {"type": "string", "enum": ["elu", "relu", "gelu", "selu", "swish"]},
                "dense": {"type": "array", "items": _POSITIVE_INT},
                "dropout": {"type": "array", "items": {"type": "number", "minimum": 0, "exclusiveMaximum": 1}},
            }
        ),
        "data": _strict_object(
            {
                "train_resize": _POSITIVE_INT,
                "resize_method": {"type": "string", "enum": ["bilinear", "nearest", "bicubic", "area", "lanczos3"]},
                "antialias": {"type": "boolean"},
            }
        ),
        "augmentation": _strict_object(
            {
                "horizontal_flip": {"type": "boolean"},
                "brightness_max_delta": {"type": "number", "minimum": 0},
                "contrast_range": _RANGE,
                "saturation_range": _RANGE,
            }
        ),
        "training": _strict_object(
            {
                "epochs": _POSITIVE_INT,
                "batch_size": _POSITIVE_INT,
                "optimizer": _strict_object(
                    {
                        "name": {"type": "string", "enum": ["adam"]},
                        "beta_1": _FRACTION,
                        "beta_2": _FRACTION,
                        "epsilon": {"type": "number", "exclusiveMinimum": 0},
                    }
                ),
                "learning_rate": _strict_object(
                    {
                        "values": {"type": "array", "minItems": 1, "items": {"type": "number", "exclusiveMinimum": 0}},
                        "boundaries": {"type": "array", "items": _POSITIVE_INT},
                    }
                ),
                "label_smoothing": _FRACTION,
                "class_weights": _strict_object({name: {"type": "number", "minimum": 0} for name in CLASS_NAMES}),
                "validate_each_epoch": {"type": "boolean"},
            }
        ),
        "evaluation": _strict_object(
            {
                "threshold": _FRACTION,
                "confidence": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                "bootstrap_resamples": {"type": "integer", "minimum": 0},
            }
        ),
        "reference": _strict_object(
            {
                "citation": {"type": "string"},
                "figures": {
                    "type": "object",
                    "propertyNames": {"enum": list(REFERENCE_METRICS)},
                    "additionalProperties": _strict_object(
                        {
                            "value": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
                            "tolerance": {"type": "number", "minimum": 0},
                            "source": {"type": "string", "minLength": 1},
                        },
                        required=["value", "source"],
                    ),
                },
                "notes": {"type": "array", "items": {"type": "string"}},
                "tables": PAPER_TABLES_SCHEMA,
            },
            required=["citation", "figures"],
        ),
    },
    required=["name", "model", "data", "augmentation", "training", "evaluation", "reference"],
)

PAPER_RECIPE: dict[str, Any] = {
    "name": "paper",
    "description": (
        "Zhong's DCNN (arXiv 2007.09695): four blocks of 3x3 ELU convolutions (2x32, 2x64, 3x128, 3x128), "
        "global max pooling of every block plus the flattened last convolution, dense 4096-2048-3."
    ),
    "model": {
        "input_size": 80,
        "blocks": [
            {"filters": 32, "convs": 2},
            {"filters": 64, "convs": 2},
            {"filters": 128, "convs": 3},
            {"filters": 128, "convs": 3},
        ],
        "activation": "elu",
        "dense": [4096, 2048],
        "dropout": [0.5, 0.4],
    },
    "data": {"train_resize": 96, "resize_method": "bilinear", "antialias": False},
    "augmentation": {
        "horizontal_flip": True,
        "brightness_max_delta": 0.1,
        "contrast_range": [0.1, 0.2],
        "saturation_range": [0.0, 5.0],
    },
    "training": {
        "epochs": 10,
        "batch_size": 32,
        "optimizer": {"name": "adam", "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1.0e-7},
        "learning_rate": {"values": [4.0e-4, 2.0e-4, 1.0e-4], "boundaries": [3, 6]},
        "label_smoothing": 0.12,
        "class_weights": {"COVID-19": 10, "Normal": 3, "Pneumonia": 1},
        "validate_each_epoch": True,
    },
    "evaluation": {"threshold": 0.5, "confidence": 0.95, "bootstrap_resamples": 2000},
    "reference": {
        "citation": (
            "Y. Zhong, Using Deep Convolutional Neural Networks to Diagnose COVID-19 From Chest X-Ray Images, "
            "arXiv:2007.09695, 2020."
        ),
        "figures": {
            "accuracy": {
                "value": 0.873,
                "tolerance": 0.03,
                "source": "the paper's abstract (87.3% accuracy on 740 test images), as quoted in the author's repository README",
            },
            "precision": {
                "value": 0.8967,
                "tolerance": 0.03,
                "source": "the paper's abstract (89.67% precision), as quoted in the author's repository README",
            },
            "recall": {
                "value": 0.8446,
                "tolerance": 0.03,
                "source": "the paper's abstract (84.46% recall), as quoted in the author's repository README",
            },
            "covid19_accuracy": {
                "value": 0.98,
                "tolerance": 0.05,
                "source": "the paper's abstract (98 of 100 COVID-19 test images classified correctly)",
            },
        },
        "notes": [
            "The author's repository (github.com/Junelin2333/COVID19-CXR, README and covid19.py) quotes an "
            "abstract with 87.3% accuracy, 89.67% precision and 84.46% recall on 740 test images, and 98 of "
            "100 COVID-19 test images correct; those are the figures above. The tolerances are this project's "
            "choice (the paper gives no spread): a rebuilt dataset and another TensorFlow give other numbers.",
            "The learning-rate stages, augmentation ranges, label smoothing, class weights and batch size are "
            "those of covid19.py in that repository.",
        ],
        "tables": {
            "table3": {
                "source": "the paper's Table 3 (Metrics), as shown in the author's repository README (assets/table3.png)",
                "rows": {
                    "train": {"loss": 0.986, "accuracy": 0.9325, "precision": 0.9463, "recall": 0.9133},
                    "test": {"loss": 0.5632, "accuracy": 0.873, "precision": 0.8967, "recall": 0.8446},
                    "covid19": {"loss": 0.4304, "accuracy": 0.98, "precision": 0.9798, "recall": 0.97},
                },
            },
            "table4": {
                "source": "the paper's Table 4 (category prediction probability of the test set, 95% interval), "
                          "as shown in the author's repository README (assets/table4.png)",
                "rows": {
                    "COVID-19": {"mean": 0.8445, "low": 0.8185, "high": 0.8705},
                    "Normal": {"mean": 0.6763, "low": 0.6462, "high": 0.7063},
                    "Pneumonia": {"mean": 0.7761, "low": 0.7541, "high": 0.7981},
                },
            },
            "table5": {
                "source": "the paper's confusion matrix of the test set (row percentages, rounded to whole percent), "
                          "as shown in the author's repository README (assets/cm.png)",
                "rows": {
                    "COVID-19": {"COVID-19": 0.98, "Normal": 0.0, "Pneumonia": 0.02},
                    "Normal": {"COVID-19": 0.04, "Normal": 0.81, "Pneumonia": 0.15},
                    "Pneumonia": {"COVID-19": 0.01, "Normal": 0.11, "Pneumonia": 0.88},
                },
            },
        },
    },
}
"""Built-in copy of ``baseline/recipes/paper.yaml`` for installs without a checkout."""


@dataclass(frozen=True)
class Recipe:
    """A validated recipe: its values, where they came from, and any run-time overrides applied."""

    values: dict[str, Any]
    source: str  # a file path, or "built-in"
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.values["name"]

    def __getitem__(self, section: str) -> Any:
        return self.values[section]

    @property
    def sha256(self) -> str:
        """Hash of the values (canonical JSON), overrides included: two runs with equal hashes used equal recipes."""
        return hashlib.sha256(json.dumps(self.values, sort_keys=True).encode()).hexdigest()

    def learning_rate(self, epoch: int) -> float:
        """The learning rate of 0-based ``epoch``: the paper's stages, from ``training.learning_rate``."""
        schedule = self.values["training"]["learning_rate"]
        stage = sum(1 for boundary in schedule["boundaries"] if epoch >= boundary)
        return float(schedule["values"][stage])

    def class_weight_by_index(self) -> dict[int, float]:
        weights = self.values["training"]["class_weights"]
        return {index: float(weights[name]) for index, name in enumerate(CLASS_NAMES)}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "sha256": self.sha256,
                "overrides": dict(self.overrides), "values": copy.deepcopy(self.values)}


def available_recipes() -> list[str]:
    """Recipe names ``load_recipe`` accepts: the checkout's recipe files, and always ``paper``."""
    names = {path.stem for path in RECIPES_DIR.glob("*.yaml")} if RECIPES_DIR.is_dir() else set()
    return sorted(names | {PAPER_RECIPE["name"]})


def load_recipe(recipe: str | Path | Recipe = "paper") -> Recipe:
    """A recipe by name (``baseline/recipes/<name>.yaml``, or built-in ``paper``) or by file path."""
    if isinstance(recipe, Recipe):
        return recipe
    text = str(recipe)
    path = Path(text).expanduser()
    looks_like_path = path.suffix in (".yaml", ".yml") or "/" in text or "\\" in text
    if looks_like_path:
        return recipe_from_file(path)
    named = RECIPES_DIR / f"{text}.yaml"
    if named.is_file():
        return recipe_from_file(named)
    if text == PAPER_RECIPE["name"]:
        return recipe_from_values(copy.deepcopy(PAPER_RECIPE), source="built-in")
    raise RecipeError(f"no recipe named {text!r}: expected {named} or a path to a .yaml file; "
                      f"known names: {', '.join(available_recipes())}")


def recipe_from_file(path: Path) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found; give a name from baseline/recipes/ or an existing path")
    try:
        values = safe_load.yaml_load(path.read_bytes())  # no aliases, UTF-8 only
    except yaml.YAMLError as error:
        raise RecipeError(f"{path}: not valid YAML: {error}") from error
    return recipe_from_values(values, source=str(path))


def recipe_from_values(values: Any, *, source: str) -> Recipe:
    validate_recipe(values, source=source)
    return Recipe(values=values, source=source)


def with_overrides(
    recipe: Recipe, *, epochs: int | None = None, batch_size: int | None = None, image_size: int | None = None
) -> Recipe:
    """A copy of ``recipe`` with run-time overrides applied, validated and recorded.

    ``image_size`` changes the model input and scales ``data.train_resize`` by the same factor, so the
    random crop keeps the paper's 80/96 proportion.
    """
    values = copy.deepcopy(recipe.values)
    overrides: dict[str, Any] = dict(recipe.overrides)
    if epochs is not None:
        values["training"]["epochs"] = epochs
        overrides["epochs"] = epochs
    if batch_size is not None:
        values["training"]["batch_size"] = batch_size
        overrides["batch_size"] = batch_size
    if image_size is not None:
        old = values["model"]["input_size"]
        values["model"]["input_size"] = image_size
        values["data"]["train_resize"] = max(image_size, round(values["data"]["train_resize"] * image_size / old))
        overrides["image_size"] = image_size
    if not overrides:
        return recipe
    validate_recipe(values, source=f"{recipe.source} with overrides {overrides}")
    return Recipe(values=values, source=recipe.source, overrides=overrides)


def validate_recipe(values: Any, *, source: str) -> None:
    """Raise RecipeError naming ``source`` and the offending key if ``values`` is not a valid recipe."""
    validator = jsonschema.Draft202012Validator(RECIPE_SCHEMA)
    errors = sorted(validator.iter_errors(values), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise RecipeError(f"{source}: {_describe(errors[0])}{more}")
    for key, problem in _semantic_problems(values):
        raise RecipeError(f"{source}: key '{key}': {problem}")


def _describe(error: jsonschema.ValidationError) -> str:
    where = ".".join(str(part) for part in error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = set(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - allowed)
        keys = ", ".join(f"'{'.'.join(filter(None, [where, str(k)]))}'" for k in unknown)
        return f"unknown key {keys}; allowed here: {', '.join(sorted(allowed))}"
    if error.validator == "required":
        return f"missing key in '{where or '<top level>'}': {error.message}"
    if "propertyNames" in error.schema_path:
        return f"key '{where}.{error.instance}': not a reference figure; allowed: {', '.join(REFERENCE_METRICS)}"
    if error.validator == "type":
        return (f"key '{where or '<top level>'}': expected {error.validator_value}, "
                f"got {error.instance!r} ({type(error.instance).__name__})")
    return f"key '{where or '<top level>'}': {error.message}"


def _semantic_problems(values: dict[str, Any]) -> list[tuple[str, str]]:
    """Rules the schema cannot say: lengths that must agree, ordered ranges, divisible sizes."""
    problems = []
    model, training = values["model"], values["training"]
    if len(model["dense"]) != len(model["dropout"]):
        problems.append(("model.dropout", f"needs one rate per dense layer: {len(model['dense'])} dense, "
                                          f"{len(model['dropout'])} dropout"))
    factor = 2 ** len(model["blocks"])
    if model["input_size"] % factor:
        problems.append(("model.input_size", f"{model['input_size']} is not divisible by {factor} "
                                             f"(2 ** {len(model['blocks'])} blocks of 2x2 pooling)"))
    if values["data"]["train_resize"] < model["input_size"]:
        problems.append(("data.train_resize", f"{values['data']['train_resize']} is smaller than the "
                                              f"{model['input_size']} crop (model.input_size)"))
    if (values["data"]["resize_method"], values["data"]["antialias"]) != ("bilinear", False):
        problems.append(("data.resize_method", f"{values['data']['resize_method']!r} with antialias "
                                               f"{values['data']['antialias']}: the baseline resizes on the host "
                                               "with the reference code's resize only (bilinear, antialias false)"))
    schedule = training["learning_rate"]
    if len(schedule["values"]) != len(schedule["boundaries"]) + 1:
        problems.append(("training.learning_rate", "needs one more value than boundaries"))
    if schedule["boundaries"] != sorted(set(schedule["boundaries"])):
        problems.append(("training.learning_rate.boundaries", "must be strictly increasing"))
    for key in ("contrast_range", "saturation_range"):
        low, high = values["augmentation"][key]
        if not low < high:
            problems.append((f"augmentation.{key}", f"lower bound {low} must be below upper bound {high}"))
    for name, figure in values["reference"]["figures"].items():
        if figure["value"] is not None and "tolerance" not in figure:
            problems.append((f"reference.figures.{name}.tolerance", "a stated value needs a tolerance"))
    return problems
