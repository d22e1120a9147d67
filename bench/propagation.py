"""Benchmark 1, desired propagation: resource change -> desired -> process running -> status written.

Setup per control plane (`--planes local,kube`): mosquitto from our generated config, the bridge
(`devicefabric bridge run --control-plane local|kube`), one agent (`devicefabric agent run`,
heartbeat 15 s), and an `observer` subscriber that timestamps every fabric message on arrival.

Each of `--changes` samples changes the command of one DeviceProcess (a new generation: the agent
stops the old `sleep` and starts the new one) and records, from the moment the change was
written to the control plane (`LocalStore.apply`, what `devicefabric apply` does; or a merge
patch of the spec to the API server):

- stored: the write to the control plane returned (local: files fsynced; kube: the PATCH answer);
- desired: the new `desired` document reaches the observer;
- running: the agent's report shows the new generation `Running`, and its pid exists and runs
  the new command (checked in /proc on arrival);
- status: the stored status says `Running` with `observedGeneration` = the new generation (local:
  the store's journal tailed every 1 ms; kube: a watch on the fake API server).

It also counts the status writes and Events the changes caused (from the first change until
`QUIET_S` without a write, past the bridge's settle): exactly one status write per spec change.

The floor, measured in the same run and interleaved with the samples: a bare paho publish
(QoS 1, a device's own topic) -> receive by the same observer on the same broker, plus a bare
fork/exec of the same command (`subprocess.Popen`, which returns once the exec succeeded).
The path under test has at least two broker hops (desired, report), a stop, a fork/exec and a
control-plane write, so "within 3x of the floor" leaves room for one extra hop and the writes.

Experiments (skipped with `--no-experiments`) repeat the measurement with one delay removed at a
time, to show where the time goes: A sets the bridge's per-key minimum write interval (1 s) to 0;
B is A plus `set_tcp_nodelay true` in mosquitto.conf; C (local) is B plus a 5 ms journal poll
instead of 100 ms. They run the shipped CLI with that setting replaced (`fabric.BRIDGE_VARIANT`).

The design this replaces polled every 15 s: a change waited for the next poll, uniformly 0-15 s,
i.e. 7.5 s on average and 14.85 s at p99 (analytical, stated as such).

Usage: `python -m bench.propagation [--quick] [--changes N] [--planes local,kube]`.
"""

from __future__ import annotations

import argparse
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bench.clients import Message, Watcher, watching
from bench.fabric import HOST, TOPICS, Broker, Fabric
from bench.harness import Defaults, Result, main, ms, percentile, ratio
from bench.planes import Plane, running_at
from tests.support.waiting import wait_for

DEVICE: Final = "bench-dev"
FLOOR_DEVICE: Final = "bench-floor"
NAME: Final = "worker"
POLL_S: Final = 15.0
P50_FACTOR: Final = 3.0
P99_GOAL_S: Final = 0.05  # goal: p99 change -> status Running under 50 ms


def command(i: int) -> list[str]:
    return ["/bin/sleep", str(100_000 + i)]


def _report_running(generation: int, name: str = NAME) -> Callable[[Message], bool]:
    def check(message: Message) -> bool:
        doc = message.json() or {}
        entry = doc.get("processes", {}).get(f"bench/{name}", {})
        return bool(entry.get("generation") == generation and entry.get("phase") == "Running")

    return check


def _desired_at(generation: int, name: str = NAME) -> Callable[[Message], bool]:
    def check(message: Message) -> bool:
        doc = message.json() or {}
        return any(
            p.get("name") == name and p.get("generation") == generation
            for p in doc.get("processes", [])
        )

    return check


def _pid_runs(doc: dict[str, Any], argv: list[str], name: str = NAME) -> bool:
    pid = doc.get("processes", {}).get(f"bench/{name}", {}).get("pid")
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, TypeError):
        return False
    return cmdline.split(b"\0")[:-1] == [a.encode() for a in argv]


