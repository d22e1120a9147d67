"""Helpers for the agent's tests: desired entries and documents, and "is this pid alive"."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from devicefabric.agent.reconciling import Want
from devicefabric.config import lean
from devicefabric.config.resource import DeviceProcessSpec
from devicefabric.config.wire import Desired, DesiredProcess, encode, make_desired

DEVICE = "tor9-99"
NAMESPACE = "default"


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
    key = f"{NAMESPACE}/{name}"
    return Want(key, f"uid-{name}", generation, lean_spec(spec(command, **fields)))


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


def key(name: str) -> str:
    return f"{NAMESPACE}/{name}"


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (PID 1 here may be slow to reap orphans)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def kill_all(pids: Iterable[int]) -> None:
    """Teardown: SIGKILL every pid (and its group) a test saw; gone ones are ignored."""
    for pid in set(pids):
        for send in (os.killpg, os.kill):
            with contextlib.suppress(OSError):
                send(pid, signal.SIGKILL)
