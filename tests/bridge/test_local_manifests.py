"""Manifest validation of the local control plane: every refusal names the field that is wrong.

Table-driven over `parse_manifests` (pure): each bad document is refused with one line naming the
source, the document and the field; good documents come out with the spec's defaults filled in.
"""

from __future__ import annotations

import textwrap

import pytest

from devicefabric.bridge.controlplane.local.userfiles import parse_manifests
from devicefabric.config.errors import ConfigError
from tests.support.resources import rolling_update, set_template

HEAD = "apiVersion: devicefabric.io/v1alpha1\nkind: DeviceProcess\n"


def doc(body: str) -> str:
    return HEAD + textwrap.dedent(body)


def refusal(text: str) -> str:
    """The one-line message `parse_manifests` refuses `text` (read as f.yaml) with."""
    with pytest.raises(ConfigError) as caught:
        parse_manifests(text, "f.yaml")
    message = str(caught.value)
    assert "\n" not in message
    return message


GOOD = doc("""\
    metadata: {name: web}
    spec: {deviceName: tor9-99, command: [sleep, "100"]}
""")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: [", "f.yaml: invalid YAML: line 2"),
        ("", "no DeviceProcess found"),
        ("- 1\n- 2\n", "document 1: expected a mapping"),
        (GOOD.replace("v1alpha1", "v1"), "document 1: apiVersion: expected"),
        (GOOD.replace("kind: DeviceProcess", "kind: Pod"), "document 1: kind: expected"),
        (GOOD + "extra: 1\n", "document 1: extra: unknown field"),
        (HEAD + "spec: {}\n", "document 1: metadata: required"),
        (HEAD + "metadata: {namespace: x}\n", "document 1: metadata.name: required"),
        (GOOD.replace("name: web", "name: Web_1"), "document 1: metadata.name: 'Web_1'"),
        (
            GOOD.replace("name: web", "name: web, namespace: NS"),
            "(deviceprocess/web): metadata.namespace: 'NS'",
        ),
        (
            GOOD.replace("name: web", "name: web, owner: me"),
            "(deviceprocess/web): metadata.owner: unknown field",
        ),
        (
            GOOD.replace("name: web", "name: web, labels: {a: 1}"),
            "metadata.labels.a: keys and values must be strings",
        ),
        (HEAD + "metadata: {name: web}\n", "(deviceprocess/web): spec: required"),
        (GOOD.replace("tor9-99", "Tor9"), "spec.deviceName: String should match pattern"),
        (GOOD.replace("tor9-99", "bridge"), "spec.deviceName: 'bridge' is reserved"),
        (GOOD.replace('[sleep, "100"]', "[]"), "spec.command: List should have at least 1"),
        (GOOD.replace('"100"', "100"), "spec.command.1: Input should be a valid string"),
        (GOOD.replace("command:", "restartPolicy: Sometimes, command:"), "spec.restartPolicy:"),
        (GOOD.replace("command:", "suspend: maybe, command:"), "spec.suspend: Input should be"),
        (GOOD.replace("command:", "cmd: [x], command:"), "spec.cmd: Extra inputs"),
        (
            GOOD.replace("command:", "env: [{name: A, vlue: b}], command:"),
            "spec.env.0.vlue: Extra inputs",
        ),
        (
            GOOD.replace("command:", "terminationGracePeriodSeconds: -1, command:"),
            "spec.terminationGracePeriodSeconds: Input should be greater than or equal to 0",
        ),
        (GOOD + "---\n" + GOOD, "document 2: deviceprocess default/web appears twice"),
        (GOOD + "---\n" + GOOD.replace("tor9-99", "X"), "document 2 (deviceprocess/web)"),
        ("kind: List\nitems: 3\n", "document 1: items: a List needs a list"),
    ],
)
def test_invalid_manifest_is_refused_naming_the_field(text: str, expected: str) -> None:
    message = refusal(text)
    assert expected in message
    assert message.startswith("f.yaml: ")


def test_defaults_are_filled_in_and_server_fields_ignored() -> None:
    text = GOOD.replace("name: web", "name: web, uid: abc, resourceVersion: '9'") + "status: {}\n"
    (manifest,) = parse_manifests(text, "f.yaml")
    assert manifest.key == "default/web"
    assert manifest.spec == {
        "deviceName": "tor9-99",
        "command": ["sleep", "100"],
        "env": [],
        "restartPolicy": "Always",
        "suspend": False,
        "terminationGracePeriodSeconds": 10,
    }


def test_multi_document_list_and_namespace_flag() -> None:
    listed = "kind: List\nitems:\n" + textwrap.indent(
        "- " + GOOD.replace("web", "two").replace("\n", "\n  "), ""
    )
    text = GOOD + "---\n" + GOOD.replace("web", "one") + "---\n" + listed
    manifests = parse_manifests(text, "f.yaml", namespace="lab")
    assert [m.key for m in manifests] == ["lab/web", "lab/one", "lab/two"]
    with pytest.raises(ConfigError, match="does not match --namespace 'lab'"):
        parse_manifests(GOOD.replace("name: web", "name: web, namespace: x"), "f", "lab")


