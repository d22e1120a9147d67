"""`devicefabric broker mosquitto-config` as an operator uses it, with the real mosquitto tools.

The story: write a devices file, run the command, start mosquitto on the result, publish as a
device with `mosquitto_pub` and watch as the observer with `mosquitto_sub`, passwords from
`devicefabric creds`. And the errors an operator sees: exit code 2 and one line naming the file
and line.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devicefabric.config.topics import Topics
from tests.support.brokers import MOSQUITTO, BrokerProcess, require_mosquitto, running
from tests.support.cli import mosquitto_config_args, run_cli
from tests.support.ports import free_port

pytestmark = pytest.mark.mosquitto

T = Topics()


@pytest.fixture
def operator_files(tmp_path: Path, secret: bytes) -> tuple[Path, Path]:
    devices = tmp_path / "devices.txt"
    devices.write_text("# site 7\ntor9-99\ntor9-100\n")
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(secret + b"\n")
    return devices, secret_file


def _clients() -> tuple[str, str]:
    sub, pub = shutil.which("mosquitto_sub"), shutil.which("mosquitto_pub")
    if sub is None or pub is None:
        require_mosquitto()
        pytest.skip("mosquitto_sub/mosquitto_pub not installed")
    return sub, pub


def _creds(secret_file: Path, *user: str) -> str:
    result = run_cli("creds", "--secret-file", str(secret_file), *user)
    assert result.code == 0, result.err
    return result.out.strip()


def _generate(out: Path, operator_files: tuple[Path, Path], user: str | None) -> int:
    """`broker mosquitto-config` on a free port, with `--user USER` unless None (the README's
    command); returns the port."""
    devices, secret_file = operator_files
    port = free_port()
    result = run_cli(
        *mosquitto_config_args(out, devices, secret_file),
        "--mqtt",
        f"127.0.0.1:{port}",
        *(["--user", user] if user is not None else []),
    )
    assert result.code == 0, result.err
    assert f"run: mosquitto -c {out / 'mosquitto.conf'}" in result.out
    return port


@pytest.fixture
def mosquitto_account() -> pwd.struct_passwd:
    """The `mosquitto` account mosquitto drops to as root (the test is skipped without one)."""
    try:
        return pwd.getpwnam("mosquitto")
    except KeyError:
        pytest.skip("no `mosquitto` account")


def _publish_and_watch(
    broker: BrokerProcess, secret_file: Path, device: str
) -> subprocess.CompletedProcess[str]:
    sub, pub = _clients()
    where = ["-h", "127.0.0.1", "-p", str(broker.port)]
    as_device = ["-u", device, "-i", device, "-P", _creds(secret_file, "device", device)]
    as_observer = ["-u", "observer", "-I", "observer_", "-P", _creds(secret_file, "observer")]
    retained = ["-q", "1", "-r", "-t", T.status(device), "-m", "online"]
    subprocess.run([pub, *where, *as_device, *retained], check=True, timeout=10)
    return subprocess.run(
        [sub, *where, *as_observer, "-v", "-C", "1", "-W", "5", "-t", T.everything()],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


def _mosquitto(workdir: Path, conf: Path, port: int, secret: bytes) -> BrokerProcess:
    require_mosquitto()
    return BrokerProcess("mosquitto", [str(MOSQUITTO), "-c", str(conf)], port, secret, workdir)


def test_generate_run_publish_and_watch(
    tmp_path: Path, secret: bytes, operator_files: tuple[Path, Path]
) -> None:
    _, secret_file = operator_files
    out = tmp_path / "mosquitto"
    port = _generate(out, operator_files, pwd.getpwuid(os.geteuid()).pw_name)
    with running(_mosquitto(tmp_path, out / "mosquitto.conf", port, secret)) as broker:
        watched = _publish_and_watch(broker, secret_file, "tor9-99")
    assert watched.returncode == 0, watched.stderr
    assert watched.stdout.strip() == f"{T.status('tor9-99')} online"


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another account can reach (pytest's tmp dirs are private to us)."""
    path = Path(tempfile.mkdtemp(prefix="devicefabric-mosquitto-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can hand files to another account")
@pytest.mark.parametrize(
    "user",
    [
        pytest.param("mosquitto", id="with-user-mosquitto"),
        pytest.param(None, id="without-user-as-the-readme-says"),
    ],
)
def test_as_root_the_files_go_to_the_account_mosquitto_drops_to(
    tmp_path: Path,
    secret: bytes,
    operator_files: tuple[Path, Path],
    shared_dir: Path,
    *,
    mosquitto_account: pwd.struct_passwd,
    user: str | None,
) -> None:
    """As root, with `--user mosquitto` or without `--user` (the README's path, how systemd
    starts it): mosquitto drops to its own `mosquitto` account, so the files go to that account
    (before: root's 0600 JSON, unreadable to it, every login refused)."""
    _, secret_file = operator_files
    out = shared_dir / "fabric"
    port = _generate(out, operator_files, user)
    assert "user mosquitto" in (out / "mosquitto.conf").read_text().splitlines()
    dynsec = out / "dynamic-security.json"
    uid = mosquitto_account.pw_uid
    assert (dynsec.stat().st_uid, out.stat().st_uid) == (uid, uid)
    assert dynsec.stat().st_mode & 0o777 == 0o600
    with running(_mosquitto(tmp_path, out / "mosquitto.conf", port, secret)) as broker:
        watched = _publish_and_watch(broker, secret_file, "tor9-100")
        assert "File is not readable" not in broker.log_text()
    assert watched.stdout.strip() == f"{T.status('tor9-100')} online"


def test_a_bad_devices_line_is_exit_code_2_and_one_line(tmp_path: Path, secret: bytes) -> None:
    devices = tmp_path / "devices.txt"
    devices.write_text("tor9-99\nTor9_100\n")
    (tmp_path / "secret").write_bytes(secret)
    result = run_cli(
        "broker",
        "mosquitto-config",
        "--out",
        str(tmp_path / "out"),
        "--devices",
        str(devices),
        "--secret-file",
        str(tmp_path / "secret"),
    )
    assert result.code == 2
    (line,) = result.err.strip().splitlines()
    assert f"{devices}:2: invalid device name 'Tor9_100'" in line
    assert not (tmp_path / "out").exists()


def test_a_missing_secret_is_exit_code_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEVICEFABRIC_SECRET", raising=False)
    devices = tmp_path / "devices.txt"
    devices.write_text("tor9-99\n")
    result = run_cli(
        "broker", "mosquitto-config", "--out", str(tmp_path / "o"), "--devices", str(devices)
    )
    assert result.code == 2
    assert "no fabric secret" in result.err
