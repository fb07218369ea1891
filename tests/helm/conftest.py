"""The chart checks: shared helpers live in chart_support.py (importable from every module here).

These tests need the helm tool environment (helm-python-sdk on Python 3.12); `make helm-lint` runs them
there. Collected by the workspace's own pytest (Python 3.11, no helm_python), each module skips itself
with that reason (`pytest.importorskip("helm_python", ...)` at its top).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for path in (HERE, HERE.parents[1] / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
