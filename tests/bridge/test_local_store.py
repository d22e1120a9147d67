"""The local store behaves like the API server: what changes, what bumps, what is never written.

Each story applies manifests to a fresh state directory and asserts on what a user or the bridge
would see: outcomes, uid/generation/resourceVersion, the files, the store revision (which counts
every write), and that a no-op writes nothing.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest
import yaml

from devicefabric.bridge.controlplane.base import OwnerRef
from devicefabric.bridge.controlplane.local.fleet import device_store
from devicefabric.bridge.controlplane.local.store import LocalStore
from devicefabric.bridge.controlplane.local.userfiles import Manifest, parse_manifests
from devicefabric.bridge.errors import ConflictError, NotFoundError
from devicefabric.runtime.files import atomic_write


def manifest(name: str = "web", device: str = "tor9-99", **spec: object) -> Manifest:
    body = {"deviceName": device, "command": ["sleep", "100"], **spec}
    text = json.dumps(
        {
            "apiVersion": "devicefabric.io/v1alpha1",
            "kind": "DeviceProcess",
            "metadata": {"name": name},
            "spec": body,
        },
        ensure_ascii=False,
    )
    (parsed,) = parse_manifests(text, "test")
    return parsed


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "state")


def test_create_update_noop_like_the_api_server(store: LocalStore) -> None:
    assert [a.outcome for a in store.apply([manifest()])] == ["created"]
    created = store.load("default/web")
    assert created is not None
    assert (created.generation, created.resource_version) == (1, "1")
    assert created.spec["restartPolicy"] == "Always"  # stored with defaults
    assert created.creation_timestamp.endswith("Z")

    assert [a.outcome for a in store.apply([manifest(restartPolicy="Always")])] == ["unchanged"]
    assert store.revision() == 1  # spelling out a default is not a change

    assert [a.outcome for a in store.apply([manifest(suspend=True)])] == ["configured"]
    updated = store.load("default/web")
    assert updated is not None
    assert (updated.uid, updated.creation_timestamp) == (created.uid, created.creation_timestamp)
    assert (updated.generation, updated.resource_version) == (2, "2")

    labelled = Manifest("default", "web", dict(updated.spec), labels={"team": "edge"})
    assert [a.outcome for a in store.apply([labelled])] == ["configured"]
    relabelled = store.load("default/web")
    assert relabelled is not None
    assert (relabelled.generation, relabelled.resource_version) == (2, "3")  # metadata only


def test_status_patch_merges_never_bumps_generation_and_noop_writes_nothing(
    store: LocalStore,
) -> None:
    store.apply([manifest()])
    cond = {"type": "AgentConnected", "status": "True", "reason": "Connected"}
    first = store.patch_status("default/web", {"phase": "Running", "pid": 7, "conditions": [cond]})
    assert first is not None
    assert (first.generation, first.resource_version) == (1, "2")
    status_file = store.root / "status" / "default" / "web.json"
    before = status_file.stat()

    assert store.patch_status("default/web", {"phase": "Running", "conditions": [cond]}) is None
    assert store.revision() == 2
    assert status_file.stat().st_ino == before.st_ino  # not even rewritten

    lost = {"type": "AgentConnected", "status": "False", "reason": "ConnectionLost"}
    second = store.patch_status("default/web", {"pid": None, "conditions": [lost]})
    assert second is not None
    assert dict(second.status) == {"phase": "Running", "conditions": [lost]}  # list replaced
    reloaded = store.load("default/web")
    assert reloaded == second
    assert reloaded.generation == 1

    # A later apply of the same spec keeps the status and its resourceVersion.
    assert [a.outcome for a in store.apply([manifest()])] == ["unchanged"]
    assert store.load("default/web") == second


def test_patch_of_a_missing_resource_is_not_found(store: LocalStore) -> None:
    with pytest.raises(NotFoundError):
        store.patch_status("default/ghost", {"phase": "Running"})
    assert store.revision() == 0


def test_delete_removes_resource_and_status_and_recreate_is_new(store: LocalStore) -> None:
    store.apply([manifest()])
    old = store.patch_status("default/web", {"phase": "Running"})
    assert old is not None
    assert store.delete("default/web") is True
    assert store.load("default/web") is None
    assert not (store.root / "status" / "default" / "web.json").exists()
    assert store.delete("default/web") is False
    store.apply([manifest()])
    new = store.load("default/web")
    assert new is not None
    assert new.uid != old.uid
    assert (new.generation, dict(new.status)) == (1, {})
    journal = store.journal_path.read_text().splitlines()
    assert journal == ["1 default/web", "2 default/web", "3 default/web", "4 default/web"]


def test_failed_write_leaves_the_old_file_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "file.yaml"
    atomic_write(target, b"old")

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.yaml"]


def test_events_are_appended_and_rotated(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("devicefabric.bridge.controlplane.local.store.EVENTS_MAX_BYTES", 200)
    for i in range(30):
        store.append_event({"reason": "Connected", "n": i})
    events = store.events()
    assert [e["n"] for e in events] == list(range(30 - len(events), 30))  # newest kept, in order
    assert len(events) < 20  # bounded: the oldest rotated away
    assert store.events_path.with_name("events.jsonl.1").exists()


def _writer(root: str, worker: int, count: int) -> None:
    store = LocalStore(Path(root))
    for i in range(count):
        store.apply([manifest(f"w{worker}-{i}")])
        store.patch_status("default/shared", {f"w{worker}": i})


def test_concurrent_writers_lose_nothing(store: LocalStore) -> None:
    store.apply([manifest("shared")])
    workers, count = 3, 15
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(store.root), w, count)) for w in range(workers)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    writes = 1 + 2 * workers * count
    assert store.revision() == writes
    revs = [int(line.split()[0]) for line in store.journal_path.read_text().splitlines()]
    assert revs == list(range(1, writes + 1))  # every write journaled once, in order
    assert len(store.list_keys()) == 1 + workers * count
    shared = store.load("default/shared")
    assert shared is not None
    assert dict(shared.status) == {f"w{w}": count - 1 for w in range(workers)}


def test_hand_written_files_load_raw_and_bad_names_are_ignored(store: LocalStore) -> None:
    store.apply([manifest()])
    (store.resources_dir / "default" / "Bad_Name.yaml").write_text("spec: {}\n")
    edited = store.resources_dir / "default" / "edited.yaml"
    edited.write_text(
        "apiVersion: devicefabric.io/v1alpha1\nkind: DeviceProcess\n"
        "metadata: {name: edited, uid: u1, generation: 3}\nspec: {deviceName: X, command: []}\n"
    )
    assert store.list_keys() == ["default/edited", "default/web"]
    raw = store.load("default/edited")
    assert raw is not None  # an invalid spec is the bridge's to report (InvalidSpec), not hidden
    assert (raw.uid, raw.generation, dict(raw.spec)) == (
        "u1",
        3,
        {"deviceName": "X", "command": []},
    )


def test_resource_files_are_json_that_yaml_readers_read_the_same(store: LocalStore) -> None:
    """Written as JSON (fast to parse for `get` at 10,000 resources), still valid YAML, with
    characters outside the BMP as they are (an escaped surrogate pair would read differently)."""
    store.apply([manifest(env=[{"name": "GREETING", "value": "grüße 😀"}])])
    text = (store.resources_dir / "default" / "web.yaml").read_text(encoding="utf-8")
    assert text.startswith("{")
    assert "😀" in text
    assert "\\u" not in text
    assert yaml.load(text, Loader=yaml.SafeLoader) == json.loads(text)
    loaded = store.load("default/web")
    assert loaded is not None
    assert loaded.spec["env"] == [{"name": "GREETING", "value": "grüße 😀"}]


def test_a_yaml_file_of_an_earlier_version_still_loads_and_is_rewritten_as_json(
    store: LocalStore,
) -> None:
    store.apply([manifest()])
    path = store.resources_dir / "default" / "web.yaml"
    old = yaml.safe_dump(json.loads(path.read_text(encoding="utf-8")), sort_keys=False)
    path.write_text(old, encoding="utf-8")
    before = store.load("default/web")
    assert before is not None
    assert before.spec["command"] == ["sleep", "100"]
    assert store.apply([manifest(command=["sleep", "200"])])[0].outcome == "configured"
    assert path.read_text(encoding="utf-8").startswith("{")
    after = store.load("default/web")
    assert after is not None
    assert (after.uid, after.generation) == (before.uid, 2)


def device(name: str, **labels: str) -> Manifest:
    text = json.dumps(
        {
            "apiVersion": "devicefabric.io/v1alpha1",
            "kind": "Device",
            "metadata": {"name": name, "labels": labels},
        }
    )
    (parsed,) = parse_manifests(text, "test")
    return parsed


def test_a_cluster_scoped_store_keys_devices_by_bare_name(tmp_path: Path) -> None:
    devices = device_store(tmp_path / "state")
    assert devices.list_keys() == []
    results = devices.apply([device("edge-2", role="a"), device("edge-1")])
    assert [(a.key, a.outcome) for a in results] == [("edge-2", "created"), ("edge-1", "created")]
    assert (devices.resources_dir / "edge-2.yaml").is_file()  # no namespace directory
    assert devices.list_keys() == ["edge-1", "edge-2"]
    loaded = devices.load("edge-2")
    assert loaded is not None
    assert (loaded.namespace, loaded.name, loaded.key) == ("", "edge-2", "edge-2")
    assert (dict(loaded.labels), dict(loaded.spec), loaded.generation) == ({"role": "a"}, {}, 1)
    doc = devices.document("edge-2")
    assert doc is not None
    assert doc["kind"] == "Device"
    assert "namespace" not in doc["metadata"]  # type: ignore[operator]

    assert devices.apply([device("edge-2", role="a")])[0].outcome == "unchanged"
    assert devices.apply([device("edge-2", role="b")])[0].outcome == "configured"
    relabelled = devices.load("edge-2")
    assert relabelled is not None
    assert (dict(relabelled.labels), relabelled.generation) == ({"role": "b"}, 1)

    patched = devices.patch_status("edge-1", {"arch": "arm64"})
    assert patched is not None
    assert devices.delete("edge-1") is True
    assert devices.delete("edge-1") is False
    assert devices.load("edge-1") is None
    assert not (devices.status_dir / "edge-1.json").exists()
    assert devices.list_keys() == ["edge-2"]
    assert devices.journal_path.read_text().splitlines() == [
        "1 edge-2",
        "2 edge-1",
        "3 edge-2",
        "4 edge-1",
        "5 edge-1",
    ]


def test_a_cluster_scoped_store_ignores_files_that_are_not_device_names(tmp_path: Path) -> None:
    devices = device_store(tmp_path / "state")
    devices.apply([device("edge-1")])
    (devices.resources_dir / "Bad_Name.yaml").write_text("spec: {}\n")
    (devices.resources_dir / "bridge.yaml").write_text("spec: {}\n")  # reserved
    (devices.resources_dir / "ns").mkdir()
    (devices.resources_dir / "ns" / "edge-2.yaml").write_text("spec: {}\n")
    assert devices.list_keys() == ["edge-1"]


def test_create_refuses_an_existing_object_and_writes_nothing(store: LocalStore) -> None:
    store.create(manifest())
    created = store.load("default/web")
    assert created is not None
    assert (created.generation, created.resource_version) == (1, "1")
    journal = store.journal_path.read_bytes()
    with pytest.raises(ConflictError, match="web already exists"):
        store.create(manifest(command=["other"]))
    assert store.revision() == 1
    assert store.journal_path.read_bytes() == journal
    assert store.load("default/web") == created  # not overwritten

    devices = device_store(store.root)
    devices.create(device("edge-1"))
    with pytest.raises(ConflictError, match="device edge-1 already exists"):
        devices.create(device("edge-1", role="a"))
    assert devices.revision() == 1
    assert dict(devices.load("edge-1").labels) == {}  # type: ignore[union-attr]


def _owned(name: str = "web") -> Manifest:
    owner = {
        "apiVersion": "devicefabric.io/v1alpha1",
        "kind": "DeviceProcessSet",
        "name": "fleet",
        "uid": "u-set",
        "controller": True,
    }
    base = manifest(name)
    return Manifest(
        base.namespace,
        base.name,
        base.spec,
        {"devicefabric.io/set": "fleet"},
        {"note": "keep"},
        owners=(owner,),
    )


def test_owners_are_written_and_loaded(store: LocalStore) -> None:
    store.create(_owned())
    loaded = store.load("default/web")
    assert loaded is not None
    assert loaded.owners == (OwnerRef("DeviceProcessSet", "fleet", "u-set"),)
    assert dict(loaded.labels) == {"devicefabric.io/set": "fleet"}
    doc = store.document("default/web")
    assert doc is not None
    (ref,) = doc["metadata"]["ownerReferences"]  # type: ignore[index]
    assert ref["controller"] is True
    # an `apply` by hand (no owners in a manifest) keeps the owners that are there
    assert store.apply([manifest(suspend=True)])[0].outcome == "configured"
    assert store.load("default/web").owners == loaded.owners  # type: ignore[union-attr]


def test_update_changes_spec_and_labels_and_keeps_the_rest(store: LocalStore) -> None:
    store.create(_owned())
    first = store.load("default/web")
    assert first is not None

    store.update("default/web", first.spec, {"devicefabric.io/set": "fleet", "x": "1"})
    relabelled = store.load("default/web")
    assert relabelled is not None
    assert dict(relabelled.labels) == {"devicefabric.io/set": "fleet", "x": "1"}
    assert (relabelled.generation, relabelled.resource_version) == (1, "2")  # labels only

    spec = {**first.spec, "command": ["sleep", "200"]}
    store.update("default/web", spec, {"x": "2"})
    updated = store.load("default/web")
    assert updated is not None
    assert (updated.generation, updated.resource_version) == (2, "3")
    assert updated.spec["command"] == ["sleep", "200"]
    assert dict(updated.labels) == {"x": "2"}
    assert (updated.uid, updated.creation_timestamp) == (first.uid, first.creation_timestamp)
    assert updated.owners == first.owners
    doc = store.document("default/web")
    assert doc is not None
    meta = doc["metadata"]
    assert isinstance(meta, dict)
    assert meta["annotations"] == {"note": "keep"}
    assert meta["ownerReferences"][0]["controller"] is True
    assert doc["kind"] == "DeviceProcess"

    journal = store.journal_path.read_bytes()
    store.update("default/web", spec, {"x": "2"})  # unchanged: nothing written
    assert store.revision() == 3
    assert store.journal_path.read_bytes() == journal


def test_update_of_a_missing_key_is_not_found(store: LocalStore) -> None:
    with pytest.raises(NotFoundError, match="ghost"):
        store.update("default/ghost", {"deviceName": "x", "command": ["y"]}, {})
    assert store.revision() == 0
    assert not store.resources_dir.exists()
