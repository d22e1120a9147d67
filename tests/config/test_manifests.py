"""The shipped manifests: valid Kubernetes (offline, strict), and the CRDs equal to our models.

The CRD schemas are written by hand for readers; these tests make it impossible for them to drift
from `config.resource` and `config.fleet` (patterns, limits, enums, defaults, required fields,
condition shape) and from DESIGN.md (names, scopes, printer columns), and validate the samples
three ways: the CRD schema of their kind through jsonschema, the same schema through the fake API
server's structural validator (which must agree), and the pydantic spec model.

Where a model says more than a CRD can: label keys (`propertyNames` of `matchLabels`) and the
"values fit the operator" rule of a selector requirement are checked by the model only, and a
set's template takes its bounds from `DeviceProcessSpec` (what `ProcessTemplate.for_device`
validates through), not from `ProcessTemplate`'s own fields.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema  # no stubs; installed with kubernetes-validate
import kubernetes_validate  # no stubs or py.typed marker
import pytest
import yaml

from devicefabric.cli import main
from devicefabric.config import deploybundle as manifests
from devicefabric.config.fleet import (
    CONNECTED,
    DEVICE_KIND,
    DEVICE_PLURAL,
    DEVICE_SHORT_NAME,
    FACT_FIELDS,
    SET_KIND,
    SET_PLURAL,
    SET_SHORT_NAME,
    DeviceProcessSetSpec,
    ProcessTemplate,
)
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
from tests.support.fakeapi.schema import StructuralSchema
from tests.support.resources import rolling_update

# The oldest Kubernetes we support (CEL validation rules are GA from 1.29) and the newest known.
K8S_VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())


def docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(manifests.read(name)) if d]


def crds() -> dict[str, dict[str, Any]]:
    """The CRDs of crd.yaml by kind, in file order."""
    return {d["spec"]["names"]["kind"]: d for d in docs(manifests.CRD)}


def crd_schema(kind: str = KIND) -> dict[str, Any]:
    (version,) = crds()[kind]["spec"]["versions"]
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
        "CustomResourceDefinition",
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
    cluster_wide = [d for d in printed if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    assert [d["metadata"]["name"] for d in cluster_wide] == ["devicefabric-bridge-devices"] * 2
    (cluster_role,) = (d for d in cluster_wide if d["kind"] == "ClusterRole")
    assert {r for rule in cluster_role["rules"] for r in rule["resources"]} == {
        DEVICE_PLURAL,
        f"{DEVICE_PLURAL}/status",
    }
    deployment = next(d for d in printed if d["kind"] == "Deployment")
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert (
        env["DEVICEFABRIC_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    )
    assert main(["manifests", "--samples"]) == 0
    assert {d["kind"] for d in yaml.safe_load_all(capsys.readouterr().out) if d} == {
        KIND,
        DEVICE_KIND,
        SET_KIND,
    }


@pytest.mark.parametrize(
    ("kind", "plural", "short", "scope", "columns"),
    [
        (KIND, PLURAL, SHORT_NAME, "Namespaced", ["Device", "Phase", "Connected", "Restarts"]),
        (DEVICE_KIND, DEVICE_PLURAL, DEVICE_SHORT_NAME, "Cluster", ["Connected", "Agent", "Arch"]),
        (SET_KIND, SET_PLURAL, SET_SHORT_NAME, "Namespaced", ["Desired", "Current", "Updated"]),
    ],
)
def test_crd_names_scope_subresource_and_printer_columns(
    kind: str, plural: str, short: str, scope: str, columns: list[str]
) -> None:
    assert list(crds()) == [KIND, DEVICE_KIND, SET_KIND]  # DeviceProcess first
    crd = crds()[kind]
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{plural}.{GROUP}"
    assert (spec["group"], spec["scope"]) == (GROUP, scope)
    assert (spec["names"]["kind"], spec["names"]["plural"]) == (kind, plural)
    assert spec["names"]["listKind"] == f"{kind}List"
    assert spec["names"]["shortNames"] == [short]
    assert spec["names"]["categories"] == ["devicefabric"]
    (version,) = spec["versions"]
    assert f"{GROUP}/{version['name']}" == API_VERSION
    assert version["subresources"] == {"status": {}}
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    extra = {DEVICE_KIND: ["Processes"], SET_KIND: ["Available"]}.get(kind, [])
    assert names == [*columns, *extra, "Age"]
    conditions = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"][
        "conditions"
    ]
    assert conditions == crd_schema(KIND)["properties"]["status"]["properties"]["conditions"] | {
        "description": conditions["description"]
    }
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]


def test_device_printer_column_reads_the_connected_condition() -> None:
    (version,) = crds()[DEVICE_KIND]["spec"]["versions"]
    connected = next(c for c in version["additionalPrinterColumns"] if c["name"] == "Connected")
    assert connected["jsonPath"] == f'.status.conditions[?(@.type=="{CONNECTED}")].status'


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


# -- the fleet CRDs against config.fleet ----------------------------------------------------------
def _resolved(model: type[Any]) -> dict[str, Any]:
    """The model's JSON schema with every `$ref` inlined and `X | None` reduced to X."""
    schema = model.model_json_schema(by_alias=True)
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            node = {
                **defs[node["$ref"].rsplit("/", 1)[-1]],
                **{k: v for k, v in node.items() if k != "$ref"},
            }
        if "anyOf" in node:
            branches = [b for b in node["anyOf"] if b.get("type") != "null"]
            if len(branches) == 1:  # Optional[X]; int | str keeps its anyOf
                node = {**branches[0], **{k: v for k, v in node.items() if k != "anyOf"}}
        return {k: v if k in ("default", "enum") else resolve(v) for k, v in node.items()}

    resolved: dict[str, Any] = resolve(schema)
    return resolved


