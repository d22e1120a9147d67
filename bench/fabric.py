"""The fabric a benchmark runs: the test kit's fabric in a temporary directory, always stopped.

`Fabric` is an `ExitStack` over one temporary work directory and one fabric secret. Everything it
starts is a separate process started the way a user would (so its CPU time and RSS can be read
from /proc without the benchmark in the way) and is stopped when the block ends (in reverse: a
bridge before its control plane, the broker last). The programs on one broker belong to one
`tests.support.fabric.Fabric` (its control plane, if any, and the teardown of its agents and
bridges); the programs are the kit's (`tests.support.processes`):

- `mosquitto(devices)`: the kit's mosquitto (`/usr/sbin/mosquitto -c` the files our generator
  writes); `privileged=True` adds one bench-only user, `loadgen`, allowed to publish every
  device's status/heartbeat/report, so one connection can stand in for a fleet;
- `embedded()`: the kit's `devicefabric broker run`, logging warnings only;
- `plane(broker, kind)`: the kit's local or kube control plane for that broker, measured
  (`bench.planes`);
- `bridge(broker, ...)`: a `BridgeProcess` on the local or kube control plane,
  possibly an experiment (`BRIDGE_VARIANT`) or profiled (`BRIDGE_PROFILED`), both given to the
  kit as the bridge's `launcher`;
- `agent(broker, device)`: an `AgentProcess`; `python(name, code)`: a floor script (`Command`).

What is bench-only stays here: the privileged load generator's account, the two launchers, and
reading a broker's CPU time and RSS.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final, cast

from bench import planes
from devicefabric.broker.mosquitto import DYNSEC_NAME, hash_password, random_salt
from devicefabric.config.credentials import new_secret, password_for
from devicefabric.config.topics import DeviceTopic, Topics
from tests.support import fabric, procfs
from tests.support.brokers import (
    MOSQUITTO,
    BrokerProcess,
    mosquitto_available,
    prepare_embedded,
    prepare_mosquitto,
)
from tests.support.proc import Command
from tests.support.processes import AgentProcess, BridgeProcess, Plane

HOST: Final = "127.0.0.1"
TOPICS: Final = Topics()
LOADGEN: Final = "loadgen"  # the bench-only privileged MQTT user (mosquitto only)
Broker = BrokerProcess


def kill_orphan(pid: int, argv0: str = "sleep") -> None:
    """SIGKILL a process an agent killed with -9 left behind (only if it runs `argv0`)."""
    argv = procfs.cmdline(pid)
    if argv and argv[0].endswith(argv0.encode()):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def pid_of(broker: Broker) -> int:
    if broker.pid is None:
        raise RuntimeError(f"{broker!r} is not running")
    return broker.pid


def cpu_seconds(broker: Broker) -> float:
    return procfs.cpu_seconds(pid_of(broker))


def rss_kib(broker: Broker) -> int:
    return procfs.rss_kib(pid_of(broker))


def profile(bridge: BridgeProcess, *, on: bool) -> None:
    """Switch cProfile on or off (off writes the file) when run with BENCH_BRIDGE_PROFILE."""
    if os.environ.get("BENCH_BRIDGE_PROFILE"):
        os.kill(bridge.pid, signal.SIGUSR1 if on else signal.SIGUSR2)


def _add_privileged(dynsec: Path, secret: bytes) -> None:
    """Add the `loadgen` client: may publish status/heartbeat/report of every device."""
    doc = json.loads(dynsec.read_text())
    hashed = hash_password(password_for(secret, LOADGEN), random_salt())
    doc["clients"].append(
        {
            "username": LOADGEN,
            "password": hashed.password,
            "salt": hashed.salt,
            "iterations": hashed.iterations,
            "roles": [{"rolename": LOADGEN}],
        }
    )
    kinds = (DeviceTopic.STATUS, DeviceTopic.HEARTBEAT, DeviceTopic.REPORT)
    acls = [
        {"acltype": "publishClientSend", "topic": TOPICS.all_devices(k), "allow": True}
        for k in kinds
    ]
    doc["roles"].append({"rolename": LOADGEN, "acls": acls})
    dynsec.write_text(json.dumps(doc, indent=1))


# Experiments only: runs the shipped `devicefabric` CLI with `BridgeSettings` fields replaced
# (JSON in BENCH_BRIDGE_OVERRIDES) and the local control plane's poll interval changed
# (BENCH_LOCAL_POLL), to measure what a proposed setting would buy without editing the bridge.
BRIDGE_VARIANT: Final = """
import dataclasses, json, os, sys
from devicefabric.bridge import cli
from devicefabric.bridge.controlplane.local.plane import LocalControlPlane
overrides = json.loads(os.environ.get("BENCH_BRIDGE_OVERRIDES") or "{}")
shipped = cli.settings_from_args
cli.settings_from_args = lambda args: dataclasses.replace(shipped(args), **overrides)
if os.environ.get("BENCH_LOCAL_POLL"):
    LocalControlPlane.__init__.__kwdefaults__["poll_interval"] = float(os.environ["BENCH_LOCAL_POLL"])
