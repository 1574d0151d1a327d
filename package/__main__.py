"""``python -m robustad_bench``: the ``robustad-bench`` command."""

from __future__ import annotations

import sys

from robustad_bench.harness.cli import main

if __name__ == "__main__":
    sys.exit(main())
