"""The security tests also drive a real MeshKit (tests/meshkit/caharness.py)."""
from __future__ import annotations

import sys
from pathlib import Path

_MESHKIT = str(Path(__file__).resolve().parent.parent / "meshkit")
if _MESHKIT not in sys.path:
    sys.path.insert(0, _MESHKIT)
