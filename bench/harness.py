"""The shared harness: machine facts, percentiles, result files, tables and summary rows.

Every benchmark module has `run(args, result) -> result`, `options(parser)` and `DEFAULTS` (each
option's default and its default under `--quick`); `main(module, argv)` parses and runs it.

Every benchmark builds one `Result` (its name, the parameters it ran with, raw samples per series,
derived metrics) and adds `Row`s for the one summary table `python -m bench` prints. `Result.write`
puts `bench/results/<name>.json` next to this file with the machine facts and package versions,
so a number can always be traced to where and with what it was measured.

A `Row` is one line of the summary: what was measured, its value, the floor it is compared with
(measured in the same run, or an analytical figure, which the note says), the ratio, the goal, and
whether the goal holds (None: no goal for this row).

Percentiles are nearest-rank on the sorted samples (p99 of 50 samples is the 50th), so a reported
p99 is always a value that was measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any, Final

from tests.support.brokers import MOSQUITTO

RESULTS: Final = Path(__file__).resolve().parent / "results"
PACKAGES: Final = (
    "devicefabric",
    "paho-mqtt",
    "pydantic",
    "pydantic-core",
    "amqtt",
    "kubernetes",
    "prometheus-client",
)


# -- statistics ------------------------------------------------------------------------------------
def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (`q` in 0..100) of `samples`; NaN when there are none."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summarize(samples: Sequence[float]) -> dict[str, float | int]:
    """n, median, p99, min, max and mean of `samples` (NaN for an empty series)."""
    if not samples:
        return {"n": 0, "median": math.nan, "p99": math.nan}
    return {
        "n": len(samples),
        "median": statistics.median(samples),
        "p90": percentile(samples, 90),
        "p99": percentile(samples, 99),
        "min": min(samples),
        "max": max(samples),
        "mean": statistics.fmean(samples),
    }


# -- machine -----------------------------------------------------------------------------------
def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    return math.nan


def _mosquitto_version() -> str:
    try:
        out = subprocess.run(
            [str(MOSQUITTO), "-h"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    first = out.splitlines()[0] if out else ""
    return first.removeprefix("mosquitto version ").strip() or "unknown"


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    found["mosquitto"] = _mosquitto_version()
    return found


def machine() -> dict[str, Any]:
    """CPU model, cores (online and usable by us), memory, kernel, Python."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gib": _memory_gib(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
    }


def machine_line(info: dict[str, Any] | None = None) -> str:
    info = info if info is not None else machine()
    return (
        f"{info['cpu']}, {info['usable_cores']} cores, {info['memory_gib']} GiB, "
        f"{info['kernel']}, {info['python']}"
    )


# -- rows and results ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Row:
    """One line of the summary table."""

    bench: str
    metric: str
    value: str
    floor: str = ""
    ratio: str = ""
    goal: str = ""
    met: bool | None = None
    note: str = ""


