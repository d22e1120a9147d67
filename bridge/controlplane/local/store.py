"""The local control plane's storage: DeviceProcess YAML files and their status under a directory.

Layout of the state directory (shared by `devicefabric apply/delete/get`, `up` and the bridge):

    lock                        flock()ed by every writer: one writer at a time across processes
    revision                    the store's last revision (a global counter, like etcd's)
    changes.log (+ .1)          journal: one "<revision> <namespace>/<name>" line per write; the
                                previous one is kept as changes.log.1 when it rotates
    resources/<ns>/<name>.yaml  apiVersion, kind, metadata (uid, generation, resourceVersion,
                                creationTimestamp, labels, annotations) and the spec with defaults;
                                written as JSON (valid YAML, parsed ~10x faster: `get` of 10,000
                                resources); a hand-written YAML file is read as well
    status/<ns>/<name>.json     {"resourceVersion": "<rev>", "status": {...}}
    events.jsonl (+ .1)         Events, one JSON object per line, rotated at EVENTS_MAX_BYTES

Semantics follow the API server: `apply` creates (new uid, generation 1) or updates; generation
bumps only when the spec changes; every real change takes the next store revision as its
resourceVersion; a no-op apply or a status patch that changes nothing writes nothing at all. A
status merge-patch (RFC 7386: None deletes, lists such as `conditions` are replaced) never touches
the resource file, so it never bumps generation. A resource's resourceVersion is the newer of its
resource file's and its status file's.

Invariants: every file is replaced atomically (temp file, fsync, rename, fsync of the directory),
so a reader never sees half a file and needs no lock; every write holds `lock` and appends its keys
to `changes.log` after the files are in place, so a watcher that tails the journal (see
`JournalCursor`) learns which keys changed without rescanning the directory. The journal is
rotated by keeping it as `changes.log.1` and replacing it (a new inode); a tailing reader
finishes the old file and goes on, never relisting for it. A reader parses a resource file only
when it changed since it last parsed it (`_resource_doc`), so the journal echo of a status write
re-reads only the small status file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import yaml

from devicefabric.bridge.controlplane.base import OwnerRef, Resource
from devicefabric.bridge.controlplane.local.resourcedoc import (
    Outcome,
    json_bytes,
    next_document,
    resource_bytes,
    to_int,
)
from devicefabric.bridge.controlplane.local.userfiles import Manifest
from devicefabric.bridge.errors import ConflictError, NotFoundError
from devicefabric.config.mergepatch import merge_patch
from devicefabric.config.names import is_device_name, is_object_key
from devicefabric.runtime.files import atomic_write, fsync_dir, stage

log = logging.getLogger("devicefabric.bridge.localstore")

JOURNAL_MAX_BYTES: Final = 256 * 1024
EVENTS_MAX_BYTES: Final = 1024 * 1024
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True, slots=True)
class _Parsed:
    ident: tuple[int, int, int]  # st_ino, st_mtime_ns, st_size of the version parsed
    doc: dict[str, object]


@dataclass(frozen=True, slots=True)
class Applied:
    key: str
    outcome: Outcome


def _append(path: Path, data: bytes) -> int:
    """Append `data` in one write (under the store lock); return the file's new size."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


