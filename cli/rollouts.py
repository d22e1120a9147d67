"""`devicefabric rollout status|pause|resume|undo SET`: a DeviceProcessSet's rollout, kubectl-style.

    devicefabric rollout status SET [--timeout S]   waits: exit 0 once complete, 1 when it failed
                                                    (Progressing=False/RolloutFailed) or timed out
    devicefabric rollout pause SET | resume SET     sets spec.paused
    devicefabric rollout undo SET                   sets spec.template to the stable template (the
                                                    last one whose rollout completed, kept in the
                                                    set's status), so a failed or unwanted rollout
                                                    goes back

Both control planes: `--control-plane local` (default; `--state-dir`) writes the set's file like
`apply`; `--control-plane kube` uses the bridge's Kubernetes client (in-cluster or `KUBECONFIG`)
with a merge-patch of the set's spec. `describe` (pure) turns a set into one line and a state.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, Literal, Protocol

from devicefabric.bridge.errors import NotFoundError
from devicefabric.config.errors import ConfigError
from devicefabric.config.fleet import PROGRESSING, ProcessTemplate, SetReason, template_hash
from devicefabric.config.settings import DEFAULT_STATE_DIR
from devicefabric.runtime.settings import add_flag

State = Literal["complete", "failed", "paused", "progressing"]
POLL_S: Final = 0.25
SET_RESOURCE: Final = "deviceprocesssets"


class Sets(Protocol):
    def get(self, key: str) -> dict[str, Any]: ...  # the set as stored; NotFoundError if absent

    def patch_spec(self, key: str, patch: Mapping[str, object]) -> None: ...


def describe(obj: Mapping[str, Any]) -> tuple[str, State]:
    """One line on the rollout, and where it stands (pure)."""
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    if status.get("observedGeneration") != meta.get("generation"):
        return "waiting for the bridge to observe the set's current generation", "progressing"
    counts = {n: status.get(f"{n}Number", 0) for n in ("desired", "updated", "available")}
    line = (
        f"{counts['updated']} of {counts['desired']} devices on the current template, "
        f"{counts['available']} available"
    )
    reason = next(
        (c.get("reason") for c in status.get("conditions") or () if c.get("type") == PROGRESSING),
        None,
    )
    if reason == SetReason.COMPLETE:
        return f"rollout complete: {line}", "complete"
    if reason == SetReason.ROLLOUT_FAILED:
        failed = status.get("failedNumber", 0)
        return f"rollout failed ({failed} failed; see the set's status): {line}", "failed"
    if reason == SetReason.PAUSED:
        return f"rollout paused: {line}", "paused"
    return f"rolling out: {line}", "progressing"


class LocalSets:
    def __init__(self, state_dir: Path) -> None:
        from devicefabric.bridge.controlplane.local.fleet import set_store  # noqa: PLC0415

        self.store = set_store(state_dir)

    def get(self, key: str) -> dict[str, Any]:
        doc = self.store.document(key)
        if doc is None:
            raise NotFoundError(f'deviceprocessset "{key.partition("/")[2]}" not found')
        return doc

    def patch_spec(self, key: str, patch: Mapping[str, object]) -> None:
        from devicefabric.config.mergepatch import merge_patch  # noqa: PLC0415

        doc = self.get(key)
        meta = doc.get("metadata") or {}
        labels = meta.get("labels") if isinstance(meta.get("labels"), dict) else {}
        spec = merge_patch(doc.get("spec") or {}, patch)
        self.store.update(key, spec, labels or {})


class KubeSets:
    def __init__(self) -> None:
        from devicefabric.bridge.controlplane.kube.client import KubeClient  # noqa: PLC0415

        self.client = KubeClient.from_environment(request_timeout=10.0)

    def _path(self, key: str) -> str:
        from devicefabric.bridge.controlplane.kube.fleet import collection  # noqa: PLC0415

        namespace, _, name = key.partition("/")
        return f"{collection(SET_RESOURCE, namespace)}/{name}"

    def get(self, key: str) -> dict[str, Any]:
        return asyncio.run(self.client.call("GET", self._path(key)))

    def patch_spec(self, key: str, patch: Mapping[str, object]) -> None:
        from devicefabric.bridge.controlplane.kube.client import MERGE_PATCH  # noqa: PLC0415

        body = {"spec": dict(patch)}
        asyncio.run(self.client.call("PATCH", self._path(key), body=body, content_type=MERGE_PATCH))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rollout = sub.add_parser("rollout", help="a DeviceProcessSet's rollout: status, pause, undo")
    rollout.add_argument("action", choices=("status", "pause", "resume", "undo"))
    rollout.add_argument("name", metavar="SET", help="the DeviceProcessSet")
    rollout.add_argument("-n", "--namespace", default="default", help="its namespace")
    add_flag(
        rollout,
        "--control-plane",
        choices=("local", "kube"),
        default="local",
        help="where the set lives: the local state directory, or Kubernetes (KUBECONFIG)",
    )
    add_flag(
        rollout,
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help="the local control plane's state directory",
    )
    rollout.add_argument(
        "--timeout", type=float, default=300.0, help="status: seconds to wait (default 300)"
    )
    rollout.set_defaults(func=run_rollout)


def run_rollout(args: argparse.Namespace) -> int:
    from devicefabric.bridge.controlplane.local.userfiles import (  # noqa: PLC0415
        validate_name,
        validate_namespace,
    )

    key = f"{validate_namespace(args.namespace)}/{validate_name(args.name, 'SET')}"
    sets: Sets = KubeSets() if args.control_plane == "kube" else LocalSets(args.state_dir)
    if args.action == "status":
        return watch_status(sets, key, args.timeout, print)
    if args.action in ("pause", "resume"):
        sets.get(key)
        sets.patch_spec(key, {"paused": args.action == "pause"})
        print(f"deviceprocessset/{args.name} {'paused' if args.action == 'pause' else 'resumed'}")
        return 0
    undo(sets, key)
    print(f"deviceprocessset/{args.name} rolled back to its stable template")
    return 0


def undo(sets: Sets, key: str) -> None:
    obj = sets.get(key)
    stable = (obj.get("status") or {}).get("stableTemplate")
    if not isinstance(stable, dict):
        raise ConfigError(
            f"rollout undo: deviceprocessset {key} has no stable template yet (no rollout of it "
            "has completed)"
        )
    current = ProcessTemplate.model_validate((obj.get("spec") or {}).get("template") or {})
    if template_hash(ProcessTemplate.model_validate(stable)) == template_hash(current):
        raise ConfigError(f"rollout undo: deviceprocessset {key} already runs its stable template")
    sets.patch_spec(key, {"template": stable})


def watch_status(sets: Sets, key: str, timeout: float, say: Callable[[str], None]) -> int:
    """Print each new line until complete (0) or failed/timed out (1)."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        line, state = describe(sets.get(key))
        if line != last:
            say(line)
            last = line
        if state == "complete":
            return 0
        if state == "failed":
            return 1
        if time.monotonic() >= deadline:
            say(f"timed out after {timeout:.0f}s")
            return 1
        time.sleep(POLL_S)
