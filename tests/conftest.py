"""Fixtures every tier shares: a fabric secret. Broker fixtures live in tests/support/brokers.py."""

from __future__ import annotations

import pytest

TEST_SECRET = b"test-secret-0123456789abcdef"


@pytest.fixture
def secret() -> bytes:
    return TEST_SECRET


# Broker fixtures (`any_broker`, `mosquitto`, `embedded`, `broker_factory`): tests/support/fixtures.py
pytest_plugins = ["tests.support.fixtures"]
