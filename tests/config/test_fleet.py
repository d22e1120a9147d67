"""Tier 1: the fleet contract (`config.fleet`): selectors, owned names, budgets, digests."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from devicefabric.config.fleet import (
    MAX_OWNED_NAME,
    DeviceProcessSetSpec,
    LabelSelector,
    ProcessTemplate,
    budget,
    owned_name,
    selector_matches,
    template_hash,
)
from devicefabric.config.names import OBJECT_NAME_PATTERN

LABELS = {"role": "collector", "site": "lab"}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ({}, True),  # an empty selector matches every device
        ({"matchLabels": {"role": "collector"}}, True),
        ({"matchLabels": {"role": "collector", "site": "plant"}}, False),
        ({"matchExpressions": [{"key": "site", "operator": "In", "values": ["lab", "x"]}]}, True),
        ({"matchExpressions": [{"key": "site", "operator": "NotIn", "values": ["lab"]}]}, False),
        ({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}, True),
        ({"matchExpressions": [{"key": "role", "operator": "Exists"}]}, True),
        ({"matchExpressions": [{"key": "zone", "operator": "Exists"}]}, False),
        ({"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}]}, True),
        (
            {
                "matchLabels": {"role": "collector"},
                "matchExpressions": [{"key": "site", "operator": "In", "values": ["plant"]}],
            },
            False,
        ),
    ],
)
def test_selector_matches(selector: dict[str, Any], expected: bool) -> None:
    assert selector_matches(LabelSelector.model_validate(selector), LABELS) is expected


@pytest.mark.parametrize(
    "requirement",
    [
        {"key": "a", "operator": "In", "values": []},
        {"key": "a", "operator": "Exists", "values": ["x"]},
        {"key": "a", "operator": "Near", "values": ["x"]},
        {"key": "", "operator": "Exists"},
    ],
)
def test_invalid_selector_requirements_are_refused(requirement: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        LabelSelector.model_validate({"matchExpressions": [requirement]})


@pytest.mark.parametrize(
    ("value", "total", "expected"),
    [
        (1, 5, 1),
        (3, 5, 3),
        ("25%", 5, 2),
        ("100%", 5, 5),
        ("0%", 5, 1),
        ("10%", 3, 1),
        (1, 0, 1),
        ("50%", 0, 0),
    ],
)
def test_budget(value: int | str, total: int, expected: int) -> None:
    assert budget(value, total) == expected


@pytest.mark.parametrize("value", [0, -1, "abc", "101%", "5.5%", True])
def test_invalid_max_unavailable_is_refused(value: object) -> None:
    with pytest.raises(ValidationError):
        DeviceProcessSetSpec.model_validate(
            {
                "template": {"command": ["x"]},
                "updateStrategy": {"rollingUpdate": {"maxUnavailable": value}},
            }
        )


@pytest.mark.parametrize(
    "set_name", ["collector", "a" * 186, "a" * 187, "x." * 120 + "y", "a" * 253]
)
def test_owned_names_are_valid_bounded_and_distinct(set_name: str) -> None:
    devices = ["d1", "tor9-99", "d" * 63]
    names = [owned_name(set_name, d) for d in devices]
    for name, device in zip(names, devices, strict=True):
        assert len(name) <= MAX_OWNED_NAME
        assert re.fullmatch(OBJECT_NAME_PATTERN, name), name
        assert name.endswith("-" + device)
    assert len(set(names)) == len(names)
    assert owned_name("collector", "d1") == "collector-d1"


def test_two_long_set_names_that_share_a_prefix_get_different_names() -> None:
    a, b = "a" * 240 + "1", "a" * 240 + "2"
    assert owned_name(a, "d1") != owned_name(b, "d1")


def test_template_hash_ignores_spelled_out_defaults_and_sees_changes() -> None:
    bare = ProcessTemplate.model_validate({"command": ["sleep", "1"]})
    spelled = ProcessTemplate.model_validate(
        {"command": ["sleep", "1"], "restartPolicy": "Always", "env": [], "suspend": False}
    )
    changed = ProcessTemplate.model_validate({"command": ["sleep", "2"]})
    assert template_hash(bare) == template_hash(spelled) != template_hash(changed)
    assert re.fullmatch(r"[0-9a-f]{10}", template_hash(bare))


def test_a_template_gives_each_device_a_full_device_process_spec() -> None:
    template = ProcessTemplate.model_validate({"command": ["sleep", "1"], "workingDir": "/tmp"})
    assert template.for_device("d1") == {
        "deviceName": "d1",
        "command": ["sleep", "1"],
        "env": [],
        "workingDir": "/tmp",
        "restartPolicy": "Always",
        "suspend": False,
        "terminationGracePeriodSeconds": 10,
    }
