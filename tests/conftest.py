"""Shared fixtures."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

from tests.builders import World

# CI runs every property and fuzz test on a fixed sequence of examples (derandomized: a submission
# cannot fail on a draw no one has seen) and without per-example deadlines (these hosts are noisy);
# elsewhere Hypothesis explores new examples on every run. `HYPOTHESIS_PROFILE=ci` reproduces CI.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))

# The exchange seals consumer numbers under a master key (README: Privacy); PostgreSQL has no
# "next to the database file" for a generated one, so every server and tool a test starts gets
# this one (tests of the generated key and of a wrong key set or drop it themselves).
TEST_MASTER_KEY = "dGVzdC1tYXN0ZXIta2V5LTMyLWJ5dGVzLWxvbmchISE="  # base64 of 32 bytes
os.environ.setdefault("EXCHANGE_MASTER_KEY", TEST_MASTER_KEY)


@pytest.fixture
def world() -> World:
    return World()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