from devicefabric.cli import main
sys.exit(main(sys.argv[1:]))
"""

# Profiling only (BENCH_BRIDGE_PROFILE=FILE): the shipped CLI, with cProfile switched on by
# SIGUSR1 and off by SIGUSR2, which also writes FILE: a profile of a chosen window only
# (`BridgeProc.profile`). Main thread only (the event loop's).
BRIDGE_PROFILED: Final = """
import cProfile, os, signal, sys
profile = cProfile.Profile()
def start(*_): profile.enable()
def stop(*_): profile.disable(); profile.dump_stats(os.environ["BENCH_BRIDGE_PROFILE"])
signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, stop)
from devicefabric.cli import main
sys.exit(main(sys.argv[1:]))
"""


class Fabric(contextlib.ExitStack):
    """A work directory, a secret, and every process started in it (stopped on exit)."""

    def __init__(self, prefix: str = "bench-") -> None:
        super().__init__()
        self._tmp = tempfile.TemporaryDirectory(prefix=prefix)
        self.workdir = Path(self._tmp.name)
        self.secret = new_secret().encode()
        self.callback(self._tmp.cleanup)
        self._fabrics: list[fabric.Fabric] = []
        self._bridges = itertools.count()

    def password(self, user: str) -> str:
        return password_for(self.secret, user)

    # -- brokers -----------------------------------------------------------------------------------
    def _started(self, process: BrokerProcess) -> Broker:
        self.callback(process.stop)
        process.start()
        return process

    def _kit(self, broker: Broker, plane: Plane | None = None) -> fabric.Fabric:
        """The kit's fabric on `broker` (made on first use; it leaves the broker to us)."""
        for kit in self._fabrics:
            if kit.broker is broker:
                return kit
        api = planes.fake_api() if plane == "kube" else None
        kit = fabric.Fabric(self.workdir, broker, plane=plane, api=api)
        self._fabrics.append(kit)
        self.callback(kit.close)
        return kit

    def plane(self, broker: Broker, kind: str) -> planes.Plane:
        """A `kind` control plane for the bridges on `broker` (before any program runs on it)."""
        if kind not in ("local", "kube"):
            raise ValueError(f"unknown control plane {kind!r}")
        if any(kit.broker is broker for kit in self._fabrics):
            raise RuntimeError(f"programs already run on {broker!r} without a control plane")
        plane = planes.make_plane(self._kit(broker, cast("Plane", kind)))
        self.callback(plane.close)
        return plane

    def mosquitto(
        self,
        devices: Iterable[str],
        *,
        privileged: bool = False,
        extra_conf: Iterable[str] = (),
        max_queued_messages: int | None = None,
    ) -> Broker:
        if not mosquitto_available():
            raise RuntimeError(f"mosquitto not found at {MOSQUITTO} (DEVICEFABRIC_TEST_MOSQUITTO)")
        process = prepare_mosquitto(
            self.workdir, self.secret, devices, max_queued_messages=max_queued_messages
        )
        conf = Path(process.argv[-1])  # `mosquitto -c <conf>`; the JSON is written beside it
        if privileged:
            _add_privileged(conf.parent / DYNSEC_NAME, self.secret)
        with conf.open("a", encoding="utf-8") as fh:
            fh.write("".join(f"{line}\n" for line in extra_conf))
        return self._started(process)

    def embedded(self) -> Broker:
        process = prepare_embedded(self.workdir, self.secret)
        process.argv[3:3] = ["--log-level", "WARNING"]  # `python -m devicefabric <here> broker run`
        return self._started(process)

    # -- fabric programs ---------------------------------------------------------------------------
    def bridge(
        self,
        broker: Broker,
        *,
        control_plane: Plane = "local",
        state_dir: Path | None = None,
        kubeconfig: Path | None = None,
        args: Iterable[str] = (),
        log_level: str = "INFO",
        overrides: dict[str, Any] | None = None,
        local_poll: float | None = None,
    ) -> BridgeProcess:
        """The shipped bridge, started (not awaited ready); `overrides`/`local_poll` run an
        experiment (see BRIDGE_VARIANT); with `BENCH_BRIDGE_PROFILE=FILE` in the environment it
        can be profiled (BRIDGE_PROFILED; CPU figures measured meanwhile are then cProfile's)."""
        name = f"bridge{next(self._bridges)}"
        env = {"POD_NAME": f"bench-{name}"}
        options: dict[str, Any] = {"extra": args, "env": env, "log_level": log_level}
        if overrides or local_poll:
            options["launcher"] = [sys.executable, "-c", BRIDGE_VARIANT]
            env["BENCH_BRIDGE_OVERRIDES"] = json.dumps(overrides or {})
            env["BENCH_LOCAL_POLL"] = str(local_poll or "")
        elif os.environ.get("BENCH_BRIDGE_PROFILE"):
            options["launcher"] = [sys.executable, "-c", BRIDGE_PROFILED]
            env["BENCH_BRIDGE_PROFILE"] = os.environ["BENCH_BRIDGE_PROFILE"]
        if kubeconfig is not None:
            env["KUBECONFIG"] = str(kubeconfig)
        if control_plane == "local":
            options["state_dir"] = state_dir or self.workdir / "state"
        bridge = BridgeProcess(broker, self.workdir, name=name, plane=control_plane, **options)
        self._kit(broker).adopt(bridge)
        self.callback(bridge.stop)  # before what was set up for it (its control plane)
        bridge.start(timeout=None)
        return bridge

    def agent(
        self,
        broker: Broker,
        device: str,
        *,
        heartbeat: int = 15,
        state_dir: Path | None = None,
        log_level: str = "INFO",
    ) -> AgentProcess:
        agent = self._kit(broker).start_agent(
            device,
            heartbeat=heartbeat,
            state_dir=state_dir or self.workdir / f"agent-{device}",
            log_level=log_level,
        )
        self.callback(agent.close)
        return agent

    def python(self, name: str, code: str, *args: str) -> Command:
        """`python -c code args...`: floors written as small scripts."""
        command = Command(name, [sys.executable, "-c", code, *args], self.workdir)
        self.callback(command.stop)
        command.start()
        return command
