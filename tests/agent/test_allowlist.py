"""The allow-lists: argv prefixes, real-path directories, env names and working directories."""

from __future__ import annotations

from pathlib import Path

import pytest

from devicefabric.agent.allowlist import CommandPolicy
from devicefabric.config.errors import ConfigError


def assert_decision(refusal: str | None, allowed: bool, flag: str) -> None:
    """`refusal` is None when `allowed`; otherwise it says "refused" and names `flag`."""
    assert (refusal is None) is allowed
    if not allowed:
        assert refusal is not None
        assert "refused" in refusal
        assert flag in refusal


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
    assert_decision(refusal, allowed, "--allow-command")


def test_refusal_message_is_bounded() -> None:
    policy = CommandPolicy.parse([f"/opt/{'x' * 300}/{i}/" for i in range(10)])
    refusal = policy.refusal(["/bin/sh"])
    assert refusal is not None
    assert len(refusal) <= 1024


@pytest.mark.parametrize("bad", ["", "   ", "'unterminated"])
def test_unusable_prefixes_are_configuration_errors(bad: str) -> None:
    with pytest.raises(ConfigError, match="--allow-command"):
        CommandPolicy.parse([bad])


# -- env and workingDir are restricted too once commands are --------------------------------------

ALLOW = ["/bin/"]


@pytest.mark.parametrize(
    ("allow_env", "env", "allowed"),
    [
        ([], [], True),
        ([], ["LD_PRELOAD"], False),
        ([], ["PYTHONWARNINGS"], False),
        ([], ["PATH"], False),
        ([], ["BASH_ENV"], False),
        (["FLEET_MODE"], ["FLEET_MODE"], True),
        (["FLEET_MODE"], ["FLEET_MODE", "BROWSER"], False),
        (["FLEET_MODE"], ["fleet_mode"], False),
        (["FLEET_MODE", "TZ"], ["TZ", "FLEET_MODE"], True),
    ],
)
def test_env_is_denied_unless_named(allow_env: list[str], env: list[str], allowed: bool) -> None:
    policy = CommandPolicy.parse(ALLOW, env=allow_env)
    refusal = policy.refusal(["/bin/true"], env=env)
    assert_decision(refusal, allowed, "--allow-env")
    if refusal is not None:
        assert all(name in refusal for name in env if name not in allow_env)


@pytest.mark.parametrize(
    ("allow_workdir", "working_dir", "allowed"),
    [
        ([], None, True),
        ([], "/tmp", False),
        ([], "/", False),
        (["/srv/fleet"], "/srv/fleet", True),
        (["/srv/fleet"], "/srv/fleet/run", True),
        (["/srv/fleet/"], "/srv/fleet/run/", True),
        (["/srv/fleet"], "/srv/fleet/../../etc", False),
        (["/srv/fleet"], "/srv/fleetX", False),
        (["/srv/fleet"], "/srv", False),
        (["/srv/./fleet"], "/srv/fleet/a", True),
        (["/"], "/anywhere", True),
    ],
)
def test_working_dir_is_denied_unless_inside_an_allowed_directory(
    allow_workdir: list[str], working_dir: str | None, allowed: bool
) -> None:
    policy = CommandPolicy.parse(ALLOW, workdirs=allow_workdir)
    refusal = policy.refusal(["/bin/true"], working_dir=working_dir)
    assert_decision(refusal, allowed, "--allow-workdir")


def test_without_allow_command_everything_still_runs() -> None:
    policy = CommandPolicy.parse([])
    assert policy.refusal(["/bin/sh"], env=["LD_PRELOAD"], working_dir="/") is None


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """tmp/allowed/{app, out -> tmp/outside, sh -> tmp/outside/sh, in -> tmp/allowed/sub}."""
    allowed = tmp_path / "allowed"
    outside = tmp_path / "outside"
    (allowed / "sub").mkdir(parents=True)
    outside.mkdir()
    for program in (allowed / "app", allowed / "sub" / "app", outside / "sh"):
        program.write_text("#!/bin/sh\n")
    (allowed / "out").symlink_to(outside)
    (allowed / "sh").symlink_to(outside / "sh")
    (allowed / "in").symlink_to(allowed / "sub")
    (tmp_path / "alias").symlink_to(allowed)
    return tmp_path


@pytest.mark.parametrize(
    ("program", "allowed"),
    [
        ("allowed/app", True),
        ("allowed/in/app", True),  # a symlink that stays inside
        ("alias/app", True),  # another name of the allowed directory
        ("allowed/out/sh", False),  # a symlinked directory leading out
        ("allowed/out/../sh", False),  # `..` after a symlink: textually inside, really not
        ("allowed/in/../../outside/sh", False),
        ("allowed/sh", False),  # a symlinked program living outside
    ],
)
def test_command_directories_match_real_paths(tree: Path, program: str, allowed: bool) -> None:
    policy = CommandPolicy.parse([f"{tree}/allowed/"])
    refusal = policy.refusal([f"{tree}/{program}"])
    assert (refusal is None) is allowed


@pytest.mark.parametrize(
    ("working_dir", "allowed"),
    [
        ("allowed", True),
        ("allowed/in", True),
        ("alias/sub", True),
        ("allowed/out", False),
        ("allowed/out/../outside", False),  # textually inside, really tmp/outside
        ("allowed/in/../..", False),
    ],
)
def test_working_dirs_match_real_paths(tree: Path, working_dir: str, allowed: bool) -> None:
    policy = CommandPolicy.parse(ALLOW, workdirs=[f"{tree}/allowed"])
    refusal = policy.refusal(["/bin/true"], working_dir=f"{tree}/{working_dir}")
    assert (refusal is None) is allowed


@pytest.mark.parametrize(
    ("commands", "env", "workdirs", "expected"),
    [
        ([], ["TZ"], [], "--allow-env only applies together with --allow-command"),
        ([], [], ["/srv"], "--allow-workdir only applies together with --allow-command"),
        (ALLOW, ["A=B"], [], "--allow-env"),
        (ALLOW, [""], [], "--allow-env"),
        (ALLOW, [], ["relative/dir"], "--allow-workdir"),
    ],
)
def test_unusable_env_and_workdir_flags_are_configuration_errors(
    commands: list[str], env: list[str], workdirs: list[str], expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected):
        CommandPolicy.parse(commands, env=env, workdirs=workdirs)
