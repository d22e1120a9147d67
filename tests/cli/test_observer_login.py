"""Watching as the observer without a password on any command line, as the README says to.

`creds observer --mosquitto-options DIR` writes the login into the mosquitto clients' own
options file (`$XDG_CONFIG_HOME/mosquitto_sub`, mode 0600); the README's two lines are run
verbatim (only the program path and the port substituted) through `sh` with the real
`mosquitto_sub`, on both brokers. The banner of `up` is checked in test_up.py the same way.
"""

from __future__ import annotations

import re
import shlex
import stat
import sys
from pathlib import Path

from devicefabric.config.credentials import role_password
from tests.support.brokers import BrokerProcess
from tests.support.cli import run_cli, sh
from tests.support.mqtt import connect
from tests.support.requires import require_tool

README = Path(__file__).resolve().parents[2] / "README.md"
STATUS = b'{"state":"online","session":"s1","heartbeat_s":15,"agent":"0.1.0"}'


def readme_watch_lines() -> list[str]:
    """The shell lines of the README's "Watch the whole fabric" block."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("**Watch the whole fabric**") :]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block is not None
    return [line for line in block.group(1).splitlines() if line.strip()]


def mosquitto_sub() -> str:
    return require_tool("mosquitto_sub", "install mosquitto-clients")


def test_the_readme_watch_example_works_verbatim_with_no_password_in_argv(
    any_broker: BrokerProcess, tmp_path: Path
) -> None:
    mosquitto_sub()
    (tmp_path / ".devicefabric").mkdir()
    (tmp_path / ".devicefabric" / "secret").write_bytes(any_broker.secret + b"\n")
    device = connect(any_broker, "tor9-99")
    device.publish(any_broker.topics.status("tor9-99"), STATUS, qos=1, retain=True)
    device.close()

    creds, watch = readme_watch_lines()
    password = role_password(any_broker.secret, "observer")
    assert password not in creds + watch
    assert " -I observer_ " in watch
    here = f"{shlex.quote(sys.executable)} -m devicefabric"
    made = sh(creds.replace(".venv/bin/devicefabric", here), tmp_path, timeout=30)
    assert made.code == 0, made.err
    assert made.out == ""  # the password is not printed either
    options = tmp_path / ".devicefabric" / "observer" / "mosquitto_sub"
    assert stat.S_IMODE(options.stat().st_mode) == 0o600
    assert password in options.read_text(encoding="utf-8")

    watched = sh(watch.replace("-p 11883", f"-p {any_broker.port}") + " -C 1 -W 10", tmp_path)
    assert watched.code == 0, watched.err
    assert watched.out.strip() == f"{any_broker.topics.status('tor9-99')} {STATUS.decode()}"


def test_an_options_file_devicefabric_did_not_write_is_never_replaced(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("observer-test-secret-0123456789\n")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "mosquitto_sub").write_text("-h broker.example\n")
    argv = ("creds", "--secret-file", str(secret), "observer", "--mosquitto-options")
    refused = run_cli(*argv, str(mine))
    assert refused.code == 2
    (line,) = refused.err.splitlines()
    assert "was not written by devicefabric" in line
    assert (mine / "mosquitto_sub").read_text() == "-h broker.example\n"

    fresh = tmp_path / "new" / "observer"
    for _ in range(2):  # written, then replaced: it is ours
        written = run_cli(*argv, str(fresh))
        assert (written.code, written.out) == (0, "")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    assert stat.S_IMODE((fresh / "mosquitto_sub").stat().st_mode) == 0o600
    assert sorted(p.name for p in fresh.iterdir()) == ["mosquitto_sub"]  # no temporary left
