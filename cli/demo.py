"""`devicefabric up --demo`: three sample DeviceProcesses, three local agents, and a live table.

The samples show the three lives a process can have: `ticker` runs for ever (Running), `crasher`
exits with an error every second (restarted with back-off: CrashLoopBackOff, its stderr in the
message), `one-shot` prints a line and exits 0 (Succeeded, not restarted under `OnFailure`).
Each runs on its own demo device, served by a real agent started as a subprocess
(`python -m devicefabric agent run ...`) whose password file and state directory live under
`<state-dir>/demo/`, and whose log is `<state-dir>/demo/<device>.log`.

Invariants: every agent started is stopped when the demo task ends, however it ends (SIGTERM,
then SIGKILL after `AGENT_STOP_TIMEOUT`), and awaited, so Ctrl-C leaves no process behind. Agents
run in their own session, so the terminal's Ctrl-C (SIGINT to the whole foreground group) does
not reach them directly: they get exactly one SIGTERM, from `up`, and shut down cleanly. On a
terminal the table (the one `get --watch` shows) and the latest Events stay at the top, redrawn
in place, while the log lines scroll below them (`cli.screen`: plain ANSI, no curses); the
instructions shrink to one line when the terminal is too short for them. When stdout is not a
terminal, a new table is printed only when a row other than its age changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import shutil
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Self, TextIO

from devicefabric.bridge.controlplane.base import Resource
from devicefabric.bridge.controlplane.local.plane import LocalControlPlane
from devicefabric.bridge.controlplane.local.userfiles import DEFAULT_NAMESPACE, Manifest
from devicefabric.cli.fleetverbs import render as render_fleet
from devicefabric.cli.screen import MIN_LOG_ROWS, ScreenLogHandler, SplitScreen
from devicefabric.cli.verbs import render_table, table_row
from devicefabric.config.credentials import device_password
from devicefabric.config.fleet import DEVICE_KIND, SET_KIND, DeviceProcessSetSpec
from devicefabric.config.resource import DeviceProcessSpec, RestartPolicyName

log = logging.getLogger("devicefabric.demo")

DEMO_DEVICES: Final = ("demo-1", "demo-2", "demo-3")
AGENT_STOP_TIMEOUT: Final = 15.0
REFRESH_S: Final = 1.0
RECENT_EVENTS: Final = 6

_TICKER: Final = (
    "import time\n"
    "n = 0\n"
    "while True:\n"
    "    n += 1\n"
    "    print('tick', n, flush=True)\n"
    "    time.sleep(5)\n"
)
_CRASHER: Final = (
    "import sys, time\n"
    "time.sleep(1)\n"
    "print('cannot reach the sensor: giving up', file=sys.stderr)\n"
    "sys.exit(3)\n"
)
_ONE_SHOT: Final = "print('calibration done')\n"


def sample_manifests(python: str = sys.executable) -> list[Manifest]:
    """The three demo DeviceProcesses (healthy, crash-looping, one-shot), one per demo device."""
    samples: list[tuple[str, str, str, RestartPolicyName]] = [
        ("ticker", DEMO_DEVICES[0], _TICKER, "Always"),
        ("crasher", DEMO_DEVICES[1], _CRASHER, "Always"),
        ("one-shot", DEMO_DEVICES[2], _ONE_SHOT, "OnFailure"),
    ]
    return [
        Manifest(
            DEFAULT_NAMESPACE,
            name,
            DeviceProcessSpec(
                device_name=device,
                command=[python, "-c", code],
                restart_policy=policy,
                termination_grace_period_seconds=2,
            ).to_wire(),
            labels={"app.kubernetes.io/part-of": "devicefabric-demo"},
        )
        for name, device, code, policy in samples
    ]


_SAMPLER: Final = (
    "import os, time\n"
    "while True:\n"
    "    print('sample', os.getloadavg()[0], flush=True)\n"
    "    time.sleep(10)\n"
)
FLEET_LABEL: Final = "devicefabric.io/demo"


def sample_fleet(python: str = sys.executable) -> tuple[list[Manifest], list[Manifest]]:
    """The demo's fleet: the three demo Devices, labelled, and one DeviceProcessSet `sampler`
    selecting all of them (so the bridge creates `sampler-demo-1`..`-3`); edit its template with
    `apply` and watch it roll out one device at a time."""
    devices = [
        Manifest("", device, {}, labels={FLEET_LABEL: "true"}, kind=DEVICE_KIND)
        for device in DEMO_DEVICES
    ]
    spec = DeviceProcessSetSpec.model_validate(
        {
            "selector": {"matchLabels": {FLEET_LABEL: "true"}},
            "template": {"command": [python, "-c", _SAMPLER], "terminationGracePeriodSeconds": 2},
            "updateStrategy": {"rollingUpdate": {"maxUnavailable": 1}},
        }
    )
    sets = [Manifest(DEFAULT_NAMESPACE, "sampler", spec.to_wire(), kind=SET_KIND)]
    return devices, sets


class DemoAgents:
    """Local agent subprocesses for the demo devices, as an async context manager.

    Entering starts one agent per device; `watch()` blocks until cancelled, logging an agent that
    exits early; exiting SIGTERMs every agent still running and awaits it (SIGKILL after
    AGENT_STOP_TIMEOUT), so an agent publishes its clean offline before the bridge stops.
    """

    def __init__(
        self,
        state_dir: Path,
        broker_url: str,
        secret: bytes,
        devices: Sequence[str] = DEMO_DEVICES,
    ) -> None:
        self._dir = state_dir / "demo"
        self._broker_url = broker_url
        self._secret = secret
        self._devices = tuple(devices)
        self._procs: dict[str, asyncio.subprocess.Process] = {}

    @property
    def devices(self) -> tuple[str, ...]:
        return self._devices

    async def __aenter__(self) -> Self:
        try:
            for device in self._devices:
                self._procs[device] = await self._start(device)
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def watch(self) -> None:
        await asyncio.gather(*(self._watch(d, p) for d, p in self._procs.items()))
        await asyncio.Event().wait()  # every agent exited: keep the table up until Ctrl-C

    async def _start(self, device: str) -> asyncio.subprocess.Process:
        self._dir.mkdir(parents=True, exist_ok=True)
        password_file = self._dir / f"{device}.password"
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(device_password(self._secret, device) + "\n")
        argv = [
            sys.executable,
            "-m",
            "devicefabric",
            "--log-format",
            "text",
            "agent",
            "run",
            "--device",
            device,
            "--broker",
            self._broker_url,
            "--password-file",
            str(password_file),
            "--state-dir",
            str(self._dir / device),
            "--allow-command",
            f"{shlex.quote(sys.executable)} -c",
        ]
        with (self._dir / f"{device}.log").open("ab") as logfile:
            # Own session: a Ctrl-C on the terminal reaches `up` only, which then stops each
            # agent once, in order (a second signal would make an agent force-exit).
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logfile,
                stderr=logfile,
                start_new_session=True,
            )
        log.info("demo agent started (pid %d)", proc.pid, extra={"device": device})
        return proc

    async def _watch(self, device: str, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        log.warning(
            "demo agent exited with code %d; see %s",
            code,
            self._dir / f"{device}.log",
            extra={"device": device},
        )

    async def aclose(self) -> None:
        running = [(d, p) for d, p in self._procs.items() if p.returncode is None]
        for _, proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for device, proc in running:
            try:
                await asyncio.wait_for(proc.wait(), AGENT_STOP_TIMEOUT)
            except TimeoutError:
                log.warning("demo agent did not stop: killing it", extra={"device": device})
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        self._procs.clear()


async def live_table(
    plane: LocalControlPlane,
    header: str,
    out: TextIO = sys.stdout,
    interval: float = REFRESH_S,
) -> None:
    """Redraw the resources table (and the latest Events) every `interval` until cancelled."""
    if out.isatty():
        await _split_screen(plane, header, out, interval)
        return
    last: object = None
    while True:
        now = datetime.now(UTC)
        resources = sorted(plane.resources(), key=lambda r: r.key)
        sets = _sets(plane)
        key = [table_row(r, now)[:-1] for r in resources] + [r.status for r in sets]
        if key != last:
            last = key
            out.write(_screen(resources, [], now, sets=sets) + "\n\n")
            out.flush()
        await asyncio.sleep(interval)


async def _split_screen(
    plane: LocalControlPlane, header: str, out: TextIO, interval: float
) -> None:
    """The table and Events at the top of the terminal, the log scrolling below (until cancelled)."""
    screen = SplitScreen(out, title="(newest at the bottom) ")
    root = logging.getLogger()
    handler = ScreenLogHandler(screen, root.handlers[0].formatter if root.handlers else None)
    root.addHandler(handler)
    intro = header.rstrip("\n").splitlines()
    short = [intro[0], intro[-1]] if intro else []
    try:
        while True:
            now = datetime.now(UTC)
            resources = sorted(plane.resources(), key=lambda r: r.key)
            events = plane.store.recent_events(RECENT_EVENTS)
            body = _screen(resources, events, now, pad_events=True, sets=_sets(plane)).splitlines()
            rows = shutil.get_terminal_size().lines
            fits = len(intro) + 1 + len(body) + 1 + MIN_LOG_ROWS <= rows
            screen.draw([*(intro if fits else short), "", *body])
            await asyncio.sleep(interval)
    finally:
        root.removeHandler(handler)
        screen.close()


def _sets(plane: LocalControlPlane) -> list[Resource]:
    return sorted(plane.fleet.process_sets(), key=lambda r: r.key) if plane.fleet else []


def _screen(
    resources: Sequence[Resource],
    events: Sequence[dict[str, object]],
    now: datetime,
    *,
    pad_events: bool = False,
    sets: Sequence[Resource] = (),
) -> str:
    """The table, the sets, then the latest Events (`pad_events`: always RECENT_EVENTS rows)."""
    table = render_table(resources, now=now) if resources else "(no DeviceProcesses yet)"
    lines = [table]
    if sets:
        lines += ["", render_fleet(SET_KIND, sets, now=now)]
    if events or pad_events:
        lines += ["", "Recent events:"]
        lines += [
            f"  {e.get('time', '')}  {e.get('type', ''):<7}  {e.get('reason', ''):<16}  "
            f"{e.get('namespace', '')}/{e.get('name', '')}"
            for e in events
        ]
        if pad_events:
            lines += [""] * (RECENT_EVENTS - len(events))
    return "\n".join(lines)
