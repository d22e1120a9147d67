"""`devicefabric manifests`: print the CRD, RBAC and bridge Deployment for `kubectl apply -f -`.

The text comes from package data (`config/deploy/`) unchanged, comments included, so what a user
applies is what the tests validate. `--namespaced` prints the variant whose bridge watches only its
own namespace with a namespaced Role; `--samples` prints the sample DeviceProcesses instead (apply
them once the CRD is established).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from devicefabric.config import deploybundle as manifests
from devicefabric.runtime.settings import add_command, switch


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    add_command(
        sub,
        "manifests",
        ManifestsSettings,
        _run,
        help="print the Kubernetes manifests (CRD, RBAC, bridge Deployment)",
        description=(
            "Print the DeviceProcess CRD, the bridge's RBAC and its Deployment as one "
            "multi-document YAML stream: devicefabric manifests | kubectl apply -f -"
        ),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ManifestsSettings:
    """`manifests`' switches: which variant of the bundle, or the samples instead."""

    namespaced: bool = switch(
        "--namespaced", "restrict the bridge to its own namespace (a Role instead of a ClusterRole)"
    )
    samples: bool = switch(
        "--samples", "print the sample DeviceProcesses instead (apply after the CRD is established)"
    )


def _run(settings: ManifestsSettings) -> int:
    text = (
        manifests.samples()
        if settings.samples
        else manifests.bundle(namespaced=settings.namespaced)
    )
    sys.stdout.write(text)
    return 0
