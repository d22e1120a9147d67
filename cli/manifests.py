"""`devicefabric manifests`: print the CRD, RBAC and bridge Deployment for `kubectl apply -f -`.

The text comes from package data (`config/deploy/`) unchanged, comments included, so what a user
applies is what the tests validate. `--namespaced` prints the variant whose bridge watches only its
own namespace with a namespaced Role; `--samples` prints the sample DeviceProcesses instead (apply
them once the CRD is established).
"""

from __future__ import annotations

import argparse
import sys

from devicefabric.config import deploybundle as manifests
from devicefabric.runtime.settings import add_flag


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "manifests",
        help="print the Kubernetes manifests (CRD, RBAC, bridge Deployment)",
        description=(
            "Print the DeviceProcess CRD, the bridge's RBAC and its Deployment as one "
            "multi-document YAML stream: devicefabric manifests | kubectl apply -f -"
        ),
    )
    add_flag(
        parser,
        "--namespaced",
        action="store_true",
        help="restrict the bridge to its own namespace (a Role instead of a ClusterRole)",
    )
    add_flag(
        parser,
        "--samples",
        action="store_true",
        help="print the sample DeviceProcesses instead (apply after the CRD is established)",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    text = manifests.samples() if args.samples else manifests.bundle(namespaced=args.namespaced)
    sys.stdout.write(text)
    return 0