def _template_bounds() -> dict[str, Any]:
    """A set's template as the CRD bounds it: DeviceProcessSpec without deviceName."""
    spec = _resolved(DeviceProcessSpec)
    del spec["properties"]["deviceName"]
    spec["required"] = [r for r in spec["required"] if r != "deviceName"]
    return spec


def _stored_default(crd_node: dict[str, Any]) -> Any:
    """What the API server stores for an absent field: its default, defaulted in turn."""
    wrapper = StructuralSchema({"type": "object", "properties": {"field": crd_node}})
    return wrapper.default({}).get("field")


def _assert_same_tree(crd: dict[str, Any], model: dict[str, Any], where: str) -> None:
    """`_assert_same` recursively: properties, required, items and map values."""
    if "anyOf" in model:  # int | str: x-kubernetes-int-or-string, each bound on its branch
        by_type = {b["type"]: b for b in model["anyOf"] if b["type"] != "null"}  # None: unset
        assert set(by_type) == {"integer", "string"}, where
        assert crd.get("x-kubernetes-int-or-string") is True, where
        assert crd.get("anyOf") == [{"type": "integer"}, {"type": "string"}], where
        assert crd.get("minimum") == by_type["integer"].get("minimum"), where
        assert crd.get("pattern") == by_type["string"].get("pattern"), where
        assert crd.get("default") == model.get("default"), where
        return
    _assert_same({k: v for k, v in crd.items() if k != "default"}, model | {"default": None}, where)
    default = model.get("default")
    if default is None:
        assert "default" not in crd, f"{where}: the CRD defaults what the model leaves unset"
    else:
        assert _stored_default(crd) == _no_nulls(default), f"{where}: the stored default differs"
    if "properties" in model:
        assert set(crd.get("properties", {})) == set(model["properties"]), where
        assert sorted(crd.get("required", [])) == sorted(model.get("required", [])), where
        for name, sub in model["properties"].items():
            _assert_same_tree(crd["properties"][name], sub, f"{where}.{name}")
    if isinstance(model.get("additionalProperties"), dict):
        values = model["additionalProperties"]
        _assert_same_tree(crd["additionalProperties"], values, f"{where}[*]")
    if "items" in model:
        _assert_same_tree(crd["items"], model["items"], f"{where}[]")


def test_set_crd_spec_matches_the_fleet_model() -> None:
    model = _resolved(DeviceProcessSetSpec)
    _assert_same_tree(crd_schema(SET_KIND)["properties"]["spec"], model, "spec")


def test_set_template_is_a_device_process_spec_without_device_name() -> None:
    """ProcessTemplate's fields, required and defaults are DeviceProcessSpec's minus deviceName;
    its bounds are DeviceProcessSpec's too, in the model and in the CRD."""
    template, bounds = _resolved(ProcessTemplate), _template_bounds()
    assert set(template["properties"]) == set(bounds["properties"])
    assert template["required"] == bounds["required"]
    for name, node in bounds["properties"].items():
        assert template["properties"][name].get("default") == node.get("default"), name
    too_long = {"command": ["x"] * 257}
    doc = {"spec": {"template": too_long}}
    assert StructuralSchema(crd_schema(SET_KIND)).validate(doc) != []
    with pytest.raises(ValueError, match="validation error"):
        ProcessTemplate.model_validate(too_long)


def _no_nulls(value: Any) -> Any:
    """A default as the API server stores it: no null fields (an unset optional is absent)."""
    if isinstance(value, dict):
        return {k: _no_nulls(v) for k, v in value.items() if v is not None}
    return value


