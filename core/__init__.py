"""robustad-bench's foundation, shared by the harness and the adapters without either importing
the other: the user-error family, the YAML ↔ constructor schema, the registry, dataset roots
and atomic file writes. Imports nothing of the package outside ``core``."""
