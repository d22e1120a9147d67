"""The fake's storage: objects, one global resourceVersion, watch history and the write rules.

Like etcd behind the API server, there is one revision counter for every kind; a write that
changes an object takes the next revision, appends a watch event to the history and pushes it to
every matching watcher, all under one lock (so a watcher registered at revision R receives every
later event exactly once, in order). Write rules, as the API server applies them:

- create drops `status` when the kind has a status subresource; `uid`, `creationTimestamp`,
  `generation` (1) and `resourceVersion` are the server's; `generateName` gets a random suffix.
- a write to the main resource ignores `status`; a write to `/status` ignores everything else.
- `generation` increments only when something outside `metadata` and `status` changes.
- custom resources are pruned, defaulted and validated from the CRD schema (422 with causes).
- a `metadata.resourceVersion` in an update or patch is a precondition (409 when stale), and so
  is `preconditions.resourceVersion` in a delete's DeleteOptions.
- a write that changes nothing keeps the resourceVersion and emits no watch event.

Cluster-scoped kinds are stored under the namespace "" (a `metadata.namespace` sent with one is
dropped, as the API server does). `metadata.ownerReferences` are stored as given (each needs
`apiVersion`, `kind`, `name` and `uid`, at most one `controller: true`).

Garbage collection, as Kubernetes' collector with background cascading deletion but synchronous
(done before `delete` returns, under the lock): deleting an object deletes every dependent (an
object whose ownerReferences name the deleted uid) whose owners are now all gone, recursively;
a dependent with an owner left only loses the reference to the gone one. Each deletion or
reference removal is an ordinary write: a new resourceVersion and a DELETED or MODIFIED watch event,
after the owner's DELETED. `Orphan` propagation first removes the reference from every dependent
(MODIFIED) and keeps them; `Foreground` is served as `Background` (no `deletionTimestamp` phase).

`compact()` forgets the history, so a watch from an older revision gets `410 Expired`.
"""

from __future__ import annotations

import copy
import datetime as dt
import queue
import re
import secrets
import threading
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from tests.support.fakeapi.kinds import ResourceType
from tests.support.fakeapi.patching import apply_patch
from tests.support.fakeapi.schema import FieldError

EventType = Literal["ADDED", "MODIFIED", "DELETED"]
Propagation = Literal["Orphan", "Background", "Foreground"]
_Key = tuple[tuple[str, str], tuple[str, str]]  # ((group, plural), (namespace, name))
_META_KEYS: Final = frozenset(
    {
        "name",
        "generateName",
        "namespace",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "labels",
        "annotations",
        "finalizers",
        "ownerReferences",
    }
)
_SERVER_META: Final = ("uid", "creationTimestamp", "generation", "resourceVersion", "name")
_NAME: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class ApiError(Exception):
    """An API failure, rendered by the server as a `Status` object."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        causes: list[FieldError] | None = None,
        details: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.causes = causes or []
        self.details = dict(details or {})


@dataclass(frozen=True, slots=True)
class WatchEvent:
    rv: int
    rtype: ResourceType
    type: EventType
    object: dict[str, Any]


@dataclass(eq=False)
class Watcher:
    """One open watch: events arrive on `queue`; `None` wakes the reader (stop or drop)."""

    rtype: ResourceType
    namespace: str | None
    accept: Callable[[Mapping[str, Any]], bool]
    queue: queue.SimpleQueue[WatchEvent | None] = field(default_factory=queue.SimpleQueue)
    dropped: Literal["abrupt", "clean"] | None = None


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _owner_reference_errors(refs: Any) -> list[FieldError]:
    """The API server's ownerReferences validation (the subset a client can trip over)."""
    path = "metadata.ownerReferences"
    if refs is None:
        return []
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        return [
            FieldError(path, "FieldValueTypeInvalid", "Invalid value: must be a list of objects")
        ]
    errors = [
        FieldError(f"{path}[{index}].{key}", "FieldValueRequired", "Required value")
        for index, ref in enumerate(refs)
        for key in ("apiVersion", "kind", "name", "uid")
        if not isinstance(ref.get(key), str) or not ref.get(key)
    ]
    if sum(1 for ref in refs if ref.get("controller") is True) > 1:
        errors.append(
            FieldError(
                path, "FieldValueInvalid", "Only one reference can have Controller set to true"
            )
        )
    return errors


