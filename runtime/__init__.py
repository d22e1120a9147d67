"""IO utilities the programs share: MQTT, settings, files, time, back-off, process groups, lifecycle.

    mqtt        one MQTT connection, paho's side (client set-up, socket on a loop): no asyncio
    mqttbuffer  a paho client reading 64 KiB at a time, QoS 0 fast path (the bridge's reads)
    mqttloop    the transport on asyncio: futures, clean close, `reconnecting`
    backoff     capped exponential back-off, with or without jitter
    files       atomic writes
    clock       RFC 3339 timestamps
    processes   process groups
    tasks       task groups: the first real error
    lifecycle   signals (first graceful, second forceful), `Closing`, `stop_task`, fd limit
    settings    one settings style: a frozen dataclass per program -> argparse + DEVICEFABRIC_<FLAG>

The layer between the programs (`broker`, `bridge`, `agent`, driven by `cli`) and the pure
contract (`config`): it may import `config`, never a program. The agent imports it, so nothing
here imports a heavy library (pydantic, yaml, amqtt, kubernetes): import-linter checks both.
"""
