"""meshgate: API-gateway features as a per-pod service-mesh sidecar."""

__version__ = "0.1.0"
