"""Small synchronous paho helpers for tests: connect as a fabric user, publish, subscribe, collect.

`connect(broker, user, ...)` returns a connected `Client` (paho `CallbackAPIVersion.VERSION2`) whose
network loop runs in its own thread, or raises `ConnectRefusedError` carrying the CONNACK reason
code (None when the broker closed the socket without a CONNACK). The loop is ours, not paho's
`loop_start`, because paho's loop reconnects forever, even after a refused login; ours never
reconnects: a test that wants a new connection makes one.

Every message a client receives lands in its `inbox` (`tests.support.inbox.Inbox`, with
deadline-based `wait_for`). To show that something was *not* delivered without sleeping, publish a marker on a
topic the watcher may receive after the forbidden act and wait for the marker (`barrier`): the
brokers deliver one connection's messages in order, so once the marker is in, anything routed
before it would be too.

`drop()` closes the socket without an MQTT DISCONNECT (the broker must publish the will) and
returns once the broker has closed its side, i.e. once the broker has handled the loss.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, Self

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from devicefabric.config.names import OBSERVER_USER, is_device_name
from tests.support.brokers import BrokerProcess
from tests.support.inbox import TIMEOUT, Inbox, Message

_LOOP_TICK: Final = 0.02


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes | str
    qos: int = 1
    retain: bool = True


class ConnectRefusedError(AssertionError):
    """The broker refused the CONNECT (`reason_code`) or closed without a CONNACK (None)."""

    def __init__(self, reason_code: ReasonCode | None, who: str) -> None:
        self.reason_code = reason_code
        said = f"CONNACK {reason_code} ({reason_code.value})" if reason_code else "no CONNACK"
        super().__init__(f"connect as {who} refused: {said}")


def _payload(payload: bytes | str | dict[str, Any]) -> bytes:
    if isinstance(payload, dict):
        return json.dumps(payload).encode()
    return payload.encode() if isinstance(payload, str) else payload


class Client:
    """One connected test client; use `connect()` to make one."""

    def __init__(self, paho_client: paho.Client, user: str, client_id: str) -> None:
        self.paho = paho_client
        self.user = user
        self.client_id = client_id
        self.inbox = Inbox()
        self.default_qos = 1  # of `subscribe`; the observer's is 0 on NATS (`connect`)
        self.connack = threading.Event()
        self.connack_code: ReasonCode | None = None
        self.session_present: bool | None = None
        self.disconnected = threading.Event()
        self.disconnect_code: ReasonCode | None = None
        self._subacks: dict[int, list[ReasonCode]] = {}
        self._suback_cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        paho_client.on_connect = self._on_connect
        paho_client.on_disconnect = self._on_disconnect
        paho_client.on_message = self._on_message
        paho_client.on_subscribe = self._on_subscribe

    def __repr__(self) -> str:
        return f"<Client {self.user} id={self.client_id}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- paho callbacks (loop thread) --------------------------------------------------------------
    def _on_connect(
        self,
        _client: paho.Client,
        _userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        self.connack_code = reason_code
        self.session_present = bool(flags.session_present)
        self.connack.set()

    def _on_disconnect(
        self,
        _client: paho.Client,
        _userdata: Any,
        _flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        self.disconnect_code = reason_code
        self.disconnected.set()
        self.connack.set()  # wake a connect() waiting for a CONNACK that will never come

    def _on_message(self, _client: paho.Client, _userdata: Any, msg: paho.MQTTMessage) -> None:
        self.inbox.add(Message(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain)))

    def _on_subscribe(
        self,
        _client: paho.Client,
        _userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        with self._suback_cond:
            self._subacks[mid] = list(reason_codes)
            self._suback_cond.notify_all()

    # -- the loop ----------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            rc = self.paho.loop(timeout=_LOOP_TICK)
            if rc != paho.MQTT_ERR_SUCCESS:
                self.disconnected.set()
                self.connack.set()
                return

    def start_loop(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"mqtt-{self.client_id}", daemon=True
        )
        self._thread.start()

    def stop_loop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=TIMEOUT)
        self._thread = None

    # -- acting ------------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.paho.is_connected() and not self.disconnected.is_set()

    def publish(
        self,
        topic: str,
        payload: bytes | str | dict[str, Any] = b"",
        qos: int = 1,
        retain: bool = False,
        timeout: float = TIMEOUT,
    ) -> bool:
        """Publish and wait until acknowledged (QoS>0) or written (QoS0).

        Returns False when the connection closed first (a broker may drop a client for a forbidden
        publish); never raises for that, so tests can assert on what was *delivered*.
        """
        info = self.paho.publish(topic, _payload(payload), qos=qos, retain=retain)
        deadline = time.monotonic() + timeout
        while not self._published(info, deadline):
            if self.disconnected.is_set():
                return False
            if time.monotonic() > deadline:
                raise AssertionError(f"{self}: publish to {topic!r} not acknowledged in {timeout}s")
            time.sleep(0.005)
        return True

    def _published(self, info: paho.MQTTMessageInfo, deadline: float) -> bool:
        """`info.is_published()`, except that a connection closed under it reads as "not yet".

        paho raises RuntimeError ("not currently connected") once the broker has closed the
        connection, possibly before the on_disconnect callback set `disconnected`: wait for that.
        """
        try:
            return info.is_published()
        except RuntimeError:
            self.disconnected.wait(max(0.0, deadline - time.monotonic()))
            return False

    def subscribe(
        self, topic_filter: str, qos: int | None = None, timeout: float = TIMEOUT
    ) -> ReasonCode:
        """Subscribe (at `default_qos` unless given) and return the SUBACK reason code (a failure
        code when refused)."""
        qos = self.default_qos if qos is None else qos
        result, mid = self.paho.subscribe(topic_filter, qos=qos)
        if result != paho.MQTT_ERR_SUCCESS or mid is None:
            raise AssertionError(f"{self}: subscribe {topic_filter!r} failed locally: {result}")
        deadline = time.monotonic() + timeout
        with self._suback_cond:
            while mid not in self._subacks:
                left = deadline - time.monotonic()
                if left <= 0 or self.disconnected.is_set():
                    raise AssertionError(f"{self}: no SUBACK for {topic_filter!r}")
                self._suback_cond.wait(min(left, 0.05))
            return self._subacks.pop(mid)[0]

    def disconnect(self, timeout: float = TIMEOUT) -> None:
        """A graceful MQTT DISCONNECT (no will)."""
        if self.connected:
            self.paho.disconnect()
            self.disconnected.wait(timeout)
        self.stop_loop()
        self._close_socket()

    def drop(self, timeout: float = TIMEOUT) -> None:
        """Close the connection without a DISCONNECT; return when the broker closed its side."""
        self.stop_loop()
        sock = self.paho.socket()
        if not isinstance(sock, socket.socket):
            return
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        try:
            while sock.recv(65536):
                if time.monotonic() > deadline:
                    raise AssertionError(f"{self}: broker kept the connection open after EOF")
        except OSError:
            pass  # a reset also means the broker closed its side
        self.disconnected.set()
        self._close_socket()

    def close(self) -> None:
        """Graceful disconnect if still connected; otherwise just release the socket."""
        self.disconnect()

    def _close_socket(self) -> None:
        sock = self.paho.socket()
        if isinstance(sock, socket.socket):
            sock.close()
        # paho's wake-up socket pair is otherwise closed only by `Client.__del__`, which the cyclic
        # GC may run late enough for a ResourceWarning (an error under our warning filter).
        self.paho._reset_sockets()


class HasPasswords(Protocol):
    def password(self, user: str) -> str: ...


def password_of(broker: HasPasswords, user: str) -> str:
    """`user`'s derived password; a plausible one for a name that has none (a malformed one)."""
    try:
        return broker.password(user)
    except Exception:  # an invalid name has no derived password
        return "x" * 43


