"""Benchmark 2, disconnect detection: agent killed -> `AgentConnected=False` written.

Setup per control plane (`--planes local,kube`): mosquitto from our generated config, the bridge,
one DeviceProcess on device `bench-dev`, and an `observer` subscriber timestamping every message.

1. kill -9 (`--trials` times): start `devicefabric agent run` (heartbeat 15 s), wait until its
   status says `AgentConnected=True` and `Running`, wait `--settle` s (past the bridge's per-key
   minimum write interval, so that is not what is measured), then SIGKILL it. Measured from the
   kill: the will (`offline`, reason `lost`) arriving at the observer -- the floor: the broker
   cannot say it sooner -- and the stored status turning `AgentConnected=False/ConnectionLost`.
   The figure that matters is status minus will: what the bridge adds.
2. Half-open (`--halfopen` times): an agent with a `--halfopen-heartbeat` s heartbeat (its MQTT
   keepalive is max(5, 2 x heartbeat), so the broker fires its will 1.5 x keepalive after the
   last packet) is frozen with SIGSTOP: its socket stays open and nothing is sent. Measured from
   the freeze: `AgentConnected=False` written, with its reason (`HeartbeatTimeout`, from the
   bridge's 3 x heartbeat deadline, or `ConnectionLost`, from the keepalive will), compared with
   both bounds.

Usage: `python -m bench.detection [--quick] [--trials N] [--halfopen N] [--planes local,kube]`.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from typing import Any, Final

from bench.clients import Message, Watcher, watching
from bench.fabric import TOPICS, Broker, Fabric, kill_orphan
from bench.harness import Defaults, Result, main, ms, percentile, ratio
from bench.planes import Plane, condition, connected, running_at
from tests.support.processes import AgentProcess
from tests.support.waiting import wait_for

DEVICE: Final = "bench-dev"
HALFOPEN_DEVICE: Final = "bench-halfopen"  # its own device: its heartbeat differs
NAME: Final = "worker"
HALFOPEN_NAME: Final = "frozen"
GOAL_S: Final = 1.0
STALE_MULTIPLIER: Final = 3.0


def _offline(reason: str) -> Callable[[Message], bool]:
    def check(message: Message) -> bool:
        doc = message.json() or {}
        return bool(doc.get("state") == "offline" and doc.get("reason") == reason)

    return check


def _pid_of(obs: Watcher, device: str = DEVICE, name: str = NAME) -> int | None:
    reports = obs.inbox.messages(TOPICS.report(device))
    if not reports:
        return None
    entry = (reports[-1].json() or {}).get("processes", {}).get(f"bench/{name}", {})
    pid = entry.get("pid")
    return pid if isinstance(pid, int) else None


def _start_agent(
    fab: Fabric, broker: Broker, plane: Plane, *, device: str, heartbeat: int, settle: float
) -> AgentProcess:
    """A fresh agent, connected and running, with no status write for `settle` seconds."""
    name = NAME if device == DEVICE else HALFOPEN_NAME
    t0 = time.monotonic()
    agent = fab.agent(broker, device, heartbeat=heartbeat, state_dir=fab.workdir / device)
    plane.wait_status(name, connected("True"), since=t0, timeout=30)
    plane.wait_status(name, running_at(1), since=0, timeout=30)
    # past the per-key minimum write interval of the last write, so that is not measured
    wait_for(lambda: plane.last_write_age() >= settle, 30, what="no status write for a while")
    return agent


def _kill_trials(
    fab: Fabric, broker: Broker, plane: Plane, obs: Watcher, args: argparse.Namespace
) -> dict[str, list[float]]:
    will, written = [], []
    for _ in range(args.trials):
        agent = _start_agent(fab, broker, plane, device=DEVICE, heartbeat=15, settle=args.settle)
        time.sleep(random.uniform(0, 0.3))
        pid = _pid_of(obs)
        t0 = time.monotonic()
        agent.kill()
        got = obs.inbox.wait_for(TOPICS.status(DEVICE), _offline("lost"), 10, since=t0)
        at = plane.wait_status(NAME, connected("False", "ConnectionLost"), since=t0, timeout=30)
        will.append(got.at - t0)
        written.append(at - t0)
        if pid is not None:
            kill_orphan(pid)
    return {"will": will, "written": written}


def _halfopen_trials(
    fab: Fabric, broker: Broker, plane: Plane, obs: Watcher, args: argparse.Namespace
) -> list[dict[str, Any]]:
    out = []
    heartbeat = args.halfopen_heartbeat
    for _ in range(args.halfopen):
        agent = _start_agent(
            fab, broker, plane, device=HALFOPEN_DEVICE, heartbeat=heartbeat, settle=args.settle
        )
        time.sleep(random.uniform(0, heartbeat))  # any phase of the heartbeat
        pid = _pid_of(obs, HALFOPEN_DEVICE, HALFOPEN_NAME)
        t0 = time.monotonic()
        agent.freeze()
        at = plane.wait_status(HALFOPEN_NAME, connected("False"), since=t0, timeout=60)
        cond = condition(plane.status(HALFOPEN_NAME), "AgentConnected")
        try:
            got = obs.inbox.wait_for(TOPICS.status(HALFOPEN_DEVICE), _offline("lost"), 15, since=t0)
            will = got.at - t0
        except AssertionError:  # the kit's inbox: no such message in time
            will = float("nan")
        agent.kill()
        if pid is not None:
            kill_orphan(pid)
        out.append(
            {
                "written_s": at - t0,
                "reason": cond.get("reason"),
                "will_s": will,
                "heartbeat": heartbeat,
            }
        )
    return out


def _one_plane(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    with Fabric(f"bench-detection-{kind}-") as fab:
        broker = fab.mosquitto([DEVICE, HALFOPEN_DEVICE])
        plane = fab.plane(broker, kind)
        obs = fab.enter_context(watching(broker, fab.secret, [TOPICS.everything()]))
        bridge = fab.bridge(broker, **plane.bridge_args())
        bridge.wait_ready()
        plane.apply(NAME, DEVICE, ["/bin/sleep", "100000"])
        plane.apply(HALFOPEN_NAME, HALFOPEN_DEVICE, ["/bin/sleep", "100001"])
        kills = _kill_trials(fab, broker, plane, obs, args)
        halfopen = (
            _halfopen_trials(fab, broker, plane, obs, args) if kind in args.halfopen_on else []
        )
        bridge.check()
    return {"kill": kills, "halfopen": halfopen}


DEFAULTS: Final[Defaults] = {"trials": (10, 5), "halfopen": (2, 1)}


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trials", type=int, help="kill -9 trials per control plane")
    p.add_argument("--halfopen", type=int, help="half-open trials")
    p.add_argument("--halfopen-heartbeat", type=int, default=2, help="their heartbeat (s)")
    p.add_argument(
        "--settle", type=float, default=1.2, help="s without a status write before the kill"
    )
    p.add_argument("--planes", default="local,kube", help="control planes (local,kube)")


def run(args: argparse.Namespace, result: Result) -> Result:
    planes = args.planes.split(",")
    args.halfopen_on = planes[-1:]  # the half-open case once, on the last plane
    for kind in planes:
        print(f"  {kind}: {args.trials} kill -9, {args.halfopen if kind in args.halfopen_on else 0} "
              "half-open", flush=True)  # fmt: skip
        data = _one_plane(kind, args)
        will, written = data["kill"]["will"], data["kill"]["written"]
        result.series(f"{kind}_will_s", will)
        result.series(f"{kind}_written_s", written)
        lag = [w - v for w, v in zip(written, will, strict=True)]
        result.series(f"{kind}_written_after_will_s", lag)
        p50, p99 = percentile(written, 50), percentile(written, 99)
        w50 = percentile(will, 50)
        result.versus(
            f"{kind}: kill -9 -> AgentConnected=False written, p50",
            p50,
            w50,
            ms,
            note=f"floor: the will at a bare subscriber; p99 {ms(p99)} vs will p99 "
            f"{ms(percentile(will, 99))}",
        )
        result.row(
            f"{kind}: status written after the will, p99",
            ms(percentile(lag, 99)),
            goal=f"< {GOAL_S:.0f} s",
            met=percentile(lag, 99) < GOAL_S,
            note=f"median {ms(percentile(lag, 50))}",
        )
        for trial in data["halfopen"]:
            result.metrics.setdefault(f"{kind}_halfopen", []).append(trial)
        if data["halfopen"]:
            hb = args.halfopen_heartbeat
            keepalive = max(5, 2 * hb)
            stale = STALE_MULTIPLIER * hb
            times = [t["written_s"] for t in data["halfopen"]]
            reasons = sorted({str(t["reason"]) for t in data["halfopen"]})
            result.series(f"{kind}_halfopen_written_s", times)
            result.row(
                f"{kind}: half-open (SIGSTOP) -> False written, heartbeat {hb} s",
                f"{percentile(times, 50):.2f} s",
                floor=f"{1.5 * keepalive:.1f} s (will)",
                ratio=ratio(percentile(times, 50), 1.5 * keepalive),
                note=f"reason {'/'.join(reasons)}; bounds: stale {stale:.0f} s after the last "
                f"heartbeat, will 1.5 x keepalive {keepalive} s after the last packet; "
                f"{len(times)} trial(s), max {max(times):.2f} s",
            )
    return result.finish()


if __name__ == "__main__":
    main(sys.modules[__name__])
