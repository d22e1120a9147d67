"""The bridge image: the Deployment runs the image of this version, and the image can be built.

The agreement tests are cheap and run with the suite: the package version, the Deployment's image
tag, `devicefabric manifests` and the Containerfile's user all agree. The build test (`-m image`,
`make image-test`, outside `make test`) runs `make image` for real: buildah without a daemon over
a debootstrapped base, then the smoke test in a chroot as the image's user (`--version`,
`bridge run --help`, no build tools, and `up` + `status` running inside the image).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import tomllib
from pathlib import Path

import pytest
import yaml

from devicefabric import __version__
from devicefabric.config import deploybundle as manifests

ROOT = Path(__file__).resolve().parents[2]


def _deployment() -> dict[str, object]:
    doc = yaml.safe_load(manifests.deployment())
    assert isinstance(doc, dict)
    return doc


def _container(doc: dict[str, object]) -> dict[str, object]:
    (container,) = doc["spec"]["template"]["spec"]["containers"]  # type: ignore[index]
    assert isinstance(container, dict)
    return container


def test_the_deployment_runs_the_image_of_this_package_version() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["version"] == __version__
    assert f"{manifests.IMAGE_REPOSITORY}:{__version__}" == manifests.IMAGE
    assert _container(_deployment())["image"] == manifests.IMAGE
    for namespaced in (False, True):
        assert f"image: {manifests.IMAGE}\n" in manifests.bundle(namespaced=namespaced)


def test_the_makefile_tags_the_image_as_the_deployment_names_it() -> None:
    out = subprocess.run(
        ["make", "-n", "-s", "image"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert f"image/build.sh {manifests.IMAGE}" in out


def test_the_image_user_is_the_deployment_user_and_runs_the_console_script() -> None:
    text = (ROOT / "Containerfile").read_text(encoding="utf-8")
    (uid,) = re.findall(r"^ARG UID=(\d+)$", text, flags=re.MULTILINE)
    security = _deployment()["spec"]["template"]["spec"]["securityContext"]  # type: ignore[index]
    assert security["runAsUser"] == int(uid)
    assert security["runAsGroup"] == int(uid)
    assert "USER ${UID}:${UID}" in text
    assert 'ENTRYPOINT ["devicefabric"]' in text
    assert _container(_deployment())["args"] == ["bridge", "run"]


def _missing_tools() -> list[str]:
    return [
        tool for tool in ("buildah", "debootstrap", "unshare", "chroot") if not shutil.which(tool)
    ]


@pytest.mark.image
def test_make_image_builds_and_the_smoke_test_passes_in_a_chroot() -> None:
    if os.geteuid() != 0 or _missing_tools():
        pytest.skip(f"needs root and {', '.join(_missing_tools()) or 'nothing else'}")
    started = time.monotonic()
    proc = subprocess.run(
        ["make", "-s", "image"], cwd=ROOT, capture_output=True, text=True, timeout=1500, check=False
    )
    took = time.monotonic() - started
    tail = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, tail
    print(f"make image: {took:.0f} s\n{proc.stdout[-1500:]}")  # shown with -s / -rP
    assert f"uid={65532}(devicefabric)" in proc.stdout
    assert f"devicefabric {__version__}\n" in proc.stdout
    assert "usage: devicefabric bridge run" in proc.stdout
    assert "status     OK (exit 0)" in proc.stdout  # `up` in the image, `status` against it
    assert "up stopped cleanly (exit 0)" in proc.stdout
    assert "smoke test passed" in proc.stdout


def test_the_containerfile_copies_every_package_the_wheel_ships() -> None:
    """The image builds the wheel from the copied tree: a package left out of the COPY lines
    fails the build (it did once, when `runtime` was added), so `make test` checks it."""
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]
    top = sorted({name.split(".")[1] for name in packages if name.count(".") >= 1})
    text = (ROOT / "Containerfile").read_text()
    missing = [p for p in top if f"COPY {p} ./{p}" not in text]
    assert not missing, f"Containerfile does not COPY {missing}"