def default_client_id(user: str) -> str:
    """A device's own name; a role user gets a unique id that is not a device name."""
    return user if is_device_name(user) else f"{user}_{uuid.uuid4().hex[:8]}"


NATS_FLAPPER_PAUSE: Final = 0.25  # s between tries while NATS holds a reconnecting client id
# A QoS 1 delivery on a NATS cluster goes through JetStream (3 replicas, Raft): on a loaded CI
# machine a leader election can hold it for seconds, so waits for a delivery get longer there.
NATS_PATIENCE: Final = 3 * TIMEOUT


def connect(broker: BrokerProcess, user: str, **kwargs: Any) -> Client:
    """A connected client for `user` (password derived from the broker's secret by default).

    NATS jails a client id that reconnects within about a second (its flapper protection) and
    closes such a CONNECT without a CONNACK: on NATS a missing CONNACK is tried again until the
    CONNECT timeout, as a real client's back-off would. Other brokers get exactly one try.
    """
    if broker.kind != "nats":
        return _connect(broker, user, **kwargs)
    deadline = time.monotonic() + float(kwargs.get("timeout", TIMEOUT)) * 2
    while True:
        try:
            client = _connect(broker, user, **kwargs)
        except ConnectRefusedError as exc:
            if exc.reason_code is not None or time.monotonic() > deadline:
                raise
            time.sleep(NATS_FLAPPER_PAUSE)
        else:
            client.inbox.patience = NATS_PATIENCE
            if user == OBSERVER_USER:  # it may not subscribe at QoS 1 there (broker/nats.py)
                client.default_qos = 0
            return client


