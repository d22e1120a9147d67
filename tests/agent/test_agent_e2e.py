"""The agent end to end: a real broker, the real CLI as a subprocess, real child processes.

Each story acts as the fabric would (the `bridge` user publishes `desired`) and asserts on what a
user sees: retained statuses and reports on the broker, pids that exist or not, exit codes, logs.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devicefabric.config.resource import EnvVar
from devicefabric.config.wire import StatusOnline, decode_report, decode_status
from tests.support.brokers import BrokerProcess, prepare_mosquitto, running
from tests.support.desired import DEVICE, desired_process, document
from tests.support.fabric import Fabric
from tests.support.mqtt import connect
from tests.support.ports import free_port
from tests.support.processes import AgentProcess, Doc, running_pids
from tests.support.procfs import alive, wait_gone
from tests.support.resources import key
from tests.support.waiting import wait_for

SLEEP = ["/bin/sleep", "60"]


@pytest.fixture
def fab(mosquitto: BrokerProcess, tmp_path: Path) -> Iterator[Fabric]:
    with Fabric(tmp_path, mosquitto) as f:
        yield f


@pytest.fixture
def any_fab(any_broker: BrokerProcess, tmp_path: Path) -> Iterator[Fabric]:
    with Fabric(tmp_path, any_broker) as f:
        yield f


def phases(report: Doc) -> dict[str, str]:
    return {k: str(v["phase"]) for k, v in report["processes"].items()}


def test_desired_runs_changes_only_what_changed_suspends_and_empties(any_fab: Fabric) -> None:
    agent = any_fab.agent()
    agent.start()
    session = any_fab.wait_online()

    doc1 = document(desired_process("a", SLEEP), desired_process("b", SLEEP))
    any_fab.publish_desired(doc1)
    report = any_fab.wait_report(lambda r: len(running_pids(r)) == 2)
    assert report["session"] == session
    assert report["revision"] == doc1.revision
    decode_report(any_fab.messages("report")[-1].payload)  # the wire schema holds
    pids = running_pids(report)
    agent.pids += pids.values()
    assert all(alive(p) for p in pids.values())
    assert report["processes"][key("a")]["generation"] == 1

    # a spec change of `a` restarts a, never b
    doc2 = document(
        desired_process("a", ["/bin/sleep", "61"], generation=2), desired_process("b", SLEEP)
    )
    any_fab.publish_desired(doc2)
    report = any_fab.wait_report(
        lambda r: (
            r["revision"] == doc2.revision
            and r["processes"][key("a")]["generation"] == 2
            and r["processes"][key("a")]["phase"] == "Running"
        )
    )
    after = running_pids(report)
    agent.pids += after.values()
    assert after[key("b")] == pids[key("b")]
    assert after[key("a")] != pids[key("a")]
    wait_gone([pids[key("a")]])
    assert alive(after[key("b")])

    # suspend b: stopped, a untouched
    doc3 = document(
        desired_process("a", ["/bin/sleep", "61"], generation=2),
        desired_process("b", SLEEP, generation=2, suspend=True),
    )
    any_fab.publish_desired(doc3)
    report = any_fab.wait_report(lambda r: phases(r).get(key("b")) == "Stopped")
    assert "pid" not in report["processes"][key("b")]
    wait_gone([after[key("b")]])
    assert running_pids(report) == {key("a"): after[key("a")]}

    # heartbeats flow on their own timer and never cause a report
    reports_before = len(any_fab.messages("report"))
    first = any_fab.wait_doc("heartbeat", lambda h: h["session"] == session)
    any_fab.wait_doc(
        "heartbeat", lambda h: h["session"] == session and h["seq"] >= first["seq"] + 2
    )
    assert len(any_fab.messages("report")) == reports_before
    assert all(not m.retain for m in any_fab.messages("heartbeat"))

    # an empty list stops everything
    empty = document()
    any_fab.publish_desired(empty)
    report = any_fab.wait_report(lambda r: r["revision"] == empty.revision)
    assert report["processes"] == {}
    wait_gone([after[key("a")]])


def test_kill_9_fires_the_will_with_the_right_session_within_a_second(any_fab: Fabric) -> None:
    agent = any_fab.agent()
    agent.start()
    session = any_fab.wait_online()
    start = time.monotonic()
    agent.kill()
    will = any_fab.wait_doc(
        "status", lambda s: s["state"] == "offline" and s["session"] == session, timeout=2.0
    )
    took = time.monotonic() - start
    assert will == {"state": "offline", "session": session, "reason": "lost"}
    assert took < 1.0
    # what a late subscriber sees (the retained status) is the will too
    any_fab.reconnect_clients()
    retained = any_fab.observer.inbox.wait_for(any_fab.topics.status(DEVICE))
    assert retained.retain
    assert retained.json() == will


def test_the_retained_birth_carries_the_device_facts(fab: Fabric) -> None:
    agent = fab.agent()
    agent.start()
    session = fab.wait_online()
    fab.reconnect_clients()  # what a late subscriber (a bridge starting) sees
    retained = fab.observer.inbox.wait_for(
        fab.topics.status(DEVICE), lambda m: m.retain and m.json()["session"] == session
    )
    birth = decode_status(retained.payload)  # the wire schema holds
    assert isinstance(birth, StatusOnline)
    assert (birth.arch, birth.cpus) == (os.uname().machine, os.cpu_count())
    assert None not in (birth.os, birth.kernel, birth.hostname, birth.memory_bytes)


def test_sigterm_stops_children_publishes_shutdown_and_exits_0(fab: Fabric, tmp_path: Path) -> None:
    agent = fab.agent()
    agent.start()
    session = fab.wait_online()
    ignoring = ["/bin/sh", "-c", "trap '' TERM; while :; do sleep 0.05; done"]
    fab.publish_desired(
        document(
            desired_process("a", SLEEP),
            desired_process("b", ignoring, termination_grace_period_seconds=1),
        )
    )
    pids = list(running_pids(fab.wait_report(lambda r: len(running_pids(r)) == 2)).values())
    agent.pids += pids
    start = time.monotonic()
    code = agent.terminate()
    took = time.monotonic() - start
    assert code == 0
    assert not any(alive(p) for p in pids)
    offline = fab.wait_doc("status", lambda s: s["state"] == "offline")
    assert offline == {"state": "offline", "session": session, "reason": "shutdown"}
    assert took < 1 + 3.0  # the longest grace period plus a small bound
    last = fab.docs("report")[-1]
    assert {k: v["phase"] for k, v in last["processes"].items()} == {
        "default/a": "Stopped",
        "default/b": "Stopped",
    }
    fab.reconnect_clients()  # the retained status a late subscriber sees stays the clean offline
    retained = fab.observer.inbox.wait_for(fab.topics.status(DEVICE))
    assert retained.retain
    assert retained.json() == offline
    assert "Traceback" not in agent.log_text()


def test_crash_loop_backs_off_counts_restarts_and_keeps_stderr(fab: Fabric) -> None:
    agent = fab.agent(extra=("--max-backoff", "0.4"))
    agent.start()
    fab.wait_online()
    crash = ["/bin/sh", "-c", "echo 'fatal: config missing' >&2; exit 3"]
    fab.publish_desired(document(desired_process("crash", crash)))

    first = fab.wait_report(lambda r: phases(r).get(key("crash")) == "CrashLoopBackOff")
    seen_at = time.monotonic()
    start_count = len(fab.messages("report"))
    state = first["processes"][key("crash")]
    assert state["exitCode"] == 3
    assert state["message"] == "exited with code 3; stderr: fatal: config missing"
    start_restarts = state["restarts"]

    later = fab.wait_report(
        lambda r: r["processes"][key("crash")]["restarts"] >= start_restarts + 4, timeout=10
    )
    elapsed = time.monotonic() - seen_at
    restarts = later["processes"][key("crash")]["restarts"] - start_restarts
    reports = len(fab.messages("report")) - start_count
    # the back-off floor (half of the 0.4 s cap) bounds the restart rate...
    assert elapsed >= restarts * 0.2 * 0.9
    # ...and each restart costs at most two reports (Running, CrashLoopBackOff): no storm
    assert reports <= 2 * restarts + 2


def test_broker_restart_reconnects_with_a_new_session_and_never_stops_processes(
    any_fab: Fabric,
) -> None:
    agent = any_fab.agent()
    agent.start()
    first_session = any_fab.wait_online()
    any_fab.publish_desired(document(desired_process("a", SLEEP), desired_process("b", SLEEP)))
    pids = running_pids(any_fab.wait_report(lambda r: len(running_pids(r)) == 2))
    agent.pids += pids.values()

    any_fab.broker.restart()
    any_fab.reconnect_clients()
    new_session = any_fab.wait_online(not_session=first_session)
    assert new_session != first_session
    assert new_session.split("-")[0] == first_session.split("-")[0]  # same boot, next counter
    report = any_fab.wait_report(lambda r: r["session"] == new_session)
    assert running_pids(report) == pids
    assert all(alive(p) for p in pids.values())
    assert agent.proc is not None
    assert agent.proc.poll() is None


def test_a_broker_list_skips_a_dead_node_and_moves_on_when_its_node_goes(
    fab: Fabric, tmp_path: Path, secret: bytes
) -> None:
    """`--broker A,B,C`: a node that does not answer is skipped; a lost node hands over to the next.

    Two independent mosquittos stand in for cluster nodes (the NATS cluster story is in
    tests/faults/test_clustered.py): what is shown here is the agent's rotation.
    """
    other = prepare_mosquitto(tmp_path / "other", secret, [DEVICE])
    dead = f"mqtt://127.0.0.1:{free_port()}"
    with running(other):
        agent = fab.agent(broker_urls=f"{dead},{fab.broker.url},{other.url}")
        agent.start()
        first = fab.wait_online()
        fab.publish_desired(document(desired_process("a", SLEEP)))
        pids = running_pids(fab.wait_report(lambda r: len(running_pids(r)) == 1))
        agent.pids += pids.values()
        with connect(other, "observer") as watcher:
            assert not watcher.subscribe(fab.topics.status(DEVICE)).is_failure
            fab.broker.stop()
            birth = watcher.inbox.wait_for(
                fab.topics.status(DEVICE),
                lambda m: b'"online"' in m.payload and first.encode() not in m.payload,
                timeout=10.0,
            )
        assert b'"online"' in birth.payload
        assert all(alive(p) for p in pids.values())  # a lost broker never stops processes


def running_one(fab: Fabric, command: list[str]) -> tuple[AgentProcess, dict[str, int]]:
    """A started agent, online, running process "a" (`command`); returns it and the pids."""
    agent = fab.agent()
    agent.start()
    fab.wait_online()
    fab.publish_desired(document(desired_process("a", command)))
    pids = running_pids(fab.wait_report(lambda r: len(running_pids(r)) == 1))
    agent.pids += pids.values()
    return agent, pids


def test_agent_restart_without_a_broker_runs_the_persisted_document(
    fab: Fabric, tmp_path: Path
) -> None:
    pidfile = tmp_path / "child.pid"
    command = ["/bin/sh", "-c", f"echo $$ > {pidfile}; exec sleep 60"]
    agent, first = running_one(fab, command)
    assert agent.terminate() == 0
    wait_gone(list(first.values()))

    # reboot without a broker: the persisted document runs anyway
    fab.broker.stop()
    pidfile.unlink()
    agent.start()
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), timeout=10, what="pidfile")
    pid = int(pidfile.read_text())
    agent.pids.append(pid)
    assert alive(pid)

    # and when the broker comes back, the report shows that same process
    fab.broker.start()
    fab.reconnect_clients()
    session = fab.wait_online()
    report = fab.wait_report(lambda r: r["session"] == session and bool(running_pids(r)))
    assert running_pids(report) == {key("a"): pid}


@pytest.mark.parametrize(
    "payload",
    [
        b"{not json",
        b'{"revision": "r1", "processes": [{"name": "x"}]}',
        b"{" + b" " * (64 * 1024) + b"}",
        b"other-device",
    ],
    ids=["invalid-json", "schema", "oversized", "other-device"],
)
def test_bad_desired_is_logged_once_and_ignored(fab: Fabric, payload: bytes) -> None:
    if payload == b"other-device":
        payload = (
            document(desired_process("x", SLEEP, device="dev-a"))
            .model_dump_json(by_alias=True)
            .encode()
        )
    agent, before = running_one(fab, SLEEP)

    fab.publish_desired(payload)
    fab.publish_desired(payload)  # the same bad document again: not logged twice
    good = document(desired_process("a", SLEEP), desired_process("c", SLEEP))
    fab.publish_desired(good)  # delivered in order: once applied, the bad ones were seen
    report = fab.wait_report(lambda r: len(running_pids(r)) == 2)
    agent.pids += running_pids(report).values()
    assert running_pids(report)[key("a")] == before[key("a")]
    ignored = [line for line in agent.log_lines() if "ignoring desired" in line.get("msg", "")]
    assert len(ignored) == 1
    assert ignored[0]["level"] == "WARNING"
    assert ignored[0]["device"] == DEVICE


@pytest.mark.fabric_revoked("dev-b")
@pytest.mark.parametrize("case", ["bad-password", "revoked"])
def test_a_refused_login_exits_2_with_a_one_line_reason(
    any_broker: BrokerProcess, tmp_path: Path, case: str
) -> None:
    with Fabric(tmp_path, any_broker) as fab:
        if case == "bad-password":
            wrong = tmp_path / "wrong.password"
            wrong.write_text("not-the-password\n")
            agent = fab.agent(password_file=wrong)
        else:
            agent = fab.agent(device="dev-b")
        agent.start()
        code = agent.wait_exit(timeout=15)
        assert code == 2
        err = [line for line in agent.log_text().splitlines() if line.startswith("devicefabric:")]
        assert len(err) == 1
        assert "refused the login" in err[0]
        assert agent.device in err[0]


@pytest.mark.mosquitto
def test_over_tls_with_a_private_ca(tmp_path: Path, secret: bytes) -> None:
    from tests.support.tls import make_ca_and_server  # noqa: PLC0415

    tls = make_ca_and_server(tmp_path)
    broker = prepare_mosquitto(tmp_path, secret, [DEVICE], tls=tls)
    with running(broker), Fabric(tmp_path, broker) as fab:
        assert broker.url.startswith("mqtts://")
        agent = fab.agent(extra=("--tls-ca", str(tls[0])))
        agent.start()
        session = fab.wait_online()
        fab.publish_desired(document(desired_process("a", SLEEP)))
        report = fab.wait_report(lambda r: len(running_pids(r)) == 1)
        agent.pids += running_pids(report).values()
        assert report["session"] == session
        assert agent.terminate() == 0
        assert fab.wait_doc("status", lambda s: s["state"] == "offline")["reason"] == "shutdown"


def test_after_a_crash_the_next_run_stops_the_orphans_before_running_again(
    fab: Fabric, tmp_path: Path
) -> None:
    agent = fab.agent()
    agent.start()
    first = fab.wait_online()
    fab.publish_desired(document(desired_process("a", SLEEP)))
    orphan = running_pids(fab.wait_report(lambda r: len(running_pids(r)) == 1))[key("a")]
    agent.pids.append(orphan)
    agent.kill()
    assert alive(orphan)  # children lead their own groups: a kill -9 leaves them running

    agent.start()
    session = fab.wait_online(not_session=first)
    report = fab.wait_report(lambda r: r["session"] == session and len(running_pids(r)) == 1)
    fresh = running_pids(report)[key("a")]
    agent.pids.append(fresh)
    assert fresh != orphan
    wait_gone([orphan])  # exactly one copy runs
    assert any("left running by a previous agent run" in line["msg"] for line in agent.log_lines())


def test_allow_lists_refuse_env_and_working_dir_escapes(fab: Fabric, tmp_path: Path) -> None:
    """`PYTHONPATH` would run any code inside an allowed interpreter; `..` after a symlink leaves."""
    work, outside, evil = tmp_path / "work", tmp_path / "outside", tmp_path / "evil"
    for directory in (work, outside, evil):
        directory.mkdir()
    (work / "link").symlink_to(outside)
    marker = tmp_path / "owned"
    (evil / "sitecustomize.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    python = [sys.executable, "-c", "pass"]
    agent = fab.agent(
        extra=(
            *("--allow-command", "/bin/sleep", "--allow-command", shlex.join(python)),
            *("--allow-env", "FLEET_MODE", "--allow-workdir", str(work)),
        )
    )
    agent.start()
    fab.wait_online()
    never: dict[str, Any] = {"restart_policy": "Never"}
    fab.publish_desired(
        document(
            desired_process(
                "ok", SLEEP, env=[EnvVar(name="FLEET_MODE", value="edge")], working_dir=str(work)
            ),
            desired_process(
                "env", python, env=[EnvVar(name="PYTHONPATH", value=str(evil))], **never
            ),
            desired_process("wd", SLEEP, working_dir=f"{work}/link/../outside", **never),
        )
    )
    report = fab.wait_report(
        lambda r: phases(r) == {key("ok"): "Running", key("env"): "Failed", key("wd"): "Failed"}
    )
    agent.pids += running_pids(report).values()
    env_message = report["processes"][key("env")]["message"]
    assert env_message.startswith("env PYTHONPATH refused")
    assert "--allow-env (FLEET_MODE)" in env_message
    wd_message = report["processes"][key("wd")]["message"]
    assert wd_message.startswith(f"workingDir {f'{work}/link/../outside'!r} refused")
    assert "--allow-workdir" in wd_message
    assert not marker.exists()
