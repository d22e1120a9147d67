"""Scenario 8, CLI values: addresses, broker URLs and env-backed flags on hostile text.

`parse_hostport` and `parse_broker_url` raise only `ConfigError` (exit code 2 at the CLI) whose
one-line message names the flag; what they accept is a usable address (a host without
whitespace or control characters, a port in 0..65535) that prints back to text they parse to the
same value. `add_flag`'s environment fallback turns any variable value into a default without
raising.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final

from hypothesis import example, given
from hypothesis import strategies as st

from devicefabric.config.errors import ConfigError
from devicefabric.config.settings import (
    BrokerURL,
    HostPort,
    parse_broker_url,
    parse_hostport,
)
from devicefabric.runtime.settings import add_flag, env_name
from tests.faults.budget import FUZZ, MARKS, outcome
from tests.faults.strategies import near_miss

pytestmark = list(MARKS)

# Digits that are not ASCII: superscripts pass str.isdigit but not int(); other scripts' pass both.
ODD_DIGITS: Final = st.characters(categories=["Nd", "No"])
PORTS: Final = (
    st.integers(-5, 70_000).map(str)
    | st.text(ODD_DIGITS, min_size=1, max_size=6)
    | st.just("9" * 5000)
    | st.text(max_size=8)
)
HOSTS: Final = st.sampled_from(
    ["127.0.0.1", "localhost", "[::1]", "::1", "", "[]", "host name", "h\x00", "h\n", "ex.com"]
) | st.text(max_size=12)


def _usable(host: str) -> bool:
    return bool(host) and all(ch.isprintable() and not ch.isspace() for ch in host)


def _check_address(
    parse: Callable[..., HostPort | BrokerURL], value: str, flag: str, kind: type[object]
) -> None:
    """`parse(value, flag)` refuses in one line naming `flag`, or gives a `kind` with a usable
    host and port that parses back to itself from its own spelling."""
    parsed = outcome(lambda: parse(value, flag), ConfigError)
    if isinstance(parsed, ConfigError):
        assert str(parsed).startswith(f"{flag}: ")
        assert "\n" not in str(parsed)
        return
    assert isinstance(parsed, kind)
    assert 0 <= parsed.port <= 65535
    assert _usable(parsed.host), parsed
    assert parse(str(parsed)) == parsed


@FUZZ
@given(value=st.text(max_size=40) | st.builds(lambda h, p: f"{h}:{p}", HOSTS, PORTS))
@example(value="h:\u00b2")
@example(value="h:" + "9" * 5000)
@example(value="h\x00:1883")
def test_parse_hostport(value: str) -> None:
    _check_address(parse_hostport, value, "--mqtt", HostPort)


@FUZZ
@given(
    value=st.text(max_size=40)
    | st.builds(
        lambda s, h, p: f"{s}://{h}:{p}",
        st.sampled_from(["mqtt", "mqtts", "MQTT", "http"]),
        HOSTS,
        PORTS,
    )
    | near_miss(st.just("mqtt://127.0.0.1:1883"))
)
@example(value="mqtt://h\x00:1883")
@example(value="mqtt://user:pw@h:1883")
def test_parse_broker_url(value: str) -> None:
    _check_address(parse_broker_url, value, "--broker", BrokerURL)


@contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


@FUZZ
@given(value=st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30))
def test_env_backed_flags_take_any_value(value: str) -> None:
    parser = argparse.ArgumentParser(prog="fuzz", exit_on_error=False)
    with _env(env_name("--fuzz-text"), value), _env(env_name("--fuzz-on"), value):
        add_flag(parser, "--fuzz-text", help="text")
        add_flag(parser, "--fuzz-on", action="store_true", help="switch")
    with _env(env_name("--fuzz-list"), value):
        add_flag(parser, "--fuzz-list", action="append", default=[], help="list")
    args = parser.parse_args([])
    assert args.fuzz_text == value
    assert isinstance(args.fuzz_on, bool)
    assert all(item and "," not in item for item in args.fuzz_list)
    assert ",".join(args.fuzz_list) == ",".join(item for item in value.split(",") if item)
