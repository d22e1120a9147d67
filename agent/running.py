"""The agent: `Agent.run()` composing session, supervisor, reports and persistence.

    Agent.run()
      outer TaskGroup
        "mqtt session"      Session.run: connect, birth, heartbeats, reconnect; pushes `desired`
        body:  inner TaskGroup
                 "supervisor"  one runner task per process
                 "reporter"    publishes a report whenever the picture changed
                 "persister"   writes the applied document atomically, off the loop
               finally: Session.close()  (retained offline `shutdown`, disconnect)

Before anything starts, children a crashed previous run left behind are stopped (`leftovers`),
then the persisted document is applied, so a device runs what it was told even with no broker.

Shutdown order is the nesting order: cancelling `run()` first unwinds the inner group, so every
child is stopped (SIGTERM, grace, SIGKILL) while the connection is still up; a last report with
the stopped processes follows, and only then is the clean `offline` published and the connection closed. A refused login ends the session task with
`LoginRefusedError`, which stops the children the same way and is re-raised from `run()`.

A desired document is applied synchronously in the MQTT message callback (within milliseconds of
arriving): decode (size, JSON, schema), check every entry names this device, reconcile, act. A
document that fails any check is logged once (per distinct payload) and ignored; what runs stays
as it is. The same document arriving again (a retained replay after a reconnect) changes nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Final

from devicefabric import __version__
from devicefabric.agent import facts
from devicefabric.agent.allowlist import CommandPolicy
from devicefabric.agent.errors import LoginRefusedError
from devicefabric.agent.leftovers import CHILDREN_FILE, ChildLedger
from devicefabric.agent.persisting import StateStore
from devicefabric.agent.process import RestartTiming
from devicefabric.agent.reconciling import RejectedDesiredError, Want, wants_of
from devicefabric.agent.reporting import ReportBook
from devicefabric.agent.session import Session, SessionSettings
from devicefabric.agent.settings import AgentSettings
from devicefabric.agent.supervising import Supervisor
from devicefabric.config import logcodec
from devicefabric.config.errors import PayloadError
from devicefabric.config.lean import Desired, decode_desired
from devicefabric.config.topics import Topics

LOG_DIR: Final = "logs"  # under the state dir: `--log-file` copies
LOGS_PER_S: Final = 10  # logs requests answered a second (the bridge asks at most 2)
log = logging.getLogger("devicefabric.agent")


class Agent:
    """The device agent; `run()` blocks until cancelled (clean shutdown) or a login is refused."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self._changed = asyncio.Event()
        self._save_wanted = asyncio.Event()
        self._to_save: Desired | None = None
        self._applied: Desired | None = None
        self._last_rejected: bytes | None = None
        self._book = ReportBook()
        self._store = StateStore(settings.state_dir, settings.device)
        self._ledger = ChildLedger(settings.state_dir / CHILDREN_FILE)
        self._supervisor = Supervisor(
            policy=CommandPolicy.parse(
                settings.allow_command, env=settings.allow_env, workdirs=settings.allow_workdir
            ),
            restart=RestartTiming(cap=settings.max_backoff_s),
            on_change=self._changed.set,
            ledger=self._ledger,
            log_budget=settings.log_buffer_bytes,
            log_dir=settings.state_dir / LOG_DIR,
            log_file_bytes=settings.log_file_bytes,
        )
        self._session = Session(
            SessionSettings(
                device=settings.device,
                broker=settings.broker,
                fallbacks=settings.fallback_brokers,
                password=settings.password.get_secret_value(),
                heartbeat_s=settings.heartbeat_s,
                topics=Topics(settings.root),
                agent_version=__version__,
                max_reconnect_backoff=settings.max_reconnect_backoff_s,
                tls_ca=settings.tls_ca,
            ),
            on_desired=self.on_desired,
            on_up=self._changed.set,
            facts=facts.gather(),
            on_logs=self.answer_logs,
        )
        self._log_requests: list[float] = []  # times of the last answered logs requests
        self._extra = {"device": settings.device}

    async def run(self) -> None:
        self._store.prepare()
        await self._ledger.stop_leftovers()
        persisted = self._store.load()
        if persisted is not None:
            log.info(
                "running the persisted desired revision %s (%d processes)",
                persisted.revision,
                len(persisted.processes),
                extra=self._extra,
            )
            self._apply(persisted, wants_of(persisted, self.settings.device))
        brokers = ",".join(str(b) for b in (self.settings.broker, *self.settings.fallback_brokers))
        log.info("agent %s started; broker %s", __version__, brokers, extra=self._extra)
        try:
            async with asyncio.TaskGroup() as outer:
                outer.create_task(self._session.run(), name="mqtt session")
                try:
                    async with asyncio.TaskGroup() as inner:
                        inner.create_task(self._supervisor.run(), name="supervisor")
                        inner.create_task(self._report_loop(), name="reporter")
                        inner.create_task(self._persist_loop(), name="persister")
                finally:
                    # Children are stopped now: say so (retained) before the clean offline, so
                    # the resources read `Stopped` rather than the last running pid.
                    self._report()
                    await self._session.close()
        except* LoginRefusedError as group:
            raise group.exceptions[0] from None

    # -- desired -------------------------------------------------------------------------------
    def on_desired(self, payload: bytes) -> None:
        """Apply a `desired` payload from the broker, or log once why it is ignored."""
        try:
            doc = decode_desired(payload)
            wants = wants_of(doc, self.settings.device)
        except (PayloadError, RejectedDesiredError) as exc:
            digest = hashlib.sha256(payload).digest()
            if digest != self._last_rejected:
                self._last_rejected = digest
                log.warning(
                    "ignoring desired document: %s",
                    exc,
                    extra={**self._extra, "reason": f"desired_{exc.reason}"},
                )
            return
        if doc == self._applied:
            log.debug("desired revision %s already applied", doc.revision, extra=self._extra)
            return
        self._apply(doc, wants)
        self._to_save = doc
        self._save_wanted.set()

    def _apply(self, doc: Desired, wants: dict[str, Want]) -> None:
        self._supervisor.apply(wants)
        self._applied = doc
        self._changed.set()
        log.info(
            "applied desired revision %s (%d processes)",
            doc.revision,
            len(wants),
            extra=self._extra,
        )

    # -- logs ----------------------------------------------------------------------------------
    def answer_logs(self, payload: bytes) -> list[bytes]:
        """A `logs/request` -> its reply chunks (never raises; at most `LOGS_PER_S` a second,
        more are dropped: only the bridge may ask, and it asks less)."""
        now = time.monotonic()
        self._log_requests = [t for t in self._log_requests if now - t < 1.0]
        if len(self._log_requests) >= LOGS_PER_S:
            log.info("logs request dropped: more than %d a second", LOGS_PER_S, extra=self._extra)
            return []
        self._log_requests.append(now)
        try:
            request = logcodec.decode_log_request(payload)
        except PayloadError as exc:
            log.info("logs request dropped: %s", exc, extra=self._extra)
            return []
        lines = self._supervisor.logs(
            request.key, request.tail, request.since_seconds, request.stream
        )
        if lines is None:
            error = f"no process {request.key} on this device"
            return logcodec.reply_chunks(request.id, [], error=error)
        wire = [logcodec.LogLine(line.time, "o" if line.stream == "stdout" else "e", line.text)
                for line in lines]  # fmt: skip
        return logcodec.reply_chunks(request.id, wire)

    # -- reports -------------------------------------------------------------------------------
    async def _report_loop(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            self._report()

    def _report(self) -> None:
        session = self._session.live
        if session is None or self._applied is None:
            return
        report = self._book.next(session, self._applied.revision, self._supervisor.snapshot())
        if report is not None and not self._session.publish_report(report.encode()):
            log.debug("report %d not sent: connection down", report.seq, extra=self._extra)

    # -- persistence ---------------------------------------------------------------------------
    async def _persist_loop(self) -> None:
        try:
            while True:
                await self._save_wanted.wait()
                self._save_wanted.clear()
                if self._to_save is not None:
                    await asyncio.to_thread(self._save, self._to_save)
        finally:
            if self._save_wanted.is_set() and self._to_save is not None:
                self._save(self._to_save)  # a document applied just before shutdown

    def _save(self, doc: Desired) -> None:
        try:
            self._store.save(doc)
        except OSError as exc:
            log.error(  # noqa: TRY400 - an IO error, the traceback adds nothing
                "cannot persist desired revision %s: %s",
                doc.revision,
                exc,
                extra={**self._extra, "reason": "persist_failed"},
            )
