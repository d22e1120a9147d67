"""The fabric a benchmark runs: real processes on free loopback ports, always stopped.

`Fabric` is an `ExitStack` over one temporary work directory and one fabric secret. Everything it
starts is a separate process started the way a user would (so its CPU time and RSS can be read
from /proc without the benchmark in the way) and is stopped when the block ends:

- `mosquitto(devices)`: the test kit's mosquitto (`/usr/sbin/mosquitto -c` the files our
  generator writes); `privileged=True` adds one bench-only user, `loadgen`, allowed to publish
  every device's status/heartbeat/report, so one connection can stand in for a fleet;
- `embedded()`: the test kit's `devicefabric broker run`, logging warnings only;
- `bridge(broker, ...)`: `devicefabric bridge run --control-plane local|kube`, with `/metrics`
  and `/devices` read over HTTP (`BridgeProc`);
- `agent(broker, device)`: `devicefabric agent run`; `python(name, code)`: a floor script.

A `Broker` is the kit's `BrokerProcess` with its CPU time and RSS; a `Proc` is the kit's
`processes.Proc` run with an argv built here, its CPU time and RSS read through
`tests.support.procfs`. The bench builds its own command lines rather than using the kit's
`AgentProcess`/`BridgeProcess` because it chooses the log level of what it measures, and runs a
bridge as an experiment (`BRIDGE_VARIANT`) or under cProfile (`BRIDGE_PROFILED`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final, TypeVar

from devicefabric.broker.mosquitto import DYNSEC_NAME, hash_password, random_salt
from devicefabric.config.credentials import new_secret, password_for
from devicefabric.config.topics import DeviceTopic, Topics
from tests.support import processes, procfs
from tests.support.brokers import (
    MOSQUITTO,
    BrokerProcess,
    mosquitto_available,
    prepare_embedded,
    prepare_mosquitto,
)
from tests.support.ports import free_port
from tests.support.waiting import wait_for

HOST: Final = "127.0.0.1"
TOPICS: Final = Topics()
LOADGEN: Final = "loadgen"  # the bench-only privileged MQTT user (mosquitto only)


def kill_orphan(pid: int, argv0: str = "sleep") -> None:
    """SIGKILL a process an agent killed with -9 left behind (only if it runs `argv0`)."""
    argv = procfs.cmdline(pid)
    if argv and argv[0].endswith(argv0.encode()):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


class Broker:
    """A started `BrokerProcess` of the test kit, measured."""

    def __init__(self, process: BrokerProcess) -> None:
        self.process = process
        self.kind = process.kind
        self.port = process.port
        self.url = process.url
        self.log_path = process.log_path

    @property
    def pid(self) -> int:
        if self.process.pid is None:
            raise RuntimeError(f"{self.process!r} is not running")
        return self.process.pid

    def cpu_seconds(self) -> float:
        return procfs.cpu_seconds(self.pid)

    def rss_kib(self) -> int:
        return procfs.rss_kib(self.pid)

    @property
    def alive(self) -> bool:
        return self.process.running

    def stop(self) -> None:
        self.process.stop()

    def password_file(self, user: str) -> Path:
        """A 0600 file in the broker's directory holding `user`'s password."""
        return self.process.password_file(user)


class Proc(processes.Proc):
    """One program of the kit's kind, started at once with this `argv`; its CPU time and RSS
    (threads included, children not) read from /proc."""

    def __init__(
        self, name: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None
    ) -> None:
        super().__init__(name, workdir)
        self._argv = argv
        self.env = dict(env or {})
        self.start()

    def argv(self) -> list[str]:
        return self._argv

    def cpu_seconds(self) -> float:
        return procfs.cpu_seconds(self.pid)

    def rss_kib(self) -> int:
        return procfs.rss_kib(self.pid)

    def check(self) -> None:
        """Raise, with the tail of its log, if it exited."""
        if not self.alive:
            tail = "\n".join(self.log_text().splitlines()[-20:])
            raise RuntimeError(f"{self.name} exited:\n{tail}")

    def said(self, text: bytes) -> bool:
        """Whether the process wrote `text` to its log (raises if it exited meanwhile)."""
        self.check()
        return text in self.log_path.read_bytes()

    def freeze(self) -> None:
        """SIGSTOP: the process and its socket stay, nothing is sent (`stop` thaws it first)."""
        os.kill(self.pid, signal.SIGSTOP)

    def stop(self, timeout: float = processes.STOP_BOUND) -> int | None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)  # a frozen process cannot handle SIGTERM
        return super().stop(timeout)


P = TypeVar("P", bound=Proc)


class BridgeProc(Proc):
    """`devicefabric bridge run` with its HTTP API on `http_port`."""

    def __init__(self, argv: list[str], workdir: Path, env: dict[str, str], http_port: int) -> None:
        super().__init__("bridge", argv, workdir, env)
        self.http_port = http_port

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
        url = f"http://{HOST}:{self.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), bytes(exc.read())

    def profile(self, *, on: bool) -> None:
        """Switch cProfile on or off (off writes the file) when run with BENCH_BRIDGE_PROFILE."""
        if os.environ.get("BENCH_BRIDGE_PROFILE"):
            os.kill(self.pid, signal.SIGUSR1 if on else signal.SIGUSR2)

    def readyz(self) -> dict[str, Any]:
        """`/readyz` as a document ({} while it does not answer 200)."""
        with contextlib.suppress(OSError, ValueError):
            status, body = self.get("/readyz", timeout=2)
            if status == 200:
                doc: dict[str, Any] = json.loads(body)
                return doc
        return {}

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ok() -> bool:
            self.check()
            return bool(self.readyz().get("ready"))

        wait_for(ok, timeout, 0.05, "the bridge to be ready")

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics as `name{labels}` -> value."""
        _, body = self.get("/metrics")
        out: dict[str, float] = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[name] = float(value)
        return out

    def heartbeats(self) -> int:
        """Heartbeats the bridge has ingested (`devicefabric_messages_total{kind="heartbeat"}`)."""
        return int(metric(self.metrics(), "devicefabric_messages_total", kind="heartbeat"))

    def devices(self) -> list[dict[str, Any]]:
        _, body = self.get("/devices", timeout=60)
        doc: list[dict[str, Any]] = json.loads(body)
        return doc


