"""Fixtures of the analytics tests: a local lake, one local Ray for the session, local Dask engines."""

from __future__ import annotations

import os

import pytest

from cityos_analytics.engines import Engines
from cityos_platform.lake import Lake


@pytest.fixture
def lake(tmp_path) -> Lake:
    """An empty local lake."""
    return Lake.local(tmp_path / "lake")


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray (2 CPUs) for the whole session: starting Ray takes seconds, so the Ray tests share it.
    `Engines.ray()` uses a Ray this process is already connected to."""
    import ray

    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture
def engines() -> Engines:
    """Local engines of two workers (the machine's two cores)."""
    return Engines(workers=2)
