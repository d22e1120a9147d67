"""`devicefabric apply/delete/get` through the real CLI: output, exit codes, nothing half-done.

Every test runs `python -m devicefabric ...` as a user would and asserts on the exit code
(0 done, 1 not found, 2 invalid input) and on the lines printed.
"""

from __future__ import annotations

import json
import resource
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from devicefabric.bridge.controlplane.local.store import LocalStore
from devicefabric.cli import verbs
from tests.support.cli import cli_argv, manifest_text, run_cli, write_manifest

WEB = manifest_text("web", "tor9-99", ["sleep", "100"])
JOB = manifest_text("job", "tor9-98", ["true"], extra="  restartPolicy: Never\n")


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def test_apply_prints_created_configured_unchanged(tmp_path: Path, state: Path) -> None:
    path = write_manifest(tmp_path / "app.yaml", WEB, JOB)
    first = run_cli("apply", "-f", str(path), "--state-dir", str(state))
    assert (first.code, first.out) == (0, "deviceprocess/web created\ndeviceprocess/job created\n")
    again = run_cli("apply", "-f", "-", "--state-dir", str(state), stdin=path.read_text())
    assert again.out == "deviceprocess/web unchanged\ndeviceprocess/job unchanged\n"
    write_manifest(path, WEB.replace('"100"', '"200"'), JOB)
    changed = run_cli("apply", "-f", str(path), "--state-dir", str(state))
    assert changed.out == "deviceprocess/web configured\ndeviceprocess/job unchanged\n"
    web = LocalStore(state).load("default/web")
    assert web is not None
    assert web.generation == 2


@pytest.mark.parametrize(
    ("docs", "expected"),
    [
        ((WEB, "kind: [\n"), "bad.yaml: invalid YAML: line"),
        (
            (WEB, JOB.replace("tor9-98", "Tor_98")),
            "document 2 (deviceprocess/job): spec.deviceName",
        ),
        ((WEB, JOB.replace('["true"]', "[]")), "document 2 (deviceprocess/job): spec.command"),
        ((WEB, JOB.replace("name: job", "nam: job")), "document 2: metadata.name: required"),
        ((WEB.replace("DeviceProcess", "Deployment"),), "document 1: kind: expected"),
    ],
)
def test_invalid_file_exits_2_naming_the_field_and_writes_nothing(
    tmp_path: Path, state: Path, docs: tuple[str, ...], expected: str
) -> None:
    path = write_manifest(tmp_path / "bad.yaml", *docs)
    result = run_cli("apply", "-f", str(path), "--state-dir", str(state))
    assert result.code == 2
    assert result.out == ""
    assert expected in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert LocalStore(state).list_keys() == []  # the valid first document was not applied either


def test_apply_of_a_missing_file_exits_2(tmp_path: Path, state: Path) -> None:
    result = run_cli("apply", "-f", str(tmp_path / "nope.yaml"), "--state-dir", str(state))
    assert result.code == 2
    assert "nope.yaml: cannot read: No such file or directory" in result.err


def test_delete_prints_deleted_and_unknown_exits_1(tmp_path: Path, state: Path) -> None:
    path = write_manifest(tmp_path / "app.yaml", WEB, JOB)
    assert run_cli("apply", "-f", str(path), "--state-dir", str(state)).code == 0
    deleted = run_cli("delete", "web", "--state-dir", str(state))
    assert (deleted.code, deleted.out) == (0, "deviceprocess/web deleted\n")
    missing = run_cli("delete", "web", "--state-dir", str(state))
    assert missing.code == 1
    assert (
        missing.err.strip() == 'devicefabric: deviceprocess "web" not found in namespace "default"'
    )
    ignored = run_cli("delete", "web", "--ignore-not-found", "--state-dir", str(state))
    assert ignored.code == 0
    bad = run_cli("delete", "Bad_Name", "--state-dir", str(state))
    assert bad.code == 2
    by_file = run_cli("delete", "-f", str(path), "--ignore-not-found", "--state-dir", str(state))
    assert (by_file.code, by_file.out) == (0, "deviceprocess/job deleted\n")
    assert LocalStore(state).list_keys() == []


