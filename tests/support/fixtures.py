"""pytest fixtures for real brokers (loaded from tests/conftest.py through `pytest_plugins`).

- `mosquitto`: a real mosquitto from our generated config (skipped when missing, failing under
  CI=true); `embedded`: `devicefabric broker run`; `any_broker`: parametrized over both (test ids
  `[mosquitto]`/`[embedded]`). Each is a started `BrokerProcess`, stopped after the test.
- mosquitto only knows the devices it was generated for: `DEFAULT_DEVICES`, or the names given
  with `@pytest.mark.fabric_devices("a", "b")`; `@pytest.mark.fabric_revoked("c")` revokes devices
  (disabled in mosquitto's config, `--revoked-file` for the embedded broker).
- `broker_factory(kind, devices=..., revoked=..., port=...)`: a factory for tests that need several
  brokers or their own lists; everything it started is stopped at teardown.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Final, Protocol

import pytest

from tests.support.brokers import (
    KIND_PARAMS,
    BrokerKind,
    BrokerProcess,
    prepare,
)

DEFAULT_DEVICES: Final = (
    "tor9-99",
    "dev-a",
    "dev-b",
    "dev-c",
    "dev-d",
    *(f"device-{i}" for i in range(1, 11)),
)


class BrokerFactory(Protocol):
    def __call__(
        self,
        kind: BrokerKind,
        *,
        devices: Iterable[str] | None = None,
        revoked: Iterable[str] = (),
        port: int | None = None,
    ) -> BrokerProcess: ...


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "fabric_devices(*names): the devices a generated mosquitto config knows"
    )
    config.addinivalue_line("markers", "fabric_revoked(*names): devices the broker refuses")


def _marker_names(request: pytest.FixtureRequest, name: str) -> tuple[str, ...] | None:
    marker = request.node.get_closest_marker(name)
    return None if marker is None else tuple(str(a) for a in marker.args)


@pytest.fixture
def broker_factory(tmp_path: Path, secret: bytes) -> Iterator[BrokerFactory]:
    started: list[BrokerProcess] = []

    def make(
        kind: BrokerKind,
        *,
        devices: Iterable[str] | None = None,
        revoked: Iterable[str] = (),
        port: int | None = None,
    ) -> BrokerProcess:
        names = DEFAULT_DEVICES if devices is None else tuple(devices)
        broker = prepare(kind, tmp_path, secret, names, revoked=revoked, port=port)
        started.append(broker)
        broker.start()
        return broker

    try:
        yield make
    finally:
        for broker in reversed(started):
            broker.stop()


def _from_markers(
    request: pytest.FixtureRequest, make: BrokerFactory, kind: BrokerKind
) -> BrokerProcess:
    devices = _marker_names(request, "fabric_devices")
    revoked = _marker_names(request, "fabric_revoked") or ()
    if devices is not None:
        devices = (*devices, *(r for r in revoked if r not in devices))
    return make(kind, devices=devices, revoked=revoked)


@pytest.fixture(params=KIND_PARAMS)
def any_broker(request: pytest.FixtureRequest, broker_factory: BrokerFactory) -> BrokerProcess:
    kind: BrokerKind = request.param
    return _from_markers(request, broker_factory, kind)


@pytest.fixture
def mosquitto(request: pytest.FixtureRequest, broker_factory: BrokerFactory) -> BrokerProcess:
    return _from_markers(request, broker_factory, "mosquitto")


@pytest.fixture
def embedded(request: pytest.FixtureRequest, broker_factory: BrokerFactory) -> BrokerProcess:
    return _from_markers(request, broker_factory, "embedded")
