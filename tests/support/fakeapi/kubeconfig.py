"""A kubeconfig file pointing at the fake: what `KUBECONFIG=...` gives kubectl and the bridge.

The user is a bearer token whose text is the user's name (the fake logs it as the requester), so
a test can give the bridge the ServiceAccount's identity and kubectl an admin one, and the RBAC
check can tell their requests apart. Plain HTTP on loopback: no TLS material is written.
`kubectl(binary, kubeconfig, *args)` runs a kubectl with one.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Final

import yaml

BRIDGE_USER: Final = "system:serviceaccount:devicefabric-system:devicefabric-bridge"
ADMIN_USER: Final = "admin"


def bridge_user(pod: str) -> str:
    """The bearer token of bridge replica `pod`: the bridge ServiceAccount, tagged per pod."""
    return f"{BRIDGE_USER}#{pod}"


def write_kubeconfig(
    path: Path, server: str, *, user: str = ADMIN_USER, namespace: str = "default"
) -> Path:
    """Write a kubeconfig with one context (`fake`) for `server`, as `user`, in `namespace`."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "fake-user", "user": {"token": user}}],
        "contexts": [
            {
                "name": "fake",
                "context": {"cluster": "fake", "user": "fake-user", "namespace": namespace},
            }
        ],
        "current-context": "fake",
        "preferences": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    path.chmod(0o600)
    return path


def kubectl(
    binary: str, kubeconfig: Path, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`binary args...` with `KUBECONFIG=kubeconfig`, its output captured (never raises)."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    return subprocess.run(
        [binary, *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