@dataclass
class Result:
    """What one benchmark measured; `write()` makes `bench/results/<name>.json`."""

    name: str
    parameters: dict[str, Any]
    samples: dict[str, list[float]] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    load_at_start: tuple[float, float, float] = field(default_factory=os.getloadavg)

    def series(self, name: str, samples: Iterable[float]) -> dict[str, float | int]:
        """Record a raw series and return (and record) its summary."""
        values = [float(s) for s in samples]
        self.samples[name] = values
        stats = summarize(values)
        self.metrics[name] = stats
        return stats

    def row(self, metric: str, value: str, **kwargs: Any) -> None:
        self.rows.append(Row(self.name, metric, value, **kwargs))

    def versus(
        self, metric: str, value: float, floor: float, show: Callable[[float], str], **kwargs: Any
    ) -> None:
        """A row comparing `value` with its `floor`, both shown by `show`, and their ratio."""
        self.row(metric, show(value), floor=show(floor), ratio=ratio(value, floor), **kwargs)

    def over_sizes(
        self, sizes: str, measure: Callable[[int], dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """`measure(n)` for each of the comma-separated `sizes` in turn, each printed as it ends;
        all of them are recorded as the metric `runs`."""
        runs = []
        for n in (int(s) for s in sizes.split(",")):
            found = measure(n)
            runs.append(found)
            shown = (
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in found.items()
            )
            print(f"  N={n:,}: {', '.join(shown)}", flush=True)
        self.metrics["runs"] = runs
        return runs

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}")

    def document(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "date": datetime.fromtimestamp(self.started, UTC).isoformat(timespec="seconds"),
            "seconds": round(time.time() - self.started, 1),
            "machine": machine(),
            "versions": versions(),
            "loadavg": {"start": self.load_at_start, "end": os.getloadavg()},
            "parameters": self.parameters,
            "metrics": _finite(self.metrics),
            "summary": [asdict(r) for r in self.rows],
            "notes": self.notes,
            "samples": self.samples,
        }

    def write(self, directory: Path = RESULTS) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.name}.json"
        path.write_text(json.dumps(self.document(), indent=1, default=str) + "\n")
        return path

    def finish(self) -> Result:
        """Write the JSON and print this benchmark's rows; return self (for `__main__`)."""
        path = self.write()
        print_rows(self.rows)
        print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
        return self


def _finite(value: Any) -> Any:
    """JSON has no NaN: NaN and infinities become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


# -- formatting ------------------------------------------------------------------------------------
def ms(seconds: float) -> str:
    """Seconds as a millisecond figure with sensible precision."""
    if not math.isfinite(seconds):
        return "n/a"
    value = seconds * 1000
    return (
        f"{value:.2f} ms" if value < 10 else f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"
    )


def ratio(value: float, floor: float) -> str:
    if not (math.isfinite(value) and math.isfinite(floor)) or floor <= 0:
        return "n/a"
    r = value / floor
    return f"{r:.2f}x" if r < 10 else f"{r:.0f}x"


def count(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def per_s(value: float) -> str:
    return f"{count(value)}/s"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A plain text table (also valid Markdown) with left-aligned columns."""
    body = [list(map(str, r)) for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in body)])


SUMMARY_HEADERS: Final = ("bench", "metric", "measured", "floor (same run)", "ratio", "goal", "met")


def _met(met: bool | None) -> str:
    return "" if met is None else "yes" if met else "**no**"


def summary_table(rows: Iterable[Row]) -> str:
    return table(
        SUMMARY_HEADERS,
        ((r.bench, r.metric, r.value, r.floor, r.ratio, r.goal, _met(r.met)) for r in rows),
    )


def print_rows(rows: Sequence[Row]) -> None:
    if rows:
        print(summary_table(rows))


# -- command line ----------------------------------------------------------------------------------
Defaults = dict[str, tuple[Any, Any]]  # option -> (default, default under --quick)


def main(bench: ModuleType, argv: list[str] | None = None) -> Result:
    """Run the benchmark module `bench` (`run(args, result)`, `options(parser)`, `DEFAULTS`) with
    `argv`: `python -m bench.<name>` calls it as its `__main__`, `python -m bench` for each.

    Its command line is `--quick` and what `options` adds; an option in `DEFAULTS` that was not
    given takes its default, or its quick one under `--quick`.
    """
    name = bench.__spec__.name if bench.__spec__ else bench.__name__
    defaults: Defaults = bench.DEFAULTS
    shown = (f"--{k.replace('_', '-')} {d} (quick {q})" for k, (d, q) in defaults.items())
    parser = argparse.ArgumentParser(
        prog=f"python -m {name}",
        description=(bench.__doc__ or "").split("\n\n")[0],
        epilog=f"when not given: {', '.join(shown)}" if defaults else None,
    )
    parser.add_argument("--quick", action="store_true", help="smaller and shorter: a smoke run")
    bench.options(parser)
    args = parser.parse_args(argv)
    for key, (default, quick) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else default)
    result: Result = bench.run(args, Result(name.rpartition(".")[2], vars(args).copy()))
    return result
