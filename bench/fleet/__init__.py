"""The fleet bench: locproxy sidecars on nodes at different network distances from shared backends (see README.md)."""
