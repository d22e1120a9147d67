"""Fixtures of the Kubernetes tier: a started fake API server and clients pointed at it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fakeapi import ADMIN_USER, FakeApiServer
from tests.support.fakeapi.client import Http


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    with FakeApiServer(bookmark_interval=0.1) as server:
        yield server
    assert server.errors == [], "the fake API server failed while serving:\n" + "\n".join(
        server.errors
    )


@pytest.fixture
def http(api: FakeApiServer) -> Http:
    return Http(api.url, ADMIN_USER)


@pytest.fixture
def kubeconfig(api: FakeApiServer, tmp_path: Path) -> Path:
    return api.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def kubectl() -> str:
    """The kubectl binary; skipped when missing.

    Unlike mosquitto, kubectl is not installable from Debian's archive in CI, so its absence skips
    (the same flows run through the official Python client in the other tests).
    """
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl not found on PATH: install it to run the kubectl tests")
    return found
