"""`devicefabric status`: one screen for the whole fabric, and an exit code probes can use.

    devicefabric status [--http HOST:PORT] [--state-dir DIR] [--timeout SECONDS]

What it reads: the bridge's HTTP endpoints at `--http` (`/healthz`, `/readyz`, `/devices`,
`/metrics`; default the address `devicefabric up` serves; a wildcard host is dialled on loopback,
so `devicefabric status` inside the bridge's pod finds it through `DEVICEFABRIC_HTTP`) and, when `--state-dir` holds a local
control plane, its resources and latest Events. Without a state directory (a bridge on
Kubernetes) the resources by phase come from the devices' last reports on `/devices`.

Exit codes (`EXIT_*`; every line of the screen is printed whatever the code):

| code | meaning |
|---|---|
| 0 | the bridge answers, is ready, its broker link is up, and every known device is connected |
| 1 | the bridge does not answer on `--http` (down, or the address is wrong) |
| 2 | usage error (a bad flag), as for every command |
| 3 | the bridge answers but is not ready: broker unreachable or control plane not synced |
| 4 | the fabric is up but at least one known device is not connected |

The core (`assess`, `render`) is pure: documents in, a `Report` out; only `fetch` does IO.
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from devicefabric.config.settings import (
    DEFAULT_HTTP,
    DEFAULT_STATE_DIR,
    HostPort,
    dialable,
)
from devicefabric.runtime.settings import add_command, address_setting, number, path, setting

EXIT_OK: Final = 0
EXIT_BRIDGE_DOWN: Final = 1
EXIT_NOT_READY: Final = 3
EXIT_DEVICES_DOWN: Final = 4
DEFAULT_TIMEOUT: Final = 2.0
RECENT_TRANSITIONS: Final = 5
PHASE_ORDER: Final = (
    "Running",
    "Pending",
    "CrashLoopBackOff",
    "Failed",
    "Succeeded",
    "Stopped",
    "Unknown",
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    add_command(
        sub,
        "status",
        StatusSettings,
        run,
        help="one screen for the whole fabric; exit code 0 only when everything is up",
        description="Show broker, bridge, devices, resources and the last transitions. Exit "
        "codes: 0 all up, 1 bridge not answering, 3 bridge not ready (broker or control plane), "
        "4 a device not connected, 2 usage error.",
    )


def _seconds(value: str, flag: str) -> float:
    seconds = number(value, flag)
    if not seconds > 0:
        raise ValueError(f"expected a number of seconds > 0, got {value}")
    return seconds


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusSettings:
    """`status`'s flags: where the bridge and the local control plane are, how long to wait."""

    http: HostPort = address_setting(
        "--http", "the bridge's HTTP address HOST:PORT", default=DEFAULT_HTTP
    )
    state_dir: Path = setting(
        "--state-dir",
        "local control plane to read resources and Events from (skipped when absent)",
        default=DEFAULT_STATE_DIR,
        parse=path,
    )
    timeout: float = setting(
        "--timeout",
        "seconds to wait for each HTTP answer",
        default=DEFAULT_TIMEOUT,
        parse=_seconds,
    )


# -- the pure core --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Observed:
    """What `fetch` gathered; None where an endpoint did not answer."""

    address: str
    healthz: bool
    readyz: Mapping[str, object] | None
    devices: Sequence[Mapping[str, object]] | None
    metrics: Mapping[str, float] = field(default_factory=dict)
    phases: Mapping[str, int] | None = None  # from the control plane, when readable
    transitions: Sequence[Mapping[str, object]] = ()
    error: str = ""


@dataclass(frozen=True, slots=True)
class Report:
    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {`name{labels}`: value} for the devicefabric_* samples."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("devicefabric_"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


def report_phases(devices: Sequence[Mapping[str, object]]) -> dict[str, int]:
    """Resources by phase as the devices last reported them (the bridge's `/devices`)."""
    counts: Counter[str] = Counter()
    for device in devices:
        processes = device.get("processes")
        if isinstance(processes, Mapping):
            for entry in processes.values():
                phase = entry.get("phase") if isinstance(entry, Mapping) else None
                counts[str(phase or "Unknown")] += 1
    return dict(counts)


