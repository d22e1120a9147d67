"""Benchmark 12, a status-write storm on the local control plane at fleet scale.

What it guards: `changes.log` rotates every ~11,000 writes,
and each rotation made the bridge's informer re-read and parse every resource (0.7 s at 5,000,
1.3 s at 10,000): a storm cost O(N^2). Every status write and its journal echo also parsed the
resource's YAML file again.

Setup per N (`--sizes`, default 5,000 and 10,000): N DeviceProcesses in a fresh state directory
(`LocalStore.apply`), then `LocalControlPlane.run()` (the informer `up` and `bridge run
--control-plane local` use) following the journal, and `--writes` status patches (default
20,000, so the journal rotates at least once) through `LocalControlPlane.patch_status`, spread
over the N resources, as the bridge writes them during a mass disconnect. Measured in this process:
wall time and CPU time of the storm (until the informer has caught up with the last write),
relists of the whole directory the informer made (counted from its log), and resource files
parsed (where the store counts them).

Usage: `python -m bench.storm [--quick] [--sizes 5000,10000] [--writes 20000]`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

from bench.harness import Defaults, Result, count, main, ms
from devicefabric.bridge.controlplane.local.plane import LocalControlPlane
from devicefabric.bridge.controlplane.local.store import LocalStore
from devicefabric.bridge.controlplane.local.userfiles import Manifest


class _Relists(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "relisting" in record.getMessage():
            self.count += 1


async def _storm(state: Path, n: int, writes: int) -> dict[str, Any]:
    plane = LocalControlPlane(state)
    notified = 0

    def on_change(_key: str) -> None:
        nonlocal notified
        notified += 1

    task = asyncio.create_task(plane.run(on_change), name="local-control-plane")
    try:
        await asyncio.wait_for(plane.synced.wait(), 600)
        parses0 = getattr(plane.store, "parses", None)
        keys = [f"default/st-{i:05d}" for i in range(n)]
        cpu0, t0 = time.process_time(), time.monotonic()
        for w in range(writes):
            await plane.patch_status(keys[w % n], {"restarts": w})
        last = plane.store.revision()

        def caught_up() -> bool:
            return (
                all(
                    (r := plane.get(k)) is not None and int(r.resource_version) <= last
                    for k in keys[-3:]
                )
                and plane.store.revision() == last
            )

        while not caught_up():  # noqa: ASYNC110 - polled from outside, as any reader would
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)  # the informer's last poll
        wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
        parses = getattr(plane.store, "parses", None)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return {
        "devices": n,
        "writes": writes,
        "wall_s": wall,
        "cpu_s": cpu,
        "notified": notified,
        "parses": None if parses is None or parses0 is None else parses - parses0,
    }


def _one(n: int, writes: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-storm-") as tmp:
        state = Path(tmp) / "state"
        spec = {"command": ["sleep", "infinity"]}
        LocalStore(state).apply(
            [Manifest("default", f"st-{i:05d}", {"deviceName": f"st-{i:05d}", **spec})
             for i in range(n)]
        )  # fmt: skip
        counter = _Relists()
        logger = logging.getLogger("devicefabric.bridge.local")
        logger.addHandler(counter)
        logger.setLevel(logging.INFO)
        try:
            out = asyncio.run(_storm(state, n, writes))
        finally:
            logger.removeHandler(counter)
        out["relists"] = counter.count
        return out


DEFAULTS: Final[Defaults] = {"sizes": ("5000,10000", "2000"), "writes": (20_000, 12_000)}


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", help="comma-separated numbers of resources")
    p.add_argument("--writes", type=int, help="status patches in the storm")


def run(args: argparse.Namespace, result: Result) -> Result:
    for m in result.over_sizes(args.sizes, lambda n: _one(n, args.writes)):
        per_write_us = m["cpu_s"] / m["writes"] * 1e6
        cpu = f"CPU {m['cpu_s']:.2f} s ({per_write_us:.0f} us per write)"
        result.row(
            f"local N={m['devices']:,}: {m['writes']:,} status writes -> informer caught up (relists)",
            f"{ms(m['wall_s'])} ({count(m['relists'])})",
            goal="0 relists",
            met=m["relists"] == 0,
            note=f"{cpu}; resource files parsed: {m['parses']}",
        )
    return result.finish()


if __name__ == "__main__":
    main(sys.modules[__name__])
