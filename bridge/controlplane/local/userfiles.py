"""Parsing and validating DeviceProcess manifests for the local control plane (pure, no IO).

`parse_manifests(text, source)` turns the text of a YAML file (one or more documents, or a
`kind: List`) into validated `Manifest`s, or raises one `ConfigError` whose one-line message
names the source, the document and the field that is wrong, e.g.

    app.yaml: document 2 (deviceprocess/web): spec.command: List should have at least 1 item

Invariants:
- A file is validated as a whole before anything is written: the caller gets every manifest or
  an error, never a prefix (all-or-nothing `apply`).
- `Manifest.spec` is the spec exactly as it will be stored and published in `desired`: validated by
  `DeviceProcessSpec` and dumped with the defaults filled in (`to_wire`), so two manifests that
  differ only by spelled-out defaults store the same spec and do not bump `generation`.
- Server-managed metadata (`uid`, `generation`, `resourceVersion`, `creationTimestamp`, ...) and a
  `status` section are ignored, like `kubectl apply` does, so `get -o yaml` output re-applies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

import yaml
from pydantic import ValidationError

from devicefabric.config.errors import ConfigError, InvalidDeviceNameError, shorten
from devicefabric.config.fleet import DEVICE_KIND, SET_KIND, DeviceProcessSetSpec
from devicefabric.config.names import (
    MAX_OBJECT_NAME,
    NAMESPACE_PATTERN,
    OBJECT_NAME_PATTERN,
    RESERVED_NAMES,
    validate_device,
)
from devicefabric.config.resource import API_VERSION, KIND, DeviceProcessSpec
from devicefabric.config.validation import describe

DEFAULT_NAMESPACE: Final = "default"
# `<name>.yaml` and `<name>.json` must fit NAME_MAX (255 bytes on Linux file systems).
MAX_LOCAL_NAME: Final = 250
_SERVER_METADATA: Final = frozenset(
    {
        "uid",
        "generation",
        "resourceVersion",
        "creationTimestamp",
        "managedFields",
        "selfLink",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "finalizers",
    }
)
KINDS: Final = {KIND: "deviceprocess", SET_KIND: "deviceprocessset", DEVICE_KIND: "device"}
"""The kinds `apply` takes, with the lowercase name messages use."""
_TOP_LEVEL: Final = frozenset({"apiVersion", "kind", "metadata", "spec", "status"})
_NAMESPACE_RE: Final = re.compile(NAMESPACE_PATTERN)
_OBJECT_RE: Final = re.compile(OBJECT_NAME_PATTERN)
_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(_BaseLoader):  # type: ignore[misc, valid-type]  # yaml's loaders are untyped
    """The safe loader, refusing a mapping that repeats a key (kubectl refuses it too; YAML's
    "last one wins" would silently drop what the user wrote first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[object, object]:
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} appears twice (first on line {seen[key]})",
                    key_node.start_mark,
                )
            seen[key] = line
        mapping: dict[object, object] = super().construct_mapping(node, deep=deep)
        return mapping


@dataclass(frozen=True, slots=True)
class Manifest:
    """One validated object as the user wrote it (minus server-managed fields): a DeviceProcess,
    a DeviceProcessSet, or a Device (cluster-scoped: namespace "", key = name)."""

    namespace: str
    name: str
    spec: dict[str, object]
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    kind: str = KIND
    owners: tuple[dict[str, object], ...] = ()  # ownerReferences (written by the bridge only)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


def parse_manifests(
    text: str, source: str = "<stdin>", namespace: str | None = None
) -> list[Manifest]:
    """Every DeviceProcess, DeviceProcessSet and Device in `text`, validated; `ConfigError` naming the wrong field otherwise.

    `namespace` (from `-n`) fills in documents without `metadata.namespace`; a document whose
    namespace differs from it is refused, as kubectl does.
    """
    try:
        documents = [doc for doc in yaml.load_all(text, Loader=_UniqueKeyLoader) if doc is not None]
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {_yaml_reason(exc)}") from None
    items: list[tuple[str, object]] = []
    for index, doc in enumerate(documents, start=1):
        where = f"document {index}"
        if isinstance(doc, dict) and doc.get("kind") == "List":
            listed = doc.get("items")
            if not isinstance(listed, list):
                raise ConfigError(f"{source}: {where}: items: a List needs a list of items")
            items.extend((f"{where} item {i}", item) for i, item in enumerate(listed, start=1))
        else:
            items.append((where, doc))
    if not items:
        raise ConfigError(f"{source}: no DeviceProcess found (the file is empty)")
    manifests: list[Manifest] = []
    seen: set[str] = set()
    for where, doc in items:
        manifest = _parse_one(doc, f"{source}: {where}", namespace)
        ident = f"{KINDS[manifest.kind]} {manifest.key}"
        if ident in seen:
            raise ConfigError(f"{source}: {where}: {ident} appears twice")
        seen.add(ident)
        manifests.append(manifest)
    return manifests


def validate_namespace(namespace: str, flag: str = "--namespace") -> str:
    if not _NAMESPACE_RE.fullmatch(namespace):
        raise ConfigError(f"{flag}: {namespace!r} is not a valid namespace (a DNS-1123 label)")
    return namespace


