"""Example robustad-bench plugin (see ``pyproject.toml``'s entry points)."""