def test_set_and_device_status_fields() -> None:
    device = crd_schema(DEVICE_KIND)["properties"]
    assert device["spec"] == {"type": "object", "description": device["spec"]["description"]}
    facts = {wire for _, wire in FACT_FIELDS}
    assert set(device["status"]["properties"]) == {
        "conditions",
        "session",
        "heartbeatSeconds",
        "agentVersion",
        "processes",
        *facts,
    }
    numbers = {"desiredNumber", "currentNumber", "updatedNumber", "availableNumber", "failedNumber"}
    status = crd_schema(SET_KIND)["properties"]["status"]["properties"]
    revisions = {"updateRevision", "stableRevision", "stableTemplate", "failedRevision"}
    assert set(status) == {*numbers, "observedGeneration", "conditions", *revisions}
    assert {status[n]["type"] for n in (*numbers, "observedGeneration")} == {"integer"}


# -- samples --------------------------------------------------------------------------------------
SPEC_MODELS: dict[str, type[Any] | None] = {
    KIND: DeviceProcessSpec,
    DEVICE_KIND: None,  # no spec
    SET_KIND: DeviceProcessSetSpec,
}


def test_samples_are_valid_by_the_crd_schema_the_fake_and_the_model() -> None:
    samples = docs(manifests.SAMPLES)
    assert [s["kind"] for s in samples] == [KIND, KIND, KIND, DEVICE_KIND, SET_KIND]
    for sample in samples:
        schema = crd_schema(sample["kind"])
        structural = StructuralSchema(schema)
        assert sample["apiVersion"] == API_VERSION
        jsonschema.validate(sample, schema)
        assert structural.validate(sample) == []
        defaulted = structural.default(structural.prune(sample))
        assert defaulted == structural.default(sample), "a sample has a field the CRD prunes"
        model = SPEC_MODELS[sample["kind"]]
        if model is None:
            assert "spec" not in sample
            continue
        spec = model.model_validate_json(json.dumps(defaulted["spec"]))
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


@pytest.mark.parametrize(
    "spec",
    [
        {
            "template": {"command": ["x"]},
            "updateStrategy": {"rollingUpdate": {"maxUnavailable": 0}},
        },
        {
            "template": {"command": ["x"]},
            "updateStrategy": {"rollingUpdate": {"maxUnavailable": "abc"}},
        },
        {
            "template": {"command": ["x"]},
            "updateStrategy": {"rollingUpdate": {"maxUnavailable": "101%"}},
        },
        {
            "template": {"command": ["x"]},
            "updateStrategy": {"rollingUpdate": {"maxUnavailable": True}},
        },
        {"template": {"command": ["x"]}, "updateStrategy": {"type": "Recreate"}},
        {"template": {"command": ["x"]}, "updateStrategy": {"rollingUpdate": {"partition": -1}}},
        {"template": {"command": []}},
        {"template": {"command": ["x"], "restartPolicy": "Sometimes"}},
        {"template": {"command": ["x"]}, "selector": {"matchLabels": {"role": "x" * 64}}},
        {
            "template": {"command": ["x"]},
            "selector": {"matchExpressions": [{"key": "role", "operator": "Maybe"}]},
        },
        {"selector": {}},
    ],
)
def test_invalid_set_specs_are_refused_by_the_crd_and_the_model(spec: dict[str, Any]) -> None:
    doc = {"apiVersion": API_VERSION, "kind": SET_KIND, "metadata": {"name": "x"}, "spec": spec}
    assert StructuralSchema(crd_schema(SET_KIND)).validate(doc) != []
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, crd_schema(SET_KIND))
    with pytest.raises(ValueError, match="validation error"):
        DeviceProcessSetSpec.model_validate_json(json.dumps(spec))


@pytest.mark.parametrize("max_unavailable", [1, 2, "25%", "0%", "100%"])
def test_max_unavailable_takes_a_count_or_a_percentage(max_unavailable: int | str) -> None:
    spec = {
        "template": {"command": ["x"]},
        "updateStrategy": {"rollingUpdate": {"maxUnavailable": max_unavailable}},
    }
    doc = {"apiVersion": API_VERSION, "kind": SET_KIND, "metadata": {"name": "x"}, "spec": spec}
    structural = StructuralSchema(crd_schema(SET_KIND))
    assert structural.validate(doc) == []
    jsonschema.validate(doc, crd_schema(SET_KIND))
    stored = structural.default(doc)["spec"]
    assert stored == DeviceProcessSetSpec.model_validate_json(json.dumps(spec)).to_wire()
    assert stored["updateStrategy"] == rolling_update(max_unavailable)
