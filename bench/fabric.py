"""The fabric a benchmark runs: real processes on free loopback ports, always stopped.

`Fabric` is an `ExitStack` over one temporary work directory and one fabric secret. Everything it
starts is a separate process started the way a user would (so its CPU time and RSS can be read
from /proc without the benchmark in the way) and is stopped when the block ends:

- `mosquitto(devices)`: `/usr/sbin/mosquitto -c` the files our generator writes
  (`broker.mosquitto.generate`); `privileged=True` adds one bench-only user, `loadgen`, allowed to
  publish every device's status/heartbeat/report, so one connection can stand in for a fleet;
- `embedded()`: `devicefabric broker run`;
- `bridge(broker, ...)`: `devicefabric bridge run --control-plane local|kube`, with `/metrics`
  and `/devices` read over HTTP;
- `agent(broker, device)`: `devicefabric agent run`.

`Proc` reads utime+stime and VmRSS from /proc. `Watcher` is a bare paho client (the `observer` by
default) whose network thread timestamps every message it receives with `time.monotonic()`.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bench.harness import MOSQUITTO
from devicefabric.broker.mosquitto import generate, hash_password, random_salt
from devicefabric.config.credentials import new_secret, password_for
from devicefabric.config.settings import HostPort
from devicefabric.config.topics import DeviceTopic, Topics, matches

HOST: Final = "127.0.0.1"
TOPICS: Final = Topics()
LOADGEN: Final = "loadgen"  # the bench-only privileged MQTT user (mosquitto only)
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
STOP_BOUND: Final = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.01
) -> Any:
    """Poll `predicate` until it returns something truthy; TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (its threads included, its children not)."""
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of `pid` in seconds: its own code, and the kernel's on its behalf."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def kill_orphan(pid: int, argv0: str = "sleep") -> None:
    """SIGKILL a process an agent killed with -9 left behind (only if it runs `argv0`)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if cmdline.split(b"\0", 1)[0].endswith(argv0.encode()):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


class Proc:
    """One child process with its output in a log file; `stop()` is bounded."""

    def __init__(
        self, name: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = workdir / f"{name}.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("DEVICEFABRIC_", "KUBE"))}
        with self.log_path.open("wb") as log:
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                env={**base, "PYTHONUNBUFFERED": "1", **(env or {})},
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check(self) -> None:
        if not self.alive():
            raise RuntimeError(
                f"{self.name} exited with {self.popen.returncode}:\n{self.log_tail()}"
            )

    def kill(self) -> None:
        """kill -9: no clean shutdown."""
        with contextlib.suppress(ProcessLookupError):
            self.popen.kill()
        self.popen.wait(STOP_BOUND)

    def stop(self) -> None:
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGCONT)  # a frozen process cannot handle SIGTERM
            self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(STOP_BOUND)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(STOP_BOUND)


@dataclass
class Broker:
    kind: str
    proc: Proc
    port: int

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self.port}"


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

    def ready(self) -> bool:
        with contextlib.suppress(OSError, ValueError):
            status, body = self.get("/readyz", timeout=2)
            return status == 200 and bool(json.loads(body).get("ready"))
        return False

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ok() -> bool:
            self.check()
            return self.ready()

        wait_until(ok, timeout, "the bridge to be ready", 0.05)

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