def _connect(
    broker: BrokerProcess,
    user: str,
    *,
    client_id: str | None = None,
    password: str | None = None,
    will: Will | None = None,
    keepalive: int = 60,
    clean: bool = True,
    protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv311,
    timeout: float = TIMEOUT,
) -> Client:
    """A connected client for `user` (password derived from the broker's secret by default)."""
    cid = default_client_id(user) if client_id is None else client_id
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=cid,
        protocol=protocol,
        clean_session=clean if protocol != MQTTProtocolVersion.MQTTv5 else None,
    )
    client.username_pw_set(user, password if password is not None else password_of(broker, user))
    if broker.tls_ca is not None:
        client.tls_set(ca_certs=str(broker.tls_ca))
    if will is not None:
        client.will_set(will.topic, _payload(will.payload), qos=will.qos, retain=will.retain)
    wrapper = Client(client, user, cid)
    client.connect(broker.host, broker.port, keepalive=keepalive)
    wrapper.start_loop()
    if not wrapper.connack.wait(timeout):
        wrapper.drop(timeout=1.0)
        raise AssertionError(f"connect as {user}: no CONNACK within {timeout}s")
    code = wrapper.connack_code
    if code is None or code.is_failure:
        wrapper.stop_loop()
        wrapper._close_socket()
        raise ConnectRefusedError(code, user)
    return wrapper


def connack(broker: BrokerProcess, user: str, **kwargs: Any) -> ReasonCode | None:
    """The CONNACK reason code a CONNECT gets (None: closed without one); accepted ones close."""
    try:
        client = connect(broker, user, **kwargs)
    except ConnectRefusedError as exc:
        return exc.reason_code
    code = client.connack_code
    client.close()
    return code


def barrier(publisher: Client, topic: str, watchers: Sequence[Client]) -> bytes:
    """Publish a unique marker on `topic`, wait until every watcher received it; return it."""
    token = f"marker-{uuid.uuid4().hex}".encode()
    if not publisher.publish(topic, token, qos=1):
        raise AssertionError(f"{publisher} lost its connection publishing the marker")
    for watcher in watchers:
        watcher.inbox.wait_for(topic, lambda m: m.payload == token)
    return token
