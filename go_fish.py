#!/usr/bin/env python3
"""``./go_fish.py LIBRARY [options]``: see tuna/go_fish.py, or run with --help."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tuna.go_fish import cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli())