class LocalStore:
    """DeviceProcess resources, status and Events as files under `root` (see module docstring)."""

    def __init__(
        self,
        root: Path,
        *,
        cluster_scoped: bool = False,
        kind: str = "deviceprocess",
        kind_name: str = "DeviceProcess",
    ) -> None:
        """`cluster_scoped`: keys are bare names and files `resources/<name>.yaml` (Devices);
        `kind` names the objects in errors, `kind_name` is the kind of objects created here."""
        self.root = root
        self.cluster_scoped = cluster_scoped
        self.kind = kind  # in messages
        self.kind_name = kind_name  # the `kind` of objects created here
        self.resources_dir = root / "resources"
        self.status_dir = root / "status"
        self.journal_path = root / "changes.log"
        self.previous_journal_path = root / "changes.log.1"
        self.events_path = root / "events.jsonl"
        self._lock_path = root / "lock"
        self._revision_path = root / "revision"
        self._parsed: dict[str, _Parsed] = {}  # key -> resource file as last parsed
        self.parses = 0  # resource files parsed (a file unchanged since is not parsed again)

    # -- writes (each under the lock) ----------------------------------------------------------
    def apply(self, manifests: Sequence[Manifest]) -> list[Applied]:
        """Create or update every manifest; unchanged ones are not written."""
        with self._locked():
            rev = self.revision()
            writes: list[tuple[str, dict[str, object]]] = []
            results: list[Applied] = []
            for manifest in manifests:
                old = self._read_yaml(self._resource_path(manifest.key))
                doc, outcome = next_document(old, manifest)
                results.append(Applied(manifest.key, outcome))
                if outcome != "unchanged":
                    rev += 1
                    _stamp(doc, rev)
                    writes.append((manifest.key, doc))
            if writes:
                self._commit(writes, rev - len(writes) + 1)
            return results

    def create(self, manifest: Manifest) -> None:
        """Create `manifest`'s object; `ConflictError` when it exists (the bridge's writes: a
        Device on first birth, a set's process), so nothing an operator wrote is overwritten."""
        with self._locked():
            if os.path.exists(self._file(self.resources_dir, manifest.key, ".yaml")):  # noqa: PTH110
                raise ConflictError(f"{self.kind} {manifest.key} already exists")
            self._write(manifest.key, None, manifest)

    def update(
        self,
        key: str,
        spec: Mapping[str, object],
        labels: Mapping[str, str],
        annotations: Mapping[str, str] | None = None,
    ) -> None:
        """Replace the spec and labels of `key` and add `annotations`, keeping its other metadata
        (annotations, owners); `NotFoundError` when it does not exist. Unchanged: nothing is
        written."""
        self._rewrite(key, lambda _: dict(labels), spec=spec, annotations=annotations)

    def relabel(
        self, key: str, change: Callable[[dict[str, str]], dict[str, str]], *, create: bool
    ) -> Outcome:
        """Replace the labels of `key` with `change(current labels)` in one locked step (a
        concurrent `label` is never lost); everything else is kept. A missing object is created
        with them when `create` (a Device labelled before it connects), else `NotFoundError`.
        `change` may raise to refuse; nothing is written then."""
        return self._rewrite(key, change, create=create)

    def _rewrite(
        self,
        key: str,
        labels: Callable[[dict[str, str]], dict[str, str]],
        *,
        spec: Mapping[str, object] | None = None,
        annotations: Mapping[str, str] | None = None,
        create: bool = False,
    ) -> Outcome:
        """Read `key`, change it (labels from the current ones; `spec` when given; `annotations`
        added) and write it, all under the lock."""
        with self._locked():
            old = self._read_yaml(self._resource_path(key))
            meta = old.get("metadata") if old else None
            if old is None or not isinstance(meta, dict):
                if not create:
                    raise NotFoundError(f"{self.kind} {key} not found")
                old, meta = None, {}
            namespace, _, name = key.rpartition("/")
            manifest = Manifest(
                namespace,
                name,
                dict(spec) if spec is not None else _spec(old),
                labels(_strings(meta.get("labels"))),
                {**_strings(meta.get("annotations")), **(annotations or {})},
                kind=str(old.get("kind", "")) if old else self.kind_name,
            )
            return self._write(key, old, manifest)

    def _write(self, key: str, old: dict[str, object] | None, manifest: Manifest) -> Outcome:
        """`manifest` over `old` at the next revision, unless nothing changes (under the lock)."""
        doc, outcome = next_document(old, manifest)
        if outcome != "unchanged":
            rev = self.revision() + 1
            _stamp(doc, rev)
            self._commit([(key, doc)], rev)
        return outcome

    def _commit(self, writes: Sequence[tuple[str, dict[str, object]]], first_rev: int) -> None:
        """All of `writes` or none: every file is staged (written and synced under a temp name)
        first, so a full disk or any other write error changes nothing; then they are renamed
        into place, and the revision and the journal follow what was renamed (so they agree
        even if a rename failed half-way)."""
        staged: list[tuple[str, Path]] = []
        try:
            for key, doc in writes:
                data = resource_bytes(doc)
                staged.append((key, stage(self._resource_path(key), data)))
        except BaseException:
            for _, tmp in staged:
                tmp.unlink(missing_ok=True)
            raise
        done: list[str] = []
        try:
            for key, tmp in staged:
                tmp.replace(self._resource_path(key))
                done.append(key)
        finally:
            for _, tmp in staged[len(done) :]:
                tmp.unlink(missing_ok=True)
            if done:
                for directory in {self._resource_path(k).parent for k in done}:
                    fsync_dir(directory)
                self._set_revision(first_rev + len(done) - 1)
                self._journal(done, first_rev)

    def delete(self, key: str) -> bool:
        """Remove the resource and its status; False when it did not exist."""
        with self._locked():
            path = self._resource_path(key)
            if not path.exists():
                return False
            rev = self.revision() + 1
            self._set_revision(rev)
            self._status_path(key).unlink(missing_ok=True)
            path.unlink()
            fsync_dir(path.parent)
            self._journal([key], rev)
            return True

    def patch_status(self, key: str, patch: Mapping[str, object]) -> Resource | None:
        """Merge `patch` into the status of `key`; the new resource, or None if nothing changed.

        Raises `NotFoundError` when the resource does not exist.
        """
        with self._locked():
            current = self.load(key)
            if current is None:
                raise NotFoundError(f"{self.kind} {key} not found")
            merged = merge_patch(current.status, patch)
            if merged == current.status:
                return None
            rev = self.revision() + 1
            self._set_revision(rev)
            doc = {"resourceVersion": str(rev), "status": merged}
            atomic_write(self._status_path(key), json_bytes(doc, indent=2))
            self._journal([key], rev)
            return dataclasses.replace(current, resource_version=str(rev), status=merged)

    def append_event(self, event: Mapping[str, object]) -> None:
        """Append one Event line; the file is rotated to `events.jsonl.1` past EVENTS_MAX_BYTES."""
        with self._locked():
            size = _append(self.events_path, json_bytes(event) + b"\n")
            if size > EVENTS_MAX_BYTES:
                self.events_path.replace(self.events_path.with_name(self.events_path.name + ".1"))

    # -- reads (lock-free: files are replaced atomically) ---------------------------------------
    def revision(self) -> int:
        try:
            return int(self._revision_path.read_text(encoding="ascii").strip() or 0)
        except FileNotFoundError:
            return 0

    def list_keys(self) -> list[str]:
        """Keys of every stored resource, sorted."""
        if not self.resources_dir.is_dir():
            return []
        if self.cluster_scoped:
            return self._list_names()
        found: list[str] = []
        for ns_dir in self.resources_dir.iterdir():
            if not ns_dir.is_dir() or ns_dir.name.startswith("."):
                continue
            for path in ns_dir.glob("*.yaml"):
                key = f"{ns_dir.name}/{path.name.removesuffix('.yaml')}"
                if is_object_key(key):
                    found.append(key)
                elif not path.name.startswith("."):  # temp files of atomic writes start with "."
                    log.warning("ignoring %s: not <namespace>/<object name>.yaml", path)
        return sorted(found)

    def _list_names(self) -> list[str]:
        """Keys of a cluster-scoped store: `resources/<name>.yaml`."""
        found: list[str] = []
        for path in self.resources_dir.glob("*.yaml"):
            name = path.name.removesuffix(".yaml")
            if is_device_name(name):
                found.append(name)
            elif not path.name.startswith("."):
                log.warning("ignoring %s: not <device name>.yaml", path)
        return sorted(found)

    def load(self, key: str) -> Resource | None:
        """The stored resource with its status, or None (missing or unparsable).

        The resource file is parsed again only when it changed since this store last parsed it
        (`_resource_doc`); the small status file is always read. An `OSError` other than
        "missing" is raised (see `_read_yaml`).
        """
        doc = self._resource_doc(key)
        if doc is None:
            return None
        meta = doc.get("metadata")
        spec = doc.get("spec")
        namespace, _, name = key.rpartition("/")
        if spec is None and self.cluster_scoped:
            spec = {}
        if not isinstance(meta, dict) or not isinstance(spec, dict):
            log.warning("skipping %s: no metadata or spec", key, extra={"resource": key})
            return None
        status_doc = self._read_json(self._file(self.status_dir, key, ".json"))
        status = status_doc.get("status", {}) if status_doc else {}
        versions = [to_int(meta.get("resourceVersion"))]
        if status_doc:
            versions.append(to_int(status_doc.get("resourceVersion")))
        return Resource(
            namespace=namespace,
            name=name,
            uid=str(meta.get("uid", "")),
            generation=to_int(meta.get("generation")) or 1,
            resource_version=str(max(versions)),
            spec=spec,
            status=status if isinstance(status, dict) else {},
            creation_timestamp=str(meta.get("creationTimestamp", "")),
            labels=_strings(meta.get("labels")),
            annotations=_strings(meta.get("annotations")),
            owners=_owners(meta.get("ownerReferences")),
        )

    def load_all(self) -> dict[str, Resource]:
        return {key: res for key in self.list_keys() if (res := self.load(key)) is not None}

    def document(self, key: str) -> dict[str, object] | None:
        """The full object as `get -o yaml` shows it: the resource file plus `status`."""
        doc = self._read_yaml(self._resource_path(key))  # a copy of its own: it is changed below
        resource = self.load(key)
        if doc is None or resource is None:
            return None
        meta = doc.get("metadata")
        if isinstance(meta, dict):
            meta["resourceVersion"] = resource.resource_version
        doc["status"] = dict(resource.status)
        return doc

    def events(self) -> list[dict[str, object]]:
        """Every retained Event, oldest first (the rotated file, then the current one)."""
        out: list[dict[str, object]] = []
        for path in (self.events_path.with_name(self.events_path.name + ".1"), self.events_path):
            with contextlib.suppress(FileNotFoundError):
                for line in path.read_text(encoding="utf-8").splitlines():
                    with contextlib.suppress(ValueError):
                        event = json.loads(line)
                        if isinstance(event, dict):
                            out.append(event)
        return out

    def recent_events(self, limit: int, tail_bytes: int = 16 * 1024) -> list[dict[str, object]]:
        """The last `limit` Events of the current file, reading only its tail (for live views)."""
        try:
            with self.events_path.open("rb") as fh:
                size = fh.seek(0, os.SEEK_END)
                fh.seek(max(0, size - tail_bytes))
                lines = fh.read().decode("utf-8", "replace").splitlines()
        except FileNotFoundError:
            return []
        out: list[dict[str, object]] = []
        for line in lines[-limit:]:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    out.append(event)
        return out

    # -- internals ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _set_revision(self, rev: int) -> None:
        atomic_write(self._revision_path, f"{rev}\n".encode())

    def _journal(self, keys: Sequence[str], first_rev: int) -> None:
        lines = "".join(f"{first_rev + i} {key}\n" for i, key in enumerate(keys))
        if _append(self.journal_path, lines.encode()) > JOURNAL_MAX_BYTES:
            self._rotate_journal()

    def _rotate_journal(self) -> None:
        """Keep the full journal as `changes.log.1` and start an empty one (a new inode).

        `changes.log` exists at every moment: the old file is first linked to the new name,
        then replaced. A reader part-way through the old file finishes it from `.1` and goes
        on with the new one (`JournalCursor`); only a reader two rotations behind relists.
        """
        previous = self.previous_journal_path
        staged = previous.with_name(previous.name + ".tmp")
        staged.unlink(missing_ok=True)
        os.link(self.journal_path, staged)
        staged.replace(previous)
        atomic_write(self.journal_path, b"")

    @staticmethod
    def _file(directory: Path, key: str, suffix: str) -> str:
        """`directory/<namespace>/<name><suffix>` (`directory/<name><suffix>` for a cluster-scoped
        key) as a str (the read path of `load`)."""
        return f"{directory}/{key}{suffix}"

    def _resource_path(self, key: str) -> Path:
        return Path(self._file(self.resources_dir, key, ".yaml"))

    def _status_path(self, key: str) -> Path:
        return Path(self._file(self.status_dir, key, ".json"))

    def _resource_doc(self, key: str) -> dict[str, object] | None:
        """The resource file of `key`, parsed at most once per version of the file.

        Files are only ever replaced (rename) or removed, so (inode, mtime, size) from one
        `stat` names a version. A file replaced between the `stat` and the read is cached under
        the older identity and simply parsed again next time. The cached document is shared
        with the `Resource`s made from it and must not be changed (callers never do; `document`
        reads a copy of its own).
        """
        path = self._file(self.resources_dir, key, ".yaml")
        try:
            st = os.stat(path)  # noqa: PTH116 - a str path: pathlib costs more than the stat here
        except FileNotFoundError:
            self._parsed.pop(key, None)
            return None
        ident = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._parsed.get(key)
        if cached is not None and cached.ident == ident:
            return cached.doc
        doc = self._read_yaml(path)
        self.parses += 1
        if doc is None:
            self._parsed.pop(key, None)
        else:
            self._parsed[key] = _Parsed(ident, doc)
        return doc

    def _read_yaml(self, path: Path | str) -> dict[str, object] | None:
        """The document, or None when the file is missing (deleted) or does not parse.

        Any other `OSError` (EMFILE, EIO, EACCES...) is raised: a file that cannot be read right
        now is not a deleted resource, and taking it for one would stop its process.
        """
        try:
            text = _read_text(path)
        except FileNotFoundError:
            return None
        except UnicodeDecodeError as exc:
            log.warning("skipping unreadable resource file %s: %s", path, exc)
            return None
        if text.startswith("{"):  # as the store writes it: JSON, parsed ~10x faster than YAML
            with contextlib.suppress(ValueError):
                doc = json.loads(text)
                return doc if isinstance(doc, dict) else None
        try:
            doc = yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - the C-accelerated SafeLoader
        except yaml.YAMLError as exc:
            log.warning("skipping unreadable resource file %s: %s", path, exc)
            return None
        return doc if isinstance(doc, dict) else None

    def _read_json(self, path: Path | str) -> dict[str, object] | None:
        """The status document, or None when missing or unparsable; other `OSError`s raise."""
        try:
            doc = json.loads(_read_text(path))
        except FileNotFoundError:
            return None
        except ValueError as exc:
            log.warning("ignoring unreadable status file %s: %s", path, exc)
            return None
        return doc if isinstance(doc, dict) else None


def _read_text(path: Path | str) -> str:
    with open(path, encoding="utf-8") as fh:  # noqa: PTH123 - str paths on the hot read path
        return fh.read()


def _stamp(doc: dict[str, object], rev: int) -> None:
    """Give a document built by `next_document` its resourceVersion."""
    metadata = doc["metadata"]
    assert isinstance(metadata, dict)  # noqa: S101 - built by next_document
    metadata["resourceVersion"] = str(rev)


def _strings(value: object) -> dict[str, str]:
    """A metadata map (labels, annotations) as strings; anything else as empty."""
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def _owners(value: object) -> tuple[OwnerRef, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(
        OwnerRef(str(ref.get("kind", "")), str(ref.get("name", "")), str(ref.get("uid", "")))
        for ref in value
        if isinstance(ref, dict)
    )


def _spec(doc: dict[str, object] | None) -> dict[str, object]:
    spec = doc.get("spec") if doc else None
    return dict(spec) if isinstance(spec, dict) else {}
