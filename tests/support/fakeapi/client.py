"""A plain-HTTP client for tests that talk to the fake without any Kubernetes library.

`Http(url, user)` sends one request and returns `(status, body)` with the body decoded from JSON;
`watch(...)` opens a watch and yields its decoded lines until the stream ends (`WatchEnded`
records whether it ended cleanly or was cut). Being plain `http.client`, it shows the wire
behaviour exactly: status codes, chunked framing, `Retry-After` headers.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

DP_PATH: Final = "/apis/devicefabric.io/v1alpha1/namespaces/{ns}/deviceprocesses"


def dp_path(namespace: str = "default", name: str = "", subresource: str = "") -> str:
    path = DP_PATH.format(ns=namespace)
    return "/".join(p for p in (path, name, subresource) if p)


def device_process(name: str, device: str = "tor9-99", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "devicefabric.io/v1alpha1",
        "kind": "DeviceProcess",
        "metadata": {"name": name},
        "spec": {"deviceName": device, "command": ["sleep", "60"], **spec},
    }


FLEET: Final = "/apis/devicefabric.io/v1alpha1"
DEVICES: Final = f"{FLEET}/devices"


def device_path(name: str = "", subresource: str = "") -> str:
    """A Device URL: cluster-scoped, so no namespace."""
    return "/".join(p for p in (DEVICES, name, subresource) if p)


def set_path(namespace: str | None = "default", name: str = "", subresource: str = "") -> str:
    """A DeviceProcessSet URL; `namespace` None: across every namespace."""
    base = (
        f"{FLEET}/deviceprocesssets"
        if namespace is None
        else (f"{FLEET}/namespaces/{namespace}/deviceprocesssets")
    )
    return "/".join(p for p in (base, name, subresource) if p)


def device(name: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "devicefabric.io/v1alpha1",
        "kind": "Device",
        "metadata": {"name": name, **({"labels": labels} if labels else {})},
    }


def process_set(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "devicefabric.io/v1alpha1",
        "kind": "DeviceProcessSet",
        "metadata": {"name": name},
        "spec": {"template": {"command": ["sleep", "60"]}, **spec},
    }


@dataclass
class Response:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class WatchEnded:
    clean: bool = False
    error: str = ""


class Http:
    """Requests against the fake as `user` (a bearer token, logged by the fake)."""

    def __init__(self, url: str, user: str = "admin", timeout: float = 5.0) -> None:
        split = urlsplit(url)
        self.host, self.port = split.hostname or "127.0.0.1", split.port or 80
        self.user = user
        self.timeout = timeout

    def _connection(self, timeout: float | None = None) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout or self.timeout)

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        content_type: str = "application/json",
        **query: str,
    ) -> Response:
        conn = self._connection()
        try:
            data = body if isinstance(body, bytes) else None if body is None else json.dumps(body)
            headers = {"Authorization": f"Bearer {self.user}", "Content-Type": content_type}
            target = f"{path}?{urlencode(query)}" if query else path
            conn.request(method, target, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            decoded = json.loads(raw) if raw else None
            return Response(resp.status, decoded, {k.lower(): v for k, v in resp.getheaders()})
        finally:
            conn.close()

    def get(self, path: str, **query: str) -> Response:
        return self.request("GET", path, **query)

    def create(self, obj: dict[str, Any], namespace: str = "default") -> Response:
        return self.request("POST", dp_path(namespace), obj)

    def merge(self, path: str, patch: dict[str, Any]) -> Response:
        return self.request("PATCH", path, patch, "application/merge-patch+json")

    def watch(
        self, path: str, ended: WatchEnded | None = None, timeout: float = 5.0, **query: str
    ) -> Iterator[dict[str, Any]]:
        """Yield watch events; on return `ended` says how the stream finished.

        The chunked framing is parsed here, not by http.client, which reports a cut connection
        and a terminating chunk alike (as an empty read).
        """
        ended = ended if ended is not None else WatchEnded()
        target = f"{path}?{urlencode({'watch': 'true', **query})}"
        with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
            request = (
                f"GET {target} HTTP/1.1\r\nHost: {self.host}\r\n"
                f"Authorization: Bearer {self.user}\r\n\r\n"
            )
            sock.sendall(request.encode())
            stream = sock.makefile("rb")
            status = stream.readline().split()
            if len(status) < 2 or status[1] != b"200":
                ended.error = f"status {status[1:2]}"
                return
            while stream.readline() not in (b"\r\n", b""):
                pass  # headers
            buffer = b""
            while True:
                size_line = stream.readline()
                if not size_line.strip():
                    ended.error = "connection cut"
                    return
                size = int(size_line.strip(), 16)
                if size == 0:
                    ended.clean = True
                    return
                buffer += stream.read(size + 2)[:size]
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    yield json.loads(line)


def created(http: Http, name: str = "p1", **spec: Any) -> dict[str, Any]:
    resp = http.create(device_process(name, **spec))
    assert resp.status == 201, resp.body
    body: dict[str, Any] = resp.body
    return body


def rv(obj: dict[str, Any]) -> int:
    return int(obj["metadata"]["resourceVersion"])


LEASES = "/apis/coordination.k8s.io/v1/namespaces/devicefabric-system/leases"


def lease(holder: str) -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "devicefabric-bridge"},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 15,
            "renewTime": "2025-01-01T00:00:00.000000Z",
        },
    }


def take(
    events: Iterator[dict[str, Any]], n: int, skip_bookmarks: bool = True
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for event in events:
        if skip_bookmarks and event["type"] == "BOOKMARK":
            continue
        out.append(event)
        if len(out) == n:
            break
    return out
