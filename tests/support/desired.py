"""Desired documents as the bridge sends them and the agent reads them, for the agent's tests."""

from __future__ import annotations

from typing import Any

from devicefabric.agent.reconciling import Want
from devicefabric.config import lean
from devicefabric.config.resource import DeviceProcessSpec
from devicefabric.config.wire import Desired, DesiredProcess, encode, make_desired
from tests.support.resources import NAMESPACE, key

DEVICE = "tor9-99"


def spec(command: list[str], device: str = DEVICE, **fields: Any) -> DeviceProcessSpec:
    return DeviceProcessSpec(device_name=device, command=command, **fields)


def lean_of(doc: Desired) -> lean.Desired:
    """The agent's (pydantic-free) form of a desired document built with the wire models."""
    return lean.decode_desired(encode(doc))


def lean_spec(model: DeviceProcessSpec) -> lean.ProcessSpec:
    """The agent's form of a spec built with the resource model."""
    entry = DesiredProcess(namespace=NAMESPACE, name="x", uid="u", generation=1, spec=model)
    return lean_of(make_desired([entry])).processes[0].spec


def want(name: str, command: list[str], generation: int = 1, **fields: Any) -> Want:
    return Want(key(name), f"uid-{name}", generation, lean_spec(spec(command, **fields)))


def desired_process(
    name: str, command: list[str], generation: int = 1, device: str = DEVICE, **fields: Any
) -> DesiredProcess:
    return DesiredProcess(
        namespace=NAMESPACE,
        name=name,
        uid=f"uid-{name}",
        generation=generation,
        spec=spec(command, device=device, **fields),
    )


def document(*processes: DesiredProcess) -> Desired:
    return make_desired(list(processes))
