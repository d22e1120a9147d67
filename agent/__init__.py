"""The device agent: one MQTT session, a process supervisor, persisted desired state.

    cli          `devicefabric agent run` flags -> AgentSettings -> Agent.run under signals
    settings     AgentSettings: a dataclass with explicit checks and one-line errors
    running      Agent: composes everything below; shutdown order; applies `desired`
    session      birth / will / heartbeat / status watch / reconnect back-off
    supervising  one runner task per entry, applied from reconcile plans
    process      one child: spawn, watch, restart policy, crash back-off, graceful stop
    reconciling  pure: desired + running -> start / restart / stop
    reporting    pure: when to publish a report and what it says
    allowlist    `--allow-command/-env/-workdir`: command, env names, workingDir (real paths)
    persisting   the last applied document, written atomically
    leftovers    children of a crashed run, stopped by the next one

Shared with the other programs, from `runtime`: the MQTT transport (`mqtt`, `mqttloop`: the only
paho code), back-off, atomic files, timestamps, process groups. A bare install is enough: import-linter keeps broker, bridge and Kubernetes libraries out of
this package, and pydantic out of the agent process (it decodes and encodes with `config.lean`,
held equal to the pydantic wire models by a property test), which keeps its RSS near paho's.
"""

from devicefabric.agent.errors import AgentError, LoginRefusedError, StateDirError
from devicefabric.agent.running import Agent
from devicefabric.agent.settings import AgentSettings

__all__ = ["Agent", "AgentError", "AgentSettings", "LoginRefusedError", "StateDirError"]
