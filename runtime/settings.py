"""Program settings as documented dataclasses: one field is one flag, one variable, one default.

A program's settings are a frozen dataclass whose user-facing fields are declared with
`setting(...)`; the field's metadata (a `Flag`) holds its flag (`--heartbeat`), its help, how
text becomes a value (`parse`) and the argparse shape (a value, a switch, a repeatable list,
choices). A nested settings class is a field declared with `group(...)`. From that declaration:

- `add_settings(parser, cls)` adds every flag (a nested class as an argument group), its help
  ending in `[env DEVICEFABRIC_<FLAG>; default X]`;
- `from_args(cls, args)` builds the object. Precedence: the flag when given, else its variable
  `DEVICEFABRIC_<FLAG>` when set, else the field's default. Text is parsed here, not by argparse
  (a bad variable fails the program that reads it, not every command), and a value that does
  not parse is one `ConfigError` naming the flag, and the variable when the text came from there;
- `from_env(cls)` is the same without a command line (a library building its settings).

Range and cross-field checks live once, in the class's `__post_init__`, as
`InvalidSettingError(field, why)`; `from_args` names the field's flag in the message.

Invariants: a variable's name is derived from its flag (`env_name`), never spelled by hand; a
field's default is written once, in the class (`program_default` is only for the rare field
whose library default differs from the program's, e.g. the bridge's HTTP server off vs on);
every message is one line. This module imports only the standard library and `config` (its
errors, `HOST:PORT` parsing), which the agent loads anyway: it is on the agent's start path.

`add_command(sub, name, cls, main, ...)` is a whole command: its parser, the flags of `cls`, and
`main` run on the settings built from them; `add_command_group` is a command whose subcommands
(`agent run`, `broker mosquitto-config`) are added to what it returns.

`add_flag` is the older shape for a command's own flags that belong to no program's settings
(`get --watch`): the variable's value becomes the argparse default when the parser is built.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from devicefabric.config.errors import ConfigError
from devicefabric.config.settings import parse_hostport

ENV_PREFIX: Final = "DEVICEFABRIC_"
TRUE_WORDS: Final = frozenset({"1", "true", "yes", "on"})

T = TypeVar("T")
Kind = Literal["value", "switch", "list"]
Parse = Callable[[str, str], Any]  # (text, flag) -> value; ValueError(why) or ConfigError


def env_name(flag: str) -> str:
    """`--write-qps` -> `DEVICEFABRIC_WRITE_QPS`."""
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


class InvalidSettingError(ConfigError):
    """A setting out of its range: `field` names it, `message` says why (one line).

    `message` may hold `{flag}` where the flag's name belongs; otherwise the CLI prefixes it.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(self.render(field))

    def render(self, name: str) -> str:
        """The message naming the setting as `name` (its field, or its flag at the CLI)."""
        if "{flag}" in self.message:
            return self.message.format(flag=name)
        return f"{name}: {self.message}"


# -- parsers: (text, flag) -> value ---------------------------------------------------------------
def text(value: str, flag: str) -> str:  # noqa: ARG001 - every parser takes the flag
    return value


def integer(value: str, flag: str) -> int:  # noqa: ARG001
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"expected an integer, got {value!r}") from None


def number(value: str, flag: str) -> float:  # noqa: ARG001
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"expected a number, got {value!r}") from None


def path(value: str, flag: str) -> Path:  # noqa: ARG001
    return Path(value)


def optional(parse: Parse) -> Parse:
    """Empty text (an empty variable) means None: the field's "not set"."""
    return lambda value, flag: parse(value, flag) if value else None


@dataclass(frozen=True, slots=True)
class Flag:
    """How one settings field meets the command line and the environment."""

    flag: str
    help: str
    parse: Parse = text
    kind: Kind = "value"
    choices: tuple[str, ...] = ()
    metavar: str | None = None
    required: bool = False
    shown: str | None = None  # the default as --help shows it (None: the default itself)
    # The program's default when it is not the field's: text to parse, or a function giving
    # the value (e.g. the secret from `$DEVICEFABRIC_SECRET`).
    program_default: str | Callable[[], Any] | None = None

    @property
    def env(self) -> str:
        return env_name(self.flag)

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


_FLAG: Final = "devicefabric.flag"
_GROUP: Final = "devicefabric.group"


def setting(
    flag: str,
    help: str,  # noqa: A002 - mirrors argparse's own keyword
    *,
    default: Any = MISSING,
    default_factory: Callable[[], Any] | None = None,
    parse: Parse = text,
    kind: Kind = "value",
    choices: tuple[str, ...] = (),
    metavar: str | None = None,
    required: bool = False,
    shown: str | None = None,
    program_default: str | Callable[[], Any] | None = None,
    repr: bool = True,  # noqa: A002 - mirrors dataclasses' own keyword
) -> Any:
    """A dataclass field with its flag; `default`/`default_factory` as for `dataclasses.field`."""
    meta = {
        _FLAG: Flag(flag, help, parse, kind, choices, metavar, required, shown, program_default)
    }
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta, repr=repr)
    return field(default=default, metadata=meta, repr=repr)


