"""Benchmark 5, agent footprint: RSS and idle CPU vs a bare paho process; bytes per message.

Setup: mosquitto from our generated config; `devicefabric agent run --heartbeat 15` as device
`bench-dev`, running one `sleep` process it was told to run (a retained `desired` published as
the `bridge` user: no bridge needed); and the floor, a bare `python -c` that imports paho-mqtt and
holds one connection as device `bench-floor` with the agent's keepalive (2 x heartbeat), started
at the same time. Before it starts, the bytecode of the agent's packages is compiled
(`compile_agent`), as on a device: pip compiles a wheel's modules at install and the image runs
`compileall`. (An editable install run with PYTHONDONTWRITEBYTECODE, as in the development
container, compiles every module of ours from source at each start instead, which left
0.43 MiB more in the idle agent's heap than loading the same code from .pyc (2026-12-05); paho
and the standard library, which the floor loads, are compiled at install in both cases.)

1. Idle window (`--idle` s, default 60; quick 30): both processes' RSS (VmRSS, max of samples),
   CPU (utime+stime from /proc over the window) and the TCP payload bytes each sent (kernel
   counters from `ss -tinp`), in the same window (`idle`, one thread per process).
2. Bytes on the wire: a heartbeat is the MQTT PUBLISH built from the real topic and payload
   (fixed header + topic + payload, QoS 0); a report is the agent's real report as an observer
   received it (+ packet id, QoS 1; the broker's PUBACK is 4 more bytes the other way); and
   measured: the agent's TCP bytes sent over `--changes` desired changes divided by the reports
   it published (each change restarts the process: a report per phase change).

Usage: `python -m bench.footprint [--quick] [--idle S] [--changes N]`.
"""

from __future__ import annotations

import argparse
import compileall
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import devicefabric
from bench.clients import Message, tcp_counters, watching
from bench.fabric import TOPICS, Fabric
from bench.harness import Defaults, Result, count, main, ratio
from devicefabric.config.names import BRIDGE_USER
from devicefabric.config.resource import DeviceProcessSpec
from devicefabric.config.wire import DesiredProcess, Heartbeat, encode, make_desired
from tests.support import procfs
from tests.support.packets import publish_size
from tests.support.waiting import wait_for

DEVICE: Final = "bench-dev"
FLOOR: Final = "bench-floor"
HEARTBEAT_S: Final = 15
RSS_GOAL_MIB: Final = 25.0
RSS_GOAL_RATIO: Final = 1.2  # x the python + paho floor
CPU_GOAL_PCT: Final = 0.5

FLOOR_SCRIPT: Final = """
import sys
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=sys.argv[1])
client.username_pw_set(sys.argv[1], sys.argv[2])
client.connect("127.0.0.1", int(sys.argv[3]), keepalive=int(sys.argv[4]))
client.loop_forever()
"""


def desired(generation: int) -> bytes:
    spec = DeviceProcessSpec(
        device_name=DEVICE,
        command=["/bin/sleep", str(100_000 + generation)],
        termination_grace_period_seconds=1,
    )
    proc = DesiredProcess(
        namespace="bench", name="worker", uid="uid-worker", generation=generation, spec=spec
    )
    return encode(make_desired([proc]))


def running(generation: int) -> Callable[[Message], bool]:
    def check(message: Message) -> bool:
        doc = message.json() or {}
        entry = doc.get("processes", {}).get("bench/worker", {})
        return bool(entry.get("generation") == generation and entry.get("phase") == "Running")

    return check


# What the agent's RSS is made of: each step imports more, in a fresh interpreter.
LADDER: Final = (
    ("python, nothing imported", "pass"),
    ("+ paho-mqtt (the floor)", "import paho.mqtt.client"),
    ("+ asyncio, json, subprocess (the agent's dependencies)", "import paho.mqtt.client, asyncio, json, subprocess"),
    ("+ devicefabric.config.lean (the agent's codec)", "import paho.mqtt.client, asyncio, devicefabric.config.lean"),
    ("+ devicefabric.agent (all of it)", "import devicefabric.agent.running"),
    ("+ the CLI (`devicefabric agent run`)", "import devicefabric.cli as c; c.build_parser('agent')"),
    ("for comparison: + pydantic wire models (the bridge's codec)", "import devicefabric.agent.running, devicefabric.config.wire"),
)  # fmt: skip
RSS_PROBE: Final = (
    "\nimport re; print(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read())[1])"
)


AGENT_PACKAGES: Final = ("agent", "config", "cli")  # what `devicefabric agent run` imports


