"""Shared fixtures."""

from __future__ import annotations

import pytest

from tests.builders import World


@pytest.fixture
def world() -> World:
    return World()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
