"""The device agent's import set stays lean: `devicefabric agent run` never loads pydantic.

pydantic alone costs the agent about a third of its memory; the agent decodes and encodes with
`config.lean` instead. Checked in a fresh interpreter on the CLI path the device runs, together
with the other libraries a bare install never needs (YAML, Kubernetes, the broker, metrics,
package metadata) and the fabric's own modules that pull them in. (paho itself brings `email`,
`http.client` and `urllib.request` through `urllib.request`; the floor pays for them too, so
they are not listed.) import-linter holds the static imports; this holds what really loads,
lazy imports included.
"""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
import devicefabric.cli as cli
parser = cli.build_parser(cli.command_of(["--log-level", "INFO", "agent", "run", "--help"]))
import devicefabric.agent.running
heavy = sys.argv[1:]
print(",".join(sorted(m for m in sys.modules if m in heavy or m.startswith(tuple(h + "." for h in heavy)))))
"""

# Modules (and their submodules) the agent process must never load.
HEAVY = (
    "pydantic",
    "pydantic_core",
    "yaml",
    "kubernetes",
    "amqtt",
    "aiohttp",
    "prometheus_client",
    "rich",
    "importlib.metadata",
    "devicefabric.broker",
    "devicefabric.bridge",
    "devicefabric.config.wire",
    "devicefabric.config.resource",
)


def test_the_agent_command_imports_no_pydantic_and_no_heavy_library() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *HEAVY],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == "", f"the agent imported {out.stdout.strip()}"


def test_the_full_cli_still_builds_every_command() -> None:
    from devicefabric.cli import build_parser, command_of  # noqa: PLC0415

    assert command_of(["--log-format", "json", "agent", "run"]) == "agent"
    assert command_of(["--log-level=DEBUG", "bridge"]) == "bridge"
    assert command_of(["--version"]) is None
    full = build_parser().format_help()
    assert "bridge" in full
    assert "agent" in full
    assert "bridge" not in build_parser("agent").format_help()
