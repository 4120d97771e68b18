"""Shared test fixtures: the loopback server, the synthetic world and the real-fixture tier."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # test helpers (loopback, synthetic, factories)

from loopback import LoopbackServer, loopback_server, make_server  # noqa: E402,F401

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
