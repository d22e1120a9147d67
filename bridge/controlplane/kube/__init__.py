"""The Kubernetes control plane: the API client seam (`client`, the only module that imports the
`kubernetes` package), informers, the plane itself, fleets, Leases and shards."""
