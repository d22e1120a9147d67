"""Manifest validation of the local control plane: every refusal names the field that is wrong.

Table-driven over `parse_manifests` (pure): each bad document is refused with one line naming the
source, the document and the field; good documents come out with the spec's defaults filled in.
"""

from __future__ import annotations

import textwrap

import pytest

from devicefabric.bridge.controlplane.manifests import parse_manifests
from devicefabric.config.errors import ConfigError

HEAD = "apiVersion: devicefabric.io/v1alpha1\nkind: DeviceProcess\n"


def doc(body: str) -> str:
    return HEAD + textwrap.dedent(body)


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
    with pytest.raises(ConfigError) as caught:
        parse_manifests(text, "f.yaml")
    message = str(caught.value)
    assert expected in message
    assert message.startswith("f.yaml: ")
    assert "\n" not in message


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
