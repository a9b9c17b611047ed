"""Runs before any test imports JAX: 8 virtual CPU devices for the sharding tests."""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(__file__))


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    """A small synthetic catalog and split with a briefly trained retriever (shared, ~15 s)."""
    from retrieval_helpers import train_small_run

    return train_small_run(str(tmp_path_factory.mktemp("small_run")))
