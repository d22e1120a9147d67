"""devicefabric: Kubernetes-driven process management for fleets of edge devices over MQTT."""

__version__ = "0.1.0"