class Floor:
    """The two floors: one bare paho hop and one bare fork/exec, sampled on demand."""

    def __init__(self, broker: Broker, fab: Fabric, observer: Watcher) -> None:
        self.observer = observer
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=FLOOR_DEVICE)
        client.username_pw_set(FLOOR_DEVICE, fab.password(FLOOR_DEVICE))
        client.connect(HOST, broker.port)
        sock = client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as the agent's
        client.loop_start()
        self.client = client
        self.topic = TOPICS.report(FLOOR_DEVICE)
        self.hops: list[float] = []
        self.execs: list[float] = []
        self._n = 0

    def sample(self) -> None:
        self._n += 1
        marker = f"floor-{self._n}".encode()
        t0 = time.monotonic()
        self.client.publish(self.topic, marker, qos=1)
        got = self.observer.inbox.wait_for(self.topic, marker, 5, since=t0)
        self.hops.append(got.at - t0)
        argv = command(900_000 + self._n)
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, start_new_session=True)
        self.execs.append(time.monotonic() - t0)
        proc.kill()
        proc.wait()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@dataclass(frozen=True)
class Variant:
    """A control plane, and for an experiment the bridge settings it changes."""

    label: str
    plane: str
    overrides: dict[str, Any] | None = None
    local_poll: float | None = None
    broker_conf: tuple[str, ...] = ()

    @property
    def experiment(self) -> bool:
        return bool(self.overrides or self.local_poll or self.broker_conf)


NO_INTERVAL: Final = {"min_write_interval": 0.0}
QUIET_S: Final = 0.5  # s without a status write: past the bridge's settle (0.05 s)
NODELAY: Final = ("set_tcp_nodelay true",)


def variants(planes: list[str], experiments: bool) -> list[Variant]:
    """The shipped set-up per plane, then experiments that remove one delay at a time."""
    found = [Variant(plane, plane) for plane in planes]
    if not experiments:
        return found
    for plane in planes:
        found.append(Variant(f"{plane} exp. A: min write interval 0", plane, NO_INTERVAL))
        found.append(
            Variant(
                f"{plane} exp. B: A + mosquitto set_tcp_nodelay",
                plane,
                NO_INTERVAL,
                broker_conf=NODELAY,
            )
        )
    if "local" in planes:
        found.append(
            Variant("local exp. C: B + 5 ms journal poll", "local", NO_INTERVAL, 0.005, NODELAY)
        )
    return found


def _one_plane(variant: Variant, args: argparse.Namespace) -> dict[str, Any]:
    kind = variant.plane
    stages: dict[str, list[float]] = {"applied": [], "desired": [], "running": [], "status": []}
    pid_ok = 0
    with Fabric(f"bench-propagation-{kind}-") as fab:
        broker = fab.mosquitto([DEVICE, FLOOR_DEVICE], extra_conf=variant.broker_conf)
        plane: Plane = fab.plane(broker, kind)
        obs = fab.enter_context(watching(broker, fab.secret, [TOPICS.everything()]))
        bridge = fab.bridge(
            broker,
            **plane.bridge_args(),
            overrides=variant.overrides,
            local_poll=variant.local_poll,
        )
        bridge.wait_ready()
        fab.agent(broker, DEVICE, heartbeat=15)
        floor = Floor(broker, fab, obs)
        fab.callback(floor.close)
        # Changes rotate over `--resources` DeviceProcesses of the device, as operators' edits do;
        # one resource edited many times a second is the flapping case the bridge's per-key
        # minimum write interval bounds on purpose (`--resources 1` measures that bound).
        names = [NAME] + [f"{NAME}-{j}" for j in range(1, args.resources)]
        for name in names:
            generation = plane.apply(name, DEVICE, command(0))
            plane.wait_status(name, running_at(generation), since=0, timeout=60)
        wait_for(lambda: plane.last_write_age() >= QUIET_S, 30, what="the initial statuses written")
        before = plane.writes()
        for i in range(1, args.changes + 1):
            name = names[i % len(names)]
            argv = command(i)
            t0 = time.monotonic()
            generation = plane.apply(name, DEVICE, argv)
            applied = time.monotonic()
            desired = obs.inbox.wait_for(
                TOPICS.desired(DEVICE), _desired_at(generation, name), since=t0
            )
            report = obs.inbox.wait_for(
                TOPICS.report(DEVICE), _report_running(generation, name), since=t0
            )
            pid_ok += _pid_runs(report.json(), argv, name)
            written = plane.wait_status(name, running_at(generation), since=t0, timeout=10)
            stages["applied"].append(applied - t0)
            stages["desired"].append(desired.at - t0)
            stages["running"].append(report.at - t0)
            stages["status"].append(written - t0)
            floor.sample()
            time.sleep(random.uniform(0.5, 1.5) * args.pause)  # no phase lock with a poll
        # Past the settle, so that a held-back intermediate write would be counted too.
        wait_for(lambda: plane.last_write_age() >= QUIET_S, 30, what="no status write for a while")
        bridge.check()
        after = plane.writes()
        writes = (after[0] - before[0], after[1] - before[1])
    return {
        "stages": stages,
        "floor_hop": floor.hops,
        "floor_exec": floor.execs,
        "pid_ok": pid_ok,
        "writes": writes,
    }


