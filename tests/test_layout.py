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
