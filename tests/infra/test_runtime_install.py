"""The function's runtime installed as the image installs it (``make runtime-venv``: no extras, not editable).

Both entry points import there, the Lambda one running its INIT on the packaged demo model, and nothing the
local tools need (moto) is installed.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.fixtures.hostile_tiffs import geo_tags, write_tiff
from tests.fixtures.paths import REPO_ROOT

RUNTIME_VENV = REPO_ROOT / os.environ.get("RUNTIME_VENV", ".venv-runtime")
RUNTIME_PYTHON = RUNTIME_VENV / "bin" / "python"

pytestmark = pytest.mark.skipif(
    not RUNTIME_PYTHON.exists() and not os.environ.get("CI"),
    reason=f"{RUNTIME_VENV.name} not built: `make runtime-venv` (make test builds it; CI requires it)",
)


def run_in_runtime_venv(code: str, tmp_path) -> subprocess.CompletedProcess[str]:
    # Nor PROJ's or GDAL's variables: this process set them (model.io.gdal_messages); a fresh container has none.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PROJ_", "GDAL_"))}
    env |= {"AWS_DEFAULT_REGION": "us-east-1", "TMPDIR": str(tmp_path)}
    # -P and a foreign cwd: the installed package is imported, never this checkout's sources.
    return subprocess.run(
        [str(RUNTIME_PYTHON), "-P", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )


def test_runtime_venv_has_no_local_tools_no_training_and_no_torch(tmp_path):
    # The packages too: setuptools' find would install model/training as a namespace package (issue 17).
    absent = ("handler.local", "model.training", "moto", "pytest", "torch", "nncf")
    result = run_in_runtime_venv(
        f"from importlib.util import find_spec; print([m for m in {absent!r} if find_spec(m)])", tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_both_entry_points_import_in_the_runtime_venv(tmp_path):
    # handler.http.relay: `rasterfn relay`, the Knative Eventing relay, needs only runtime dependencies too.
    result = run_in_runtime_venv(
        "import sys, handler.knative, handler.http.relay, handler.lambda_function as f; "
        "print(f.RUNTIME.model.card.name, 'handler.local' in sys.modules, handler.knative.__file__, "
        "f.RUNTIME.model.engine)",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    name, local_loaded, location, engine = result.stdout.split()
    assert local_loaded == "False" and engine == "openvino"
    assert str(RUNTIME_VENV) in location and str(REPO_ROOT / "handler") not in location
    assert name


def test_local_commands_refuse_cleanly_without_the_local_extra(tmp_path):
    # In the runtime venv neither handler/local nor moto is installed.
    result = subprocess.run(
        [str(RUNTIME_VENV / "bin" / "rasterfn"), "demo"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "rasterfn[local]" in result.stderr and "Traceback" not in result.stderr


def test_proj_finds_its_data_and_stays_off_stderr_in_the_runtime_venv(tmp_path):
    # GIVEN a GeoTIFF whose angular-unit GeoKey makes libgeotiff ask PROJ's database (the image's case)
    path = write_tiff(tmp_path / "angular.tif", 32, 24, bands=10, tags=geo_tags(9999, geographic_type=32767))
    # WHEN the installed package reads its header with no PROJ variable set
    result = run_in_runtime_venv(
        "import os, model.io.gdal_messages as g\n"
        "from model.io.raster import open_raster, read_header\n"
        f"with open_raster({str(path)!r}) as src:\n"
        f"    print(read_header(src, 'a.tif').crs, g.packaged_proj_data() is not None, 'PROJ_DATA' in os.environ)\n",
        tmp_path,
    )
    # THEN the CRS reads, PROJ's data is the wheel's, and nothing reached stderr
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["EPSG:4326", "True", "True"]
    assert result.stderr == ""