DEFAULTS: Final[Defaults] = {"changes": (30, 15)}


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--changes", type=int, help="changes per control plane")
    p.add_argument("--planes", default="local,kube", help="control planes (local,kube)")
    p.add_argument("--pause", type=float, default=0.1, help="mean seconds between samples")
    p.add_argument("--resources", type=int, default=8, help="DeviceProcesses changes rotate over")
    p.add_argument(
        "--no-experiments",
        dest="experiments",
        action="store_false",
        help="skip the variants that change a bridge setting (to show where the time goes)",
    )


def run(args: argparse.Namespace, result: Result) -> Result:
    for variant in variants(args.planes.split(","), args.experiments):
        kind = variant.label
        print(f"  {kind}: {args.changes} changes", flush=True)
        data = _one_plane(variant, args)
        for stage, samples in data["stages"].items():
            result.series(f"{kind}_{stage}_s", samples)
        hop = result.series(f"{kind}_floor_mqtt_hop_s", data["floor_hop"])
        exe = result.series(f"{kind}_floor_fork_exec_s", data["floor_exec"])
        floor_p50 = float(hop["median"]) + float(exe["median"])
        floor_p99 = float(hop["p99"]) + float(exe["p99"])
        result.metrics[f"{kind}_floor_s"] = {"median": floor_p50, "p99": floor_p99}
        result.metrics[f"{kind}_pid_checked"] = f"{data['pid_ok']}/{args.changes}"
        status = data["stages"]["status"]
        running = data["stages"]["running"]
        desired = data["stages"]["desired"]
        p50, p99 = percentile(status, 50), percentile(status, 99)
        stage_note = (
            f"p50 change stored {ms(percentile(data['stages']['applied'], 50))}, "
            f"->desired {ms(percentile(desired, 50))}, ->running "
            f"{ms(percentile(running, 50))}, ->status {ms(p50)}; pid checked "
            f"{data['pid_ok']}/{args.changes}"
        )
        if variant.experiment:
            result.row(
                f"{kind}: change -> status Running, p50 / p99",
                f"{ms(p50)} / {ms(p99)}",
                floor=ms(floor_p50),
                ratio=ratio(p50, floor_p50),
                note=f"experiment, not the shipped setting; {stage_note}",
            )
            continue
        result.versus(
            f"{kind}: change -> status Running, p50",
            p50,
            floor_p50,
            ms,
            goal=f"<= {P50_FACTOR:.0f}x floor",
            met=p50 <= P50_FACTOR * floor_p50,
            note=f"floor = MQTT hop {ms(float(hop['median']))} + fork/exec "
            f"{ms(float(exe['median']))}; {stage_note}",
        )
        result.versus(
            f"{kind}: change -> status Running, p99",
            p99,
            floor_p99,
            ms,
            goal=f"< {P99_GOAL_S * 1000:.0f} ms",
            met=p99 < P99_GOAL_S,
        )
        status_writes, events = data["writes"]
        result.row(
            f"{kind}: status writes per spec change",
            f"{status_writes / args.changes:.2f}",
            floor="1",
            ratio=ratio(status_writes / args.changes, 1.0),
            goal="exactly 1",
            met=status_writes == args.changes and events == 0,
            note=f"{status_writes} status writes and {events} Events for {args.changes} changes, "
            f"counted until {QUIET_S:g} s without a write",
        )
        result.versus(
            f"{kind}: change -> process running (report), p50",
            percentile(running, 50),
            floor_p50,
            ms,
            note=f"p99 {ms(percentile(running, 99))}",
        )
        result.row(
            f"{kind}: vs 15 s polling agent (analytical)",
            ms(p50),
            floor=f"{POLL_S / 2:.1f} s (p99 {POLL_S * 0.99:.2f} s)",
            ratio=ratio(p50, POLL_S / 2),
            note="replaced design: a change waits for the next poll, uniform 0-15 s",
        )
    return result.finish()


if __name__ == "__main__":
    main(sys.modules[__name__])
