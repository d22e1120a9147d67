"""Fault scenario 7: faults on the device itself; the agent copes, the bridge's view holds.

One real mosquitto and one `devicefabric bridge run` (local control plane) serve the whole
module; each test starts its own `devicefabric agent run` for its own device and resources, and
stops it at the end. The faults are real, and each is made so that it also bites a root user
(these tests run as root, where permission bits alone block nothing):

- disk full: RLIMIT_FSIZE on the running agent (`prlimit`), so writing the persisted document
  fails with EFBIG; state directory read-only: the immutable attribute (`chattr +i`, which stops
  root too; skipped where the file system or the container does not support it);
- a corrupt persisted document (torn JSON, or another device's document) before the agent starts;
- a child that ignores SIGTERM: killed after its grace period;
- a fork bomb in the child's process group (100 grandchildren; 1,000 with `FAULTS_LONG=1`):
  every member killed when it is stopped, and stragglers killed when its leader exits;
- the device clock five hours off (through `launch.py`, the one mock the tests allow: a clock):
  the agent's own timestamps are off, the bridge's conditions and `lastSeen` are not.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import pytest

from devicefabric.agent.persisting import CORRUPT_SUFFIX, DESIRED_FILE
from devicefabric.config.wire import decode_desired
from tests.conftest import TEST_SECRET
from tests.faults.budget import LONG
from tests.support.fabric import Fabric
from tests.support.ledger import Marker
from tests.support.mqtt import connect
from tests.support.processes import (
    BridgeProcess,
)
from tests.support.procfs import alive, group_members
from tests.support.resources import key, manifest, reason

pytestmark = [pytest.mark.faults, pytest.mark.mosquitto]

DEVICES: Final = (
    "full",
    "readonly",
    "torn",
    "foreign",
    "stubborn",
    "forker",
    "skewed",
    "marker",
)
HEARTBEAT: Final = 1
GRANDCHILDREN: Final = 1000 if LONG else 100
SKEW: Final = 5 * 3600.0  # s: the device's clock is five hours ahead
SIGTERM_IGNORED: Final = 1 << 14  # bit of SIGTERM (15) in /proc/<pid>/status SigIgn


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fabric, BridgeProcess]]:
    with Fabric.mosquitto(
        tmp_path_factory.mktemp("device-faults"), TEST_SECRET, DEVICES, plane="local"
    ) as fab:
        fab.marker()
        yield fab, fab.start_bridge()


@pytest.fixture
def fab(site: tuple[Fabric, BridgeProcess]) -> Iterator[Fabric]:
    """The module's fabric; the agents a test starts are stopped when it ends."""
    fabric, _ = site
    started = set(fabric.agents)
    yield fabric
    for name in set(fabric.agents) - started:
        fabric.agents.pop(name).close()


@pytest.fixture
def bridge(site: tuple[Fabric, BridgeProcess]) -> BridgeProcess:
    return site[1]


def marker_of(fab: Fabric) -> Marker:
    return fab.markers[0]


def settle(fab: Fabric, bridge: BridgeProcess, *names: str) -> None:
    fab.wait_settled(*names)
    bridge.wait_idle()