def path_setting(flag: str, help: str, *, metavar: str | None = None) -> Any:  # noqa: A002
    """A file or directory flag that is unset (None) unless given."""
    return setting(flag, help, default=None, parse=optional(path), metavar=metavar)


def tls_ca_setting() -> Any:
    """`--tls-ca`, the CA bundle an MQTT client verifies an mqtts:// broker with (None: the
    system's), as the agent and the bridge declare it."""
    return path_setting(
        "--tls-ca", "CA bundle to verify an mqtts:// broker (default: the system's)"
    )


def address_setting(
    flag: str,
    help: str,  # noqa: A002
    *,
    default: str,
    metavar: str | None = None,
) -> Any:
    """A `HOST:PORT` flag whose default is written once, as its text (`DEFAULT_MQTT`)."""
    return setting(
        flag,
        help,
        default_factory=lambda: parse_hostport(default),
        parse=parse_hostport,
        metavar=metavar,
        shown=default,
    )


def switch(flag: str, help: str) -> Any:  # noqa: A002
    """An on/off flag, off unless given (its variable: `1`, `true`, `yes` or `on`)."""
    return setting(flag, help, default=False, kind="switch")


def group(cls: type[Any], title: str, *, default: Any = None) -> Any:
    """A field holding a nested settings class, shown as an argument group titled `title`."""
    return field(default=default, metadata={_GROUP: (cls, title)})


def flags_of(cls: type[Any]) -> Iterator[tuple[Field[Any], Flag]]:
    """The fields of `cls` that have a flag, in declaration order (nested classes excluded)."""
    for f in fields(cls):
        if _FLAG in f.metadata:
            yield f, f.metadata[_FLAG]


def flag_of(cls: type[Any], name: str) -> Flag:
    """The `Flag` of field `name` of `cls` (KeyError if it has none)."""
    return next(flag for f, flag in flags_of(cls) if f.name == name)


def _groups_of(cls: type[Any]) -> Iterator[tuple[str, type[Any], str]]:
    for f in fields(cls):
        if _GROUP in f.metadata:
            nested, title = f.metadata[_GROUP]
            yield f.name, nested, title


def _default_text(f: Field[Any], flag: Flag) -> str | None:
    if flag.shown is not None:
        return flag.shown
    if isinstance(flag.program_default, str):
        return flag.program_default
    if flag.kind == "switch" or f.default is MISSING or f.default in (None, (), ""):
        return None
    value = f.default
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_settings(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type[Any],
    *,
    only: tuple[str, ...] | None = None,
    helps: Mapping[str, str] | None = None,
    again: bool = False,
) -> None:
    """Add the flags of `cls` (and, as argument groups, of its nested classes) to `parser`.

    `only`: just these fields (a command composing another program's settings); `helps`: a
    field's help as that command words it; `again`: the flags are also accepted here, on a
    subcommand, after they were added to its parent (`creds --state-dir D device X` and
    `creds device X --state-dir D`): here they default to "not given", so a value given before
    the subcommand is kept.
    """
    for f, flag in flags_of(cls):
        if only is None or f.name in only:
            help_text = (helps or {}).get(f.name, flag.help)
            shape = _shape(flag) | ({"default": argparse.SUPPRESS} if again else {})
            parser.add_argument(flag.flag, help=f"{help_text} {_tail(f, flag)}", **shape)
    if only is None:
        for _, nested, title in _groups_of(cls):
            target = (
                parser.add_argument_group(title)
                if isinstance(parser, argparse.ArgumentParser)
                else parser
            )
            add_settings(target, nested, again=again)


def _tail(f: Field[Any], flag: Flag) -> str:
    """`[env DEVICEFABRIC_X; default Y]`, the end of every generated help."""
    if flag.required:
        return f"[env {flag.env}; required]"
    shown = _default_text(f, flag)
    return f"[env {flag.env}" + (f"; default {shown}]" if shown is not None else "]")


def _shape(flag: Flag) -> dict[str, Any]:
    """argparse's keywords for `flag`; values stay text (parsed by `from_args`), unset is None."""
    if flag.kind == "switch":
        return {"dest": flag.dest, "default": None, "action": "store_true"}
    kwargs: dict[str, Any] = {"dest": flag.dest, "default": None, "metavar": flag.metavar}
    if flag.kind == "list":
        kwargs["action"] = "append"
    if flag.choices:
        kwargs["choices"] = flag.choices
    return kwargs


