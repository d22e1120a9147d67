"""Network namespaces for the fault scenarios: devices behind lossy, slow or partitioned links.

`Network` owns everything a scenario creates, and removes it at exit (also when the test fails):
one namespace per `Link`, joined to the test's own namespace by a veth pair whose two ends carry
a private /30 (`10.<net>.<index>.1` on our side, `.2` inside the namespace; `<net>` comes from
the pid, so parallel runs do not collide on names, and every name carries the pid). A "hub" link
gives the broker an address of its own that every device namespace routes to; the broker binds
that address only, so nothing outside the interfaces made here ever carries the scenario's
traffic. Faults are applied inside the device namespaces only (never to the host's firewall):

- `partition()`: iptables DROP of everything in and out (the peer sees silence, no RST: a
  half-open connection), `heal()` removes it; `loss(p)`: random drops (iptables `statistic`);
- `shape(...)`: `tc qdisc ... netem` (delay, jitter, duplication, reordering) where the kernel
  has `sch_netem`; `netem_available()` says whether it has.

`require_netns()` skips a test with the reason when namespaces cannot be made here, but fails it
under `CI=true` (CI machines can). Every command is bounded by a timeout.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Final, Self

from devicefabric.broker.mosquitto import generate
from devicefabric.config.settings import HostPort
from tests.support.brokers import MOSQUITTO, BrokerProcess, require_mosquitto
from tests.support.brokers import _current_user as current_user
from tests.support.ports import free_port
from tests.support.requires import missing

CMD_TIMEOUT: Final = 10.0
IP: Final = shutil.which("ip") or "/usr/sbin/ip"
TC: Final = shutil.which("tc") or "/usr/sbin/tc"
IPTABLES: Final = shutil.which("iptables") or "/usr/sbin/iptables"
NET: Final = 100 + os.getpid() % 100  # second octet of every address a run uses


class NetnsError(RuntimeError):
    """A namespace, link or rule could not be made or removed."""


def run(*argv: str, netns: str | None = None, check: bool = True) -> str:
    """Run one command (inside `netns` if given) with a bound; its stdout."""
    full = [IP, "netns", "exec", netns, *argv] if netns else list(argv)
    try:
        done = subprocess.run(
            full, capture_output=True, text=True, timeout=CMD_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"{' '.join(full)}: {exc}") from exc
    if check and done.returncode != 0:
        raise NetnsError(f"{' '.join(full)}: {done.stderr.strip()}")
    return done.stdout


@cache
def unavailable() -> str | None:
    """Why namespaces, veth pairs or iptables cannot be used here (None when they can)."""
    for tool in (IP, IPTABLES):
        if not os.access(tool, os.X_OK):
            return f"{tool} is missing"
    probe = f"dfprobe{os.getpid()}"
    try:
        run(IP, "netns", "add", probe)
        try:
            run(IP, "link", "add", f"{probe}a", "type", "veth", "peer", "name", "p", "netns", probe)
            run(IPTABLES, "-A", "INPUT", "-j", "ACCEPT", netns=probe)
        finally:
            run(IP, "link", "del", f"{probe}a", check=False)
            run(IP, "netns", "del", probe, check=False)
    except NetnsError as exc:
        return f"cannot make network namespaces here: {exc}"
    return None


@cache
def netem_available() -> bool:
    """Whether `tc qdisc add ... netem` works (the kernel module `sch_netem`)."""
    if unavailable() is not None:
        return False
    probe = f"dfnetem{os.getpid()}"
    run(IP, "link", "add", probe, "type", "veth", "peer", "name", f"{probe}p")
    try:
        run(TC, "qdisc", "add", "dev", probe, "root", "netem", "delay", "1ms")
    except NetnsError:
        return False
    else:
        return True
    finally:
        run(IP, "link", "del", probe, check=False)


def require_netns() -> None:
    """Skip (fail under `CI=true`) when namespaces cannot be made on this machine."""
    why = unavailable()
    if why is None:
        return
    missing(why)


@dataclass(slots=True)
class Link:
    """One namespace and the veth pair joining it to ours; a /30 on the pair."""

    name: str  # namespace name
    index: int
    faults: list[list[str]] = field(default_factory=list)  # iptables rules inserted

    outer: str = field(init=False)  # our end of the veth pair
    inner: str = field(init=False)
    gateway: str = field(init=False)  # our address on the pair
    address: str = field(init=False)  # the namespace's

    def __post_init__(self) -> None:
        self.outer, self.inner = f"{self.name}o", f"{self.name}i"
        self.gateway, self.address = f"10.{NET}.{self.index}.1", f"10.{NET}.{self.index}.2"

    def create(self) -> None:
        run(IP, "netns", "add", self.name)
        run(IP, "link", "add", self.outer, "type", "veth", "peer", "name", self.inner)
        run(IP, "link", "set", self.inner, "netns", self.name)
        run(IP, "addr", "add", f"{self.gateway}/30", "dev", self.outer)
        run(IP, "link", "set", self.outer, "up")
        run(IP, "link", "set", "lo", "up", netns=self.name)
        run(IP, "addr", "add", f"{self.address}/30", "dev", self.inner, netns=self.name)
        run(IP, "link", "set", self.inner, "up", netns=self.name)
        run(IP, "route", "add", "default", "via", self.gateway, netns=self.name)

    def remove(self) -> None:
        run(IP, "link", "del", self.outer, check=False)
        run(IP, "netns", "del", self.name, check=False)

    def exec_argv(self, argv: list[str]) -> list[str]:
        """`argv` run inside this namespace."""
        return [IP, "netns", "exec", self.name, *argv]

    # -- faults -----------------------------------------------------------------------------------
    def _insert(self, *rule: str) -> None:
        run(IPTABLES, "-I", *rule, netns=self.name)
        self.faults.append(list(rule))

    def partition(self, *, inbound: bool = True, outbound: bool = True) -> None:
        """Drop silently: both ways, or one way (`inbound`: towards the device)."""
        if inbound:
            self._insert("INPUT", "-i", self.inner, "-j", "DROP")
        if outbound:
            self._insert("OUTPUT", "-o", self.inner, "-j", "DROP")

    def partition_from(self, host: str) -> None:
        """Drop silently, both ways, only what goes to or comes from `host` (one peer cut off)."""
        self._insert("INPUT", "-i", self.inner, "-s", host, "-j", "DROP")
        self._insert("OUTPUT", "-o", self.inner, "-d", host, "-j", "DROP")

    def loss(self, probability: float) -> None:
        """Drop each packet, either way, with `probability`."""
        for chain, flag in (("INPUT", "-i"), ("OUTPUT", "-o")):
            self._insert(
                chain, flag, self.inner, "-m", "statistic", "--mode", "random",
                "--probability", f"{probability:.3f}", "-j", "DROP",
            )  # fmt: skip

    def heal(self) -> None:
        """Remove every iptables fault (qdiscs stay)."""
        while self.faults:
            run(IPTABLES, "-D", *self.faults.pop(), netns=self.name)

    def shape(self, *netem: str) -> None:
        """`tc qdisc replace ... netem <netem>` on both ends of the link."""
        run(TC, "qdisc", "replace", "dev", self.outer, "root", "netem", *netem)
        run(TC, "qdisc", "replace", "dev", self.inner, "root", "netem", *netem, netns=self.name)


class Network:
    """The namespaces of one scenario: a hub (the broker's address) and one link per device."""

    def __init__(self, tag: str) -> None:
        self.prefix = f"df{tag[:3]}{os.getpid() % 100000}"  # interface names: at most 15 chars
        self.links: dict[str, Link] = {}
        try:
            self.hub = self._new("hub")
        except NetnsError:
            self.close()
            raise

    def _new(self, key: str) -> Link:
        link = Link(f"{self.prefix}n{len(self.links)}", len(self.links))
        self.links[key] = link
        link.create()
        return link

    @property
    def broker_host(self) -> str:
        """The address the broker binds: ours on the hub link, routed to from every namespace."""
        return self.hub.gateway

    def device(self, name: str) -> Link:
        """The link of device `name` (made on first use)."""
        return self.links.get(name) or self._new(name)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for link in reversed(self.links.values()):
            with contextlib.suppress(NetnsError):
                link.remove()
        self.links.clear()


def scenario_network(tag: str) -> Iterator[Network]:
    """A test's `Network` (the test is skipped where namespaces cannot be made), closed after it;
    a fixture yields from it."""
    require_netns()
    with Network(tag) as net:
        yield net


# -- the fabric's parts on these links --------------------------------------------------------------
def broker_at(
    host: str, kind: str, base: Path, secret: bytes, devices: Iterable[str]
) -> BrokerProcess:
    """A mosquitto (from our generated config) or embedded broker bound to `host` only."""
    port = free_port()
    workdir = base / f"{kind}-{port}"
    workdir.mkdir(parents=True, exist_ok=True)
    if kind == "mosquitto":
        require_mosquitto()
        written = generate(
            workdir / "config", tuple(devices), secret, HostPort(host, port), user=current_user()
        )
        argv = [str(MOSQUITTO), "-c", str(written.conf)]
    else:
        secret_file = workdir / "secret"
        secret_file.write_bytes(secret + b"\n")
        secret_file.chmod(0o600)
        argv = [sys.executable, "-m", "devicefabric", "broker", "run", "--mqtt", f"{host}:{port}"]
        argv += ["--secret-file", str(secret_file)]
    broker = BrokerProcess(
        "mosquitto" if kind == "mosquitto" else "embedded",
        argv, port, secret, workdir, devices=tuple(devices),
    )  # fmt: skip
    broker.host = host
    return broker