def _add_privileged(dynsec: Path, secret: bytes, topics: Topics) -> None:
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
        {"acltype": "publishClientSend", "topic": topics.all_devices(k), "allow": True}
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

    def password_file(self, user: str) -> Path:
        path = self.workdir / f"{user}.password"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.password(user) + "\n")
        return path

    def start(self, proc: Proc) -> Proc:
        self.callback(proc.stop)
        return proc

    # -- brokers -----------------------------------------------------------------------------------
    def mosquitto(
        self, devices: Iterable[str], *, privileged: bool = False, extra_conf: Iterable[str] = ()
    ) -> Broker:
        if not MOSQUITTO.is_file():
            raise RuntimeError(f"mosquitto not found at {MOSQUITTO} (DEVICEFABRIC_BENCH_MOSQUITTO)")
        port = free_port()
        out = self.workdir / f"mosquitto-{port}"
        written = generate(
            out,
            list(devices),
            self.secret,
            HostPort(HOST, port),
            user=pwd.getpwuid(os.geteuid()).pw_name,
        )
        if privileged:
            _add_privileged(written.dynsec, self.secret, TOPICS)
        extra = list(extra_conf)
        if extra:
            with written.conf.open("a", encoding="utf-8") as conf:
                conf.write("".join(f"{line}\n" for line in extra))
        proc = self.start(Proc(f"mosquitto-{port}", [str(MOSQUITTO), "-c", str(written.conf)], out))

        def listening() -> bool:
            proc.check()
            return port_open(port)

        wait_until(listening, 10, "mosquitto to listen", 0.02)
        return Broker("mosquitto", proc, port)

    def embedded(self) -> Broker:
        port = free_port()
        secret_file = self.workdir / "secret"
        secret_file.write_bytes(self.secret + b"\n")
        secret_file.chmod(0o600)
        argv = [sys.executable, "-m", "devicefabric", "--log-level", "WARNING", "broker", "run"]
        argv += ["--mqtt", f"{HOST}:{port}", "--secret-file", str(secret_file)]
        proc = self.start(Proc(f"embedded-{port}", argv, self.workdir))

        def listening() -> bool:
            proc.check()
            return b"broker listening on" in proc.log_path.read_bytes()

        wait_until(listening, 30, "the embedded broker to listen", 0.05)
        return Broker("embedded", proc, port)

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
        argv += ["--broker", broker.url, "--password-file", str(self.password_file("bridge"))]
        argv += ["--control-plane", control_plane, "--http", f"{HOST}:{http_port}"]
        argv += ["--client-id", f"bridge_bench-{http_port}"]
        if control_plane == "local":
            argv += ["--state-dir", str(state_dir or self.workdir / "state")]
        if kubeconfig is not None:
            env["KUBECONFIG"] = str(kubeconfig)
        argv += list(args)
        proc = BridgeProc(argv, self.workdir, env, http_port)
        self.start(proc)
        return proc

    def agent(
        self,
        broker: Broker,
        device: str,
        *,
        heartbeat: int = 15,
        state_dir: Path | None = None,
        args: Iterable[str] = (),
        log_level: str = "INFO",
    ) -> Proc:
        argv = [sys.executable, "-m", "devicefabric", "--log-level", log_level, "agent", "run"]
        argv += ["--device", device, "--broker", broker.url]
        argv += ["--password-file", str(self.password_file(device))]
        argv += ["--state-dir", str(state_dir or self.workdir / f"agent-{device}")]
        argv += ["--heartbeat", str(heartbeat), *args]
        return self.start(Proc(f"agent-{device}", argv, self.workdir))

    def python(self, name: str, code: str, *args: str) -> Proc:
        """`python -c code args...`: floors written as small scripts."""
        return self.start(Proc(name, [sys.executable, "-c", code, *args], self.workdir))


@dataclass(frozen=True, slots=True)
class Message:
    at: float  # time.monotonic() in the network thread, on arrival
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload) if self.payload else None


