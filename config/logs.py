"""Structured logging shared by every program: `--log-format text|json`, `--log-level`.

Every record carries `component`; callers pass `device`, `session`, `resource`, `reason` through
`extra=` and both formatters print them as key=value (text) or fields (json). Text is the default
on a terminal, json otherwise.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Final

CONTEXT_FIELDS: Final = ("device", "session", "resource", "reason", "client_id", "topic")


def _context(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k in CONTEXT_FIELDS if (v := getattr(record, k, None)) is not None}


def _component(record: logging.LogRecord) -> str:
    return str(getattr(record, "component", record.name.removeprefix("devicefabric.")))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%H:%M:%S", time.localtime(record.created))
        ctx = " ".join(f"{k}={v}" for k, v in _context(record).items())
        line = f"{ts} {record.levelname:<7} {_component(record)}: {record.getMessage()}"
        if ctx:
            line += f"  [{ctx}]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "component": _component(record),
            "msg": record.getMessage(),
            **_context(record),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup_logging(level: str = "INFO", fmt: str | None = None) -> None:
    """Configure the root logger once for a program."""
    chosen = fmt or ("text" if sys.stderr.isatty() else "json")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter() if chosen == "text" else JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # amqtt logs every packet at INFO/DEBUG under its own names; keep it quiet unless asked.
    if level.upper() != "DEBUG":
        for noisy in ("amqtt", "transitions", "kubernetes", "urllib3"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
