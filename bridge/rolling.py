"""A DeviceProcessSet's reconcile, pure: (the set, the devices it selects, what it owns) -> actions.

`plan_set` is level-based, like a DaemonSet controller: it looks at the state now and says which
owned DeviceProcesses to create, switch to the current template, or delete, and what the set's
status should read. The caller carries the actions out and calls it again on the next change.

Rules:
- Every selected device gets one owned process (`config.fleet.owned_name`), created from the
  current template at once; a device that stops matching loses its process. A name already taken
  by a process the set does not own is a conflict: nothing is written for that device and the set
  reads `Progressing=False/NameConflict`.
- `RollingUpdate`: a process on an old template is switched when that does not make more than
  `budget(maxUnavailable)` selected devices unavailable at once. Processes that are unavailable
  anyway (device disconnected, crashing) are switched first, since that costs nothing; then
  available ones, in device-name order, while room is left. Devices ordered before `partition`
  keep the old template. `paused` switches nothing (creates and deletes go on: they follow the
  selector, not the template). `OnDelete` switches nothing: a process deleted by the operator is
  created again from the current template.
- A device is available when its process is at the process's own generation (`observedGeneration`)
  in phase Running (or Succeeded) and its agent is connected. A disconnected device counts as
  unavailable and uses up budget; it never blocks the rest beyond that.
- Failure: a device on the current template that failed (the caller decides: its deadline
  passed, or it crashes at the new generation) counts; more than `maxFailures` of them fail the
  rollout for that template, for good (`failed_revision`, kept in the set's status, until the
  template changes). A failed rollout switches nothing more to the failed template; new devices get
  the stable template (the last one that completed); with `failurePolicy: Rollback` every device
  goes back to it, within the same budget (failed devices first: they are down anyway).
- A rollout that completes (every selected device on the current template and available) makes
  the current template the stable one.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from devicefabric.config.fleet import (
    AVAILABLE,
    PROGRESSING,
    DeviceProcessSetSpec,
    SetReason,
    budget,
    failures_allowed,
)

AVAILABLE_PHASES = frozenset({"Running", "Succeeded"})


@dataclass(frozen=True, slots=True)
class Owned:
    """One DeviceProcess the set owns, as the planner needs it."""

    key: str
    device: str
    template_hash: str  # the label it was written with ("" if missing)
    available: bool
    failed: bool = False  # on its template, past its deadline or crashing (the caller's rule)


@dataclass(frozen=True, slots=True)
class SetView:
    """The inputs of one set's reconcile."""

    spec: DeviceProcessSetSpec
    template_hash: str
    selected: Collection[str]  # devices whose labels match the selector
    owned: Mapping[str, Owned]  # device -> its owned process (devices selected or not)
    conflicts: Collection[str] = ()  # selected devices whose owned name is taken by another
    stable_hash: str | None = None  # the last template that completed a rollout
    failed_revision: str | None = None  # a template whose rollout failed (from the status)


@dataclass(frozen=True, slots=True)
class SetPlan:
    create: tuple[str, ...] = ()  # devices to give a process from the current template
    update: tuple[str, ...] = ()  # devices whose process switches to the current template
    delete: tuple[str, ...] = ()  # keys of owned processes whose device is no longer selected
    counts: dict[str, int] = field(default_factory=dict)  # the status numbers
    progressing: SetReason = SetReason.COMPLETE
    available: SetReason = SetReason.MINIMUM_AVAILABLE
    target: str = ""  # the template hash creates and updates use (current, or stable)
    failed_revision: str | None = None  # to keep in the status
    stable_hash: str | None = None  # to keep in the status (moves when a rollout completes)

    @property
    def conditions(self) -> tuple[tuple[str, SetReason], ...]:
        return ((PROGRESSING, self.progressing), (AVAILABLE, self.available))


def is_available(phase: object, observed: object, generation: int, connected: bool) -> bool:
    """The availability rule of the module doc, for one owned process."""
    return connected and phase in AVAILABLE_PHASES and observed == generation


def plan_set(view: SetView) -> SetPlan:
    """What to do now; see the module doc."""
    spec = view.spec
    rolling = spec.update_strategy.rolling_update
    selected = sorted(set(view.selected))
    conflicts = set(view.conflicts)
    serving = [d for d in selected if d not in conflicts]
    delete = tuple(sorted(o.key for d, o in view.owned.items() if d not in set(selected)))
    present = [d for d in serving if d in view.owned]
    current = view.template_hash
    failures = sum(
        1 for d in present if view.owned[d].template_hash == current and view.owned[d].failed
    )
    allowed_failures = failures_allowed(rolling.max_failures, len(serving))
    failed = view.failed_revision == current or (
        allowed_failures is not None and failures > allowed_failures
    )
    stable = view.stable_hash
    target = stable if failed and stable is not None else current
    create = tuple(d for d in serving if d not in view.owned)
    outdated = [d for d in present if view.owned[d].template_hash != target]
    unavailable = sum(1 for d in serving if d not in view.owned or not view.owned[d].available)
    allowed = budget(rolling.max_unavailable, len(serving))

    update: list[str] = []
    rolls = spec.update_strategy.type == "RollingUpdate" and not spec.paused
    if rolls and (not failed or (rolling.failure_policy == "Rollback" and target != current)):
        order = {d: i for i, d in enumerate(serving)}
        eligible = [d for d in outdated if order[d] >= rolling.partition]
        update = [d for d in eligible if not view.owned[d].available]  # free: already down
        room = allowed - unavailable
        for device in (d for d in eligible if view.owned[d].available):
            if room <= 0:
                break
            update.append(device)
            room -= 1

    updated = sum(1 for d in present if view.owned[d].template_hash == current)
    available = sum(1 for d in present if view.owned[d].available)
    counts = {
        "desiredNumber": len(selected),
        "currentNumber": len(present),
        "updatedNumber": updated,
        "availableNumber": available,
        "failedNumber": failures,
    }
    # Done once every device is on the template and available; a template that completed once
    # stays complete when devices later go away (the Available condition says that), as a
    # Deployment's Progressing does.
    everyone = updated == len(selected)
    complete = everyone and (available == len(selected) or view.stable_hash == current)
    if failed:
        progressing = SetReason.ROLLOUT_FAILED
    elif conflicts:
        progressing = SetReason.NAME_CONFLICT
    elif complete:
        progressing = SetReason.COMPLETE
    elif spec.paused and outdated:
        progressing = SetReason.PAUSED
    else:
        progressing = SetReason.ROLLING_OUT
    enough = available >= len(selected) - allowed
    return SetPlan(
        create=create,
        update=tuple(update),
        delete=delete,
        counts=counts,
        progressing=progressing,
        available=SetReason.MINIMUM_AVAILABLE if enough else SetReason.TOO_FEW_AVAILABLE,
        target=target,
        failed_revision=current if failed else None,
        stable_hash=(
            current
            if everyone and available == len(selected) and not failed and not conflicts
            else stable
        ),
    )
