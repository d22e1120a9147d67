"""The shipped manifests: valid Kubernetes (offline, strict), and the CRD equal to our models.

The CRD schema is written by hand for readers; these tests make it impossible for it to drift from
`config.resource` (patterns, limits, enums, defaults, required fields, condition shape) and from
DESIGN.md (names, printer columns), and validate the samples three ways: the CRD schema through
jsonschema, the CRD schema through the fake API server's structural validator (which must agree),
and the pydantic spec model.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema  # no stubs; installed with kubernetes-validate
import kubernetes_validate  # no stubs or py.typed marker
import pytest
import yaml

from devicefabric.cli import main
from devicefabric.config import manifests
from devicefabric.config.names import DEVICE_NAME_PATTERN, RESERVED_NAMES
from devicefabric.config.resource import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAME,
    Condition,
    DeviceProcessSpec,
    DeviceProcessStatus,
    Phase,
    RestartPolicy,
)
from tests.kube.fakeapi.schema import StructuralSchema

# The oldest Kubernetes we support (CEL validation rules are GA from 1.29) and the newest known.
K8S_VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())


def docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(manifests.read(name)) if d]


def crd_schema() -> dict[str, Any]:
    (crd,) = docs(manifests.CRD)
    (version,) = crd["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    "name", [manifests.CRD, manifests.RBAC, manifests.RBAC_NAMESPACED, manifests.DEPLOYMENT]
)
def test_manifests_pass_kubernetes_validate_strict(name: str, version: str) -> None:
    for doc in docs(name):
        kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_catches_a_misspelled_field() -> None:
    (deployment,) = docs(manifests.DEPLOYMENT)
    deployment["spec"]["template"]["spec"]["containers"][0]["readynessProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def test_manifests_command_prints_crd_rbac_and_deployment(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["manifests"]) == 0
    printed = capsys.readouterr().out
    assert printed == manifests.bundle()
    kinds = [d["kind"] for d in yaml.safe_load_all(printed) if d]
    assert kinds == [
        "CustomResourceDefinition",
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
    ]


def test_namespaced_variant_uses_one_role_and_the_pods_namespace(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["manifests", "--namespaced"]) == 0
    printed = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert not {"ClusterRole", "ClusterRoleBinding"} & {d["kind"] for d in printed}
    deployment = next(d for d in printed if d["kind"] == "Deployment")
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert (
        env["DEVICEFABRIC_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    )
    assert main(["manifests", "--samples"]) == 0
    assert {d["kind"] for d in yaml.safe_load_all(capsys.readouterr().out) if d} == {KIND}


def test_crd_names_scope_subresource_and_printer_columns() -> None:
    (crd,) = docs(manifests.CRD)
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{PLURAL}.{GROUP}"
    assert (spec["group"], spec["scope"]) == (GROUP, "Namespaced")
    assert (spec["names"]["kind"], spec["names"]["plural"]) == (KIND, PLURAL)
    assert spec["names"]["shortNames"] == [SHORT_NAME]
    (version,) = spec["versions"]
    assert f"{GROUP}/{version['name']}" == API_VERSION
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Device", "Phase", "Connected", "Restarts", "Age"]
    conditions = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"][
        "conditions"
    ]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]


# -- the CRD schema against the pydantic models ---------------------------------------------------
_COMPARED = (
    "type",
    "pattern",
    "maxLength",
    "minLength",
    "minItems",
    "maxItems",
    "minimum",
    "maximum",
    "enum",
    "default",
)


def _pydantic_properties(model: type[Any]) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    schema = model.model_json_schema(by_alias=True)
    defs = schema.get("$defs", {})

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        if "$ref" in node:
            node = {
                **defs[node["$ref"].rsplit("/", 1)[-1]],
                **{k: v for k, v in node.items() if k != "$ref"},
            }
        if "anyOf" in node:  # Optional[X]: the non-null branch (the API server stores no nulls)
            (branch,) = [b for b in node["anyOf"] if b.get("type") != "null"]
            node = {**resolve(branch), **{k: v for k, v in node.items() if k != "anyOf"}}
        if node.get("items"):
            node = {**node, "items": resolve(node["items"])}
        return node

    props = {k: resolve(v) for k, v in schema["properties"].items()}
    return props, defs, schema.get("required", [])


def _assert_same(crd_node: dict[str, Any], model_node: dict[str, Any], where: str) -> None:
    for key in _COMPARED:
        model_value = model_node.get(key)
        if key == "default" and model_value is None:
            assert "default" not in crd_node, (
                f"{where}: the CRD defaults what the model leaves unset"
            )
            continue
        assert crd_node.get(key) == model_value, (
            f"{where}.{key}: CRD {crd_node.get(key)!r} != model {model_value!r}"
        )


@pytest.mark.parametrize(
    ("model", "section"), [(DeviceProcessSpec, "spec"), (DeviceProcessStatus, "status")]
)
def test_crd_schema_matches_the_pydantic_model(model: type[Any], section: str) -> None:
    crd = crd_schema()["properties"][section]
    props, _, required = _pydantic_properties(model)
    assert set(crd["properties"]) == set(props)
    assert sorted(crd.get("required", [])) == sorted(required)
    for name, model_node in props.items():
        crd_node = crd["properties"][name]
        if section == "status":  # status fields carry no model constraints beyond type and enum
            assert crd_node["type"] == model_node["type"], name
            assert crd_node.get("enum") == model_node.get("enum"), name
            continue
        _assert_same(crd_node, model_node, f"spec.{name}")
        if "items" in model_node and model_node["items"].get("type") == "object":
            item = model_node["items"]
            assert set(crd_node["items"]["properties"]) == set(item["properties"])
            assert crd_node["items"]["required"] == item["required"]
            for key, sub in item["properties"].items():
                _assert_same(crd_node["items"]["properties"][key], sub, f"spec.{name}[].{key}")
        elif "items" in model_node:
            _assert_same(crd_node["items"], model_node["items"], f"spec.{name}[]")


def test_crd_enums_defaults_and_names_equal_the_contract() -> None:
    spec = crd_schema()["properties"]["spec"]["properties"]
    status = crd_schema()["properties"]["status"]["properties"]
    assert spec["restartPolicy"]["enum"] == [p.value for p in RestartPolicy]
    assert (
        spec["restartPolicy"]["default"] == DeviceProcessSpec.model_fields["restart_policy"].default
    )
    assert status["phase"]["enum"] == [p.value for p in Phase]
    assert spec["deviceName"]["pattern"] == DEVICE_NAME_PATTERN
    (rule,) = spec["deviceName"]["x-kubernetes-validations"]
    assert sorted(
        n.strip("' ") for n in rule["rule"].split("[")[1].split("]")[0].split(",")
    ) == sorted(RESERVED_NAMES)
    condition = status["conditions"]["items"]
    condition_model = Condition.model_json_schema(by_alias=True)
    assert sorted(condition["required"]) == sorted(condition_model["required"])
    assert set(condition["properties"]) == set(condition_model["properties"])
    assert (
        condition["properties"]["status"]["enum"] == condition_model["properties"]["status"]["enum"]
    )


# -- samples --------------------------------------------------------------------------------------
def test_samples_are_valid_by_the_crd_schema_the_fake_and_the_model() -> None:
    schema = crd_schema()
    structural = StructuralSchema(schema)
    samples = docs(manifests.SAMPLES)
    assert len(samples) >= 3
    for sample in samples:
        assert (sample["apiVersion"], sample["kind"]) == (API_VERSION, KIND)
        jsonschema.validate(sample, schema)
        assert structural.validate(sample) == []
        defaulted = structural.default(structural.prune(sample))
        spec = DeviceProcessSpec.model_validate_json(json.dumps(defaulted["spec"]))
        assert spec.to_wire() == defaulted["spec"], (
            "the API server's defaults differ from the model's"
        )


@pytest.mark.parametrize(
    "spec",
    [
        {"deviceName": "Tor9", "command": ["x"]},
        {"deviceName": "d", "command": []},
        {"deviceName": "d", "command": ["x"], "restartPolicy": "Sometimes"},
        {"deviceName": "d", "command": ["x"], "terminationGracePeriodSeconds": -1},
        {"deviceName": "d", "command": ["x"], "env": [{"name": "A=B"}]},
    ],
)
def test_invalid_specs_are_refused_by_the_crd_and_the_model(spec: dict[str, Any]) -> None:
    doc = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "x"}, "spec": spec}
    assert StructuralSchema(crd_schema()).validate(doc) != []
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, crd_schema())
    with pytest.raises(ValueError, match="validation error"):
        DeviceProcessSpec.model_validate_json(json.dumps(spec))


@pytest.mark.parametrize("name", sorted(RESERVED_NAMES))
def test_reserved_device_names_are_refused_by_the_crd(name: str) -> None:
    doc = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": "x"},
        "spec": {"deviceName": name, "command": ["x"]},
    }
    (error,) = StructuralSchema(crd_schema()).validate(doc)
    assert error.field == "spec.deviceName"
    assert "reserved" in error.message
