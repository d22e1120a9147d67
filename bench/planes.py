"""The two control planes a benchmark drives: the local state directory and the Kubernetes fake.

Each measures the plane of one of the test kit's fabrics (`tests.support.fabric.Fabric`, which
makes the state directory or serves the fake API server, and stops it). Both offer the same small surface, as an operator (or `kubectl`) would use them:

- `apply(name, device, command)` creates or updates one DeviceProcess and returns its generation;
- `delete(name)`;
- `wait_status(name, predicate, since=t)` returns the `time.monotonic()` at which a stored status
  passing `predicate` was first seen at or after `t`;
- `writes()` counts the control-plane writes the bridge made so far: status patches and Events,
  counted at the control plane itself (never from the bridge's own metrics).

`LocalPlane` writes through `LocalStore` (what `devicefabric apply` calls, minus starting a
process) and sees the bridge's status writes by tailing the store's journal every millisecond.
Its write count is the journal lines of status writes plus the lines of `events.jsonl`.

`KubePlane` measures the fake API server of `tests.support.fakeapi` in this process (real HTTP,
made by `fake_api()`), with TCP_NODELAY on its sockets as a real (Go) API server has, writes as
`admin`, and watches
DeviceProcesses in a thread, timestamping each event on arrival. Its write count is the fake's
request log: `patch .../status` and `create events`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any, Final, Protocol, cast

from devicefabric.bridge.controlplane.local.fleet import device_store
from devicefabric.bridge.controlplane.local.store import LocalStore
from devicefabric.bridge.controlplane.local.userfiles import Manifest
from tests.support.fabric import Fabric
from tests.support.fakeapi import BRIDGE_USER, FakeApiServer, Match
from tests.support.fakeapi.client import WatchEnded, dp_path
from tests.support.waiting import wait_for

NAMESPACE: Final = "bench"
Status = dict[str, Any]


class Plane(Protocol):
    kind: str

    def bridge_args(self) -> dict[str, Any]: ...

    def apply(self, name: str, device: str, command: list[str]) -> int: ...

    def delete(self, name: str) -> None: ...

    def status(self, name: str) -> Status: ...

    def wait_status(
        self, name: str, predicate: Callable[[Status, int], bool], *, since: float, timeout: float
    ) -> float: ...

    def writes(self) -> tuple[int, int]: ...

    def device_writes(self) -> int: ...

    def last_write_age(self) -> float: ...

    def close(self) -> None: ...


def condition(status: Status, ctype: str) -> dict[str, Any]:
    for cond in status.get("conditions") or ():
        if cond.get("type") == ctype:
            return dict(cond)
    return {}


def running_at(generation: int) -> Callable[[Status, int], bool]:
    """Status predicate: phase Running, observedGeneration = `generation`."""

    def check(status: Status, _generation: int) -> bool:
        return status.get("phase") == "Running" and status.get("observedGeneration") == generation

    return check


def connected(value: str, reason: str | None = None) -> Callable[[Status, int], bool]:
    """Status predicate: AgentConnected has `value` (and `reason`)."""

    def check(status: Status, _generation: int) -> bool:
        cond = condition(status, "AgentConnected")
        return cond.get("status") == value and (reason is None or cond.get("reason") == reason)

    return check


def _spec(device: str, command: list[str]) -> dict[str, Any]:
    return {"deviceName": device, "command": command, "terminationGracePeriodSeconds": 1}


class LocalPlane:
    kind = "local"

    def __init__(self, fabric: Fabric) -> None:
        self.state_dir = fabric.state_dir
        self.store: LocalStore = fabric.store
        self._own_writes = 0  # store revisions taken by our applies and deletes
        self._events_seen = 0
        self._events_file: tuple[int, int] | None = None  # (inode, bytes counted)

    def bridge_args(self) -> dict[str, Any]:
        return {"control_plane": "local", "state_dir": self.state_dir}

    def apply(self, name: str, device: str, command: list[str]) -> int:
        applied = self.store.apply([Manifest(NAMESPACE, name, _spec(device, command))])
        if applied[0].outcome != "unchanged":
            self._own_writes += 1
        resource = self.store.load(f"{NAMESPACE}/{name}")
        assert resource is not None
        return resource.generation

    def apply_many(self, items: list[tuple[str, str, list[str]]]) -> None:
        applied = self.store.apply([Manifest(NAMESPACE, n, _spec(d, c)) for n, d, c in items])
        self._own_writes += sum(1 for a in applied if a.outcome != "unchanged")

    def delete(self, name: str) -> None:
        if self.store.delete(f"{NAMESPACE}/{name}"):
            self._own_writes += 1

    def status(self, name: str) -> Status:
        resource = self.store.load(f"{NAMESPACE}/{name}")
        return dict(resource.status) if resource is not None else {}

    def wait_status(
        self, name: str, predicate: Callable[[Status, int], bool], *, since: float, timeout: float
    ) -> float:
        journal = self.store.journal_path
        key = f"{NAMESPACE}/{name}"
        deadline = time.monotonic() + timeout
        size = -1
        while time.monotonic() < deadline:
            try:
                now_size = journal.stat().st_size
            except FileNotFoundError:
                now_size = 0
            if now_size != size:
                at = time.monotonic()
                size = now_size
                resource = self.store.load(key)
                if resource is not None and predicate(dict(resource.status), resource.generation):
                    return max(at, since)
            time.sleep(0.001)
        raise TimeoutError(f"status of {key} did not match within {timeout} s")

    def writes(self) -> tuple[int, int]:
        """(status writes, Events) so far; exact across journal and event-file rotations.

        Every write takes one store revision, so status writes are the revision less our own
        applies and deletes; Events are counted by tailing `events.jsonl` (and, after it was
        rotated, the rest of `events.jsonl.1`).
        """
        return self.store.revision() - self._own_writes, self._count_events()

    def device_writes(self) -> int:
        """Writes of Devices (creates and status): every one takes a revision of their store."""
        return device_store(self.store.root).revision()

    def _count_events(self) -> int:
        path = self.store.events_path
        try:
            stat = path.stat()
        except FileNotFoundError:
            return self._events_seen
        if self._events_file is not None and self._events_file[0] != stat.st_ino:
            # rotated: the old inode is now events.jsonl.1; count what was appended to it last
            with contextlib.suppress(FileNotFoundError):
                rest = path.with_name(path.name + ".1").read_bytes()[self._events_file[1] :]
                self._events_seen += rest.count(b"\n")
            self._events_file = None
        offset = self._events_file[1] if self._events_file is not None else 0
        with path.open("rb") as fh:
            fh.seek(offset)
            new = fh.read()
        complete = new[: new.rfind(b"\n") + 1]
        self._events_seen += complete.count(b"\n")
        self._events_file = (stat.st_ino, offset + len(complete))
        return self._events_seen

    def last_write_age(self) -> float:
        """Seconds since the store last changed (any write: ours or the bridge's; Events too)."""
        ages = []
        for path in (self.store.journal_path, self.store.events_path):
            with contextlib.suppress(FileNotFoundError):
                ages.append(time.time() - path.stat().st_mtime)
        return min(ages, default=float("inf"))

    def own_writes(self, count: int) -> None:
        """`count` writes were made through another door (e.g. `devicefabric apply`)."""
        self._own_writes += count

    def close(self) -> None:
        pass


class KubePlane:
    kind = "kube"

    def __init__(self, fabric: Fabric) -> None:
        self.api = fabric.api
        self.http = fabric.http
        self.kubeconfig = self.api.write_kubeconfig(
            fabric.workdir / "kubeconfig-bridge", user=f"{BRIDGE_USER}#bench"
        )
        self._cond = threading.Condition()
        self._events: list[tuple[float, str, Status, int]] = []
        self._latest: dict[str, Status] = {}  # name -> status, as the watch last showed it
        self._watch_error = ""
        self._watcher = threading.Thread(target=self._watch, name="kube-watch", daemon=True)
        self._watcher.start()
        wait_for(lambda: self.api.active_watches("deviceprocesses") >= 1, 10, what="the watch")

    def bridge_args(self) -> dict[str, Any]:
        return {"control_plane": "kube", "kubeconfig": self.kubeconfig}

    def _path(self, name: str = "") -> str:
        return dp_path(NAMESPACE, name)

    def _watch(self) -> None:
        ended = WatchEnded()
        try:
            for event in self.http.watch(self._path(), ended, timeout=3600, timeoutSeconds="3600"):
                at = time.monotonic()
                obj = event.get("object") or {}
                meta = obj.get("metadata") or {}
                name: str = meta.get("name", "")
                status: Status = obj.get("status") or {}
                with self._cond:
                    self._events.append((at, name, status, int(meta.get("generation") or 0)))
                    if event.get("type") == "DELETED":
                        self._latest.pop(name, None)
                    elif event.get("type") in ("ADDED", "MODIFIED"):
                        self._latest[name] = status
                    self._cond.notify_all()
        except OSError as exc:
            self._watch_error = str(exc)

    def apply(self, name: str, device: str, command: list[str]) -> int:
        spec = _spec(device, command)
        resp = self.http.merge(self._path(name), {"spec": spec})
        if resp.status == 404:
            body = {
                "apiVersion": "devicefabric.io/v1alpha1",
                "kind": "DeviceProcess",
                "metadata": {"name": name, "namespace": NAMESPACE},
                "spec": spec,
            }
            resp = self.http.create(body, NAMESPACE)
        if resp.status not in (200, 201):
            raise RuntimeError(f"apply {name}: {resp.status} {resp.body}")
        return int(resp.body["metadata"]["generation"])

    def delete(self, name: str) -> None:
        self.http.request("DELETE", self._path(name))

    def status(self, name: str) -> Status:
        """The status as the watch last delivered it (no request per call)."""
        with self._cond:
            return dict(self._latest.get(name) or {})

    def wait_status(
        self, name: str, predicate: Callable[[Status, int], bool], *, since: float, timeout: float
    ) -> float:
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for at, obj_name, status, generation in self._events[seen:]:
                    if at >= since and obj_name == name and predicate(status, generation):
                        return at
                seen = len(self._events)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"status of {name} did not match within {timeout} s {self._watch_error}"
                    )
                self._cond.wait(left)

    def writes(self) -> tuple[int, int]:
        log = self.api.log
        patches = log.count(Match(verb="patch", resource="deviceprocesses", subresource="status"))
        events = log.count(Match(verb="create", resource="events"))
        return patches, events

    def device_writes(self) -> int:
        """Device creates and status patches the fake served."""
        log = self.api.log
        return log.count(Match(verb="create", resource="devices")) + log.count(
            Match(verb="patch", resource="devices", subresource="status")
        )

    def last_write_age(self) -> float:
        """Seconds since the last status patch or Event the fake served."""
        writes = [
            r.monotonic
            for m in (Match(verb="patch", subresource="status"), Match(verb="create"))
            for r in self.api.log.records(m)
        ]
        return time.monotonic() - max(writes) if writes else float("inf")

    def request_counts(self, since: float = 0.0, until: float = float("inf")) -> dict[str, int]:
        """The bridge's requests per `verb resource[/subresource]` between `since` and `until`."""
        counts: dict[str, int] = {}
        for record in self.api.log.records():
            if not (since <= record.monotonic < until and record.user.startswith(BRIDGE_USER)):
                continue
            info = record.info
            what = f"{info.verb} {info.resource}" + (
                f"/{info.subresource}" if info.subresource else ""
            )
            counts[what] = counts.get(what, 0) + 1
        return counts

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.api.stop()
        self._watcher.join(timeout=5)


def fake_api() -> FakeApiServer:
    """The fake API server a kube plane serves (not started)."""
    api = FakeApiServer(bookmark_interval=1.0)
    # Like a real API server (Go sets TCP_NODELAY on every connection): without it the fake
    # answers a kept-alive request in two segments, and Nagle holds the second back until
    # the client's delayed ACK, adding ~40 ms to some status writes that a cluster would not.
    server = api._http
    handler = cast("type", server.RequestHandlerClass)
    server.RequestHandlerClass = type(
        "NoDelayHandler", (handler,), {"disable_nagle_algorithm": True}
    )
    return api


def make_plane(fabric: Fabric) -> Plane:
    """The measuring side of `fabric`'s control plane."""
    if fabric.plane == "local":
        return LocalPlane(fabric)
    if fabric.plane == "kube":
        return KubePlane(fabric)
    raise ValueError(f"{fabric!r} has no control plane")