def validate_name(name: str, what: str = "name") -> str:
    if len(name) > MAX_OBJECT_NAME or not _OBJECT_RE.fullmatch(name):
        raise ConfigError(
            f"{what}: {_short(name)!r} is not a valid object name (lowercase letters, digits, "
            "'-' and '.', starting and ending with a letter or digit)"
        )
    if len(name) > MAX_LOCAL_NAME:
        raise ConfigError(
            f"{what}: {_short(name)!r} has {len(name)} characters; the local control plane keeps "
            f"each resource in a file named after it, so at most {MAX_LOCAL_NAME} (Kubernetes "
            f"allows {MAX_OBJECT_NAME})"
        )
    return name


def _parse_one(doc: object, where: str, default_ns: str | None) -> Manifest:
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: expected a mapping (a DeviceProcess), got {_kind(doc)}")
    if doc.get("apiVersion") != API_VERSION:
        raise ConfigError(
            f"{where}: apiVersion: expected {API_VERSION!r}, got {_short(doc.get('apiVersion'))!r}"
        )
    kind = doc.get("kind")
    if kind not in KINDS:
        raise ConfigError(
            f"{where}: kind: expected one of {', '.join(map(repr, KINDS))}, got {_short(kind)!r}"
        )
    for key in doc:
        if key not in _TOP_LEVEL:
            raise ConfigError(f"{where}: {_short(key)}: unknown field")
    singular = KINDS[kind]
    cluster = kind == DEVICE_KIND
    name, namespace, labels, annotations = _metadata(
        doc.get("metadata"), where, default_ns, singular, cluster=cluster
    )
    where = f"{where} ({singular}/{name})"
    spec = doc.get("spec")
    if cluster:
        _check_device(name, spec, where)
        return Manifest("", name, {}, labels, annotations, kind=DEVICE_KIND)
    if not isinstance(spec, dict):
        what = "a template" if kind == SET_KIND else "deviceName and command"
        raise ConfigError(f"{where}: spec: required, a mapping with {what}")
    if kind == SET_KIND:
        try:
            set_spec = DeviceProcessSetSpec.model_validate(spec)
        except ValidationError as exc:
            raise ConfigError(f"{where}: {describe(exc, root='spec')}") from None
        return Manifest(namespace, name, set_spec.to_wire(), labels, annotations, kind=SET_KIND)
    return Manifest(namespace, name, _process_spec(spec, where), labels, annotations)


def _check_device(name: str, spec: object, where: str) -> None:
    if spec not in (None, {}):
        raise ConfigError(f"{where}: spec: a Device has no spec fields (its labels select it)")
    try:
        validate_device(name)
    except InvalidDeviceNameError as exc:
        raise ConfigError(f"{where}: metadata.name: {exc}") from None


def _process_spec(spec: dict[str, object], where: str) -> dict[str, object]:
    try:
        model = DeviceProcessSpec.model_validate(spec)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {describe(exc, root='spec')}") from None
    if model.device_name in RESERVED_NAMES:
        raise ConfigError(
            f"{where}: spec.deviceName: {model.device_name!r} is reserved for a fabric role user"
        )
    return model.to_wire()


def _metadata(
    meta: object, where: str, default_ns: str | None, singular: str, *, cluster: bool = False
) -> tuple[str, str, dict[str, str], dict[str, str]]:
    """`(name, namespace, labels, annotations)` of a document's metadata, validated (a
    cluster-scoped object's namespace is "")."""
    if not isinstance(meta, dict):
        raise ConfigError(f"{where}: metadata: required, a mapping with at least a name")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: metadata.name: required, a non-empty string")
    validate_name(name, f"{where}: metadata.name")
    where = f"{where} ({singular}/{name})"
    if cluster:
        if "namespace" in meta:
            raise ConfigError(
                f"{where}: metadata.namespace: a {singular} is cluster-scoped (no namespace)"
            )
        namespace = ""
    else:
        namespace = meta.get("namespace", default_ns or DEFAULT_NAMESPACE)
        if not isinstance(namespace, str) or not _NAMESPACE_RE.fullmatch(namespace):
            raise ConfigError(
                f"{where}: metadata.namespace: {_short(namespace)!r} is not a DNS-1123 label"
            )
        if default_ns is not None and namespace != default_ns:
            raise ConfigError(
                f"{where}: metadata.namespace: {namespace!r} does not match --namespace "
                f"{default_ns!r}"
            )
    for key in meta:
        if key not in {"name", "namespace", "labels", "annotations"} | _SERVER_METADATA:
            raise ConfigError(f"{where}: metadata.{_short(key)}: unknown field")
    labels = _string_map(meta.get("labels"), f"{where}: metadata.labels")
    annotations = _string_map(meta.get("annotations"), f"{where}: metadata.annotations")
    return name, namespace, labels, annotations


def _string_map(value: object, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of strings, got {_kind(value)}")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise ConfigError(f"{where}.{_short(key)}: keys and values must be strings")
    return dict(value)


def _yaml_reason(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is not None:
        return f"line {mark.line + 1} column {mark.column + 1}: {problem}"
    return str(problem)


def _kind(value: object) -> str:
    return "nothing" if value is None else type(value).__name__


def _short(value: object, limit: int = 60) -> str:
    return shorten(str(value), limit)
