"""Hypothesis strategies for hostile input: valid fabric values, near misses, and mutated documents.

Three families, each built from the contract in `config` rather than from strings spelled here:

- **valid values** (`device_names`, `sessions`, `object_keys`, the `*_docs` documents of every
  topic): what DESIGN.md says a well-behaved component sends. A parser must accept all of them.
- **near misses** (`near_miss`, `hostile_names`, `near_miss_topics`): one small edit away from a
  valid value (a case change, a wildcard, a slash, a lookalike letter, a level too many, 64+
  characters), where validation bugs hide.
- **mutations** (`mutated_payloads`): a valid document with fields dropped or added, types changed,
  huge strings and integers, deep nesting, duplicate keys, truncation, all serialised to the
  bytes a hostile device would publish.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Final

from hypothesis import strategies as st

from devicefabric.config.lean import FACT_INTS, FACT_STRINGS
from devicefabric.config.names import RESERVED_NAMES, is_device_name
from devicefabric.config.resource import Phase, RestartPolicy
from devicefabric.config.topics import DEFAULT_ROOT, DeviceTopic, Topics

T: Final = Topics()

# Characters that break names and topics: MQTT wildcards and separators, '$', NUL and other
# controls, whitespace, characters legal in Kubernetes names but not in a label, uppercase,
# and Unicode lookalikes (a Cyrillic and a fullwidth 'a', a zero-width space, a BOM).
HOSTILE_CHARS: Final = "+#/$\x00\t\n\r _.:@*?\\[]AZ\u00e9\u0430\uff41\u200b\ufeff\U0001f600"
HUGE_INTS: Final = (
    -1,
    2**31,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64,
    -(2**63) - 1,
    10**100,
    10**4000,
)
WRONG_TYPES: Final[tuple[Any, ...]] = (
    None,
    True,
    False,
    0,
    -1,
    1.5,
    1e308,
    "",
    "x",
    [],
    {},
    [None],
    {"": None},
)
_ALNUM: Final = "abcdefghijklmnopqrstuvwxyz0123456789"
_DEEP: Final = "\u2063deep\u2063"  # placeholder swapped for a nested literal after json.dumps


# -- valid values ----------------------------------------------------------------------------------
def labels(max_size: int = 63) -> st.SearchStrategy[str]:
    """DNS-1123 labels (`DEVICE_NAME_PATTERN`), reserved names included; built, not regex-drawn,
    because building is several times faster and the fuzz budget is examples, not seconds."""
    edge = st.sampled_from(_ALNUM)
    return edge | st.builds(
        lambda first, middle, last: first + middle + last,
        edge,
        st.text(_ALNUM + "-", max_size=max_size - 2),
        edge,
    )


def device_names() -> st.SearchStrategy[str]:
    return labels().filter(is_device_name)


def object_names() -> st.SearchStrategy[str]:
    """Kubernetes object names (`OBJECT_NAME_PATTERN`): dot-separated labels, at most 253."""
    return st.lists(labels(20), min_size=1, max_size=4).map(".".join)


def object_keys() -> st.SearchStrategy[str]:
    return st.builds(lambda ns, name: f"{ns}/{name}", labels(), object_names())


def sessions() -> st.SearchStrategy[str]:
    return st.text(_ALNUM + "ABCDEFGHIJKLMNOPQRSTUVWXYZ_.:-", min_size=1, max_size=64)


def revisions() -> st.SearchStrategy[str]:
    return st.text(_ALNUM + "ABCDEF:", min_size=1, max_size=64)


def _seq() -> st.SearchStrategy[int]:
    return st.integers(min_value=0, max_value=2**63 - 1)


def _arg() -> st.SearchStrategy[str]:
    return st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)


def status_docs() -> st.SearchStrategy[dict[str, Any]]:
    online = st.fixed_dictionaries(
        {
            "state": st.just("online"),
            "session": sessions(),
            "heartbeat_s": st.integers(1, 86400),
            "agent": st.text(max_size=64),
        },
        optional={  # the device facts: each optional (older agents send none)
            **{field: st.text(max_size=longest) for field, longest in FACT_STRINGS},
            **{field: st.integers(lo, hi) for field, lo, hi in FACT_INTS},
        },
    )
    offline = st.fixed_dictionaries(
        {
            "state": st.just("offline"),
            "session": sessions(),
            "reason": st.sampled_from(["lost", "shutdown"]),
        }
    )
    return online | offline


def heartbeat_docs() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({"session": sessions(), "seq": _seq()})


def bridge_status_docs() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"state": st.sampled_from(["online", "offline"]), "session": sessions()}
    )


def _process_report() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "generation": st.integers(0, 2**63 - 1),
            "phase": st.sampled_from([p.value for p in Phase]),
        },
        optional={
            "pid": st.integers(1, 2**22),
            "restarts": st.integers(0, 2**31),
            "exitCode": st.integers(-255, 255) | st.none(),
            "startedAt": st.just("2024-05-01T12:00:00Z") | st.none(),
            "message": st.text(max_size=200) | st.none(),
        },
    )


def report_docs() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "session": sessions(),
            "seq": _seq(),
            "revision": revisions(),
            "processes": st.dictionaries(object_keys(), _process_report(), max_size=4),
        }
    )


def spec_docs(device: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[dict[str, Any]]:
    """A DeviceProcess `spec` as an operator writes it (camelCase, defaults optional)."""
    env = st.fixed_dictionaries(
        {
            "name": st.text(
                st.characters(codec="utf-8", exclude_characters="=\x00"), min_size=1, max_size=20
            )
        },
        optional={"value": _arg()},
    )
    return st.fixed_dictionaries(
        {
            "deviceName": device if device is not None else device_names(),
            "command": st.lists(_arg(), min_size=1, max_size=4),
        },
        optional={
            "env": st.lists(env, max_size=3),
            "workingDir": _arg(),
            "restartPolicy": st.sampled_from([p.value for p in RestartPolicy]),
            "suspend": st.booleans(),
            "terminationGracePeriodSeconds": st.integers(0, 3600),
        },
    )


def desired_docs() -> st.SearchStrategy[dict[str, Any]]:
    process = st.fixed_dictionaries(
        {
            "namespace": labels(),
            "name": object_names(),
            "uid": st.text(min_size=1, max_size=40),
            "generation": st.integers(0, 2**63 - 1),
            "spec": spec_docs(),
        }
    )
    unique = st.lists(
        process, max_size=3, unique_by=lambda p: (str(p["namespace"]), str(p["name"]))
    )
    return st.fixed_dictionaries({"revision": revisions(), "processes": unique})


# -- arbitrary JSON ----------------------------------------------------------------------------------
def _keys() -> st.SearchStrategy[str]:
    """Object keys: the contract's field names (to get past the first check) or any text."""
    fields = [
        "state",
        "session",
        "heartbeat_s",
        "agent",
        "reason",
        "seq",
        "revision",
        "processes",
        "generation",
        "phase",
        "namespace",
        "name",
        "uid",
        "spec",
        "deviceName",
        "device_name",
        "command",
        "env",
        "value",
    ]
    return st.sampled_from(fields) | st.text(max_size=12)


