"""`runtime.settings`: flags generated from a settings class, flag > variable > default.

A table per rule, on a small settings class of every field shape (value, switch, list, choices,
required, program default, nested group): what argv and environment give which value, which
text is refused with which one-line message, and what `--help` says.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devicefabric.config.errors import ConfigError
from devicefabric.runtime.settings import (
    InvalidSettingError,
    add_flag,
    add_settings,
    env_name,
    flag_of,
    from_args,
    from_env,
    group,
    integer,
    number,
    path_setting,
    setting,
    switch,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Inner:
    depth: int = setting("--depth", "how deep", default=2, parse=integer)


@dataclass(frozen=True, slots=True, kw_only=True)
class Example:
    name: str = setting("--name", "a required name", required=True)
    rate: float = setting("--rate", "per second", default=20.0, parse=number)
    on: bool = switch("--on", "a switch")
    where: Path | None = path_setting("--where", "a file")
    tags: tuple[str, ...] = setting("--tag", "repeatable", default=(), kind="list")
    mode: str = setting("--mode", "one of two", default="a", choices=("a", "b"))
    url: str = setting("--url", "library default empty", default="", program_default="x://1")
    inner: Inner | None = group(Inner, "inner things")
    tuning: int = 7  # no flag: a library knob

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise InvalidSettingError("rate", "must be > 0")
        if self.mode == "b" and not self.on:
            raise InvalidSettingError("mode", "{flag} b needs --on")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="example", exit_on_error=False)
    add_settings(parser, Example)
    return parser


def _build(argv: list[str], env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> Example:
    for name in ("NAME", "RATE", "ON", "WHERE", "TAG", "MODE", "URL", "DEPTH"):
        monkeypatch.delenv(f"DEVICEFABRIC_{name}", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return from_args(Example, _parser().parse_args(["--name", "n", *argv]))


@pytest.mark.parametrize(
    ("argv", "env", "field", "expected"),
    [
        ([], {}, "rate", 20.0),  # the field's default
        ([], {"DEVICEFABRIC_RATE": "7.5"}, "rate", 7.5),  # the variable over the default
        (["--rate", "3"], {"DEVICEFABRIC_RATE": "7.5"}, "rate", 3.0),  # the flag over both
        ([], {}, "on", False),
        ([], {"DEVICEFABRIC_ON": "yes"}, "on", True),
        ([], {"DEVICEFABRIC_ON": "nope"}, "on", False),
        (["--on"], {"DEVICEFABRIC_ON": "0"}, "on", True),
        ([], {}, "tags", ()),
        ([], {"DEVICEFABRIC_TAG": "a,,b"}, "tags", ("a", "b")),
        (["--tag", "x", "--tag", "y"], {"DEVICEFABRIC_TAG": "a"}, "tags", ("x", "y")),
        ([], {}, "url", "x://1"),  # the program's default, not the library's ""
        ([], {"DEVICEFABRIC_URL": "y://2"}, "url", "y://2"),
        ([], {}, "inner", Inner(depth=2)),  # a nested group is built from its own flags
        (["--depth", "5"], {}, "inner", Inner(depth=5)),
        ([], {"DEVICEFABRIC_DEPTH": "4"}, "inner", Inner(depth=4)),
        ([], {}, "where", None),
        (["--where", "a/b"], {}, "where", Path("a/b")),
        ([], {"DEVICEFABRIC_WHERE": ""}, "where", None),  # an empty variable: unset
        ([], {"DEVICEFABRIC_TUNING": "1"}, "tuning", 7),  # a field without a flag reads nothing
    ],
)
def test_precedence_flag_then_variable_then_default(
    argv: list[str],
    env: dict[str, str],
    field: str,
    expected: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert getattr(_build(argv, env, monkeypatch), field) == expected


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--rate", "fast"], {}, "--rate: expected a number, got 'fast'"),
        (
            [],
            {"DEVICEFABRIC_RATE": "fast"},
            "DEVICEFABRIC_RATE: expected a number, got 'fast' (the variable of --rate)",
        ),
        (["--rate", "0"], {}, "--rate: must be > 0"),
        ([], {"DEVICEFABRIC_RATE": "-1"}, "--rate: must be > 0 (from DEVICEFABRIC_RATE)"),
        ([], {"DEVICEFABRIC_MODE": "c"}, "DEVICEFABRIC_MODE: expected a or b, got 'c'"),
        (["--mode", "b"], {}, "--mode b needs --on"),
        (["--depth", "deep"], {}, "--depth: expected an integer, got 'deep'"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_flag_and_its_variable(
    argv: list[str], env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError) as caught:
        _build(argv, env, monkeypatch)
    assert str(caught.value).startswith(message), str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_required_flag_names_itself_and_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEVICEFABRIC_NAME", raising=False)
    with pytest.raises(ConfigError, match=r"^--name is required \(or set DEVICEFABRIC_NAME\)$"):
        from_args(Example, _parser().parse_args([]))
    monkeypatch.setenv("DEVICEFABRIC_NAME", "from-env")
    assert from_args(Example, _parser().parse_args([])).name == "from-env"


def test_argparse_still_refuses_a_choice_on_the_command_line() -> None:
    with pytest.raises(argparse.ArgumentError):
        _parser().parse_args(["--name", "n", "--mode", "c"])


def test_help_shows_each_flag_with_its_variable_and_default() -> None:
    text = " ".join(_parser().format_help().split())
    assert "per second [env DEVICEFABRIC_RATE; default 20]" in text
    assert "a required name [env DEVICEFABRIC_NAME; required]" in text
    assert "a switch [env DEVICEFABRIC_ON]" in text  # a switch shows no default
    assert "library default empty [env DEVICEFABRIC_URL; default x://1]" in text
    assert "inner things:" in text  # the nested class is an argument group
    assert "how deep [env DEVICEFABRIC_DEPTH; default 2]" in text
    assert "--tuning" not in text


def test_only_and_known_compose_another_programs_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DEVICEFABRIC_ON", "1")  # not one of `only`: ignored
    parser = argparse.ArgumentParser()
    add_settings(parser, Example, only=("rate",), helps={"rate": "how fast"})
    assert "--on" not in parser.format_help()
    assert "how fast" in parser.format_help()
    built = from_args(Example, parser.parse_args(["--rate", "2"]), only=("rate",), name="k")
    assert (built.name, built.rate, built.on, built.inner) == ("k", 2.0, False, None)


def test_from_env_reads_variables_only() -> None:
    built = from_env(Example, {"DEVICEFABRIC_NAME": "e", "DEVICEFABRIC_TAG": "p,q"})
    assert (built.name, built.tags, built.inner) == ("e", ("p", "q"), Inner(depth=2))


def test_the_variable_is_derived_from_the_flag() -> None:
    assert env_name("--write-qps") == "DEVICEFABRIC_WRITE_QPS"
    assert flag_of(Example, "tags").env == "DEVICEFABRIC_TAG"
    assert InvalidSettingError("rate", "must be > 0").render("--rate") == "--rate: must be > 0"


# -- add_flag: a command's own flags, the variable read when the parser is built -------------
def test_flags_read_their_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert env_name("--write-qps") == "DEVICEFABRIC_WRITE_QPS"
    monkeypatch.setenv("DEVICEFABRIC_BROKER", "mqtt://from-env:1")
    monkeypatch.setenv("DEVICEFABRIC_DEMO", "true")
    parser = argparse.ArgumentParser()
    add_flag(parser, "--broker", default="mqtt://default:1", help="broker")
    add_flag(parser, "--mqtt", default="127.0.0.1:1883", help="listener")
    add_flag(parser, "--demo", action="store_true", help="demo")
    args = parser.parse_args([])
    assert (args.broker, args.mqtt, args.demo) == ("mqtt://from-env:1", "127.0.0.1:1883", True)
    assert parser.parse_args(["--broker", "mqtt://flag:2"]).broker == "mqtt://flag:2"
    assert "DEVICEFABRIC_BROKER" in parser.format_help()


def test_a_flag_variable_that_does_not_parse_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVICEFABRIC_WRITE_QPS", "fast")
    with pytest.raises(ConfigError, match=r"DEVICEFABRIC_WRITE_QPS='fast' .* --write-qps"):
        add_flag(argparse.ArgumentParser(), "--write-qps", type=float, default=20.0, help="qps")
    monkeypatch.setenv("DEVICEFABRIC_WRITE_QPS", "7.5")
    parser = argparse.ArgumentParser()
    add_flag(parser, "--write-qps", type=float, default=20.0, help="qps")
    assert parser.parse_args([]).write_qps == 7.5


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--rate", "2", "sub"], 2.0),  # before the subcommand: kept
        (["sub", "--rate", "3"], 3.0),  # after it
        (["--rate", "2", "sub", "--rate", "3"], 3.0),  # both: the later one
        (["sub"], 20.0),  # neither: the default
    ],
)
def test_again_accepts_a_flag_before_or_after_a_subcommand(
    argv: list[str], expected: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DEVICEFABRIC_RATE", raising=False)
    parser = argparse.ArgumentParser()
    add_settings(parser, Example, only=("rate",))
    sub = parser.add_subparsers(dest="command", required=True).add_parser("sub")
    add_settings(sub, Example, only=("rate",), again=True)
    args = parser.parse_args(argv)
    assert from_args(Example, args, only=("rate",), name="n").rate == expected
