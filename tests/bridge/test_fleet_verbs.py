"""`devicefabric apply/get/delete/label` of Devices and DeviceProcessSets through the real CLI.

Every test runs `python -m devicefabric ...` as a user would and asserts on the exit code
(0 done, 1 not found, 2 invalid input), on the lines printed, and, after every refused command,
that nothing was written (each store's `revision` file unchanged or absent).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from devicefabric.bridge.controlplane.local.fleet import device_store, set_store
from devicefabric.bridge.controlplane.local.store import LocalStore
from tests.support.cli import Result, manifest_text, run_cli, write_manifest

HEAD = "apiVersion: devicefabric.io/v1alpha1\n"
DEVICE = HEAD + "kind: Device\nmetadata:\n  name: x\n  labels: {role: edge}\n"
SET = (
    HEAD + "kind: DeviceProcessSet\nmetadata:\n  name: y\n"
    "spec:\n  selector:\n    matchLabels: {role: edge}\n  template:\n    command: [sleep, '100']\n"
)
PROCESS = manifest_text("z", "x", ["true"])


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def cli(state: Path, *args: str) -> Result:
    return run_cli(*args, "--state-dir", str(state))


def written(state: Path) -> dict[str, str | None]:
    """The `revision` file of each store (None when absent): every write changes one."""
    paths = {
        "deviceprocess": state / "revision",
        "device": state / "devices" / "revision",
        "deviceprocessset": state / "sets" / "revision",
    }
    return {kind: p.read_text() if p.exists() else None for kind, p in paths.items()}


def refused(result: Result, code: int = 2) -> str:
    """The one error line of a refused command."""
    assert result.code == code, (result.out, result.err)
    assert result.out == ""
    assert "Traceback" not in result.err
    (line,) = result.err.strip().splitlines()
    return line


def applied(tmp_path: Path, state: Path, *docs: str) -> Path:
    path = write_manifest(tmp_path / "all.yaml", *docs)
    result = cli(state, "apply", "-f", str(path))
    assert result.code == 0, result.err
    return path


def test_apply_of_three_kinds_goes_to_three_stores(tmp_path: Path, state: Path) -> None:
    path = write_manifest(tmp_path / "all.yaml", DEVICE, SET, PROCESS)
    first = cli(state, "apply", "-f", str(path))
    assert (first.code, first.out) == (
        0,
        "device/x created\ndeviceprocessset/y created\ndeviceprocess/z created\n",
    )
    again = cli(state, "apply", "-f", str(path))
    assert (again.code, again.out) == (
        0,
        "device/x unchanged\ndeviceprocessset/y unchanged\ndeviceprocess/z unchanged\n",
    )
    assert written(state) == {"deviceprocess": "1\n", "device": "1\n", "deviceprocessset": "1\n"}
    device = device_store(state).load("x")
    assert device is not None
    assert (device.namespace, device.key, dict(device.labels)) == ("", "x", {"role": "edge"})
    dpset = set_store(state).load("default/y")
    assert dpset is not None
    assert dpset.spec["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {
            "maxUnavailable": 1,
            "partition": 0,
            "progressDeadlineSeconds": 600,
            "failurePolicy": "Stop",
        },
    }
    assert LocalStore(state).list_keys() == ["default/z"]

    changed = write_manifest(path, DEVICE.replace("edge", "core"), SET, PROCESS)
    third = cli(state, "apply", "-f", str(changed))
    assert third.out.splitlines()[0] == "device/x configured"


def test_the_same_name_in_two_kinds_is_not_a_duplicate(tmp_path: Path, state: Path) -> None:
    same = DEVICE.replace("name: x", "name: z")
    applied(tmp_path, state, same, PROCESS)
    twice = write_manifest(tmp_path / "twice.yaml", DEVICE, DEVICE)
    before = written(state)
    line = refused(cli(state, "apply", "-f", str(twice)))
    assert "device x appears twice" in line
    assert written(state) == before


def test_get_tables_of_devices_and_sets(tmp_path: Path, state: Path) -> None:
    applied(tmp_path, state, DEVICE, DEVICE.replace("name: x", "name: w"), SET)
    connected = {"type": "Connected", "status": "True", "reason": "Connected"}
    device_store(state).patch_status(
        "x",
        {"agentVersion": "1.2.3", "arch": "arm64", "processes": 2, "conditions": [connected]},
    )
    set_store(state).patch_status(
        "default/y",
        {"desiredNumber": 2, "currentNumber": 2, "updatedNumber": 1, "availableNumber": 1},
    )
    for word in ("devices", "device", "dev"):
        table = cli(state, "get", word)
        assert table.code == 0, table.err
        rows = [line.split() for line in table.out.splitlines()]
        assert rows[0] == ["NAME", "CONNECTED", "AGENT", "ARCH", "PROCESSES", "AGE"]
        assert rows[1][:5] == ["w", "-", "-", "-", "-"]
        assert rows[2][:5] == ["x", "True", "1.2.3", "arm64", "2"]
        assert rows[2][5].endswith("s")
        assert len(rows) == 3
    one = cli(state, "get", "dev", "x")
    assert [line.split()[0] for line in one.out.splitlines()] == ["NAME", "x"]

    for word in ("deviceprocesssets", "deviceprocessset", "dpset"):
        table = cli(state, "get", word)
        rows = [line.split() for line in table.out.splitlines()]
        assert rows[0] == ["NAME", "DESIRED", "CURRENT", "UPDATED", "AVAILABLE", "AGE"]
        assert rows[1][:5] == ["y", "2", "2", "1", "1"]
        assert len(rows) == 2
    everywhere = cli(state, "get", "dpset", "-A").out.splitlines()
    assert everywhere[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert everywhere[1].split()[:2] == ["default", "y"]
    assert cli(state, "get", "dpset", "-n", "lab").err.strip() == "No resources found."

    # the default type is still DeviceProcess
    assert cli(state, "get").out == ""


def test_get_of_an_empty_store_says_so(state: Path) -> None:
    for word in ("dev", "dpset"):
        empty = cli(state, "get", word)
        assert (empty.code, empty.out, empty.err.strip()) == (0, "", "No resources found.")
    assert not state.exists()  # a read creates nothing


def test_get_json_and_yaml_of_one_and_of_several(tmp_path: Path, state: Path) -> None:
    applied(tmp_path, state, DEVICE, DEVICE.replace("name: x", "name: w"), SET)
    one = json.loads(cli(state, "get", "dev", "x", "-o", "json").out)
    assert (one["kind"], one["metadata"]["name"]) == ("Device", "x")
    assert "namespace" not in one["metadata"]
    assert (one["metadata"]["labels"], one["spec"], one["status"]) == ({"role": "edge"}, {}, {})
    several = json.loads(cli(state, "get", "dev", "-o", "json").out)
    assert several["kind"] == "List"
    assert [i["metadata"]["name"] for i in several["items"]] == ["w", "x"]
    named = yaml.safe_load(cli(state, "get", "dev", "x", "w", "-o", "yaml").out)
    assert [i["metadata"]["name"] for i in named["items"]] == ["x", "w"]

    as_yaml = cli(state, "get", "dpset", "y", "-o", "yaml").out
    doc = yaml.safe_load(as_yaml)
    assert (doc["kind"], doc["metadata"]["namespace"]) == ("DeviceProcessSet", "default")
    assert doc["spec"]["template"]["restartPolicy"] == "Always"  # stored with defaults
    listing = yaml.safe_load(cli(state, "get", "dpset", "-o", "yaml").out)
    assert [i["metadata"]["name"] for i in listing["items"]] == ["y"]
    as_json = json.loads(cli(state, "get", "dpset", "-o", "json").out)
    assert [i["kind"] for i in as_json["items"]] == ["DeviceProcessSet"]

    # what `get -o yaml` prints applies back unchanged, for both kinds
    device_yaml = cli(state, "get", "dev", "x", "-o", "yaml").out
    back = run_cli(
        "apply", "-f", "-", "--state-dir", str(state), stdin=device_yaml + "---\n" + as_yaml
    )
    assert back.out == "device/x unchanged\ndeviceprocessset/y unchanged\n"


def test_get_of_a_missing_name_exits_1(tmp_path: Path, state: Path) -> None:
    applied(tmp_path, state, DEVICE, SET)
    assert (
        refused(cli(state, "get", "dev", "missing"), 1)
        == 'devicefabric: device "missing" not found'
    )
    assert refused(cli(state, "get", "dev", "x", "missing", "-o", "json"), 1).endswith(
        'device "missing" not found'
    )
    line = refused(cli(state, "get", "dpset", "missing"), 1)
    assert line == 'devicefabric: deviceprocessset "missing" not found'
    # a name no device can have is a usage error (exit 2), not "not found"
    for bad in ("Bad_Name", "a.b"):
        assert refused(cli(state, "get", "dev", bad)).startswith(
            f"devicefabric: error: invalid device name '{bad}': must be a DNS-1123 label"
        )


def test_label_creates_sets_refuses_overwrite_and_removes(state: Path) -> None:
    store = device_store(state)
    created = cli(state, "label", "device", "d1", "role=a")
    assert (created.code, created.out) == (0, "device/d1 labeled\n")
    d1 = store.load("d1")
    assert d1 is not None
    assert dict(d1.labels) == {"role": "a"}
    assert cli(state, "get", "dev", "d1").out.splitlines()[1].split()[0] == "d1"

    before = written(state)
    line = refused(cli(state, "label", "device", "d1", "role=b"))
    assert "--overwrite" in line
    assert "role=a" in line
    assert written(state) == before
    assert dict(store.load("d1").labels) == {"role": "a"}  # type: ignore[union-attr]

    same = cli(state, "label", "device", "d1", "role=a")  # the same value needs no --overwrite
    assert (same.code, same.out) == (0, "device/d1 not labeled\n")
    assert written(state) == before

    changed = cli(state, "label", "dev", "d1", "role=b", "zone=z1", "--overwrite")
    assert (changed.code, changed.out) == (0, "device/d1 labeled\n")
    assert dict(store.load("d1").labels) == {"role": "b", "zone": "z1"}  # type: ignore[union-attr]

    removed = cli(state, "label", "devices", "d1", "role-")
    assert (removed.code, removed.out) == (0, "device/d1 labeled\n")
    after = store.load("d1")
    assert after is not None
    assert dict(after.labels) == {"zone": "z1"}
    assert (after.uid, after.generation) == (d1.uid, 1)  # labels are metadata: same object

    prefixed = cli(state, "label", "device", "d1", "example.com/rack=r-7")
    assert prefixed.code == 0, prefixed.err
    assert store.load("d1").labels["example.com/rack"] == "r-7"  # type: ignore[union-attr]


def test_label_keeps_what_apply_wrote_besides_the_labels(tmp_path: Path, state: Path) -> None:
    """`label` changes labels only: a Device's annotations survive it (as with kubectl)."""
    annotated = DEVICE.replace(
        "labels: {role: edge}", "labels: {role: edge}\n  annotations: {n: keep}"
    )
    path = applied(tmp_path, state, annotated)
    assert cli(state, "label", "device", "x", "zone=z1").code == 0
    doc = json.loads(cli(state, "get", "dev", "x", "-o", "json").out)
    assert doc["metadata"]["labels"] == {"role": "edge", "zone": "z1"}
    assert doc["metadata"]["annotations"] == {"n": "keep"}
    # and the file applies as before: only the label `label` added differs
    assert cli(state, "apply", "-f", str(path)).out == "device/x configured\n"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("d1", "bad key=1"), "'bad key' is not a valid label key"),
        (("d1", "a/b/c=1"), "'a/b/c' is not a valid label key"),
        (("d1", "Bad.Prefix/k=1"), "'Bad.Prefix/k' is not a valid label key"),
        (("d1", "k=" + "v" * 64), "a value is at most 63 characters"),
        (("d1", "k=bad^"), "a value is at most 63 characters"),
        (("d1", "k=-v"), "a value is at most 63 characters"),
        (("d1", "k"), "'k': expected KEY=VALUE or KEY-"),
        (("d1", "-="), "label: "),
        (("d1", "bad key-"), "'bad key' is not a valid label key"),
        (("Bad_Name", "role=a"), "invalid device name 'Bad_Name'"),
        (("bridge", "role=a"), "invalid device name 'bridge': reserved"),
        (("a.b", "role=a"), "invalid device name 'a.b'"),
        (("d" * 64, "role=a"), "64 characters, at most 63"),
    ],
)
def test_invalid_label_or_device_name_exits_2_and_writes_nothing(
    state: Path, args: tuple[str, ...], expected: str
) -> None:
    line = refused(cli(state, "label", "device", *args))
    assert expected in line
    assert written(state) == {"deviceprocess": None, "device": None, "deviceprocessset": None}
    assert device_store(state).list_keys() == []