class Watcher:
    """A bare paho subscriber with its network loop in a thread, recording every message."""

    def __init__(
        self,
        broker: Broker,
        secret: bytes,
        filters: Iterable[str],
        *,
        user: str = "observer",
        client_id: str | None = None,
        qos: int = 1,
        keep: bool = True,
    ) -> None:
        self.keep = keep
        self.count = 0
        self._cond = threading.Condition()
        self._messages: list[Message] = []
        self._subscribed = threading.Event()
        cid = client_id or f"{user}_bench-{os.getpid()}-{id(self):x}"
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=cid)
        client.username_pw_set(user, password_for(secret, user))
        client.on_message = self._on_message
        client.on_subscribe = lambda *_a: self._subscribed.set()
        self.filters = list(filters)
        client.on_connect = lambda c, *_a: c.subscribe([(f, qos) for f in self.filters])
        client.connect(HOST, broker.port, keepalive=60)
        sock = client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.loop_start()
        self.client = client
        if not self._subscribed.wait(10):
            self.close()
            raise RuntimeError(f"{user} could not subscribe to {self.filters}")

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        at = time.monotonic()
        with self._cond:
            self.count += 1
            if self.keep:
                self._messages.append(Message(at, msg.topic, bytes(msg.payload), bool(msg.retain)))
            self._cond.notify_all()

    def messages(self, topic_filter: str = "#", since: float = 0.0) -> list[Message]:
        with self._cond:
            return [m for m in self._messages if m.at >= since and matches(topic_filter, m.topic)]

    def wait(
        self,
        topic_filter: str,
        predicate: Callable[[Message], bool] = lambda _m: True,
        *,
        since: float = 0.0,
        timeout: float = 10.0,
    ) -> Message:
        """The first message at or after `since` on `topic_filter` passing `predicate`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            seen = 0
            while True:
                for message in self._messages[seen:]:
                    if (
                        message.at >= since
                        and matches(topic_filter, message.topic)
                        and predicate(message)
                    ):
                        return message
                seen = len(self._messages)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no matching message on {topic_filter} in {timeout} s")
                self._cond.wait(left)

    def clear(self) -> None:
        with self._cond:
            self._messages.clear()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- raw MQTT 3.1.1 packets (the load generator: no client library in the way) -----------------
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return len(raw).to_bytes(2, "big") + raw


def connect_packet(
    client_id: str,
    user: str,
    password: str,
    keepalive: int = 600,
    will: tuple[str, bytes] | None = None,
) -> bytes:
    """A clean-session CONNECT; `will` (topic, payload) is registered retained at QoS 1."""
    flags = 0xC2 | (0x2C if will is not None else 0)  # will flag, QoS 1, retain
    body = _string("MQTT") + bytes([4, flags]) + keepalive.to_bytes(2, "big")
    body += _string(client_id)
    if will is not None:
        body += _string(will[0]) + _string(will[1])
    body += _string(user) + _string(password)
    return b"\x10" + _varint(len(body)) + body


def publish_packet(
    topic: str, payload: bytes, *, retain: bool = False, packet_id: int | None = None
) -> bytes:
    """A PUBLISH: QoS 0 without `packet_id`, QoS 1 with it."""
    qos = 0 if packet_id is None else 1
    body = _string(topic) + (b"" if packet_id is None else packet_id.to_bytes(2, "big")) + payload
    return bytes([0x30 | qos << 1 | int(retain)]) + _varint(len(body)) + body


def subscribe_packet(packet_id: int, topic_filter: str, qos: int = 1) -> bytes:
    body = packet_id.to_bytes(2, "big") + _string(topic_filter) + bytes([qos])
    return b"\x82" + _varint(len(body)) + body


def publish_size(topic: str, payload: bytes, qos: int = 0) -> int:
    """Bytes of the MQTT PUBLISH on the wire: fixed header, topic, packet id (QoS>0), payload."""
    body = 2 + len(topic.encode()) + (2 if qos else 0) + len(payload)
    return 1 + len(_varint(body)) + body


class RawPublisher:
    """One MQTT connection that writes pre-encoded QoS 0 packets; what it receives is discarded."""

    def __init__(self, broker: Broker, secret: bytes, user: str = LOADGEN) -> None:
        self.sock = socket.create_connection((HOST, broker.port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client_id = f"{user}_bench-{os.getpid()}" if user == LOADGEN else user
        self.sock.sendall(connect_packet(client_id, user, password_for(secret, user)))
        connack = self.sock.recv(4)
        if connack != b"\x20\x02\x00\x00":
            raise RuntimeError(f"{user}: CONNACK {connack!r}")
        self.sock.settimeout(None)
        self._reader = threading.Thread(target=self._drain, name="raw-drain", daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        with contextlib.suppress(OSError):
            while self.sock.recv(65536):
                pass

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"\xe0\x00")  # DISCONNECT
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


@contextlib.contextmanager
def watching(
    broker: Broker, secret: bytes, filters: Iterable[str], **kwargs: Any
) -> Iterator[Watcher]:
    watcher = Watcher(broker, secret, filters, **kwargs)
    try:
        yield watcher
    finally:
        watcher.close()


_SS_COUNTER: Final = re.compile(r"\b(bytes_sent|bytes_received|data_segs_out|segs_out):(\d+)")


def tcp_counters(pid: int, port: int) -> dict[str, int]:
    """Kernel TCP counters (`ss -tinp`) of `pid`'s connection to `port` on loopback."""
    out = subprocess.run(
        ["ss", "-tinpH", "dst", f"{HOST}:{port}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if f"pid={pid}," in line and i + 1 < len(lines):
            return {k: int(v) for k, v in _SS_COUNTER.findall(lines[i + 1])}
    return {}
