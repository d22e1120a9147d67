"""`--allow-command`: argv prefixes, directory prefixes that `..` cannot escape."""

from __future__ import annotations

import pytest

from devicefabric.agent.allowlist import CommandPolicy
from devicefabric.config.errors import ConfigError


@pytest.mark.parametrize(
    ("prefixes", "command", "allowed"),
    [
        ([], ["/bin/anything", "-x"], True),
        (["/opt/fleet/"], ["/opt/fleet/app", "--serve"], True),
        (["/opt/fleet/"], ["/opt/fleet/sub/dir/app"], True),
        (["/opt/fleet/"], ["/opt/fleet/../../bin/sh"], False),
        (["/opt/fleet/"], ["/opt/fleetX/app"], False),
        (["/opt/fleet/"], ["/opt/fleet/"], False),
        (["/opt/fleet/"], ["fleet/app"], False),
        (["/opt/./fleet/"], ["/opt/fleet/app"], True),
        (["/usr/bin/python3 -m fleetapp"], ["/usr/bin/python3", "-m", "fleetapp", "--x"], True),
        (["/usr/bin/python3 -m fleetapp"], ["/usr/bin/python3", "-m", "other"], False),
        (["/usr/bin/python3 -m fleetapp"], ["/usr/bin/python3", "-c", "evil"], False),
        (["/usr/bin/python3 -m fleetapp"], ["/usr/bin/python3"], False),
        (["sleep"], ["sleep", "5"], True),
        (["sleep"], ["/bin/sleep", "5"], False),
        (["/bin/true", "/opt/fleet/"], ["/bin/true"], True),
        (["/bin/true", "/opt/fleet/"], ["/opt/fleet/x"], True),
        (["/bin/true", "/opt/fleet/"], ["/bin/false"], False),
        (["'/opt/my apps/'"], ["/opt/my apps/run"], True),
    ],
)
def test_policy(prefixes: list[str], command: list[str], allowed: bool) -> None:
    refusal = CommandPolicy.parse(prefixes).refusal(command)
    assert (refusal is None) is allowed
    if not allowed:
        assert refusal is not None
        assert "refused" in refusal
        assert "--allow-command" in refusal


def test_refusal_message_is_bounded() -> None:
    policy = CommandPolicy.parse([f"/opt/{'x' * 300}/{i}/" for i in range(10)])
    refusal = policy.refusal(["/bin/sh"])
    assert refusal is not None
    assert len(refusal) <= 1024


@pytest.mark.parametrize("bad", ["", "   ", "'unterminated"])
def test_unusable_prefixes_are_configuration_errors(bad: str) -> None:
    with pytest.raises(ConfigError, match="--allow-command"):
        CommandPolicy.parse([bad])
