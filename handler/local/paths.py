"""Where the local tools find the repository's sample data (they run from a checkout, never in the image)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_RASTER = REPO_ROOT / "data" / "test-1.tif"
