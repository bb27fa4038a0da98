"""What the image ships: the function's runtime and its exported model, nothing a developer alone runs (the
local tools, training, moto, torch, pytest), and its own layers within a size budget."""

from __future__ import annotations

import json

from tests.image.conftest import docker, record_figure

# The image's own layers (above the base): 358 MB when this budget was set (serving venv 348 MB, model 10 MB),
# 375 MB with PyJWT and cryptography (the relay's OIDC check).
OWN_LAYERS_BUDGET_MB = 390
BASE_LABEL = "org.opencontainers.image.base.name"


def run_python(image: str, code: str) -> str:
    # -P: only the installed package, as the entry points import it.
    result = docker(
        "run", "--rm", "--network", "host", "--read-only", "--tmpfs", "/tmp", "--user", "10001:10001",
        "--entrypoint", "python",
        image, "-P", "-c", code, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_only_what_the_function_runs_is_installed(image):
    absent = ("handler.local", "model.training", "moto", "torch", "pytest", "nncf", "pip")
    found = run_python(
        image, f"from importlib.util import find_spec; print([m for m in {absent!r} if find_spec(m) is not None])"
    )
    assert found == "[]"


def test_both_entry_points_import_and_lambda_init_loads_the_serving_engine(image):
    out = run_python(
        image,
        "import os, sys; os.environ['AWS_DEFAULT_REGION'] = 'us-east-1'; "
        "import handler.knative, handler.http.relay, handler.lambda_function as f; "
        "print(f.RUNTIME.model.engine, 'torch' in sys.modules, f.RUNTIME.model.card.name)",
    )
    engine, torch_loaded, card = out.splitlines()[-1].split()
    assert (engine, torch_loaded) == ("openvino", "False")
    assert card


def test_the_image_runs_unprivileged_with_its_entrypoint(image):
    config = json.loads(docker("image", "inspect", image).stdout)[0]["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["/usr/local/bin/rasterfn-entrypoint"]
    assert "8080/tcp" in config["ExposedPorts"]


def test_own_layers_stay_within_the_budget(image):
    inspected = json.loads(docker("image", "inspect", image).stdout)[0]
    base = inspected["Config"]["Labels"][BASE_LABEL]
    base_size = json.loads(docker("image", "inspect", base).stdout)[0]["Size"]
    own_mb = (inspected["Size"] - base_size) / 1e6
    record_figure("image size", f"{inspected['Size'] / 1e6:.0f} MB on {base} ({base_size / 1e6:.0f} MB)")
    record_figure("image own layers", f"{own_mb:.0f} MB (budget {OWN_LAYERS_BUDGET_MB} MB)")
    assert own_mb <= OWN_LAYERS_BUDGET_MB
