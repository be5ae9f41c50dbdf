#!/usr/bin/env python3
"""SequoiaCM cluster upgrade tool: `python scm.py cluster --upgrade ...`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scmflow.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