def compile_agent() -> None:
    """Write the .pyc of the agent's modules (and the package's own), as an install does."""
    root = Path(devicefabric.__file__).parent
    for name in ("__init__.py", "__main__.py"):
        compileall.compile_file(root / name, quiet=1)
    for package in AGENT_PACKAGES:
        if not compileall.compile_dir(root / package, quiet=1):
            raise RuntimeError(f"cannot compile {root / package}")


def rss_ladder() -> list[tuple[str, int]]:
    """(step, RSS KiB) of a fresh interpreter after each step's imports."""
    out = []
    for label, code in LADDER:
        done = subprocess.run(
            [sys.executable, "-c", code + RSS_PROBE],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        out.append((label, int(done.stdout.split()[-1])))
    return out


def idle(pid: int, port: int, seconds: float) -> dict[str, Any]:
    """RSS (sampled every 5 s), CPU and TCP payload bytes sent by `pid` over `seconds` idle."""
    tcp0 = tcp_counters(pid, port)
    cpu0, wall0 = procfs.cpu_seconds(pid), time.monotonic()
    rss: list[int] = []
    while time.monotonic() - wall0 < seconds:
        rss.append(procfs.rss_kib(pid))
        time.sleep(min(5.0, max(0.0, seconds - (time.monotonic() - wall0))))  # sampling period
    cpu1, wall1 = procfs.cpu_seconds(pid), time.monotonic()
    tcp1 = tcp_counters(pid, port)
    rss.append(procfs.rss_kib(pid))
    wall = wall1 - wall0
    sent = tcp1.get("bytes_sent", 0) - tcp0.get("bytes_sent", 0)
    beats = wall / HEARTBEAT_S
    return {
        "seconds": round(wall, 1),
        "rss_kib_max": max(rss),
        "rss_kib_last": rss[-1],
        "cpu_seconds": round(cpu1 - cpu0, 3),
        "cpu_percent": round(100 * (cpu1 - cpu0) / wall, 4),
        "tcp_payload_bytes_sent": sent,
        "tcp_data_segments_sent": tcp1.get("data_segs_out", 0) - tcp0.get("data_segs_out", 0),
        "tcp_payload_bytes_per_heartbeat_interval": round(sent / beats, 1) if beats else None,
    }


def _sample_both(pids: dict[str, int], port: int, seconds: float) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}

    def one(name: str, pid: int) -> None:
        found[name] = idle(pid, port, seconds)

    threads = [threading.Thread(target=one, args=item) for item in pids.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return found


DEFAULTS: Final[Defaults] = {"idle": (60.0, 30.0)}


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--idle", type=float, help="idle window in seconds")
    p.add_argument("--changes", type=int, default=10, help="desired changes for bytes per report")


def run(args: argparse.Namespace, result: Result) -> Result:
    compile_agent()
    with Fabric("bench-footprint-") as fab:
        broker = fab.mosquitto([DEVICE, FLOOR])
        keepalive = max(5, 2 * HEARTBEAT_S)
        obs = fab.enter_context(watching(broker, fab.secret, [TOPICS.everything()]))
        pub = fab.enter_context(
            watching(broker, fab.secret, [TOPICS.bridge_status()], user=BRIDGE_USER)
        )
        pub.client.publish(TOPICS.desired(DEVICE), desired(1), qos=1, retain=True)
        agent = fab.agent(broker, DEVICE, heartbeat=HEARTBEAT_S, log_level="WARNING")
        floor = fab.python(
            "floor", FLOOR_SCRIPT, FLOOR, fab.password(FLOOR), str(broker.port),
            str(keepalive),
        )  # fmt: skip
        obs.inbox.wait_for(TOPICS.report(DEVICE), running(1), 30)
        wait_for(lambda: tcp_counters(floor.pid, broker.port), 10, what="the floor's socket")
        time.sleep(2.0)  # both past start-up
        print(f"  idle window {args.idle:.0f} s: agent and floor sampled together")
        idled = _sample_both({"agent": agent.pid, "floor": floor.pid}, broker.port, args.idle)
        memory = {"agent": procfs.status_kib(agent.pid), "floor": procfs.status_kib(floor.pid)}
        agent.check()
        floor.check()
        # bytes per report: desired changes, the agent's TCP bytes sent / reports seen
        before = tcp_counters(agent.pid, broker.port)
        t0 = time.monotonic()
        for generation in range(2, 2 + args.changes):
            pub.client.publish(TOPICS.desired(DEVICE), desired(generation), qos=1, retain=True)
            obs.inbox.wait_for(TOPICS.report(DEVICE), running(generation), 15, since=t0)
        time.sleep(0.3)
        after = tcp_counters(agent.pid, broker.port)
        reports = obs.inbox.messages(TOPICS.report(DEVICE), lambda m: m.at >= t0)
        beats = obs.inbox.messages(TOPICS.heartbeat(DEVICE), lambda m: m.at >= t0)
    a, f = idled["agent"], idled["floor"]
    result.metrics["idle"] = idled
    result.metrics["memory_kib"] = memory
    ladder = rss_ladder()
    result.metrics["rss_ladder_kib"] = dict(ladder)
    steps = ", ".join(f"{label} {kib / 1024:.1f}" for label, kib in ladder)
    result.note(f"RSS (MiB) of a fresh interpreter after: {steps}")
    result.series("agent_rss_kib", [a["rss_kib_max"]])
    result.series("floor_rss_kib", [f["rss_kib_max"]])
    report_sizes = [publish_size(m.topic, m.payload, qos=1) for m in reports]
    result.series("report_publish_bytes", report_sizes)
    beat = encode(Heartbeat(session="0123abcd-1", seq=12))
    beat_bytes = publish_size(TOPICS.heartbeat(DEVICE), beat)
    sent = after.get("bytes_sent", 0) - before.get("bytes_sent", 0)
    sent_heartbeats = sum(publish_size(m.topic, m.payload) for m in beats)
    per_report = (sent - sent_heartbeats) / len(reports) if reports else float("nan")
    result.metrics |= {
        "heartbeat_publish_bytes": beat_bytes,
        "heartbeat_payload": beat.decode(),
        "reports_during_changes": len(reports),
        "agent_tcp_bytes_sent_during_changes": sent,
        "measured_tcp_bytes_per_report": per_report,
        "report_example": reports[-1].payload.decode() if reports else "",
    }
    rss_mib, floor_mib = a["rss_kib_max"] / 1024, f["rss_kib_max"] / 1024
    mib = "{:.1f} MiB".format
    result.versus(
        "agent RSS, one supervised process (max over idle window)",
        rss_mib,
        floor_mib,
        mib,
        goal=f"<= {RSS_GOAL_MIB:.0f} MiB and <= {RSS_GOAL_RATIO}x floor",
        met=rss_mib <= RSS_GOAL_MIB and rss_mib <= RSS_GOAL_RATIO * floor_mib,
        note=f"floor: bare python + paho holding one connection; private (RssAnon) "
        f"{memory['agent']['RssAnon'] / 1024:.1f} vs {memory['floor']['RssAnon'] / 1024:.1f} MiB, "
        f"mapped files {memory['agent']['RssFile'] / 1024:.1f} vs "
        f"{memory['floor']['RssFile'] / 1024:.1f} MiB; the agent's bytecode compiled before the run, "
        "as an install does",
    )
    deps = ladder[2][1] / 1024
    result.versus(
        "RSS of the agent's dependencies alone (paho, asyncio, json, subprocess imported)",
        deps,
        floor_mib,
        mib,
        note="a fresh interpreter, none of our code: what any agent on these dependencies costs",
    )
    tick_pct = 100 / procfs.CLK_TCK / a["seconds"]  # one clock tick over the window

    def pct(value: float) -> str:
        return f"{value:.3f} %" if value > 0 else f"< {tick_pct:.3f} %"

    result.row(
        f"agent idle CPU ({a['seconds']:.0f} s, heartbeat {HEARTBEAT_S} s)",
        pct(a["cpu_percent"]),
        floor=pct(f["cpu_percent"]),
        ratio=ratio(a["cpu_percent"], f["cpu_percent"]) if a["cpu_percent"] > 0 else "",
        goal=f"< {CPU_GOAL_PCT} %",
        met=a["cpu_percent"] < CPU_GOAL_PCT,
        note=f"CPU time {a['cpu_seconds']} s vs {f['cpu_seconds']} s ({1000 / procfs.CLK_TCK:.0f} ms "
        "clock ticks: '<' is less than one tick in the window)",
    )
    per_interval = a["tcp_payload_bytes_per_heartbeat_interval"]
    result.row(
        "bytes per heartbeat (MQTT PUBLISH, QoS 0)",
        f"{beat_bytes} B",
        note=f"measured TCP payload per 15 s idle: {count(per_interval or float('nan'))} B "
        f"(floor process: {count(f['tcp_payload_bytes_per_heartbeat_interval'] or 0)} B, pings)",
    )
    median_report = statistics.median(report_sizes) if report_sizes else 0
    result.row(
        "bytes per report, one process (MQTT PUBLISH, QoS 1)",
        f"{median_report:.0f} B",
        note=f"measured TCP bytes sent per report: {count(per_report)} B; PUBACK +4 B back",
    )
    return result.finish()


if __name__ == "__main__":
    main(sys.modules[__name__])