def _parsed(flag: Flag, raw: str, source: str | None) -> Any:
    """`raw` through the flag's parser; errors name the flag and, from a variable, it too."""
    if flag.choices and raw not in flag.choices:
        why: str | None = f"expected {' or '.join(flag.choices)}, got {raw!r}"
    else:
        try:
            return flag.parse(raw, flag.flag)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}" if source else str(exc)) from None
        except ValueError as exc:
            why = str(exc)
    if source:
        raise ConfigError(f"{source}: {why} (the variable of {flag.flag})")
    raise ConfigError(f"{flag.flag}: {why}")


def _value(flag: Flag, given: Any, environ: Mapping[str, str]) -> Any:
    """The value of one field: the flag, else its variable, else the default (MISSING)."""
    raw = environ.get(flag.env)
    if flag.kind == "switch":
        if given or raw is None:
            return True if given else MISSING
        return raw.strip().lower() in TRUE_WORDS
    if flag.kind == "list":
        if given:
            return tuple(_parsed(flag, item, None) for item in given)
        items = raw.split(",") if raw is not None else None
        return MISSING if items is None else tuple(_parsed(flag, i, flag.env) for i in items if i)
    if given is not None:
        return _parsed(flag, given, None)
    return _parsed(flag, raw, flag.env) if raw is not None else _program_default(flag)


def _program_default(flag: Flag) -> Any:
    if isinstance(flag.program_default, str):
        return _parsed(flag, flag.program_default, None)
    if flag.program_default is not None:
        return flag.program_default()
    if flag.required:
        raise ConfigError(f"{flag.flag} is required (or set {flag.env})")
    return MISSING


def _build(
    cls: type[T],
    given: Mapping[str, Any],
    environ: Mapping[str, str],
    only: tuple[str, ...] | None,
    known: Mapping[str, Any],
) -> T:
    values: dict[str, Any] = {}
    sources: dict[str, tuple[Flag, bool]] = {}
    for f, flag in flags_of(cls):
        if f.name in known or (only is not None and f.name not in only):
            continue
        value = _value(flag, given.get(flag.dest), environ)
        if value is not MISSING:
            values[f.name] = value
        from_env = given.get(flag.dest) in (None, False, []) and flag.env in environ
        sources[f.name] = (flag, from_env)
    for name, nested, _ in _groups_of(cls):
        if name not in known and only is None:
            values[name] = _build(nested, given, environ, None, {})
    values.update(known)
    try:
        return cls(**values)
    except InvalidSettingError as exc:
        if exc.field not in sources:
            raise
        flag, from_env = sources[exc.field]
        suffix = f" (from {flag.env})" if from_env else ""
        raise ConfigError(exc.render(flag.flag) + suffix) from None


def from_args(
    cls: type[T], args: argparse.Namespace, *, only: tuple[str, ...] | None = None, **known: Any
) -> T:
    """`cls` from parsed flags, the environment and defaults; `known` fields are set as given.

    `only`: read just these fields' flags (those `add_settings(..., only=...)` added); the
    others keep their defaults, whatever the environment says.
    """
    return _build(cls, vars(args), os.environ, only, known)


def from_env(cls: type[T], environ: Mapping[str, str] | None = None, **known: Any) -> T:
    """`cls` from the environment and defaults only (no command line)."""
    return _build(cls, {}, os.environ if environ is None else environ, None, known)


def add_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    cls: type[T],
    main: Callable[[T], int],
    *,
    help: str,  # noqa: A002 - mirrors argparse's own keyword
    description: str,
) -> argparse.ArgumentParser:
    """Add command `name` to `sub`: the flags of `cls`, running `main(from_args(cls, args))`."""
    parser = sub.add_parser(name, help=help, description=description)
    add_settings(parser, cls)
    parser.set_defaults(func=lambda args: main(from_args(cls, args)))
    return parser


def add_command_group(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    *,
    help: str,  # noqa: A002 - mirrors argparse's own keyword
    description: str | None = None,
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """Add command `name` whose subcommand is required and lands in `args.<name>_command`."""
    parser = sub.add_parser(name, help=help, description=description)
    return parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)


def add_flag(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    flag: str,
    *,
    help: str,  # noqa: A002 - mirrors argparse's own keyword
    default: Any = None,
    **kwargs: Any,
) -> None:
    """Add `flag` whose default comes from `DEVICEFABRIC_<FLAG>` when set, else `default`."""
    env = env_name(flag)
    raw = os.environ.get(env)
    action = kwargs.get("action")
    if raw is not None:
        if action == "store_true":
            default = raw.strip().lower() in TRUE_WORDS
        elif action == "append":
            default = [item for item in raw.split(",") if item]
        elif "type" in kwargs:
            try:
                default = kwargs["type"](raw)
            except (TypeError, ValueError):
                raise ConfigError(f"{env}={raw!r} is not a valid value for {flag}") from None
        else:
            default = raw
    shown = f"{help} [env {env}" + (f"; default {default}]" if default not in (None, []) else "]")
    parser.add_argument(flag, default=default, help=shown, **kwargs)