API = "apiVersion: devicefabric.io/v1alpha1\n"
DEVICE = API + "kind: Device\nmetadata: {name: edge-1, labels: {role: a}}\n"
SET = API + textwrap.dedent("""\
    kind: DeviceProcessSet
    metadata: {name: fleet}
    spec:
      selector: {matchLabels: {role: a}}
      template: {command: [sleep, "100"]}
""")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            DEVICE.replace("edge-1,", "edge-1, namespace: default,"),
            "document 1 (device/edge-1): metadata.namespace: a device is cluster-scoped",
        ),
        (DEVICE + "spec: {arch: arm64}\n", "(device/edge-1): spec: a Device has no spec fields"),
        (DEVICE + "spec: []\n", "(device/edge-1): spec: a Device has no spec fields"),
        (DEVICE.replace("edge-1", "Edge_1"), "document 1: metadata.name: 'Edge_1' is not a valid"),
        (DEVICE.replace("edge-1", "observer"), "(device/observer): metadata.name: invalid device"),
        (DEVICE.replace("edge-1", "a.b"), "(device/a.b): metadata.name: invalid device name"),
        (DEVICE.replace("edge-1", "d" * 64), "metadata.name: invalid device name 'ddd"),
        (DEVICE + "extra: 1\n", "document 1: extra: unknown field"),
        (
            DEVICE.replace("labels:", "owner: me, labels:"),
            "(device/edge-1): metadata.owner: unknown field",
        ),
        (SET.replace("spec:", "nospec:"), "document 1: nospec: unknown field"),
        (
            SET.split("spec:")[0],
            "(deviceprocessset/fleet): spec: required, a mapping with a template",
        ),
        (
            SET + "  updateStrategy: {rollingUpdate: {maxUnavailable: abc}}\n",
            "(deviceprocessset/fleet): spec.updateStrategy.rollingUpdate.maxUnavailable",
        ),
        (
            SET + "  updateStrategy: {rollingUpdate: {maxUnavailable: 101%}}\n",
            "spec.updateStrategy.rollingUpdate.maxUnavailable",
        ),
        (
            SET + "  updateStrategy: {rollingUpdate: {partition: -1}}\n",
            "spec.updateStrategy.rollingUpdate.partition: Input should be greater than or equal",
        ),
        (SET + "  updateStrategy: {type: Recreate}\n", "spec.updateStrategy.type: Input should be"),
        (
            SET.replace("matchLabels: {role: a}", "matchExpressions: [{key: r, operator: In}]"),
            "spec.selector.matchExpressions.0: operator In needs at least one value",
        ),
        (
            SET.replace("matchLabels: {role: a}", "matchExpressions: [{key: r, operator: Is}]"),
            "spec.selector.matchExpressions.0.operator: Input should be",
        ),
        (SET + "  replicas: 3\n", "(deviceprocessset/fleet): spec.replicas: Extra inputs"),
        (SET.replace("command:", "deviceName: d, command:"), "spec.template.deviceName: Extra"),
        (SET.replace('[sleep, "100"]', "[]"), "spec.template.command: List should have at least"),
        (SET + "  paused: maybe\n", "spec.paused: Input should be a valid boolean"),
        (SET + "---\n" + SET, "document 2: deviceprocessset default/fleet appears twice"),
        (DEVICE + "---\n" + DEVICE, "document 2: device edge-1 appears twice"),
        (DEVICE.replace("Device", "Node"), "document 1: kind: expected one of 'DeviceProcess'"),
    ],
)
def test_invalid_device_or_set_is_refused_naming_the_field(text: str, expected: str) -> None:
    message = refusal(text)
    assert expected in message
    assert message.startswith("f.yaml: document ")


def test_devices_and_sets_parse_with_their_keys_and_defaults() -> None:
    text = "---\n".join([DEVICE, SET, GOOD, API + "kind: Device\nmetadata: {name: edge-2}\n"])
    device, dpset, process, bare = parse_manifests(text, "f.yaml", namespace="lab")
    assert (device.kind, device.namespace, device.key) == ("Device", "", "edge-1")
    assert (device.spec, device.labels) == ({}, {"role": "a"})
    assert (bare.key, bare.labels, bare.spec) == ("edge-2", {}, {})
    assert (dpset.kind, dpset.key) == ("DeviceProcessSet", "lab/fleet")
    assert dpset.spec == {
        "selector": {"matchLabels": {"role": "a"}, "matchExpressions": []},
        "template": set_template(["sleep", "100"]),
        "updateStrategy": rolling_update(1),
        "paused": False,
    }
    assert (process.kind, process.key) == ("DeviceProcess", "lab/web")
    percent = parse_manifests(
        SET + "  updateStrategy: {rollingUpdate: {maxUnavailable: 25%}}\n", "f.yaml"
    )
    assert percent[0].spec["updateStrategy"] == rolling_update("25%")
    assert parse_manifests(DEVICE + "spec: {}\n", "f.yaml")[0].spec == {}  # empty spec is fine


def test_the_same_name_in_two_kinds_is_not_a_duplicate() -> None:
    same = "---\n".join(
        [
            DEVICE.replace("edge-1", "web"),
            SET.replace("fleet", "web"),
            GOOD,
        ]
    )
    manifests = parse_manifests(same, "f.yaml")
    assert [(m.kind, m.key) for m in manifests] == [
        ("Device", "web"),
        ("DeviceProcessSet", "default/web"),
        ("DeviceProcess", "default/web"),
    ]
    # the same set in two namespaces is two objects too
    two = parse_manifests(SET + "---\n" + SET.replace("name: fleet", "name: fleet, namespace: b"))
    assert [m.key for m in two] == ["default/fleet", "b/fleet"]