def _created_name(rtype: ResourceType, namespace: str, meta: dict[str, Any]) -> str:
    """Check a create's metadata (namespace, resourceVersion, name) and return the name, drawn
    from `generateName` when there is none; a cluster-scoped object loses any namespace."""
    if not rtype.namespaced:
        meta.pop("namespace", None)
    if meta.get("namespace", namespace) != namespace:
        raise ApiError(
            400,
            "BadRequest",
            "the namespace of the provided object does not match the namespace sent on the request",
        )
    if meta.get("resourceVersion"):
        raise ApiError(
            400, "BadRequest", "resourceVersion should not be set on objects to be created"
        )
    if not meta.get("name") and meta.get("generateName"):
        meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
    name = meta.get("name", "")
    if not name or len(name) > 253 or not _NAME.match(name):
        raise ApiError(
            422,
            "Invalid",
            f'{rtype.kind} "{name}" is invalid: metadata.name: '
            "Invalid value: a lowercase RFC 1123 subdomain is required",
            causes=[FieldError("metadata.name", "FieldValueInvalid", "Invalid value")],
        )
    return str(name)


def _spec_part(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


class Store:
    """Objects of every served kind, keyed by (kind, namespace, name)."""

    def __init__(self, history_limit: int = 10_000) -> None:
        self.lock = threading.RLock()
        self._rv = 1
        self._objects: dict[tuple[str, str], dict[tuple[str, str], dict[str, Any]]] = {}
        self._history: deque[WatchEvent] = deque(maxlen=history_limit)
        self._compacted = 1  # events with rv <= this are gone from the history
        self._watchers: set[Watcher] = set()
        self._types: dict[tuple[str, str], ResourceType] = {}
        self._uids: dict[str, _Key] = {}  # the live objects by uid
        self._dependents: dict[str, set[_Key]] = {}  # owner uid -> objects naming it

    @property
    def resource_version(self) -> int:
        with self.lock:
            return self._rv

    def _bucket(self, rtype: ResourceType) -> dict[tuple[str, str], dict[str, Any]]:
        self._types.setdefault((rtype.group, rtype.plural), rtype)
        return self._objects.setdefault((rtype.group, rtype.plural), {})

    def _not_found(self, rtype: ResourceType, name: str) -> ApiError:
        return ApiError(
            404,
            "NotFound",
            f'{rtype.group_resource} "{name}" not found',
            details={"name": name, "group": rtype.group, "kind": rtype.plural},
        )

    # -- reads -------------------------------------------------------------------------------
    def list_objects(
        self, rtype: ResourceType, namespace: str | None
    ) -> tuple[list[dict[str, Any]], int]:
        with self.lock:
            items = [
                copy.deepcopy(o)
                for (ns, _), o in sorted(self._bucket(rtype).items())
                if namespace is None or ns == namespace
            ]
            return items, self._rv

    def get(self, rtype: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        with self.lock:
            obj = self._bucket(rtype).get((namespace, name))
            if obj is None:
                raise self._not_found(rtype, name)
            return copy.deepcopy(obj)

    # -- writes ------------------------------------------------------------------------------
    def _commit(self, rtype: ResourceType, etype: EventType, obj: dict[str, Any]) -> dict[str, Any]:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        self._unindex(rtype, self._bucket(rtype).get(key))
        if etype == "DELETED":
            self._bucket(rtype).pop(key, None)
        else:
            self._bucket(rtype)[key] = obj
            self._index(rtype, obj)
        event = WatchEvent(self._rv, rtype, etype, copy.deepcopy(obj))
        if len(self._history) == self._history.maxlen:
            self._compacted = self._history[0].rv
        self._history.append(event)
        for watcher in self._watchers:
            if self._matches(watcher, event):
                watcher.queue.put(event)
        return copy.deepcopy(obj)

    def _index(self, rtype: ResourceType, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        key = ((rtype.group, rtype.plural), (meta.get("namespace", ""), meta["name"]))
        self._uids[meta["uid"]] = key
        for ref in meta.get("ownerReferences") or ():
            self._dependents.setdefault(ref["uid"], set()).add(key)

    def _unindex(self, rtype: ResourceType, obj: dict[str, Any] | None) -> None:
        if obj is None:
            return
        meta = obj["metadata"]
        key = ((rtype.group, rtype.plural), (meta.get("namespace", ""), meta["name"]))
        self._uids.pop(meta["uid"], None)
        for ref in meta.get("ownerReferences") or ():
            dependents = self._dependents.get(ref["uid"], set())
            dependents.discard(key)
            if not dependents:
                self._dependents.pop(ref["uid"], None)

    @staticmethod
    def _matches(watcher: Watcher, event: WatchEvent) -> bool:
        meta = event.object["metadata"]
        return (
            event.rtype is watcher.rtype
            and (watcher.namespace is None or meta.get("namespace") == watcher.namespace)
            and watcher.accept(event.object)
        )

    def _prepare(self, rtype: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        obj["metadata"] = {k: v for k, v in obj.get("metadata", {}).items() if k in _META_KEYS}
        obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind
        if rtype.schema is not None:
            obj = rtype.schema.default(rtype.schema.prune(obj))
        errors = rtype.validate(obj)
        for key, value in (obj["metadata"].get("labels") or {}).items():
            if (
                not isinstance(value, str)
                or len(value) > 63
                or not re.fullmatch(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?", value)
            ):
                errors.append(
                    FieldError(
                        f"metadata.labels.{key}", "FieldValueInvalid", f"Invalid value: {value!r}"
                    )
                )
        errors.extend(_owner_reference_errors(obj["metadata"].get("ownerReferences")))
        if errors:
            name = obj["metadata"].get("name", "")
            causes = "; ".join(str(e) for e in errors)
            raise ApiError(
                422,
                "Invalid",
                f'{rtype.kind}.{rtype.group or "core"} "{name}" is invalid: [{causes}]',
                causes=errors,
                details={"name": name, "group": rtype.group, "kind": rtype.kind},
            )
        return obj

    def create(self, rtype: ResourceType, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError(400, "BadRequest", "metadata must be an object")
        name = _created_name(rtype, namespace, meta)
        if rtype.status_subresource:
            obj.pop("status", None)
        if rtype.namespaced:
            meta["namespace"] = namespace
        obj = self._prepare(rtype, obj)
        with self.lock:
            if (namespace, name) in self._bucket(rtype):
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f'{rtype.group_resource} "{name}" already exists',
                    details={"name": name, "group": rtype.group, "kind": rtype.plural},
                )
            meta = obj["metadata"]
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_rfc3339())
            if rtype.custom:
                meta["generation"] = 1
            return self._commit(rtype, "ADDED", obj)

    def update(
        self,
        rtype: ResourceType,
        namespace: str,
        name: str,
        body: dict[str, Any],
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """PUT: replace the object (or its status) with `body`."""
        return self._write(rtype, namespace, name, subresource, lambda _old: copy.deepcopy(body))

    def patch(
        self,
        rtype: ResourceType,
        namespace: str,
        name: str,
        body: bytes,
        *,
        content_type: str,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        return self._write(
            rtype,
            namespace,
            name,
            subresource,
            lambda old: apply_patch(old, body, content_type, rtype.custom),
        )

    def _write(
        self,
        rtype: ResourceType,
        namespace: str,
        name: str,
        subresource: str | None,
        change: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> dict[str, Any]:
        if subresource not in (None, "status") or (subresource and not rtype.status_subresource):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        with self.lock:
            old = self.get(rtype, namespace, name)
            new = change(copy.deepcopy(old))
            raw_meta = new.get("metadata")
            meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
            wanted_rv = meta.get("resourceVersion")
            if wanted_rv not in (None, "", old["metadata"]["resourceVersion"]):
                raise ApiError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {rtype.group_resource} "{name}": '
                    "the object has been modified; please apply your changes to the latest version and try again",
                    details={"name": name, "group": rtype.group, "kind": rtype.plural},
                )
            if subresource == "status":
                status = new.get("status")
                new = copy.deepcopy(old)
                new.pop("status", None)
                if status is not None:
                    new["status"] = status
            else:
                if rtype.status_subresource:
                    new.pop("status", None)
                    if "status" in old:
                        new["status"] = copy.deepcopy(old["status"])
                mutable = {k: v for k, v in meta.items() if k not in _SERVER_META}
                new["metadata"] = {
                    **{k: old["metadata"][k] for k in _SERVER_META if k in old["metadata"]},
                    **{k: v for k, v in mutable.items() if k != "namespace"},
                }
                if rtype.namespaced:
                    new["metadata"]["namespace"] = namespace
            new = self._prepare(rtype, new)
            if rtype.custom and _spec_part(new) != _spec_part(old):
                new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
            if new == old:
                return old  # a no-op write: same resourceVersion, no watch event
            return self._commit(rtype, "MODIFIED", new)

    def delete(
        self,
        rtype: ResourceType,
        namespace: str,
        name: str,
        precondition_rv: str | None = None,
        propagation: Propagation = "Background",
    ) -> dict[str, Any]:
        """Delete one object, then collect its dependents (module doc: garbage collection)."""
        with self.lock:
            old = self.get(rtype, namespace, name)
            stored = old["metadata"]["resourceVersion"]
            if precondition_rv not in (None, "", stored):
                raise ApiError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {rtype.group_resource} "{name}": the '
                    f"ResourceVersion in the precondition ({precondition_rv}) does not match the "
                    f"ResourceVersion in record ({stored}). The object might have been modified",
                    details={"name": name, "group": rtype.group, "kind": rtype.plural},
                )
            uid = old["metadata"]["uid"]
            if propagation == "Orphan":
                for key in sorted(self._dependents.get(uid, ())):
                    self._drop_owner(key, uid)
            deleted = self._commit(rtype, "DELETED", old)
            self._collect(uid)
            return deleted

    def _collect(self, gone_uid: str) -> None:
        """Background cascading deletion of what `gone_uid` owned (recursively)."""
        for key in sorted(self._dependents.get(gone_uid, ())):
            (bucket, obj_key) = key
            obj = self._objects.get(bucket, {}).get(obj_key)
            if obj is None:
                continue
            refs = obj["metadata"].get("ownerReferences") or ()
            if any(ref["uid"] in self._uids for ref in refs):
                self._drop_owner(key, gone_uid)
                continue
            uid = obj["metadata"]["uid"]
            self._commit(self._types[bucket], "DELETED", copy.deepcopy(obj))
            self._collect(uid)

    def _drop_owner(self, key: _Key, owner_uid: str) -> None:
        """Remove the ownerReference to `owner_uid` from the object at `key` (a MODIFIED write)."""
        bucket, obj_key = key
        obj = copy.deepcopy(self._objects[bucket][obj_key])
        refs = [r for r in obj["metadata"].get("ownerReferences") or () if r["uid"] != owner_uid]
        if refs:
            obj["metadata"]["ownerReferences"] = refs
        else:
            obj["metadata"].pop("ownerReferences", None)
        self._commit(self._types[bucket], "MODIFIED", obj)

    # -- watch -------------------------------------------------------------------------------
    def watch(
        self,
        rtype: ResourceType,
        namespace: str | None,
        since: str | None,
        accept: Callable[[Mapping[str, Any]], bool],
    ) -> tuple[Watcher, list[WatchEvent]]:
        """Register a watcher; return it with the backlog to send first.

        `since` None/""/"0": synthetic ADDED events for the current objects. Otherwise the
        history after `since`, or `ApiError(410)` when it was compacted away.
        """
        watcher = Watcher(rtype, namespace, accept)
        with self.lock:
            if since in (None, "", "0"):
                items, _ = self.list_objects(rtype, namespace)
                backlog = [
                    WatchEvent(int(o["metadata"]["resourceVersion"]), rtype, "ADDED", o)
                    for o in items
                    if accept(o)
                ]
            else:
                if not since.isdigit():
                    raise ApiError(400, "BadRequest", f"invalid resource version {since!r}")
                start = int(since)
                if start < self._compacted:
                    raise ApiError(
                        410, "Expired", f"too old resource version: {start} ({self._compacted})"
                    )
                backlog = [e for e in self._history if e.rv > start and self._matches(watcher, e)]
            self._watchers.add(watcher)
            return watcher, backlog

    def unwatch(self, watcher: Watcher) -> None:
        with self.lock:
            self._watchers.discard(watcher)

    def watchers(self) -> list[Watcher]:
        with self.lock:
            return list(self._watchers)

    def drop_watches(self, how: Literal["abrupt", "clean"] = "abrupt") -> int:
        """End every open watch: `abrupt` cuts the TCP connection, `clean` ends the stream."""
        with self.lock:
            for watcher in self._watchers:
                watcher.dropped = how
                watcher.queue.put(None)
            return len(self._watchers)

    def compact(self) -> int:
        """Forget the whole history: a watch from any earlier revision gets 410 Expired."""
        with self.lock:
            self._history.clear()
            self._compacted = self._rv
            return self._rv
