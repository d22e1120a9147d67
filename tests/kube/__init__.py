"""Tier 3: the Kubernetes side of the bridge, against a fake API server that speaks real HTTP."""