def test_label_of_an_unknown_type_is_a_usage_error(state: Path) -> None:
    result = cli(state, "label", "dpset", "y", "role=a")
    assert result.code == 2
    assert "invalid choice" in result.err
    assert not state.exists()


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (
            DEVICE.replace("name: x", "name: x\n  namespace: default"),
            "(device/x): metadata.namespace: a device is cluster-scoped",
        ),
        (DEVICE + "spec: {arch: arm64}\n", "(device/x): spec: a Device has no spec fields"),
        (DEVICE.replace("name: x", "name: Bad_Name"), "document 1: metadata.name: 'Bad_Name'"),
        (DEVICE.replace("name: x", "name: bridge"), "(device/bridge): metadata.name: invalid"),
        (DEVICE.replace("name: x", "name: a.b"), "(device/a.b): metadata.name: invalid device"),
        (
            DEVICE.replace("{role: edge}", "{role: 1}"),
            "metadata.labels.role: keys and values must be strings",
        ),
        (
            SET + "  updateStrategy: {rollingUpdate: {maxUnavailable: abc}}\n",
            "(deviceprocessset/y): spec.updateStrategy.rollingUpdate.maxUnavailable",
        ),
        (
            SET + "  updateStrategy: {rollingUpdate: {maxUnavailable: 0}}\n",
            "spec.updateStrategy.rollingUpdate.maxUnavailable",
        ),
        (
            SET.replace("matchLabels: {role: edge}", "matchExpressions: [{key: a, operator: In}]"),
            "spec.selector.matchExpressions.0: operator In needs at least one value",
        ),
        (
            SET.replace(
                "matchLabels: {role: edge}",
                "matchExpressions: [{key: a, operator: Exists, values: [b]}]",
            ),
            "spec.selector.matchExpressions.0: operator Exists takes no values",
        ),
        (SET + "  replicas: 3\n", "(deviceprocessset/y): spec.replicas: Extra inputs"),
        (SET + "    deviceName: d1\n", "spec.template.deviceName: Extra inputs"),
        (
            SET.replace("    command: [sleep, '100']\n", "    command: []\n"),
            "spec.template.command",
        ),
        (SET.split("spec:")[0], "(deviceprocessset/y): spec: required, a mapping with a template"),
        (SET + "extra: 1\n", "document 1: extra: unknown field"),
    ],
)
def test_an_invalid_device_or_set_is_refused_and_nothing_is_written(
    tmp_path: Path, state: Path, doc: str, expected: str
) -> None:
    path = write_manifest(tmp_path / "bad.yaml", PROCESS, doc)
    line = refused(cli(state, "apply", "-f", str(path)))
    assert expected.replace("document 1", "document 2") in line
    assert line.startswith(f"devicefabric: error: {path}: document 2")
    assert written(state) == {"deviceprocess": None, "device": None, "deviceprocessset": None}


