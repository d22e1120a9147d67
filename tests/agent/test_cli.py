"""`devicefabric agent run` flags: every configuration error is exit 2 with a one-line reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from devicefabric.cli import main
from tests.support.desired import DEVICE


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "password"
    path.write_text("secret-password\n")
    return path


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"--device": None}, "--device is required"),
        ({"--device": "Not_A_Name"}, "invalid device name"),
        ({"--device": "bridge"}, "reserved"),
        ({"--password-file": None}, "--password-file is required"),
        ({"--password-file": "/nonexistent/password"}, "cannot read password file"),
        ({"--broker": "http://x:1"}, "--broker"),
        ({"--heartbeat": "0"}, "--heartbeat"),
        ({"--max-backoff": "-1"}, "--max-backoff"),
        ({"--log-buffer": "100"}, "--log-buffer: Input should be 0 or between 4096 and"),
        ({"--tls-ca": "/etc/ssl/ca.pem"}, "--tls-ca is only used with an mqtts://"),
        ({"--allow-command": "'unbalanced"}, "--allow-command"),
        ({"--allow-env": "TZ"}, "--allow-env only applies together with --allow-command"),
        ({"--allow-workdir": "/srv"}, "--allow-workdir only applies together with --allow-command"),
        ({"--allow-command": "/bin/", "--allow-workdir": "srv"}, "--allow-workdir"),
        ({"--root": "bad/+/root"}, "--root"),
        ({"--state-dir": "/proc/version/state"}, "state directory"),
    ],
)
def test_configuration_errors_exit_2_with_one_line(
    *,
    tmp_path: Path,
    password_file: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    change: dict[str, str | None],
    expected: str,
) -> None:
    for name in ("DEVICEFABRIC_DEVICE", "DEVICEFABRIC_PASSWORD_FILE", "DEVICEFABRIC_STATE_DIR"):
        monkeypatch.delenv(name, raising=False)
    flags: dict[str, str | None] = {
        "--device": DEVICE,
        "--broker": "mqtt://127.0.0.1:1",
        "--password-file": str(password_file),
        "--state-dir": str(tmp_path / "state"),
        **change,
    }
    argv = ["agent", "run"]
    for flag, value in flags.items():
        if value is not None:
            argv += [flag, value]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("devicefabric: error:")
    assert expected in err[0]


def test_flags_read_their_environment_variables(
    tmp_path: Path, password_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from devicefabric.agent.settings import AgentSettings  # noqa: PLC0415
    from devicefabric.cli import build_parser  # noqa: PLC0415
    from devicefabric.runtime.settings import from_args  # noqa: PLC0415

    monkeypatch.setenv("DEVICEFABRIC_DEVICE", DEVICE)
    monkeypatch.setenv("DEVICEFABRIC_PASSWORD_FILE", str(password_file))
    monkeypatch.setenv("DEVICEFABRIC_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("DEVICEFABRIC_HEARTBEAT", "7")
    monkeypatch.setenv("DEVICEFABRIC_ALLOW_COMMAND", "/opt/a/,/usr/bin/env")
    monkeypatch.setenv("DEVICEFABRIC_ALLOW_ENV", "TZ,FLEET_MODE")
    monkeypatch.setenv("DEVICEFABRIC_ALLOW_WORKDIR", "/srv/fleet")
    monkeypatch.setenv("DEVICEFABRIC_LOG_BUFFER", "0")
    settings = from_args(AgentSettings, build_parser().parse_args(["agent", "run"]))
    assert settings.device == DEVICE
    assert settings.heartbeat_s == 7
    assert settings.allow_command == ("/opt/a/", "/usr/bin/env")
    assert settings.allow_env == ("TZ", "FLEET_MODE")
    assert settings.allow_workdir == ("/srv/fleet",)
    assert settings.log_buffer_bytes == 0
    assert settings.password.get_secret_value() == "secret-password"
    assert "secret-password" not in repr(settings)
