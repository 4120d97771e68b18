"""The package's layout rules, checked on its source: where kind names and sockets may appear."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "covid19_cxr_dataset"
NETWORK_MODULES = {"requests", "urllib3", "socket", "http.client", "urllib.request", "httpx", "aiohttp"}


def _modules(skip: str | None = None):
    for path in sorted(PACKAGE.rglob("*.py")):
        if skip and skip in path.relative_to(PACKAGE).parts:
            continue
        yield path, ast.parse(path.read_text(encoding="utf-8"))


def test_no_module_outside_sources_tests_a_kind_name():
    """A kind name compared or looked up outside sources/ would make a new kind touch that module."""
    kinds = {"github", "kaggle", "dicom"}
    offenders = []
    for path, tree in _modules(skip="sources"):
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and any(isinstance(c, ast.Constant) and c.value in kinds for c in node.comparators):
                offenders.append(f"{path.name}:{node.lineno}")
            if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value == "kind":
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


def test_only_download_opens_a_socket():
    """pooch's rule: one download package; the Hub upload (hub.py, through huggingface_hub) aside."""
    offenders = []
    for path, tree in _modules(skip="download"):
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(name in NETWORK_MODULES or name.split(".")[0] in {"requests", "urllib3", "socket"} for name in names):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == []


def test_every_subpackage_ships_in_the_wheel():
    """pyproject.toml lists packages by hand (builder_manifests/ is mapped in as _manifests); a
    subpackage missing there would be absent after `pip install .` while every editable test passes."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    listed = set(tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"])
    found = {".".join(("covid19_cxr_dataset", *p.parent.relative_to(PACKAGE).parts)) for p in PACKAGE.rglob("__init__.py")}
    assert found - listed == set()


# ---- imports point one way: down the layers ------------------------------------------------------

LAYERS = [
    ("__init__", "errors", "interrupts"),         # names every module shares; signals and worker processes
    ("records", "safe_load", "progress"),         # the record table; readers for handed-in text; progress bars
    ("download",),                                # the only sockets
    ("release",),                                 # a release folder as every reader sees it
    ("staging",),                                 # the output folder (reads a release's report)
    ("archive",),                                 # safe zip extraction (renames into place through staging)
    ("sources",),                                 # SOURCES stage
    ("manifest",),                                # a release's facts, typed (its sources are sources/ objects)
    ("filters", "split", "citation", "naming", "convert", "near_duplicates", "audit", "columns"),
    ("counts", "missing", "shards", "convert_cache", "evidence", "locks", "anchors", "card_sections", "report_shape"),
    ("options", "card"),
    ("croissant",),                               # croissant.json (reads the card's license words)
    ("generated",),                               # every generated file of a release: card, croissant.json, unpinned list
    ("plan", "report", "verify", "hub_release"),
    ("fetch", "variant", "hub"),
    ("build",),                                   # the order of the stages
    ("baseline",),                                # the optional training extra
    ("cli_verbosity", "cli_options"),             # click helpers the commands share
    ("cli",),                                     # click commands
    ("__main__",),                                # the cxr-dataset program: signals from its first line
]
"""Bottom to top: a module imports only from layers below its own (never beside or above it), so the
package has no import cycle. A subpackage is one unit; imports inside it are its own business."""


def _unit(module: str) -> str:
    return module.split(".")[0] if module else "__init__"


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _package_imports(path: Path, root: Path = PACKAGE) -> set[str]:
    """The package modules ``path`` imports, at module level or inside functions (what runs), not
    under ``if TYPE_CHECKING:``; as dotted names relative to the package at ``root``."""
    relative = path.relative_to(root).with_suffix("").parts
    package = list(relative[:-1])
    modules = {".".join(p.relative_to(root).with_suffix("").parts) for p in root.rglob("*.py")}
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit_one(other)
                continue
            visit_one(child)

    def visit_one(child: ast.AST) -> None:
        if isinstance(child, ast.ImportFrom) and child.level:
            base = package[: len(package) - (child.level - 1)]
            target = [*base, *(child.module.split(".") if child.module else [])]
            if child.module is None:  # from . import a, b: each may be a module
                for alias in child.names:
                    name = ".".join([*target, alias.name])
                    found.add(name if name in modules or f"{name}.__init__" in modules else ".".join(target))
            else:
                found.add(".".join(target))
        elif isinstance(child, ast.ImportFrom) and (child.module or "").startswith("covid19_cxr_dataset"):
            found.add(child.module.removeprefix("covid19_cxr_dataset").lstrip("."))
        elif isinstance(child, ast.Import):
            found.update({a.name.removeprefix("covid19_cxr_dataset").lstrip(".") for a in child.names if a.name.startswith("covid19_cxr_dataset")})
        visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def _package_units() -> dict[str, set[str]]:
    """{unit: units it imports} over every module of the package (builder manifests aside)."""
    edges: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        unit = "__init__" if parts == ("__init__",) else parts[0]
        edges.setdefault(unit, set()).update(_unit(t) for t in _package_imports(path) if _unit(t) != unit)
    return edges


def test_every_module_has_a_layer():
    declared = [unit for layer in LAYERS for unit in layer]
    assert len(declared) == len(set(declared))
    assert set(_package_units()) == set(declared)


def test_imports_point_down_the_layers():
    """Function-level imports count (they run); ``if TYPE_CHECKING:`` ones do not."""
    level = {unit: index for index, layer in enumerate(LAYERS) for unit in layer}
    upward = [f"{unit} -> {target}" for unit, targets in sorted(_package_units().items())
              for target in sorted(targets) if level[target] >= level[unit]]
    assert upward == []


def test_only_baseline_and_cli_import_the_training_extra():
    """``baseline`` is the optional extra (TensorFlow-facing): the core package never imports it."""
    offenders = [unit for unit, targets in _package_units().items() if "baseline" in targets and unit not in ("baseline", "cli")]
    assert offenders == []


def test_no_module_over_600_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text(encoding="utf-8").splitlines())) > 600}
    assert long == {}


def test_the_layer_check_sees_function_level_imports_and_skips_type_checking(tmp_path):
    """The scan itself: an import inside a function counts, one under TYPE_CHECKING does not."""
    package = tmp_path / "covid19_cxr_dataset"
    package.mkdir()
    (package / "low.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .high import X\n\n"
        "def f():\n    from . import high\n", encoding="utf-8")
    (package / "high.py").write_text("X = 1\n", encoding="utf-8")
    (package / "other.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import high\n", encoding="utf-8")
    assert _package_imports(package / "low.py", package) == {"high"}
    assert _package_imports(package / "other.py", package) == set()