def test_delete_of_sets_and_devices(tmp_path: Path, state: Path) -> None:
    applied(tmp_path, state, DEVICE, SET, PROCESS)
    deleted = cli(state, "delete", "dpset", "y")
    assert (deleted.code, deleted.out) == (0, "deviceprocessset/y deleted\n")
    assert set_store(state).list_keys() == []
    dev = cli(state, "delete", "dev", "x")
    assert (dev.code, dev.out) == (0, "device/x deleted\n")
    assert device_store(state).list_keys() == []
    assert LocalStore(state).list_keys() == ["default/z"]  # the other kinds are untouched

    before = written(state)
    line = refused(cli(state, "delete", "dpset", "y"), 1)
    assert line == 'devicefabric: deviceprocessset "y" not found in namespace "default"'
    assert refused(cli(state, "delete", "device", "x"), 1) == 'devicefabric: device "x" not found'
    assert cli(state, "delete", "dev", "x", "--ignore-not-found").code == 0
    assert written(state) == before
    assert "invalid device name 'Bad_Name'" in refused(cli(state, "delete", "dev", "Bad_Name"))
    assert refused(cli(state, "delete", "dev")).endswith("give either [TYPE] NAME... or -f FILE")


def test_delete_by_file_deletes_each_kind_from_its_store(tmp_path: Path, state: Path) -> None:
    path = applied(tmp_path, state, DEVICE, SET, PROCESS)
    result = cli(state, "delete", "-f", str(path))
    assert result.code == 0, result.err
    assert sorted(result.out.splitlines()) == [
        "device/x deleted",
        "deviceprocess/z deleted",
        "deviceprocessset/y deleted",
    ]
    assert device_store(state).list_keys() == []
    assert set_store(state).list_keys() == []
    assert LocalStore(state).list_keys() == []

    again = cli(state, "delete", "-f", str(path))
    assert again.code == 1
    assert again.err.strip().splitlines()[-1].endswith("(and 2 more)")
    assert cli(state, "delete", "-f", str(path), "--ignore-not-found").code == 0
