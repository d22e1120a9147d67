"""Control-plane backends: where DeviceProcess resources live (Kubernetes, or a local directory)."""
