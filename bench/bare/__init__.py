"""A bare Django async proxy (no gateway features) for `make bench-clients`."""
