"""The meshgate control plane: validation, etcd store, config stream, admin RPCs, CLI."""
