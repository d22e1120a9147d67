"""Benchmark 3, write amplification: control-plane writes per heartbeat and per transition.

Setup: the Kubernetes fake (or `--plane local`), mosquitto from our generated config with the
bench-only `loadgen` user, and the bridge (`--write-qps/--write-burst` raised to 500 so the
benchmark does not wait on the rate limit; counts do not depend on it). `--devices` N simulated
devices x `--resources` M DeviceProcesses each. One raw MQTT connection speaks for every device
with exactly the messages an agent sends (retained birth and report, heartbeats, and the
`offline`/`lost` status a broker publishes as a will). Writes are counted at the control plane
(the fake's request log: `patch .../status`, `create events`; local: the store's journal and
events file), never from the bridge's own metrics.

Phases (each ends when every status shows the expected state and no write came for 1.5 s):
1. connect: births and first reports of all N devices (for context: what a fleet start costs);
2. heartbeats: every device beats every `--beat` s for `--seconds` s: writes per heartbeat
   (floor 0) and the bridge's other API requests in the window;
3. transitions: `--transitions` K devices lose their connection (will), then come back (birth
   with a new session + the same report): 2K device transitions, 2K x M resource transitions;
   writes per resource transition (floor 1 status patch + 1 Event).

The replaced design is counted analytically for the same scenario (it cannot be run): a List per
report (one report per device per 15 s), and a status patch plus an Event for every stale resource
on every staleness tick (the condition message carried the age), assuming a 15 s tick.

Usage: `python -m bench.writes [--quick] [--devices N] [--resources M] [--seconds T] ...`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any, Final

from bench.clients import RawPublisher
from bench.fabric import TOPICS, Fabric
from bench.harness import Defaults, Result, count, main, ratio
from bench.planes import NAMESPACE, KubePlane, Plane, condition
from tests.support.packets import publish_packet
from tests.support.waiting import wait_for

HEARTBEAT_S: Final = 15  # what the births announce (the beats below come faster: counts only)
OLD_TICK_S: Final = 15.0
OUTAGE_S: Final = 600.0  # the outage the analytical comparison assumes per disconnect


def _j(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


class Fleet:
    """N simulated devices with M resources each, spoken for by one raw connection."""

    def __init__(self, publisher: RawPublisher, devices: int, resources: int) -> None:
        self.publisher = publisher
        self.names = [f"wa-{i:04d}" for i in range(devices)]
        self.resources = resources
        self.sessions = dict.fromkeys(self.names, 0)
        self.seq = 0

    def resource_names(self, device: str) -> list[str]:
        return [f"{device}-p{j}" for j in range(self.resources)]

    def session(self, device: str) -> str:
        return f"{device}.{self.sessions[device]}"

    def born(self, devices: list[str]) -> None:
        """New sessions: birth + report (what an agent sends on every connect)."""
        out = []
        for device in devices:
            self.sessions[device] += 1
            self.seq += 1
            birth = {
                "state": "online",
                "session": self.session(device),
                "heartbeat_s": HEARTBEAT_S,
                "agent": "bench",
            }
            processes = {
                f"{NAMESPACE}/{name}": {
                    "generation": 1,
                    "phase": "Running",
                    "pid": 1000 + j,
                    "restarts": 0,
                }
                for j, name in enumerate(self.resource_names(device))
            }
            report = {
                "session": self.session(device),
                "seq": self.seq,
                "revision": "bench",
                "processes": processes,
            }
            out.append(publish_packet(TOPICS.status(device), _j(birth), retain=True))
            out.append(publish_packet(TOPICS.report(device), _j(report), retain=True))
        self.publisher.send(b"".join(out))

    def lost(self, devices: list[str]) -> None:
        """What the broker publishes as each device's will."""
        self.publisher.send(
            b"".join(
                publish_packet(
                    TOPICS.status(d),
                    _j({"state": "offline", "session": self.session(d), "reason": "lost"}),
                    retain=True,
                )
                for d in devices
            )
        )

    def beat(self) -> int:
        self.seq += 1
        self.publisher.send(
            b"".join(
                publish_packet(
                    TOPICS.heartbeat(d), _j({"session": self.session(d), "seq": self.seq})
                )
                for d in self.names
            )
        )
        return len(self.names)


