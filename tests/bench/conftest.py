"""Tests of the bench harness itself (bench/harness). Fast, no peer virtualenvs.

The repository root goes on sys.path so ``bench`` imports as a package, and this
directory so the helpers (bench_fakes.py) import by a name no other test dir uses.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for path in (ROOT, HERE):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