def json_values(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """Any JSON value (NaN and infinities included: `json.dumps` writes them, JSON forbids them)."""
    scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.sampled_from(HUGE_INTS)
        | st.floats()
        | st.text(max_size=30)
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_keys(), inner, max_size=6),
        max_leaves=max_leaves,
    )


def json_bytes(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


# -- near misses -------------------------------------------------------------------------------------
_CHARS: Final = st.sampled_from(HOSTILE_CHARS) | st.characters()
_NEAR_MISS_EDITS: Final = st.sampled_from(
    ["insert", "replace", "delete", "upper", "lead-dash", "trail-dash", "newline", "long"]
)


@st.composite
def near_miss(draw: st.DrawFn, valid: st.SearchStrategy[str]) -> str:
    """A `valid` value with one hostile edit."""
    text = draw(valid)
    pos = draw(st.integers(0, len(text)))
    char = draw(_CHARS)
    edits = {
        "insert": lambda: text[:pos] + char + text[pos:],
        "replace": lambda: text[:pos] + char + text[pos + 1 :],
        "delete": lambda: text[:pos] + text[pos + 1 :],
        "upper": lambda: text[:pos] + text[pos:].upper(),
        "lead-dash": lambda: "-" + text,
        "trail-dash": lambda: text + "-",
        "newline": lambda: text + "\n",
        "long": lambda: (text + "a" * 320)[: 64 + pos],
    }
    return edits[draw(_NEAR_MISS_EDITS)]()


def hostile_names() -> st.SearchStrategy[str]:
    """Names no device may take: near misses, wildcards, reserved roles, empty, 300 characters."""
    fixed = st.sampled_from(
        ["", "+", "#", "/", "$SYS", "a/b", "A", "dev-A", "a" * 64, "a" * 300, *RESERVED_NAMES]
    )
    # An edit can land on another valid name ('ab' -> 'a'); a trailing '-' makes it hostile again.
    edited = near_miss(device_names()).map(lambda n: n + "-" if is_device_name(n) else n)
    return fixed | edited


def neighbour(name: str) -> str:
    """Another valid device name that differs from `name` in its last character only."""
    return name[:-1] + ("b" if name[-1] != "b" else "c")


def topic_levels(device: str, other: str) -> st.SearchStrategy[str]:
    """Levels that build topics and filters close to the fabric's own."""
    return st.sampled_from(
        [
            *DEFAULT_ROOT.split("/"),
            "devices",
            "bridge",
            device,
            other,
            device.upper(),
            *(kind.value for kind in DeviceTopic),
            "+",
            "#",
            "",
            "$SYS",
        ]
    ) | st.text(max_size=4)


@st.composite
def near_miss_topics(draw: st.DrawFn) -> str:
    """A fabric topic with one structural or character edit."""
    device = draw(device_names())
    kind = draw(st.sampled_from(list(DeviceTopic)))
    topic = draw(st.sampled_from([T.device(device, kind), T.bridge_status()]))
    levels = topic.split("/")
    i = draw(st.integers(0, len(levels) - 1))
    edit = draw(
        st.sampled_from(
            ["level", "drop", "insert", "duplicate", "swap", "name", "case", "affix", "sync"]
        )
    )
    if edit == "level":
        levels[i] = draw(near_miss(st.just(levels[i])))
    elif edit == "drop":
        del levels[i]
    elif edit == "insert":
        levels.insert(i, draw(topic_levels(device, "other")))
    elif edit == "duplicate":
        levels.insert(i, levels[i])
    elif edit == "swap":
        j = draw(st.integers(0, len(levels) - 1))
        levels[i], levels[j] = levels[j], levels[i]
    elif edit == "name" and len(levels) > 3:
        levels[3] = draw(hostile_names())
    elif edit == "case":
        levels[i] = levels[i].upper()
    elif edit == "affix":
        return (
            draw(st.sampled_from(["/", "$", " ", "\x00"]))
            + topic
            + draw(st.sampled_from(["", "/", " ", "\n", "/#", "/+"]))
        )
    elif edit == "sync":
        return T.sync_marker(draw(st.text(max_size=8)))
    return "/".join(levels)


# -- mutated documents -------------------------------------------------------------------------------
def _containers(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths of every dict and list inside `doc` (the root included)."""
    found: list[tuple[Any, ...]] = []
    if isinstance(doc, dict):
        found.append(path)
        for key, value in doc.items():
            found.extend(_containers(value, (*path, key)))
    elif isinstance(doc, list):
        found.append(path)
        for i, value in enumerate(doc):
            found.extend(_containers(value, (*path, i)))
    return found


def _at(doc: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        doc = doc[step]
    return doc


def _pick(draw: st.DrawFn, items: list[Any]) -> Any:
    """One of `items` (drawn by index: `sampled_from` of a fresh list would be rebuilt each time)."""
    return items[draw(st.integers(0, len(items) - 1))]


# Built once: constructing (and validating) strategies inside every draw costs more than drawing.
_EDITS: Final = st.sampled_from(["drop", "add", "retype", "string", "int", "nest", "value"])
_WRONG: Final = st.sampled_from(WRONG_TYPES)
_HUGE_INT: Final = st.sampled_from(HUGE_INTS)
_SIZES: Final = st.sampled_from([65, 257, 1025, 4097, 70_000])
_FILL: Final = st.sampled_from(["x", "\x00", "\u00e9", "+#/"])
_DEPTHS: Final = st.sampled_from([64, 300, 5_000, 30_000])
_NESTERS: Final = st.sampled_from([("[", "]"), ('{"a":', "}")])
_BYTE_EDITS: Final = st.sampled_from(["none", "none", "none", "truncate", "duplicate-key", "wrap"])
_SMALL_JSON: Final = json_values(5)
_TINY_JSON: Final = json_values(3)
_KEYS: Final = _keys()


def _mutate_once(draw: st.DrawFn, doc: Any) -> Any:
    """One hostile edit somewhere inside `doc` (in place); returns the new document."""
    containers = _containers(doc)
    if not containers:
        return draw(_SMALL_JSON)
    parent = _at(doc, _pick(draw, containers))
    slots = list(parent.keys()) if isinstance(parent, dict) else list(range(len(parent)))
    edit = draw(_EDITS)
    if edit == "add" or not slots:
        if isinstance(parent, dict):
            parent[draw(_KEYS)] = draw(_SMALL_JSON)
        else:
            parent.append(draw(_SMALL_JSON))
        return doc
    slot = _pick(draw, slots)
    if edit == "drop":
        del parent[slot]
    elif edit == "retype":
        parent[slot] = copy.deepcopy(draw(_WRONG))
    elif edit == "string":
        parent[slot] = draw(_FILL) * draw(_SIZES)
    elif edit == "int":
        parent[slot] = draw(_HUGE_INT)
    elif edit == "nest":
        parent[slot] = _DEEP
    else:
        parent[slot] = draw(_SMALL_JSON)
    return doc


@st.composite
def mutated_payloads(draw: st.DrawFn, valid: st.SearchStrategy[dict[str, Any]]) -> bytes:
    """A valid document after 1-3 hostile edits, as the bytes a device would publish."""
    doc: Any = copy.deepcopy(draw(valid))  # edits are in place; never touch a shared value
    for _ in range(draw(st.integers(1, 3))):
        doc = _mutate_once(draw, doc)
    text = json.dumps(doc, ensure_ascii=False)
    if _DEEP in text:
        opener, closer = draw(_NESTERS)
        depth = draw(_DEPTHS)
        text = text.replace(json.dumps(_DEEP, ensure_ascii=False), opener * depth + closer * depth)
    payload = text.encode()
    edit = draw(_BYTE_EDITS)
    if edit == "truncate" and payload:
        payload = payload[: draw(st.integers(0, len(payload) - 1))]
    elif edit == "duplicate-key" and payload.startswith(b"{"):
        first = b'{"' + json_bytes(draw(_KEYS))[1:-1] + b'":' + json_bytes(draw(_TINY_JSON))
        payload = first + (b"," + payload[1:] if len(payload) > 2 else b"}")
    elif edit == "wrap":
        payload = b"[" + payload + b"]"
    return payload