def immutable_supported(probe: Path) -> bool:
    chattr = shutil.which("chattr")
    if chattr is None:
        return False
    probe.mkdir()
    try:
        done = subprocess.run([chattr, "+i", str(probe)], capture_output=True, check=False)
        if done.returncode != 0:
            return False
        subprocess.run([chattr, "-i", str(probe)], check=True)
        return True
    finally:
        probe.rmdir()


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """`chattr +i path` for the block: no file in it may be created, replaced or removed."""
    subprocess.run(["chattr", "+i", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


# -- the state directory ----------------------------------------------------------------------------
@pytest.mark.parametrize("fault", ["full", "readonly"])
def test_an_unwritable_state_directory_is_reported_and_everything_keeps_running(
    fab: Fabric, bridge: BridgeProcess, fault: str, tmp_path: Path
) -> None:
    if fault == "readonly" and not immutable_supported(tmp_path / "probe"):
        pytest.skip("chattr +i is not supported here (file system or capabilities)")
    name = f"{fault}-proc"
    fab.apply(manifest(name, fault, ["sleep", "600"]))
    agent = fab.start_agent(fault, heartbeat=HEARTBEAT, pipe_log=True)
    settle(fab, bridge, name)
    persisted = agent.state_dir / DESIRED_FILE
    first = decode_desired(persisted.read_bytes())

    # The next document is larger than the file-size limit, and cannot replace the old one.
    padding = [{"name": f"PADDING_{i}", "value": "x" * 3000} for i in range(3)]
    with contextlib.ExitStack() as fault_on:
        if fault == "full":
            agent.limit_file_size(4096)
        else:
            fault_on.enter_context(immutable(agent.state_dir))
        fab.apply(manifest(name, fault, ["sleep", "601"], env=padding))
        fab.wait_settled(name)
        fab.wait(
            lambda: agent.logged(msg="cannot persist", reason="persist_failed"),
            10,
            "the agent to report the failed write",
        )
        assert agent.alive
        status = fab.status(name)
        assert alive(status["pid"])
        assert status["observedGeneration"] == 2
        # What is on disk is still the whole previous document, never a torn one.
        assert decode_desired(persisted.read_bytes()) == first
        assert sorted(p.name for p in agent.state_dir.iterdir() if p.name.startswith(".")) == []
    view = bridge.devices()[fault]
    assert view["state"] == "connected"
    assert view["lastSeenAgeSeconds"] < 3 * HEARTBEAT
    line = agent.logged(msg="cannot persist")[0]
    print(f"\n[scenario 7, {fault}] the agent said: {line['msg']}")


@pytest.mark.parametrize("corruption", ["torn", "foreign"])
def test_a_corrupt_persisted_document_is_set_aside_and_the_broker_s_one_runs(
    fab: Fabric, bridge: BridgeProcess, corruption: str
) -> None:
    device = corruption
    name = f"{device}-proc"
    fab.apply(manifest(name, device, ["sleep", "600"]))
    agent = fab.agent(device, heartbeat=HEARTBEAT)
    agent.state_dir.mkdir(mode=0o700)
    if corruption == "torn":
        bad = b'{"revision":"abc","processes":[{"namespace":"default","na'
    else:  # a whole, valid document, but for another device: never run what is not ours
        other = manifest("other", "skewed", ["sleep", "1"]).spec
        bad = (
            b'{"revision":"abc","processes":[{"namespace":"default","name":"other",'
            b'"uid":"u","generation":1,"spec":' + json.dumps(other).encode() + b"}]}"
        )
    (agent.state_dir / DESIRED_FILE).write_bytes(bad)
    agent.start()
    settle(fab, bridge, name)
    assert agent.logged(msg="persisted desired state unusable", reason="corrupt_state")
    assert (agent.state_dir / (DESIRED_FILE + CORRUPT_SUFFIX)).read_bytes() == bad
    persisted = decode_desired((agent.state_dir / DESIRED_FILE).read_bytes())
    assert [p.key for p in persisted.processes] == [key(name)]
    assert agent.alive


# -- children -------------------------------------------------------------------------------------
def sigterm_ignored(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & SIGTERM_IGNORED)
    return False


def test_a_child_ignoring_sigterm_is_killed_after_its_grace_period(
    fab: Fabric, bridge: BridgeProcess
) -> None:
    name = "stubborn-proc"
    stubborn = [
        sys.executable,
        "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)",
    ]
    fab.apply(manifest(name, "stubborn", stubborn, terminationGracePeriodSeconds=1))
    agent = fab.start_agent("stubborn", heartbeat=HEARTBEAT)
    settle(fab, bridge, name)
    pid = fab.status(name)["pid"]
    fab.wait(lambda: sigterm_ignored(pid), 10, "the child to ignore SIGTERM")

    asked = time.monotonic()
    fab.apply(manifest(name, "stubborn", stubborn, terminationGracePeriodSeconds=1, suspend=True))
    fab.wait(lambda: not alive(pid), 10, "the stubborn child gone")
    took = time.monotonic() - asked
    fab.wait_settled(name, phase="Stopped")
    print(f"\n[scenario 7, stubborn] SIGTERM ignored; gone {took:.2f}s after the suspend")
    assert took >= 1.0  # the grace period was honoured...
    assert agent.logged(reason="grace_expired")  # ...then SIGKILL, and the agent says so
    assert agent.alive


def sleepers_when(pgid: int, count: int) -> set[int] | None:
    """The bomb's sleepers in `pgid` once there are `count` of them, else None."""
    found = sleepers(pgid)
    return found if len(found) == count else None


def sleepers(pgid: int) -> set[int]:
    """Members of `pgid` that are the bomb's `sleep 600` processes."""
    found = set()
    for pid in group_members(pgid):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:2] == [b"sleep", b"600"]:
                found.add(pid)
    return found


def test_a_fork_bomb_in_the_process_group_is_killed_whole(
    fab: Fabric, bridge: BridgeProcess, tmp_path: Path
) -> None:
    """`bomb` is stopped (suspended) with its grandchildren running; `leaver`'s leader exits and
    leaves its grandchildren behind. Either way every process of the group is killed."""
    fork = f"for i in $(seq {GRANDCHILDREN}); do sleep 600 & done"
    bomb = ["sh", "-c", f"{fork}; exec sleep 600"]
    trigger = tmp_path / "exit-now"
    leaver = ["sh", "-c", f"{fork}; while [ ! -e {trigger} ]; do sleep 0.05; done; exit 0"]
    fab.apply(
        manifest("bomb", "forker", bomb, terminationGracePeriodSeconds=2),
        manifest("leaver", "forker", leaver, restartPolicy="Never"),
    )
    fab.start_agent("forker", heartbeat=HEARTBEAT)
    settle(fab, bridge, "bomb", "leaver")
    bomb_pid, leaver_pid = fab.status("bomb")["pid"], fab.status("leaver")["pid"]
    bombs = fab.wait(lambda: sleepers_when(bomb_pid, GRANDCHILDREN + 1), 30, "the bomb forked")
    left = fab.wait(lambda: sleepers_when(leaver_pid, GRANDCHILDREN), 30, "the leaver forked")

    fab.apply(manifest("bomb", "forker", bomb, terminationGracePeriodSeconds=2, suspend=True))
    fab.wait(lambda: not group_members(bomb_pid), 15, "the bomb's whole group gone")
    fab.wait_settled("bomb", phase="Stopped")
    assert not any(alive(p) for p in bombs)

    trigger.touch()
    fab.wait_settled("leaver", phase="Succeeded")
    fab.wait(lambda: not any(alive(p) for p in left), 10, "the stragglers killed")
    assert fab.status("leaver")["exitCode"] == 0
    print(
        f"\n[scenario 7, fork bomb] {len(bombs)} processes of a stopped group and {len(left)} "
        "left behind by an exiting leader: all killed"
    )


# -- the clock ------------------------------------------------------------------------------------
def test_a_device_clock_hours_off_changes_nothing_the_bridge_decides(
    fab: Fabric, bridge: BridgeProcess
) -> None:
    name = "skewed-proc"
    fab.apply(manifest(name, "skewed", ["sleep", "600"]))
    agent = fab.agent("skewed", heartbeat=HEARTBEAT, clock_offset=SKEW)
    real_start = datetime.now(UTC)
    agent.start()
    settle(fab, bridge, name)
    mark = fab.ledger.mark()
    status = fab.status(name)

    # The agent's own timestamps carry its clock (the skew is real)...
    started_at = datetime.fromisoformat(status["startedAt"])
    assert abs((started_at - real_start).total_seconds() - SKEW) < 120
    # ...the bridge's do not: the condition changed when the bridge saw it, by the bridge's clock.
    connected = datetime.fromisoformat(
        next(c for c in status["conditions"] if c["type"] == "AgentConnected")["lastTransitionTime"]
    )
    assert abs((connected - real_start).total_seconds()) < 120

    # Several stale windows of heartbeats later, still connected and nothing written.
    with connect(fab.broker, "observer") as observer:
        observer.subscribe(fab.broker.topics.heartbeat("skewed"))
        observer.inbox.wait_count(4, timeout=15)  # more than a stale window (3 heartbeats)
    marker_of(fab).flip(bridge)
    view = bridge.devices()["skewed"]
    assert view["state"] == "connected"
    assert view["lastSeenAgeSeconds"] < 3 * HEARTBEAT
    assert reason(fab.status(name)) == "Connected"
    assert fab.ledger.writes(mark) == {key(marker_of(fab).name): 1}
    timeouts = [
        line
        for line in bridge.log_lines()
        if line.get("device") == "skewed" and line.get("reason") == "HeartbeatTimeout"
    ]
    assert timeouts == []
    print(
        f"\n[scenario 7, clock] device startedAt {status['startedAt']} (real start "
        f"{real_start:%H:%M:%SZ}); bridge lastTransitionTime {connected:%H:%M:%SZ}, "
        f"lastSeen {view['lastSeenAgeSeconds']}s ago"
    )
    assert agent.alive
