"""Where the real PCD files live (``../shared/data``) and how tests that need them skip without them.

The files are test data from public projects kept beside the project's own checkout, not shipped with it: a
user's clone has no ``../shared``, and there the tests that read them skip with one line saying so. CI sets
``PLAYMENT_TORCH_REQUIRE_SHARED_DATA=1`` (see ``.ci/run``), which turns a missing folder into a failure, so a
moved folder can never make CI pass by skipping.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PCD_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pcd"
PCD_FILES = PCD_DATA / "files"
HAVE_SHARED_DATA = PCD_FILES.is_dir()
REQUIRED = os.environ.get("PLAYMENT_TORCH_REQUIRE_SHARED_DATA", "") not in ("", "0")

requires_shared_data = pytest.mark.skipif(
    not HAVE_SHARED_DATA,
    reason=f"real PCD test files not found at {PCD_DATA} (they live beside the project's checkout)",
)


def shared_files(pattern: str = "*.pcd") -> list[Path]:
    """The real PCD files matching ``pattern``, sorted; empty when the folder is absent."""
    return sorted(PCD_FILES.glob(pattern)) if HAVE_SHARED_DATA else []
