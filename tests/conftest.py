"""Shared test fixtures: the loopback server, the synthetic worlds and the real-fixture tier.

The synthetic world (tests/synthetic.make_world: sources to serve, a Kaggle zip, a manifest folder):
``world`` is made once per session and shared, so tests that take it only read it (they build into
their own tmp_path and copy the manifest before editing it); ``fresh_world`` is a test's own, to
edit; ``configs_world`` is the configurations world (``make_world(..., configs=True)``), shared like
``world``. A test module may still declare a fixture of one of these names: pytest's nearest
definition wins, in that module only.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # test helpers (loopback, synthetic, factories)

from loopback import LoopbackServer, loopback_server, make_server  # noqa: E402,F401
from synthetic import World, make_world  # noqa: E402

REAL_FIXTURES_ENV = "COVID19_CXR_REAL_FIXTURES"


@pytest.fixture(scope="session")
def real_fixtures() -> Path:
    """../shared/fixtures/real, located by $COVID19_CXR_REAL_FIXTURES; tests using it skip without it."""
    value = os.environ.get(REAL_FIXTURES_ENV)
    if not value or not Path(value).is_dir():
        pytest.skip(f"real fixtures not available (set {REAL_FIXTURES_ENV} to ../shared/fixtures/real)")
    return Path(value)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """No test touches the user's cache or Kaggle credentials."""
    monkeypatch.setenv("COVID19_CXR_CACHE", str(tmp_path_factory.mktemp("default-cache")))
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path_factory.mktemp("no-kaggle-config")))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf-datasets-cache")))


def _world_state(world: World) -> dict[str, str]:
    """sha256 of every file under the world's folder and of every served body: what a test may not change."""
    files = {str(p.relative_to(world.root)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(world.root.rglob("*")) if p.is_file()}
    served = {f"served:{path}": hashlib.sha256(data).hexdigest() for path, data in world.served.items()}
    return {**files, **served}


def _shared_world(root: Path, **options) -> Iterator[World]:
    """A world shared by many tests, checked at teardown: an edit made by any test (which should
    have taken ``fresh_world``) is reported as an error at the end of the session, naming the files."""
    world = make_world(root, **options)
    before = _world_state(world)
    yield world
    after = _world_state(world)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"a test edited the shared synthetic world ({root}): {changed[:10]}; use fresh_world to edit one"


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Iterator[World]:
    """The synthetic world, shared by every test of the session: read it, never edit it."""
    yield from _shared_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="session")
def configs_world(tmp_path_factory) -> Iterator[World]:
    """The configurations world (``paper`` and ``curated``, tests/synthetic.py), shared like ``world``."""
    yield from _shared_world(tmp_path_factory.mktemp("configs-world"), configs=True)


@pytest.fixture
def fresh_world(tmp_path) -> World:
    """A synthetic world of this test's own, at ``tmp_path / "world"``: edit its manifest, files and archive freely."""
    return make_world(tmp_path / "world")