def _settle(plane: Plane, fleet: Fleet, devices: list[str], want: str, what: str) -> None:
    """Every resource of `devices` shows AgentConnected=`want`, and no write for 1.5 s."""

    def done() -> bool:
        for device in devices:
            for name in fleet.resource_names(device):
                status = plane.status(name)
                if condition(status, "AgentConnected").get("status") != want:
                    return False
                if want == "True" and status.get("phase") != "Running":
                    return False
        return plane.last_write_age() >= 1.5

    wait_for(done, 120, 0.2, what)


DEFAULTS: Final[Defaults] = {"devices": (100, 30), "seconds": (20.0, 8.0), "transitions": (20, 10)}


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", type=int, help="simulated devices N")
    p.add_argument("--resources", type=int, default=3, help="DeviceProcesses per device M")
    p.add_argument("--seconds", type=float, help="heartbeat window T")
    p.add_argument("--beat", type=float, default=0.5, help="seconds between heartbeats")
    p.add_argument("--transitions", type=int, help="devices lost and back K (at most N)")
    p.add_argument("--plane", default="kube", choices=("kube", "local"), help="control plane")


def run(args: argparse.Namespace, result: Result) -> Result:
    kind = args.plane
    n, m, k = args.devices, args.resources, min(args.transitions, args.devices)
    phases: dict[str, dict[str, Any]] = {}
    with Fabric("bench-writes-") as fab:
        broker = fab.mosquitto([], privileged=True)
        plane = fab.plane(broker, kind)
        publisher = RawPublisher(broker, fab.secret)
        fab.callback(publisher.close)
        fleet = Fleet(publisher, n, m)
        for device in fleet.names:
            for name in fleet.resource_names(device):
                plane.apply(name, device, ["/bin/sleep", "100000"])
        bridge = fab.bridge(
            broker,
            **plane.bridge_args(),
            args=["--write-qps", "500", "--write-burst", "500"],
            log_level="WARNING",
        )
        bridge.wait_ready(timeout=60)
        wait_for(lambda: plane.last_write_age() >= 1.5, 60, what="the bridge's first writes")
        w0 = plane.writes()

        print(f"  connect: {n} devices x {m} resources", flush=True)
        fleet.born(fleet.names)
        _settle(plane, fleet, fleet.names, "True", "every device connected and Running")
        w1 = plane.writes()
        phases["connect"] = {"status": w1[0] - w0[0], "events": w1[1] - w0[1]}

        print(f"  heartbeats: every {args.beat} s for {args.seconds} s", flush=True)
        ingested0 = bridge.heartbeats()
        t0 = time.monotonic()
        beats = 0
        while time.monotonic() - t0 < args.seconds:
            beats += fleet.beat()
            time.sleep(args.beat)
        time.sleep(1.0)
        t1 = time.monotonic()
        w2 = plane.writes()
        ingested = bridge.heartbeats() - ingested0
        requests = plane.request_counts(t0, t1) if isinstance(plane, KubePlane) else {}
        phases["heartbeats"] = {
            "status": w2[0] - w1[0],
            "events": w2[1] - w1[1],
            "heartbeats_sent": beats,
            "heartbeats_ingested": ingested,
            "bridge_requests": requests,
        }

        down = fleet.names[:k]
        print(f"  transitions: {k} devices lost, then back", flush=True)
        d2 = plane.device_writes()
        fleet.lost(down)
        _settle(plane, fleet, down, "False", "the lost devices written ConnectionLost")
        w3 = plane.writes()
        fleet.born(down)
        _settle(plane, fleet, down, "True", "the devices back and written Connected")
        w4 = plane.writes()
        wait_for(lambda: plane.device_writes() - d2 >= 2 * k, 30, what="the Devices both ways")
        time.sleep(1.5)  # a duplicate Device write, held by the per-key interval, lands too
        phases["devices"] = {"transitions": plane.device_writes() - d2}
        phases["lost"] = {"status": w3[0] - w2[0], "events": w3[1] - w2[1]}
        phases["back"] = {"status": w4[0] - w3[0], "events": w4[1] - w3[1]}
        bridge.check()
    result.metrics["phases"] = phases
    result.metrics["plane"] = kind
    hb = phases["heartbeats"]
    per_beat = (hb["status"] + hb["events"]) / max(1, hb["heartbeats_sent"])
    transitions = 2 * k * m
    t_status = phases["lost"]["status"] + phases["back"]["status"]
    t_events = phases["lost"]["events"] + phases["back"]["events"]
    per_transition = (t_status + t_events) / transitions if transitions else math.nan
    other = {
        key: value
        for key, value in hb["bridge_requests"].items()
        if not key.startswith(("watch", "update leases", "get leases"))
    }
    result.row(
        f"{kind}: writes per heartbeat ({hb['heartbeats_sent']:,} heartbeats, {n}x{m})",
        f"{per_beat:.3g}",
        floor="0",
        goal="0",
        met=hb["status"] + hb["events"] == 0,
        note=f"{hb['status']} status + {hb['events']} Events in the window; bridge ingested "
        f"{hb['heartbeats_ingested']:.0f}/{hb['heartbeats_sent']}; other bridge requests "
        f"(besides the watch and the Lease): {sum(other.values())}",
    )
    result.row(
        f"{kind}: writes per resource transition ({transitions} = 2 x {k} devices x {m})",
        f"{per_transition:.3g}",
        floor="2 (1 status + 1 Event)",
        ratio=ratio(per_transition, 2.0),
        note=f"{t_status} status patches + {t_events} Events; fleet connect: "
        f"{phases['connect']['status']} + {phases['connect']['events']} for {n * m} resources",
    )
    device_writes = phases["devices"]["transitions"]
    result.row(
        f"{kind}: Device writes per device transition ({2 * k} = 2 x {k} devices)",
        f"{device_writes / (2 * k):.3g}",
        floor="1 (its status)",
        ratio=ratio(device_writes / (2 * k), 1.0),
        note=f"{device_writes} Device status writes for {k} devices lost and back",
    )
    # the replaced design, counted analytically for the same scenario
    old_lists = n * args.seconds / OLD_TICK_S  # the same wall time at one report per 15 s
    ticks = math.ceil(OUTAGE_S / OLD_TICK_S)
    old_outage = k * m * 2 * ticks  # patch + Event per stale resource per tick
    new_outage = t_status + t_events
    result.row(
        f"replaced design (analytical): API calls per heartbeat interval, {n} devices",
        "0",
        floor=f"{count(n)} Lists",
        note="old: a List per report, one report per device per 15 s; new: heartbeats never "
        "reach the API server",
    )
    result.row(
        f"replaced design (analytical): writes for {k} devices x {m} down {OUTAGE_S / 60:.0f} min",
        f"{new_outage}",
        floor=f"{count(old_outage)}",
        ratio=ratio(new_outage, old_outage),
        note=f"old: patch + Event per stale resource per {OLD_TICK_S:.0f} s tick ({ticks} "
        "ticks); new: measured above (down and back), whatever the outage lasts",
    )
    result.metrics["analytical"] = {
        "old_lists_in_heartbeat_window": old_lists,
        "old_writes_outage": old_outage,
        "outage_s": OUTAGE_S,
        "old_tick_s": OLD_TICK_S,
    }
    return result.finish()


if __name__ == "__main__":
    main(sys.modules[__name__])
