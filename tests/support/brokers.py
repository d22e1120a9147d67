"""Real brokers on free loopback ports for tier-2 tests: embedded amqtt and mosquitto.

Both are separate processes started from what a user would run, so a test exercises the shipped
entry points:

- `prepare_mosquitto(...)`: our generator (`broker.mosquitto.generate`) writes `mosquitto.conf` and
  the dynamic-security JSON, then `/usr/sbin/mosquitto -c mosquitto.conf` runs them. mosquitto
  knows only the devices it was generated for, so a test names its devices up front.
- `prepare_embedded(...)`: `python -m devicefabric broker run --mqtt 127.0.0.1:PORT --secret-file F
  [--revoked-file F]`. It accepts any valid device name.
- `prepare(kind, ...)`: either by name.

Each returns a `BrokerProcess` (`host`, `port`, `url`, `secret`, `kind`, `password(user)`,
`start()`, `stop()`, `restart()`, `kill()`), not started: `running(broker)` runs it for a block and
always stops it. A restart keeps the port, so clients under test can reconnect to the same address. A broker that
exits or never opens its port raises `BrokerStartError` with the tail of its log.

mosquitto missing: `require_mosquitto()` skips, except under `CI=true`, where it fails loudly: CI
must not go green by skipping the production broker.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Final, Literal

import pytest

from devicefabric.broker.mosquitto import generate
from devicefabric.config.credentials import password_for
from devicefabric.config.settings import HostPort
from devicefabric.config.topics import DEFAULT_ROOT, Topics
from tests.support.ports import free_port, port_open
from tests.support.requires import missing

BrokerKind = Literal["embedded", "mosquitto", "nats"]  # nats: tests/support/nats.py
KINDS: Final[tuple[BrokerKind, ...]] = ("mosquitto", "embedded")
# For `params=`: the mosquitto case carries the `mosquitto` marker (needs the binary).
KIND_PARAMS: Final = (
    pytest.param("mosquitto", marks=pytest.mark.mosquitto, id="mosquitto"),
    pytest.param("embedded", id="embedded"),
)

MOSQUITTO: Final = Path(os.environ.get("DEVICEFABRIC_TEST_MOSQUITTO", "/usr/sbin/mosquitto"))
HOST: Final = "127.0.0.1"
START_TIMEOUT: Final = {"mosquitto": 5.0, "embedded": 20.0, "nats": 20.0}
STOP_TIMEOUT: Final = 5.0
EMBEDDED_READY: Final = b"broker listening on"


class BrokerStartError(RuntimeError):
    """The broker process exited or did not open its port in time."""


def mosquitto_available() -> bool:
    return MOSQUITTO.is_file() and os.access(MOSQUITTO, os.X_OK)


def require_mosquitto() -> None:
    """Skip when mosquitto is missing, but fail under CI=true (CI must run the real broker)."""
    if mosquitto_available():
        return
    message = (
        f"mosquitto not found at {MOSQUITTO}: install `mosquitto mosquitto-clients` "
        "(or set DEVICEFABRIC_TEST_MOSQUITTO)"
    )
    missing(message)


class BrokerProcess:
    """One broker process on a fixed loopback port; stop/start/restart keep the port."""

    def __init__(
        self,
        kind: BrokerKind,
        argv: list[str],
        port: int,
        secret: bytes,
        workdir: Path,
        *,
        root: str = DEFAULT_ROOT,
        devices: tuple[str, ...] = (),
        revoked: tuple[str, ...] = (),
        tls_ca: Path | None = None,
    ) -> None:
        self.kind: BrokerKind = kind
        self.argv = argv
        self.host = HOST
        self.port = port
        self.secret = secret
        self.workdir = workdir
        self.root = root
        self.topics = Topics(root)
        self.devices = devices  # mosquitto: the only devices it knows; embedded: informational
        self.revoked = revoked
        self.tls_ca = tls_ca  # set when the listener speaks TLS: the CA clients must trust
        self.log_path = workdir / f"{kind}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._log_offset = 0

    def __repr__(self) -> str:
        return f"<{self.kind} broker {self.host}:{self.port}>"

    # -- what tests use ----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """`mqtt://127.0.0.1:PORT` (`mqtts://` with TLS): the `--broker` of agents and bridges."""
        return f"{'mqtts' if self.tls_ca else 'mqtt'}://{self.host}:{self.port}"

    @property
    def hostport(self) -> str:
        return f"{self.host}:{self.port}"

    def password(self, user: str) -> str:
        """The derived password of a device, `bridge` or `observer`."""
        return password_for(self.secret, user)

    def password_file(self, user: str) -> Path:
        """A 0600 file holding `user`'s password (for `--password-file`)."""
        path = self.workdir / f"{user}.password"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.password(user) + "\n")
        return path

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the process and wait until its port accepts connections."""
        if self.running:
            return
        if port_open(self.port, self.host):
            raise BrokerStartError(self._failure("cannot start: the port is already in use"))
        self._log = self.log_path.open("ab")
        self._log_offset = self._log.tell()  # a restart appends: look for readiness after this
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEVICEFABRIC_")}
        env["PYTHONUNBUFFERED"] = "1"
        self._proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env=env,
        )
        deadline = time.monotonic() + START_TIMEOUT[self.kind]
        while not self._ready():
            if self._proc.poll() is not None:
                self._close_log()
                raise BrokerStartError(
                    self._failure("exited with code " + str(self._proc.returncode))
                )
            if time.monotonic() > deadline:
                self.stop(kill=True)
                raise BrokerStartError(self._failure("did not open its port in time"))
            time.sleep(0.02)

    def _ready(self) -> bool:
        # `broker run` prints a ready line once it accepts connections; probing its port instead
        # would log a refused (empty) connection on every start. mosquitto is probed.
        if self.kind == "embedded":
            try:
                return EMBEDDED_READY in self.log_path.read_bytes()[self._log_offset :]
            except OSError:
                return False
        return port_open(self.port, self.host, timeout=0.2)

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (or SIGKILL with `kill`) and wait; escalate to SIGKILL after a bound."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT)
        self._close_log()

    def kill(self) -> None:
        """A crash: SIGKILL, no clean shutdown."""
        self.stop(kill=True)

    def restart(self, kill: bool = False) -> None:
        """Stop and start again on the same port."""
        self.stop(kill=kill)
        self.start()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _failure(self, what: str) -> str:
        tail = "\n".join(self.log_text().splitlines()[-30:])
        return f"{self.kind} broker on port {self.port} {what}: {' '.join(self.argv)}\n{tail}"


def _current_user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def _secret_file(workdir: Path, secret: bytes) -> Path:
    path = workdir / "secret"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(secret + b"\n")
    return path


def _workdir(base: Path, kind: BrokerKind, port: int) -> Path:
    path = base / f"{kind}-{port}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def prepare_mosquitto(
    base: Path,
    secret: bytes,
    devices: Iterable[str],
    *,
    revoked: Iterable[str] = (),
    root: str = DEFAULT_ROOT,
    port: int | None = None,
    tls: tuple[Path, Path, Path] | None = None,
    max_queued_messages: int | None = None,
) -> BrokerProcess:
    """Generate the production config for `devices` on a free port; the process is not started.

    `tls` is (CA certificate, server certificate, server key): the listener then speaks TLS only.
    `max_queued_messages` overrides the generated per-client queue bound (None: sized for the
    fleet, as in production).
    """
    require_mosquitto()
    port = port if port is not None else free_port()
    workdir = _workdir(base, "mosquitto", port)
    devices, revoked = tuple(devices), tuple(revoked)
    # mosquitto started as root drops to `user` before reading the plugin's JSON: stay ourselves.
    written = generate(
        workdir / "config",
        devices,
        secret,
        HostPort(HOST, port),
        root=root,
        revoked=revoked,
        user=_current_user(),
        tls_cert=tls[1] if tls else None,
        tls_key=tls[2] if tls else None,
        max_queued_messages=max_queued_messages,
    )
    argv = [str(MOSQUITTO), "-c", str(written.conf)]
    return BrokerProcess(
        "mosquitto",
        argv,
        port,
        secret,
        workdir,
        root=root,
        devices=devices,
        revoked=revoked,
        tls_ca=tls[0] if tls else None,
    )


def prepare_embedded(
    base: Path,
    secret: bytes,
    *,
    revoked: Iterable[str] = (),
    port: int | None = None,
    extra_args: Iterable[str] = (),
    tls: tuple[Path, Path, Path] | None = None,
) -> BrokerProcess:
    """The `devicefabric broker run` command line on a free port; the process is not started.

    `tls` is (CA certificate, server certificate, server key), passed as `--tls-cert/--tls-key`.
    """
    port = port if port is not None else free_port()
    workdir = _workdir(base, "embedded", port)
    revoked = tuple(revoked)
    argv = [sys.executable, "-m", "devicefabric", "broker", "run", "--mqtt", f"{HOST}:{port}"]
    argv += ["--secret-file", str(_secret_file(workdir, secret))]
    if revoked:
        revoked_file = workdir / "revoked"
        revoked_file.write_text("".join(f"{name}\n" for name in revoked), encoding="utf-8")
        argv += ["--revoked-file", str(revoked_file)]
    if tls is not None:
        argv += ["--tls-cert", str(tls[1]), "--tls-key", str(tls[2])]
    argv += list(extra_args)
    return BrokerProcess(
        "embedded", argv, port, secret, workdir, revoked=revoked, tls_ca=tls[0] if tls else None
    )


@contextlib.contextmanager
def running(broker: BrokerProcess) -> Iterator[BrokerProcess]:
    """Start `broker`, yield it, always stop it."""
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


def prepare(
    kind: BrokerKind,
    base: Path,
    secret: bytes,
    devices: Iterable[str],
    *,
    revoked: Iterable[str] = (),
    port: int | None = None,
) -> BrokerProcess:
    """Either broker by name, not started; `devices` matter only to mosquitto."""
    if kind == "mosquitto":
        return prepare_mosquitto(base, secret, devices, revoked=revoked, port=port)
    return prepare_embedded(base, secret, revoked=revoked, port=port)
