"""`python tests/support/launch.py <devicefabric args>`: the real CLI with two test instruments.

The kit (`tests.support.processes`) starts this file instead of `python -m devicefabric` when a
test needs to see or bend something a real process does not expose; everything else is the shipped
CLI, unchanged:

- `FAULTS_CLOCK_OFFSET=<seconds>`: the process's wall clock is that far off (`time.time`,
  `time.time_ns` and `datetime.now`/`utcnow`), like a device whose RTC is hours wrong. The
  monotonic clock is untouched, as on a real device (it counts from boot). This is the one mock
  the tests allow: a clock. It must be installed before `devicefabric` is imported, since
  modules take `datetime` by name at import time.
- `FAULTS_TASKS_FILE=<path>`: every second, the number of asyncio tasks of the running program is
  written to that file (atomically), so a soak can compare task counts before and after.

Run by path (not `-m`), so it needs nothing but the installed `devicefabric`.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time as _time
from typing import Any

_OFFSET = float(os.environ.get("FAULTS_CLOCK_OFFSET") or 0.0)


def _skew_clock(offset: float) -> None:
    real_time, real_time_ns = _time.time, _time.time_ns

    def time() -> float:
        return real_time() + offset

    def time_ns() -> int:
        return real_time_ns() + int(offset * 1e9)

    class SkewedDatetime(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> SkewedDatetime:
            return cls.fromtimestamp(time(), tz)

        @classmethod
        def utcnow(cls) -> SkewedDatetime:
            return cls.fromtimestamp(time(), dt.UTC).replace(tzinfo=None)

    _time.time = time
    _time.time_ns = time_ns
    dt.datetime = SkewedDatetime  # type: ignore[misc]


def _count_tasks(path: str) -> None:
    """Wrap `Bridge.run` and `Agent.run` with a task that records `len(asyncio.all_tasks())`."""
    import asyncio  # noqa: PLC0415 - after the clock is set
    import contextlib  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    target = Path(path)

    async def record() -> None:
        tmp = target.with_name(target.name + ".tmp")
        while True:
            tmp.write_text(f"{len(asyncio.all_tasks()) - 1}\n")  # minus this recorder
            tmp.replace(target)
            await asyncio.sleep(1.0)

    def wrap(cls: Any) -> None:
        original = cls.run

        async def run(self: Any) -> None:
            recorder = asyncio.get_running_loop().create_task(record(), name="faults-tasks")
            try:
                await original(self)
            finally:
                recorder.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await recorder

        cls.run = run

    from devicefabric.agent.running import Agent  # noqa: PLC0415
    from devicefabric.bridge.service import Bridge  # noqa: PLC0415

    wrap(Agent)
    wrap(Bridge)


def main() -> int:
    if _OFFSET:
        _skew_clock(_OFFSET)
    tasks_file = os.environ.get("FAULTS_TASKS_FILE")
    if tasks_file:
        _count_tasks(tasks_file)
    from devicefabric.cli import main as cli_main  # noqa: PLC0415 - after the instruments

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
