"""The broker package: the embedded, hardened MQTT broker and the production mosquitto config.

- `embedded`: `EmbeddedBroker` / `BrokerSettings`, what `devicefabric broker run` and `up` start.
- `auth`: pure admission and access decisions (`Gatekeeper`, `RevocationList`).
- `plugins`: the amqtt auth and topic plugins adapting `auth` to amqtt.
- `hardening`, `routing`, `fanout`, `connection`: subclasses of amqtt 0.12.1 closing its known
  defects (`fanout`: bounded per-client delivery, offline queues and subscriptions).
- `listening`: the accept loop under the connection cap; `throttling`: refusals counted and
  logged rate-limited per client.
- `mosquitto`, `mosquitto_cli`: the generator of mosquitto's configuration from the same rules.
- `cli`: `devicefabric broker ...`; `errors`: `BrokerError`, `BrokerConfigError`.

Nothing is imported here: amqtt is loaded only when the embedded broker runs, so a bare
(agent-only) install can still parse every command line.
"""