def test_get_table_shows_device_phase_connected_restarts_age(tmp_path: Path, state: Path) -> None:
    empty = run_cli("get", "--state-dir", str(state))
    assert (empty.code, empty.out) == (0, "")
    assert "No resources found in default namespace." in empty.err

    path = write_manifest(tmp_path / "app.yaml", WEB, JOB)
    assert run_cli("apply", "-f", str(path), "--state-dir", str(state)).code == 0
    connected = {"type": "AgentConnected", "status": "True", "reason": "Connected"}
    synced = {"type": "Synced", "status": "True", "reason": "Applied"}
    LocalStore(state).patch_status(
        "default/web",
        {"phase": "Running", "restarts": 2, "pid": 42, "conditions": [connected, synced]},
    )
    table = run_cli("get", "--state-dir", str(state))
    rows = [line.split() for line in table.out.splitlines()]
    assert rows[0] == ["NAME", "DEVICE", "PHASE", "CONNECTED", "RESTARTS", "AGE"]
    assert rows[1][:5] == ["job", "tor9-98", "-", "-", "-"]
    assert rows[2][:5] == ["web", "tor9-99", "Running", "True", "2"]
    assert rows[2][5].endswith("s")

    wide = run_cli("get", "web", "-o", "wide", "--state-dir", str(state))
    header, row = (line.split() for line in wide.out.splitlines())
    assert dict(zip(header, row, strict=False))["SYNCED"] == "True"
    assert dict(zip(header, row, strict=False))["PID"] == "42"


def test_get_yaml_and_json_round_trip(tmp_path: Path, state: Path) -> None:
    path = write_manifest(tmp_path / "app.yaml", WEB)
    assert run_cli("apply", "-f", str(path), "--state-dir", str(state)).code == 0
    as_yaml = run_cli("get", "web", "-o", "yaml", "--state-dir", str(state))
    doc = yaml.safe_load(as_yaml.out)
    assert doc["metadata"]["generation"] == 1
    assert doc["spec"]["restartPolicy"] == "Always"
    # What `get -o yaml` prints applies back unchanged (server fields and status are ignored).
    reapplied = run_cli("apply", "-f", "-", "--state-dir", str(state), stdin=as_yaml.out)
    assert reapplied.out == "deviceprocess/web unchanged\n"
    listing = json.loads(run_cli("get", "-o", "json", "--state-dir", str(state)).out)
    assert [item["metadata"]["name"] for item in listing["items"]] == ["web"]
    unknown = run_cli("get", "nope", "--state-dir", str(state))
    assert unknown.code == 1


def test_namespaces_are_separate(tmp_path: Path, state: Path) -> None:
    path = write_manifest(tmp_path / "app.yaml", WEB)
    assert run_cli("apply", "-f", str(path), "-n", "lab", "--state-dir", str(state)).code == 0
    assert run_cli("get", "--state-dir", str(state)).out == ""
    everywhere = run_cli("get", "-A", "--state-dir", str(state)).out.splitlines()
    assert everywhere[1].split()[:2] == ["lab", "web"]
    assert run_cli("delete", "web", "--state-dir", str(state)).code == 1
    assert run_cli("delete", "web", "-n", "lab", "--state-dir", str(state)).code == 0


def test_a_repeated_key_is_refused_with_its_line(tmp_path: Path) -> None:
    """YAML's "last one wins" would silently drop what was written first; kubectl refuses it."""
    path = tmp_path / "dup.yaml"
    path.write_text(
        "apiVersion: devicefabric.io/v1alpha1\nkind: DeviceProcess\nmetadata: {name: web}\n"
        "spec:\n  deviceName: edge-1\n  deviceName: edge-2\n  command: [x]\n"
    )
    result = run_cli("apply", "-f", str(path), "--state-dir", str(tmp_path / "s"))
    assert result.code == 2
    (line,) = result.err.strip().splitlines()
    assert "line 6" in line
    assert "'deviceName' appears twice (first on line 5)" in line
    assert not (tmp_path / "s" / "resources").exists()


def test_input_that_is_not_utf8_is_one_line_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(manifest_text("caf\xe9", "edge-1", ["x"]).encode("latin-1"))
    result = run_cli("apply", "-f", str(path), "--state-dir", str(tmp_path / "s"))
    assert result.code == 2
    assert len(result.err.strip().splitlines()) == 1
    assert "Traceback" not in result.err


