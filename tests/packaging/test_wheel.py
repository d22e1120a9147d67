"""The distribution ships exactly the packages and nothing else from the repository's top level.

The packages sit at the root (`agent/`, `bridge/`, ...) beside `tests/`, `bench/`, `docs/` and the
Makefile, and the root is mapped to `devicefabric`: a careless package list or "include package
data" would ship all of it. This builds the real wheel, compares its file list with what git
tracks under the package folders (built from a copy of what a fresh clone holds), then installs it (without dependencies) into a fresh venv and
runs the console script from a folder outside the checkout, so the editable install and the
checkout itself cannot be what answers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("agent", "bridge", "broker", "cli", "config", "runtime")
ROOT_FILES = ("__init__.py", "__main__.py", "py.typed")
DIST_INFO = {"METADATA", "WHEEL", "RECORD", "entry_points.txt", "top_level.txt", "licenses"}


def _tracked_package_files() -> set[str]:
    """The package folders' source and data files as git knows them, under `devicefabric/`."""
    return {
        f"devicefabric/{path}"
        for path in _source_files()
        if (ROOT / path).is_file()
        and (path in ROOT_FILES or path.split("/")[0] in PACKAGES)
        and "__pycache__" not in path
    }


def _source_files() -> list[str]:
    """What a fresh clone would hold: tracked files plus untracked ones git does not ignore."""
    return subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked file list is the reference")
    # Build from a copy, as from a fresh clone: an in-tree build would reuse (and leave) build/.
    source = tmp_path_factory.mktemp("source")
    for name in _source_files():
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    env = {**os.environ, "PIP_NO_INPUT": "1"}
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run(
        [*pip_wheel, "-w", str(out), str(source)],
        cwd=source,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    (path,) = out.glob("devicefabric-*.whl")
    return path


def test_the_wheel_holds_exactly_the_tracked_package_files(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    dist_info = {n for n in names if n.split("/")[0].endswith(".dist-info")}
    shipped = names - dist_info
    assert shipped == _tracked_package_files()
    assert {n.split("/")[1] for n in dist_info} <= DIST_INFO
    # Nothing from the root's other folders and files, whatever the package list says.
    assert not {n for n in shipped if n.split("/")[1] in {"tests", "bench", "docs", "build"}}
    assert "devicefabric/config/deploy/crd.yaml" in shipped
    assert "devicefabric/py.typed" in shipped


def test_the_console_script_runs_from_a_clean_venv(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", str(wheel)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    target = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # The dependencies come from this environment's site-packages, added as a plain path: its
    # .pth files (the editable install's import hook among them) are not processed from there.
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "PYTHONPATH": sysconfig.get_path("purelib"),
        "HOME": str(tmp_path),
    }
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run(
        [python, "-c", "import devicefabric; print(devicefabric.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert where == str(Path(target) / "devicefabric" / "__init__.py")
    version = subprocess.run(
        [str(venv / "bin" / "devicefabric"), "--version"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert version.stdout.startswith("devicefabric ")
    manifests = subprocess.run(
        [python, "-m", "devicefabric", "manifests"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "kind: CustomResourceDefinition" in manifests.stdout
