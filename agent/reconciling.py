"""Reconciling desired processes against running ones (pure): `desired + running -> plan`.

The agent is level-based like a Kubernetes controller: it never replays events, it compares the
whole desired document with what it runs now and derives the smallest set of actions.

Invariants:

- An entry is identified by its key `<namespace>/<name>`. It is left alone while its `uid`,
  `generation` and `spec` are all equal to what runs; a change to any of them restarts that entry
  and no other (a change to one process never touches another one's pid).
- A key that is no longer desired is stopped; a new key is started.
- `suspend: true` is a spec like any other: the supervisor runs a suspended entry as "stopped",
  so suspending or resuming is a restart of that one entry.
- A desired document is accepted only as a whole: when any entry names another device, or a key
  appears twice, the document is rejected and nothing changes.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from devicefabric.agent.errors import AgentError
from devicefabric.config.lean import Desired, ProcessSpec


@dataclass(frozen=True, slots=True)
class Want:
    """One desired process: what the supervisor runs under `key`."""

    key: str
    uid: str
    generation: int
    spec: ProcessSpec

    def same_as(self, other: Want) -> bool:
        """True when running `other` already satisfies this entry (no restart needed)."""
        return (
            self.uid == other.uid
            and self.generation == other.generation
            and self.spec == other.spec
        )


class ActionKind(enum.StrEnum):
    START = "start"
    STOP = "stop"
    RESTART = "restart"


@dataclass(frozen=True, slots=True)
class Action:
    """Start or restart `want`, or stop what runs under `key` (`want` is None)."""

    kind: ActionKind
    key: str
    want: Want | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """The actions that turn the running set into the desired one, stops first."""

    actions: tuple[Action, ...]
    unchanged: tuple[str, ...]

    def keys(self, kind: ActionKind) -> list[str]:
        return [a.key for a in self.actions if a.kind is kind]

    @property
    def empty(self) -> bool:
        return not self.actions


class RejectedDesiredError(AgentError):
    """A well-formed desired document this agent must not apply as a whole."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason  # "other_device" | "duplicate_key"
        self.detail = detail
        super().__init__(f"desired document rejected ({reason}): {detail}")


def wants_of(doc: Desired, device: str) -> dict[str, Want]:
    """The entries of `doc` by key; raise `RejectedDesiredError` unless all are for `device`."""
    wants: dict[str, Want] = {}
    for proc in doc.processes:
        if proc.spec.device_name != device:
            raise RejectedDesiredError(
                "other_device",
                f"{proc.key} has spec.deviceName {proc.spec.device_name!r}, this is {device!r}",
            )
        if proc.key in wants:
            raise RejectedDesiredError("duplicate_key", f"{proc.key} appears more than once")
        wants[proc.key] = Want(proc.key, proc.uid, proc.generation, proc.spec)
    return wants


def reconcile(desired: Mapping[str, Want], running: Mapping[str, Want]) -> Plan:
    """The plan from `running` (what the supervisor runs now) to `desired`."""
    restarts: list[Action] = []
    starts: list[Action] = []
    unchanged: list[str] = []
    stops = [Action(ActionKind.STOP, key) for key in sorted(running.keys() - desired.keys())]
    for key in sorted(desired):
        want = desired[key]
        current = running.get(key)
        if current is None:
            starts.append(Action(ActionKind.START, key, want))
        elif want.same_as(current):
            unchanged.append(key)
        else:
            restarts.append(Action(ActionKind.RESTART, key, want))
    return Plan(tuple(stops + restarts + starts), tuple(unchanged))
