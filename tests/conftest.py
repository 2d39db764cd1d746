"""Test-wide isolation: every test session gets its own MAAS_HOME, Prefect home and BentoML home.

Set in pytest_configure, before any test module imports prefect or bentoml (both read
their home folder from the environment on first use), so no test writes into the repo
or the user's home.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from tests.sandbox import make_project  # noqa: F401  (the flow tests import it from here)

REPO = Path(__file__).resolve().parents[1]
_STATE = Path(tempfile.mkdtemp(prefix="maas-tests-"))


def pytest_configure(config):
    os.environ["MAAS_HOME"] = str(_STATE / "maas-home")
    os.environ["PREFECT_HOME"] = str(_STATE / "prefect")
    os.environ["BENTOML_HOME"] = str(_STATE / "bentoml")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_STATE / 'mlflow.db'}"
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
    os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"


def pytest_unconfigure(config):
    shutil.rmtree(_STATE, ignore_errors=True)


@pytest.fixture(scope="session")
def state_dir() -> Path:
    return _STATE


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server for the whole session (a harness per test is slow)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def python_exe() -> str:
    return sys.executable
