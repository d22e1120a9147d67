"""One wording for a validation error: `apply` and `Synced=False/InvalidSpec` say the same thing."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from devicefabric.bridge.controlplane.local.userfiles import parse_manifests
from devicefabric.bridge.mirroring import check_spec
from devicefabric.config.errors import ConfigError
from devicefabric.config.resource import DeviceProcessSpec
from devicefabric.config.validation import LIMIT, describe


def _error(spec: dict[str, object]) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        DeviceProcessSpec.model_validate(spec)
    return caught.value


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"deviceName": "edge-1", "command": []}, "spec.command: List should have at least 1 item"),
        (
            {"deviceName": "edge-1", "command": [1, 2, 3, 4, 5]},
            (
                "spec.command.0: Input should be a valid string; spec.command.1: Input should be "
                "a valid string; spec.command.2: Input should be a valid string (+2 more)"
            ),
        ),
    ],
)
def test_describe_spells_out_three_errors_and_counts_the_rest(
    spec: dict[str, object], expected: str
) -> None:
    assert describe(_error(spec), root="spec").startswith(expected)


def test_describe_is_bounded() -> None:
    text = describe(_error({"deviceName": "edge-1", "command": ["x"], "y" * 400: 1}))
    assert len(text) <= LIMIT
    assert text.endswith("...")


def test_apply_and_invalid_spec_word_the_same_bad_spec_the_same_way() -> None:
    spec: dict[str, object] = {"deviceName": "edge-1", "command": []}
    manifest = {"apiVersion": "devicefabric.io/v1alpha1", "kind": "DeviceProcess",
                "metadata": {"name": "web"}, "spec": spec}  # fmt: skip
    with pytest.raises(ConfigError) as refused:
        parse_manifests(json.dumps(manifest), "app.yaml")
    reason = check_spec(spec)
    assert isinstance(reason, str)
    assert str(refused.value).endswith(f": {reason}")