def _no_room() -> None:
    """A real EFBIG on every write past 10 bytes (a full disk, as the process sees it)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (10, 10))


def test_a_full_disk_is_one_line_and_exit_1(tmp_path: Path) -> None:
    path = write_manifest(tmp_path / "web.yaml", manifest_text("web", "edge-1", ["x"]))
    state = tmp_path / "s"
    done = subprocess.run(
        cli_argv("apply", "-f", str(path), "--state-dir", str(state)),
        preexec_fn=_no_room,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line == f"devicefabric: cannot write to {state}: File too large"


def test_apply_is_all_or_nothing_and_long_names_fit(tmp_path: Path) -> None:
    """A 250-character name (valid in Kubernetes, and the longest a file named after it allows)
    is stored; 251 is refused before anything is written; a write failing half-way through a file
    (a full disk) leaves neither documents nor a revision the journal does not know."""
    state = tmp_path / "s"
    longest = "a" * 250
    ok = write_manifest(tmp_path / "ok.yaml", manifest_text(longest, "edge-1", ["x"]))
    result = run_cli("apply", "-f", str(ok), "--state-dir", str(state))
    assert result.code == 0, result.err
    assert LocalStore(state).load(f"default/{longest}") is not None

    too_long = "b" * 251
    mixed = write_manifest(
        tmp_path / "mixed.yaml",
        manifest_text("first", "edge-1", ["x"]),
        manifest_text(too_long, "edge-1", ["x"]),
    )
    result = run_cli("apply", "-f", str(mixed), "--state-dir", str(state))
    assert result.code == 2
    assert "at most 250" in result.err
    store = LocalStore(state)
    assert store.load("default/first") is None  # nothing of the file was written

    # a full disk after the first document was staged: nothing lands, revision unchanged
    rev, journal = store.revision(), store.journal_path.read_bytes()
    big = write_manifest(
        tmp_path / "big.yaml",
        manifest_text("small", "edge-1", ["x"]),
        manifest_text("large", "edge-1", ["x" * 3000]),
    )
    done = subprocess.run(
        cli_argv("apply", "-f", str(big), "--state-dir", str(state)),
        preexec_fn=_room_for(2000),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert (store.revision(), store.journal_path.read_bytes()) == (rev, journal)
    assert store.load("default/small") is None
    assert not list((state / "resources").rglob(".tmp-*"))  # no temp file left


def _room_for(size: int) -> Callable[[], None]:
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return limit


def test_input_on_stdin_that_is_not_utf8_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """Before: a traceback (UnicodeEncodeError of the surrogate-escaped text inside yaml)."""
    data = manifest_text("caf\xe9", "edge-1", ["x"]).encode("latin-1")
    done = subprocess.run(
        cli_argv("apply", "-f", "-", "--state-dir", str(tmp_path / "s")),
        input=data,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    (line,) = done.stderr.decode().strip().splitlines()
    assert line.startswith("devicefabric: error: -f -: cannot read:")


@pytest.mark.parametrize("count", [0, 1, 3])
@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_a_list_is_streamed_as_the_same_document(
    capsys: pytest.CaptureFixture[str], count: int, fmt: str
) -> None:
    """`get -o json|yaml` writes item by item; the text reads back as the whole List."""
    docs: list[dict[str, object]] = [
        {"apiVersion": "devicefabric.io/v1alpha1", "kind": "DeviceProcess", "n": i, "x": [1, {}]}
        for i in range(count)
    ]
    verbs._print_documents(iter(docs), fmt, single=False)
    text = capsys.readouterr().out
    whole = {"apiVersion": "v1", "kind": "List", "items": docs}
    if fmt == "json":
        assert text == json.dumps(whole, indent=2) + "\n"
    else:
        assert yaml.safe_load(text) == whole


def test_a_reader_that_leaves_early_stops_get_quietly(tmp_path: Path) -> None:
    """`get -o yaml | head -1`: no traceback, the shell's SIGPIPE status (141)."""
    state = tmp_path / "state"
    docs = [manifest_text(f"p{i:03d}", f"dev-{i}", ["sleep", "60"]) for i in range(400)]
    path = write_manifest(tmp_path / "many.yaml", *docs)
    assert run_cli("apply", "-f", str(path), "--state-dir", str(state)).code == 0
    proc = subprocess.Popen(
        cli_argv("get", "-o", "yaml", "--state-dir", str(state)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith(b"apiVersion")
    proc.stdout.close()  # the reader goes away with most of the List unread
    _, err = proc.communicate(timeout=30)
    assert b"Traceback" not in err, err.decode()
    assert proc.returncode == 141