def metric(metrics: dict[str, float], name: str, **labels: str) -> float:
    """One sample of `BridgeProc.metrics()`, 0 when absent."""
    if labels:
        inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        return metrics.get(f"{name}{{{inner}}}", 0.0)
    return metrics.get(name, 0.0)


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

    def password(self, user: str) -> str:
        return password_for(self.secret, user)

    def start(self, proc: P) -> P:
        self.callback(proc.stop)
        return proc

    # -- brokers -----------------------------------------------------------------------------------
    def _started(self, process: BrokerProcess) -> Broker:
        self.callback(process.stop)
        process.start()
        return Broker(process)

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
        control_plane: str = "local",
        state_dir: Path | None = None,
        kubeconfig: Path | None = None,
        args: Iterable[str] = (),
        log_level: str = "INFO",
        overrides: dict[str, Any] | None = None,
        local_poll: float | None = None,
    ) -> BridgeProc:
        """The shipped bridge; `overrides`/`local_poll` run an experiment (see BRIDGE_VARIANT);
        with `BENCH_BRIDGE_PROFILE=FILE` in the environment it can be profiled (BRIDGE_PROFILED;
        CPU figures measured meanwhile are then cProfile's, not the bridge's)."""
        http_port = free_port()
        env: dict[str, str] = {"POD_NAME": f"bench-{http_port}"}
        if overrides or local_poll:
            argv = [sys.executable, "-c", BRIDGE_VARIANT]
            env["BENCH_BRIDGE_OVERRIDES"] = json.dumps(overrides or {})
            env["BENCH_LOCAL_POLL"] = str(local_poll or "")
        elif os.environ.get("BENCH_BRIDGE_PROFILE"):
            argv = [sys.executable, "-c", BRIDGE_PROFILED]
        else:
            argv = [sys.executable, "-m", "devicefabric"]
        argv += ["--log-level", log_level, "bridge", "run"]
        argv += ["--broker", broker.url, "--password-file", str(broker.password_file("bridge"))]
        argv += ["--control-plane", control_plane, "--http", f"{HOST}:{http_port}"]
        argv += ["--client-id", f"bridge_bench-{http_port}"]
        if control_plane == "local":
            argv += ["--state-dir", str(state_dir or self.workdir / "state")]
        if kubeconfig is not None:
            env["KUBECONFIG"] = str(kubeconfig)
        return self.start(BridgeProc([*argv, *args], self.workdir, env, http_port))

    def agent(
        self,
        broker: Broker,
        device: str,
        *,
        heartbeat: int = 15,
        state_dir: Path | None = None,
        log_level: str = "INFO",
    ) -> Proc:
        argv = [sys.executable, "-m", "devicefabric", "--log-level", log_level, "agent", "run"]
        argv += ["--device", device, "--broker", broker.url]
        argv += ["--password-file", str(broker.password_file(device))]
        argv += ["--state-dir", str(state_dir or self.workdir / f"agent-{device}")]
        argv += ["--heartbeat", str(heartbeat)]
        return self.start(Proc(f"agent-{device}", argv, self.workdir))

    def python(self, name: str, code: str, *args: str) -> Proc:
        """`python -c code args...`: floors written as small scripts."""
        return self.start(Proc(name, [sys.executable, "-c", code, *args], self.workdir))
