"""The deploy manifests shipped as package data (`config/deploy/*.yaml`), read as text.

`devicefabric manifests` prints `bundle()` for `kubectl apply -f -`: the CRDs (DeviceProcess,
Device, DeviceProcessSet: three documents in `crd.yaml`), the RBAC objects and the bridge
Deployment, in that order (the CRDs and the namespace exist before anything that needs them).
`samples()` holds example DeviceProcesses, a Device and a DeviceProcessSet, applied separately once
the CRDs are established.

Invariants: this module only reads package data (no other IO) and does not parse YAML (the config
layer stays free of pyyaml, see the import-linter contracts); the files are YAML with `---`
separators and each document is complete, so joining them is enough. The namespaced variant swaps
the cluster-wide RBAC for one Role in the bridge's namespace (plus a ClusterRole for the
cluster-scoped Devices only) and points `DEVICEFABRIC_NAMESPACE` at the pod's own namespace; `tests/config/test_manifests.py` checks that the rewrite applied.
"""

from __future__ import annotations

from importlib import resources
from typing import Final

from devicefabric import __version__

DEPLOY_PACKAGE: Final = "devicefabric.config"
DEPLOY_DIR: Final = "deploy"

CRD: Final = "crd.yaml"
RBAC: Final = "rbac.yaml"
RBAC_NAMESPACED: Final = "rbac-namespaced.yaml"
DEPLOYMENT: Final = "deployment.yaml"
SAMPLES: Final = "samples.yaml"
ALL: Final = (CRD, RBAC, RBAC_NAMESPACED, DEPLOYMENT, SAMPLES)

NAMESPACE: Final = "devicefabric-system"
"""The namespace the bridge, its ServiceAccount and its leader-election Lease live in."""

LEASE_NAME: Final = "devicefabric-bridge"
"""The default name of the bridge's leader-election Lease."""

IMAGE_REPOSITORY: Final = "ghcr.io/devicefabric/devicefabric"
"""Where the bridge image (built from the repository's Containerfile) is published."""

IMAGE: Final = f"{IMAGE_REPOSITORY}:{__version__}"
"""The image the Deployment runs: its tag is the package version (the manifest is checked)."""

_ALL_NAMESPACES_ENV: Final = """\
            - name: DEVICEFABRIC_NAMESPACE
              value: ""
"""
_OWN_NAMESPACE_ENV: Final = """\
            - name: DEVICEFABRIC_NAMESPACE
              valueFrom:
                fieldRef:
                  fieldPath: metadata.namespace
"""


def read(name: str) -> str:
    """The text of one manifest file (one of `ALL`)."""
    if name not in ALL:
        raise ValueError(f"unknown manifest {name!r}; expected one of {', '.join(ALL)}")
    return resources.files(DEPLOY_PACKAGE).joinpath(DEPLOY_DIR, name).read_text(encoding="utf-8")


def deployment(namespaced: bool = False) -> str:
    """The bridge Deployment; `namespaced` restricts the bridge to its own namespace."""
    text = read(DEPLOYMENT)
    if not namespaced:
        return text
    if text.count(_ALL_NAMESPACES_ENV) != 1:  # pragma: no cover - pinned by the manifest tests
        raise RuntimeError("deployment.yaml lost its DEVICEFABRIC_NAMESPACE entry")
    return text.replace(_ALL_NAMESPACES_ENV, _OWN_NAMESPACE_ENV)


def bundle(namespaced: bool = False) -> str:
    """CRDs + RBAC + Deployment as one multi-document YAML stream for `kubectl apply -f -`."""
    parts = (read(CRD), read(RBAC_NAMESPACED if namespaced else RBAC), deployment(namespaced))
    return "---\n".join(_terminated(part) for part in parts)


def samples() -> str:
    """Sample DeviceProcesses, a Device and a DeviceProcessSet (apply after the CRDs are
    established)."""
    return read(SAMPLES)


def _terminated(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"
