#!/usr/bin/env python3
"""``./example/load_job.py``: the spelling MITuna's docs use for tuna/example/load_job.py."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tuna.cli import run_cli  # noqa: E402
from tuna.example.load_job import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_cli(main))
