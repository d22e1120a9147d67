"""The test kit: real parts on loopback, for the tests and the benchmarks alike.

The fabric, as a user runs it:
- `fabric`: `Fabric(workdir, broker, plane="local"|"kube"|None)`, a broker, a control plane,
  bridges and agents as subprocesses, waits, and teardown of all of it; `audited(...)` checks the
  kube plane's request log against our RBAC.
- `processes`: `AgentProcess`, `BridgeProcess` (a log level, a launcher for experiments or a
  profiler), `Metrics`; `proc`: `Proc` (runs, logs, bounded stops, freezing, CPU time and RSS)
  and `Command` (a fixed argv); `launch.py`: the CLI with a skewed clock or a task counter.
- `brokers`: mosquitto from our generated config and the embedded broker (`BrokerProcess`);
  `nats`: a 3-node NATS cluster; `fixtures`: the broker fixtures every tier uses.
- `fakeapi`: a Kubernetes API server fake over HTTP (with `kubectl` and `bridge_user`).
- `resources`: DeviceProcess documents and conditions; `ledger`: writes a local plane made, and
  the `Marker` device; `desired`: desired documents as the agent reads them.

Pieces in-process:
- `inproc`: `LoopThread` (an async component in a thread), `BrokerThread`, `Peer`, `RawPeer`;
  `bridges`: a `Bridge` under test; `memoryplane`: an informer-like control plane double;
  `kubeplane`: `KubeControlPlane` against the fake; `devices`: simulated devices (`Fleet`).

Clients and readers:
- `mqtt`: the paho test `Client` (`connect`, `barrier`); `inbox`: the `Inbox` every client
  records into; `packets`: raw MQTT packets; `procfs`: RSS, CPU time, descriptors, threads;
  `cli`: the CLI as a subprocess; `tls`: a throwaway CA.

Plumbing: `waiting` (every wait has a deadline), `ports`, `requires` (skip, but fail on CI).
"""
