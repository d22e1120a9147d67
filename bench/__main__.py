"""`python -m bench`: run every benchmark and print one summary table.

    python -m bench                      # all of them with their defaults (~25 min on 2 cores)
    python -m bench --quick              # all of them, smaller (a few minutes)
    python -m bench --only writes,ingest # some of them
    python -m bench --readme README.md   # also replace the README's `## Benchmarks` section

Each benchmark also runs alone (`python -m bench.propagation --help`) and writes
`bench/results/<name>.json`; this writes `bench/results/summary.json` and `summary.md`. A benchmark
that fails is reported in the table and the others still run; the exit code is then 1.

Every figure is a ratio against its floor, measured in the same run. `bench/` and `tests/` are
namespace packages (no `__init__.py`): the repository root is the `devicefabric` package, and they
must not be walked as part of it. Never part of `make test`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
import time
import traceback
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from bench.harness import (
    RESULTS,
    SUMMARY_HEADERS,
    Row,
    machine,
    machine_line,
    summary_table,
    versions,
)
from bench.harness import main as run_bench

# In the order of DESIGN.md's "Benchmarks the project keeps".
BENCHMARKS: Final = (
    "propagation",
    "detection",
    "writes",
    "ingest",
    "footprint",
    "brokers",
    "scale",
    "cluster",
    "embedded_scale",
    "sharded_ingest",
    "replay",
    "storm",
)
HEADING: Final = "## Benchmarks"


def _run_one(name: str, quick: bool) -> tuple[list[Row], str | None]:
    module = importlib.import_module(f"bench.{name}")
    print(f"\n=== {name} {'(quick)' if quick else ''}", flush=True)
    started = time.monotonic()
    try:
        result = run_bench(module, ["--quick"] if quick else [])
    except Exception as exc:
        traceback.print_exc()
        return [Row(name, "FAILED", f"{type(exc).__name__}: {exc}"[:120], met=False)], str(exc)
    print(f"=== {name}: {time.monotonic() - started:.0f} s", flush=True)
    return result.rows, None


def markdown(
    rows: list[Row], started: datetime, quick: bool, load: tuple[float, float] = (0.0, 0.0)
) -> str:
    info = machine()
    pinned = versions()
    mode = " --quick" if quick else ""
    lines = [
        HEADING,
        "",
        (
            f"Measured {started:%Y-%m-%d} with `make bench` (`python -m bench{mode}`) on "
            f"{machine_line(info)}; mosquitto {pinned['mosquitto']}, paho-mqtt "
            f"{pinned['paho-mqtt']}, pydantic {pinned['pydantic']}, amqtt {pinned['amqtt']} "
            f"(1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end). Every "
            "floor was measured in the same run as the figure next to it (or is analytical, when "
            "the row says so): the ratio is what to compare across machines, not the milliseconds."
        ),
        "",
        summary_table(rows),
        "",
        (
            "Reading it: `exp.` rows are experiments, not the shipped settings: the same "
            "measurement with one bridge or broker setting changed, to show where the time goes "
            "(the bench starts the shipped CLI with that setting replaced). `analytical` rows "
            "count the replaced HTTP-polling design for the same scenario instead of running it; "
            "`extrapolated` rows scale a measured cost. A `**no**` is a goal of the project not "
            "met in this run; the benchmark's JSON and module docstring say how it was measured."
        ),
        "",
        (
            "How to rerun: `make bench` (about 20 minutes on 2 cores), or "
            "`.venv/bin/python -m bench --quick` (a few minutes); one benchmark alone: "
            "`.venv/bin/python -m bench.propagation --help` (also "
            + ", ".join(f"`{name}`" for name in BENCHMARKS[1:])
            + "). Each writes `bench/results/<name>.json` with the machine, "
            "versions, parameters, raw samples, median and p99; the method of each is the module "
            "docstring in `bench/`. Needs mosquitto (`/usr/sbin/mosquitto`); run from the "
            "repository root (the Kubernetes benchmarks use the API server fake in `tests/support/fakeapi`)."
        ),
        "",
    ]
    return "\n".join(lines)


def _with_kept_rows(rows: list[Row], ran: list[str], readme: Path | None = None) -> list[Row]:
    """`rows` of the benchmarks that ran, and the last recorded rows of the others, in order:
    from their `bench/results/<name>.json`, else (a fresh clone keeps no results) from the
    table already in `readme`."""
    fresh = {name: [r for r in rows if r.bench == name] for name in ran}
    published = _readme_rows(readme) if readme is not None and readme.is_file() else []
    out: list[Row] = []
    for name in BENCHMARKS:
        if name in fresh:
            out += fresh[name]
            continue
        path = RESULTS / f"{name}.json"
        if path.is_file():
            out += [Row(**d) for d in json.loads(path.read_text(encoding="utf-8"))["summary"]]
        else:
            out += [r for r in published if r.bench == name]
    return out


def _readme_rows(readme: Path) -> list[Row]:
    """The rows of the summary table in `readme`'s benchmark section (cells as printed)."""
    section = re.search(
        rf"^{re.escape(HEADING)}\s*$(.*?)(?=^## |\Z)",
        readme.read_text(encoding="utf-8"),
        re.MULTILINE | re.DOTALL,
    )
    out: list[Row] = []
    for line in (section.group(1) if section else "").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if (
            len(cells) != len(SUMMARY_HEADERS)
            or cells[0] in ("bench", "")
            or set(cells[0]) <= {"-"}
        ):
            continue
        met = {"yes": True, "**no**": False}.get(cells[6])
        out.append(Row(cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], met))
    return out


def replace_section(path: Path, section: str) -> None:
    """Replace `## Benchmarks` up to the next `## ` heading (or the end), else append it."""
    text = path.read_text(encoding="utf-8")
    pattern = re.compile(rf"^{re.escape(HEADING)}\s*$.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        new = pattern.sub(lambda _m: section.rstrip("\n") + "\n\n", text, count=1)
        new = new.rstrip("\n") + "\n"
    else:
        new = text.rstrip("\n") + "\n\n" + section
    path.write_text(new, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="every benchmark in quick mode")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--readme", type=Path, help="replace this file's `## Benchmarks` section")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="with --only: the table keeps the other benchmarks' rows from their last results "
        "(bench/results/<name>.json of an earlier run on this machine)",
    )
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    started = datetime.now(UTC)
    load0 = os.getloadavg()[0]
    print(f"devicefabric benchmarks, {started:%Y-%m-%d %H:%M} UTC, on {machine_line()}")
    rows: list[Row] = []
    failed: list[str] = []
    for name in names:
        found, error = _run_one(name, args.quick)
        rows += found
        if error is not None:
            failed.append(name)
    load = (load0, os.getloadavg()[0])
    if args.keep:
        rows = _with_kept_rows(rows, names, args.readme)
    section = markdown(rows, started, args.quick, load)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "summary.md").write_text(section, encoding="utf-8")
    (RESULTS / "summary.json").write_text(
        json.dumps(
            {
                "date": started.isoformat(timespec="seconds"),
                "quick": args.quick,
                "machine": machine(),
                "versions": versions(),
                "rows": [asdict(r) for r in rows],
                "failed": failed,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"\n{'=' * 30} summary {'=' * 30}")
    print(f"{started:%Y-%m-%d}, {machine_line()}")
    print(summary_table(rows))
    if args.readme is not None:
        replace_section(args.readme, section)
        print(f"updated the `{HEADING}` section of {args.readme}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
