"""`devicefabric up --demo`: three agents, three sample lives, a live table, a clean Ctrl-C.

`up --demo` runs with stdout not a terminal, so the live table prints a new table whenever a row
changes; the story waits until the table shows the healthy process Running, the crashing one in
CrashLoopBackOff and the one-shot Succeeded, then sends SIGINT and checks that `up` exits 0 in
time, that no agent or sample process is left behind, and that the agents' clean shutdown was
recorded (Connected False).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from devicefabric.cli.demo import DEMO_DEVICES
from tests.support import cli
from tests.support.procfs import alive


def test_demo_shows_three_lives_and_ctrl_c_leaves_nothing_behind(
    tmp_path: Path, procs: list[cli.Background]
) -> None:
    up, state = cli.start_up(tmp_path, procs, "--demo")

    def lives() -> bool:
        table = cli.last_table(up.out)
        phases = {name: row[2] for name, row in table.items()}
        connected = {row[3] for row in table.values()}
        return phases == {
            "ticker": "Running",
            "crasher": "CrashLoopBackOff",
            "one-shot": "Succeeded",
            **{f"sampler-{d}": "Running" for d in DEMO_DEVICES},  # the demo's set, one a device
        } and connected == {"True"}

    up.wait_for(lives, timeout=25, what="the table to show Running, CrashLoopBackOff, Succeeded")
    agents = cli.demo_agent_pids(up.err)
    assert len(agents) == 3
    ticker = json.loads(cli.run_cli("get", "ticker", "-o", "json", "--state-dir", str(state)).out)
    sample_pid = ticker["status"]["pid"]
    assert alive(sample_pid)
    owned = json.loads(
        cli.run_cli("get", "sampler-demo-2", "-o", "json", "--state-dir", str(state)).out
    )
    owned_pid = owned["status"]["pid"]
    assert alive(owned_pid)
    sets = cli.run_cli("get", "dpset", "--state-dir", str(state)).out.splitlines()
    assert sets[1].split()[:5] == ["sampler", "3", "3", "3", "3"]

    started = time.monotonic()
    assert up.ctrl_c(timeout=cli.SHUTDOWN_BOUND) == 0  # SIGINT to the group, as a terminal does
    assert time.monotonic() - started < cli.SHUTDOWN_BOUND
    assert [pid for pid in [*agents, sample_pid, owned_pid] if alive(pid)] == []

    # Each agent got one SIGTERM from `up` and said a clean offline, which the bridge recorded.
    listing = json.loads(cli.run_cli("get", "-o", "json", "--state-dir", str(state)).out)
    reasons = {
        item["metadata"]["name"]: [
            (c["status"], c["reason"])
            for c in item["status"]["conditions"]
            if c["type"] == "AgentConnected"
        ]
        for item in listing["items"]
    }
    names = ("ticker", "crasher", "one-shot", *(f"sampler-{d}" for d in DEMO_DEVICES))
    assert reasons == {name: [("False", "Shutdown")] for name in names}