def assess(seen: Observed) -> Report:
    """The screen and the exit code (see the module docstring)."""
    lines = [f"bridge     http://{seen.address}"]
    if not seen.healthz or seen.readyz is None:
        lines.append(f"  DOWN     not answering ({seen.error or 'no answer'})")
        lines.append("broker     unknown (the bridge reports it)")
        return Report(EXIT_BRIDGE_DOWN, tuple(lines))
    ready = seen.readyz.get("ready") is True
    mqtt = str(seen.readyz.get("mqtt", "down"))
    synced = seen.readyz.get("controlPlaneSynced") is True
    lines.append(
        f"  {'ready' if ready else 'NOT READY':<8} role {seen.readyz.get('role', '?')}, "
        f"session {seen.readyz.get('session') or '-'}, "
        f"control plane {'synced' if synced else 'NOT SYNCED'}, "
        f"queue {seen.readyz.get('queueDepth', '?')}"
    )
    broker_up = mqtt in ("primed", "connected")
    lines.append(f"broker     {'reachable' if broker_up else 'UNREACHABLE'} (bridge link: {mqtt})")
    devices = list(seen.devices or [])
    states = Counter(str(d.get("state")) for d in devices)
    connected = states.get("connected", 0)
    lines.append(f"devices    {connected}/{len(devices)} connected")
    lines.extend(
        f"  {d.get('device')}: {d.get('state')}"
        + (f" ({d.get('reason')})" if d.get("reason") else "")
        for d in sorted(devices, key=lambda d: str(d.get("device")))
        if d.get("state") != "connected"
    )
    phases = seen.phases if seen.phases is not None else report_phases(devices)
    source = "control plane" if seen.phases is not None else "device reports"
    ordered = sorted(phases.items(), key=lambda kv: _phase_rank(kv[0]))
    summary = ", ".join(f"{n} {phase}" for phase, n in ordered if n) or "none"
    lines.append(f"resources  {sum(phases.values())}: {summary}   (from the {source})")
    lines.append(
        "writes     {:.0f} status, {:.0f} events; invalid messages {:.0f}".format(
            _sum(seen.metrics, "devicefabric_controlplane_writes_total", 'kind="status"'),
            _sum(seen.metrics, "devicefabric_controlplane_writes_total", 'kind="event"'),
            _sum(seen.metrics, "devicefabric_invalid_messages_total"),
        )
    )
    if seen.transitions:
        lines.append("last transitions")
        lines.extend(
            f"  {e.get('time', '')}  {e.get('type', ''):<7}  {e.get('reason', ''):<16}  "
            f"{e.get('namespace', '')}/{e.get('name', '')}"
            for e in seen.transitions
        )
    if not (ready and broker_up):
        code = EXIT_NOT_READY
    elif connected < len(devices):
        code = EXIT_DEVICES_DOWN
    else:
        code = EXIT_OK
    verdict = {EXIT_OK: "OK", EXIT_NOT_READY: "NOT READY", EXIT_DEVICES_DOWN: "DEGRADED"}[code]
    lines.append(f"status     {verdict} (exit {code})")
    return Report(code, tuple(lines))


def _phase_rank(phase: str) -> int:
    return PHASE_ORDER.index(phase) if phase in PHASE_ORDER else len(PHASE_ORDER)


def _sum(metrics: Mapping[str, float], name: str, label: str = "") -> float:
    return sum(v for k, v in metrics.items() if k.startswith(name) and label in k)


# -- the IO edge ----------------------------------------------------------------------------------
def _get(url: str, timeout: float) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - http:// only
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:  # 503 from /readyz still carries its document
        return exc.code, exc.read()


def fetch(address: HostPort, state_dir: Path | None, timeout: float) -> Observed:
    """Read the bridge's endpoints and, when present, the local control plane."""
    base = f"http://{address}"
    try:
        health, _ = _get(base + "/healthz", timeout)
        _, ready_body = _get(base + "/readyz", timeout)
        _, devices_body = _get(base + "/devices", timeout)
        _, metrics_body = _get(base + "/metrics", timeout)
        readyz = json.loads(ready_body)
        devices = json.loads(devices_body)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return Observed(str(address), healthz=False, readyz=None, devices=None, error=str(reason))
    phases: dict[str, int] | None = None
    transitions: list[dict[str, object]] = []
    markers = ("resources", "secret", "changes.log")  # what `up` or the local store leave there
    if state_dir is not None and any((state_dir / name).exists() for name in markers):
        from devicefabric.bridge.controlplane.local.store import LocalStore  # noqa: PLC0415

        store = LocalStore(state_dir)
        phases = dict(
            Counter(str(r.status.get("phase") or "Pending") for r in store.load_all().values())
        )
        transitions = store.recent_events(RECENT_TRANSITIONS)
    return Observed(
        str(address),
        healthz=health == 200,
        readyz=readyz if isinstance(readyz, dict) else None,
        devices=devices if isinstance(devices, list) else [],
        metrics=parse_metrics(metrics_body.decode("utf-8", "replace")),
        phases=phases,
        transitions=transitions,
    )


def run(settings: StatusSettings) -> int:
    report = assess(fetch(dialable(settings.http), settings.state_dir, settings.timeout))
    print(report.text, flush=True)
    return report.code
