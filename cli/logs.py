"""`devicefabric logs [-f] [--tail N] NAME`: a DeviceProcess's output, fetched from its device.

The bridge serves `GET /logs/<namespace>/<name>` on its HTTP port (`up` and `bridge run`); this
verb asks it and prints what comes back, as the process printed it. With `-f` it keeps printing
new lines until Ctrl-C (the bridge asks the device every half second). Exit codes: 0; 1 when the
bridge says no (the resource does not exist, its device is offline or does not answer: the
bridge's one line is printed); 2 for usage.

On Kubernetes, reach the bridge through its Service, e.g.
`kubectl -n devicefabric-system port-forward deploy/devicefabric-bridge 8080` and `--http
127.0.0.1:8080`.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from typing import Final
from urllib.parse import quote, urlencode

from devicefabric.bridge.errors import BridgeError
from devicefabric.config.settings import DEFAULT_HTTP, HostPort, parse_hostport
from devicefabric.runtime.settings import add_flag

READ_TIMEOUT: Final = 30.0  # s without a byte before a one-shot request gives up


class LogsRefusedError(BridgeError):
    """The bridge answered with an error (its one line is the message)."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    logs = sub.add_parser("logs", help="a DeviceProcess's output, fetched from its device")
    logs.add_argument("name", metavar="NAME", help="the DeviceProcess")
    logs.add_argument("-n", "--namespace", default="default", help="its namespace")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.add_argument("--tail", type=int, default=100, help="lines to show first (default 100)")
    logs.add_argument("--since", type=int, metavar="SECONDS", help="only lines this recent")
    logs.add_argument(
        "--stream", choices=("stdout", "stderr", "both"), default="both", help="which output"
    )
    add_flag(
        logs,
        "--http",
        default=DEFAULT_HTTP,
        help="the bridge's HTTP address (`up --http`, `bridge run --http`)",
    )
    logs.set_defaults(func=run_logs)


def url_of(address: HostPort, namespace: str, name: str, query: dict[str, str]) -> str:
    path = f"/logs/{quote(namespace, safe='')}/{quote(name, safe='')}"
    return f"http://{address.host}:{address.port}{path}?{urlencode(query)}"


def run_logs(args: argparse.Namespace) -> int:
    from devicefabric.bridge.controlplane.local.userfiles import (  # noqa: PLC0415
        validate_name,
        validate_namespace,
    )

    address = parse_hostport(args.http, "--http")
    query = {"tail": str(args.tail), "stream": args.stream}
    if args.since is not None:
        query["sinceSeconds"] = str(args.since)
    if args.follow:
        query["follow"] = "1"
    url = url_of(
        address, validate_namespace(args.namespace), validate_name(args.name, "NAME"), query
    )
    try:
        with urllib.request.urlopen(url, timeout=None if args.follow else READ_TIMEOUT) as resp:  # noqa: S310 - http:// to the bridge we were told
            while chunk := resp.read1(64 * 1024):
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
    except urllib.error.HTTPError as exc:
        reason = exc.read().decode("utf-8", "replace").strip() or exc.reason
        raise LogsRefusedError(str(reason)) from None
    except urllib.error.URLError as exc:
        raise LogsRefusedError(
            f"cannot reach the bridge at {address.host}:{address.port} ({exc.reason}); "
            "is `devicefabric up` or `bridge run` serving --http there?"
        ) from None
    return 0
