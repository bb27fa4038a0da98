"""infra/knative/*.yaml, func.yaml, the Makefile's knative targets, the Dockerfile and the code agree.

These cannot be deployed here, so what can go wrong between them is checked as data: every variable is one the
code reads (or a documented boto3 standard one), the literal values are valid settings, names, ports, image
tags, health paths, secrets, the MinIO webhook target and the bucket are the same everywhere.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from handler import knative
from handler.http import app as http_app
from handler.http.uploads import DEFAULT_STEM
from handler.settings import Settings, env_var_names
from tests.fixtures.paths import REPO_ROOT

REPO = REPO_ROOT
KNATIVE_DIR = REPO / "infra" / "knative"
FUNC_YAML = REPO / "func.yaml"
MAKEFILE = REPO / "Makefile"
DOCKERFILE = REPO / "Dockerfile"
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
SMOKE = KNATIVE_DIR / "smoke.sh"

# boto3/botocore read these themselves (AWS_ENDPOINT_URL since botocore 1.31): documented standard variables.
BOTO3_STANDARD_VARS = {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}
# Read by aws-lambda-powertools' logger and the Python logging setup, if a deployment sets them.
POWERTOOLS_STANDARD_VARS = {"LOG_LEVEL", "POWERTOOLS_LOG_LEVEL", "POWERTOOLS_SERVICE_NAME"}
ALLOWED_FUNCTION_VARS = set(env_var_names()) | BOTO3_STANDARD_VARS | POWERTOOLS_STANDARD_VARS
FUNC_PYTHON_HEALTH = {"liveness": "/health/liveness", "readiness": "/health/readiness"}
SECRET_TEMPLATE = re.compile(r"^\{\{\s*secret:([a-z0-9-]+):([A-Za-z0-9._-]+)\s*\}\}$")


def load_all(path: Path) -> list[dict[str, Any]]:
    with path.open() as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc]


@pytest.fixture(scope="module")
def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    docs = {}
    for path in sorted(KNATIVE_DIR.glob("*.yaml")):
        for doc in load_all(path):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in docs, f"{key} defined twice"
            docs[key] = doc
    return docs


@pytest.fixture(scope="module")
def ksvc(manifests) -> dict[str, Any]:
    return manifests[("Service", "rasterfn")] if ("Service", "rasterfn") in manifests else pytest.fail("no ksvc")


@pytest.fixture(scope="module")
def container(ksvc) -> dict[str, Any]:
    [container] = ksvc["spec"]["template"]["spec"]["containers"]
    return container


@pytest.fixture(scope="module")
def func() -> dict[str, Any]:
    [doc] = load_all(FUNC_YAML)
    return doc


@pytest.fixture(scope="module")
def secret(manifests) -> dict[str, Any]:
    return manifests[("Secret", "rasterfn-minio")]


@pytest.fixture(scope="module")
def minio_env(manifests) -> dict[str, dict[str, Any]]:
    [minio] = manifests[("Deployment", "minio")]["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e for e in minio["env"]}


@pytest.fixture(scope="module")
def make_vars() -> dict[str, str]:
    return dict(re.findall(r"^([A-Z_]+) \?= (.*)$", MAKEFILE.read_text(), flags=re.MULTILINE))


def literal_env(env: list[dict[str, Any]]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in env if "value" in e}


# --- YAML ---------------------------------------------------------------------------------------------------


def test_every_manifest_parses_and_is_namespaced_in_default():
    paths = sorted(KNATIVE_DIR.glob("*.yaml"))
    assert {p.name for p in paths} >= {"service.yaml", "minio.yaml", "minio-setup-job.yaml"}
    for path in paths:
        for doc in load_all(path):
            assert {"apiVersion", "kind", "metadata"} <= set(doc), path
            assert doc["metadata"].get("namespace") == "default", (path, doc["metadata"]["name"])


def test_func_yaml_uses_func_s_schema(func):
    # The top-level keys and nesting of knative/func's func.yaml schema (schema/func_yaml-schema.json).
    assert set(func) <= {
        "specVersion", "name", "domain", "runtime", "registry", "image", "namespace", "created", "invoke",
        "build", "run", "deploy",
    }  # fmt: skip
    assert {"specVersion", "created"} <= set(func)
    assert func["runtime"] == "python" and func["invoke"] == "http"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", func["name"])
    assert set(func["run"]) <= {"volumes", "envs", "podSecurityContext", "startTimeout"}
    assert set(func["deploy"]) <= {
        "namespace", "image", "annotations", "options", "labels", "healthEndpoints", "serviceAccountName",
        "subscriptions",
    }  # fmt: skip
    assert set(func["deploy"]["options"]) <= {"scale", "resources"}
    for env in func["run"]["envs"]:
        assert set(env) <= {"name", "value"} and isinstance(env["value"], str), env


# --- environment --------------------------------------------------------------------------------------------


def test_function_env_vars_are_all_read_by_the_code_or_boto3(container, func):
    for source, names in {
        "service.yaml": [e["name"] for e in container["env"]],
        "func.yaml": [e["name"] for e in func["run"]["envs"]],
    }.items():
        unknown = set(names) - ALLOWED_FUNCTION_VARS
        assert not unknown, f"{source} sets variables nothing reads: {sorted(unknown)}"
        assert len(names) == len(set(names)), f"{source} sets a variable twice"


def test_literal_env_values_are_valid_settings(container, func):
    for env in (literal_env(container["env"]), literal_env(func["run"]["envs"])):
        settings = Settings.from_env(env)  # raises ConfigError on any bad value
        assert settings.input_suffixes == (".tif", ".tiff")
        assert settings.max_concurrent_inferences >= 1


def test_func_yaml_and_service_yaml_set_the_same_environment(container, func):
    service_env = {}
    for e in container["env"]:
        if "value" in e:
            service_env[e["name"]] = e["value"]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            service_env[e["name"]] = f"{{{{ secret:{ref['name']}:{ref['key']} }}}}"
    func_env = {e["name"]: e["value"] for e in func["run"]["envs"]}
    assert func_env == service_env


def test_every_secret_reference_exists(manifests, secret, func):
    keys = set(secret["stringData"])
    refs = []
    for doc in manifests.values():
        refs += re.findall(r"'name': '([^']+)', 'key': '([^']+)'", str(doc))
    refs += [SECRET_TEMPLATE.match(e["value"]).groups() for e in func["run"]["envs"] if "secret:" in e["value"]]
    assert refs
    for name, key in refs:
        assert name == secret["metadata"]["name"], name
        assert key in keys, key


def test_s3_credentials_point_at_minio_with_the_function_s_own_user(container, manifests):
    env = {e["name"]: e for e in container["env"]}
    minio_port = next(p["port"] for p in manifests[("Service", "minio")]["spec"]["ports"] if p["name"] == "api")
    assert env["AWS_ENDPOINT_URL"]["value"] == f"http://minio.default.svc.cluster.local:{minio_port}"
    assert env["AWS_DEFAULT_REGION"]["value"] == "us-east-1"
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["key"] == "function-access-key"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "function-secret-key"


# --- MinIO -> function webhook ------------------------------------------------------------------------------


def test_minio_webhook_targets_the_knative_service_with_the_function_s_token(ksvc, container, minio_env):
    target_ids = {name.rsplit("_", 1)[1] for name in minio_env if name.startswith("MINIO_NOTIFY_WEBHOOK_")}
    assert target_ids == {"RASTERFN"}
    assert minio_env["MINIO_NOTIFY_WEBHOOK_ENABLE_RASTERFN"]["value"] == "on"
    meta = ksvc["metadata"]
    # Knative's cluster-local address of the service; the event route is POST /.
    assert minio_env["MINIO_NOTIFY_WEBHOOK_ENDPOINT_RASTERFN"]["value"] == (
        f"http://{meta['name']}.{meta['namespace']}.svc.cluster.local"
    )
    routes = {route.path for route in http_app.create_app(Settings(webhook_token="t"), knative.RuntimeLoader()).routes}
    assert "/" in routes
    # MinIO's auth token and the function's WEBHOOK_TOKEN are the same Secret key.
    token_ref = minio_env["MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_RASTERFN"]["valueFrom"]["secretKeyRef"]
    function_ref = next(e for e in container["env"] if e["name"] == "WEBHOOK_TOKEN")["valueFrom"]["secretKeyRef"]
    assert token_ref == function_ref


def test_setup_job_subscribes_the_same_target_to_the_input_suffixes(manifests, container, minio_env):
    [job] = manifests[("Job", "minio-setup")]["spec"]["template"]["spec"]["containers"]
    script = job["args"][0]
    env = literal_env(job["env"])
    bucket = env["BUCKET"]
    assert 'mc mb --ignore-existing "local/$BUCKET"' in script
    events = re.findall(r"mc event add .*? (arn:minio:sqs::(\w+):webhook) --event (\w+) --suffix (\S+)", script)
    suffixes = Settings.from_env(literal_env(container["env"])).input_suffixes
    assert sorted(e[3] for e in events) == sorted(suffixes)
    assert {(e[1], e[2]) for e in events} == {("RASTERFN", "put")}
    assert "arn:aws:s3:::$BUCKET" in script and bucket == "rasterfn"
    assert re.search(r"BUCKET=\$\{BUCKET:-" + bucket + r"\}", SMOKE.read_text())


def test_the_function_s_minio_policy_covers_the_s3_calls_of_storage(manifests):
    [job] = manifests[("Job", "minio-setup")]["spec"]["template"]["spec"]["containers"]
    actions = set(re.findall(r'"(s3:\w+)"', job["args"][0]))
    # HEAD/GET (+ versions), PUT (multipart too, and its abort), DELETE of our own stale marker version,
    # ListBucket so a missing key is a 404, not a 403.
    assert actions == {
        "s3:ListBucket", "s3:GetBucketLocation", "s3:GetObject", "s3:GetObjectVersion", "s3:PutObject",
        "s3:AbortMultipartUpload", "s3:DeleteObject", "s3:DeleteObjectVersion",
    }  # fmt: skip
    assert '"Action": "*"' not in job["args"][0] and "s3:*" not in job["args"][0]


# --- ports, health, image -----------------------------------------------------------------------------------


def test_ports_agree_between_dockerfile_entrypoint_cli_and_manifests(container):
    [port] = container["ports"]
    assert port["containerPort"] == 8080 and port["name"] == "http1"
    assert re.search(r"^EXPOSE 8080$", DOCKERFILE.read_text(), flags=re.MULTILINE)
    entrypoint = ENTRYPOINT.read_text()
    serve_line = next(line for line in entrypoint.splitlines() if "rasterfn serve" in line)
    args = shlex.split(serve_line.replace('"${PORT:-8080}"', "8080"))
    # All interfaces inside the container: the CLI's 127.0.0.1 default would be unreachable from Knative.
    assert args[args.index("--host") + 1] == "0.0.0.0"
    assert args[args.index("--port") + 1] == "8080"
    from handler.cli import build_parser

    assert build_parser().parse_args(["serve"]).port == 8080


def test_probes_use_func_python_s_health_routes(container, func):
    assert container["readinessProbe"]["httpGet"]["path"] == FUNC_PYTHON_HEALTH["readiness"]
    assert container["livenessProbe"]["httpGet"]["path"] == FUNC_PYTHON_HEALTH["liveness"]
    assert "port" not in container["readinessProbe"]["httpGet"]  # Knative probes the serving port
    assert func["deploy"]["healthEndpoints"] == FUNC_PYTHON_HEALTH
    # func-python itself serves exactly these paths (its ASGI application routes them before ``handle``).
    import inspect

    import func_python.http

    source = inspect.getsource(func_python.http.ASGIApplication.__call__)
    for path in FUNC_PYTHON_HEALTH.values():
        assert f"'{path}'" in source or f'"{path}"' in source


def test_image_tag_is_the_package_version_everywhere(container, func, make_vars):
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert container["image"] == f"rasterfn:{version}"
    assert container["imagePullPolicy"] == "IfNotPresent"  # built into minikube's runtime, no registry
    assert make_vars["KNATIVE_IMAGE"] == f"rasterfn:{version}"
    assert func["image"].endswith(f"/rasterfn:{version}")


# --- scaling, concurrency, resources ------------------------------------------------------------------------


def _quantity(value: str) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "": 1}
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value)).groups()
    return float(number) * units[unit]


def test_concurrency_fits_what_the_function_admits(ksvc, container, func):
    settings = Settings.from_env(literal_env(container["env"]))
    concurrency = ksvc["spec"]["template"]["spec"]["containerConcurrency"]
    # Knative never lets in more than the function runs + queues: its own 503 stays a safety net.
    assert settings.max_concurrent_inferences <= concurrency
    assert concurrency <= settings.max_concurrent_inferences + settings.max_queued_requests
    assert func["deploy"]["options"]["resources"]["limits"]["concurrency"] == concurrency


def test_scale_bounds_and_timeout(ksvc, func):
    annotations = ksvc["spec"]["template"]["metadata"]["annotations"]
    low, high = (
        int(annotations["autoscaling.knative.dev/min-scale"]),
        int(annotations["autoscaling.knative.dev/max-scale"]),
    )
    assert 0 <= low <= high and high >= 1
    scale = func["deploy"]["options"]["scale"]
    assert (scale["min"], scale["max"]) == (low, high)
    assert float(annotations["autoscaling.knative.dev/target"]) == scale["target"]
    assert 60 <= ksvc["spec"]["template"]["spec"]["timeoutSeconds"] <= 600  # Knative's default maximum


def test_resources_are_sized_for_the_model_and_match_func_yaml(container, func):
    resources = container["resources"]
    for kind in ("cpu", "memory"):
        assert _quantity(resources["requests"][kind]) <= _quantity(resources["limits"][kind])
    assert _quantity(resources["limits"]["memory"]) >= 3 * 2**30
    assert _quantity(resources["limits"]["cpu"]) >= 2
    func_resources = func["deploy"]["options"]["resources"]
    assert func_resources["requests"] == resources["requests"]
    assert {k: v for k, v in func_resources["limits"].items() if k != "concurrency"} == resources["limits"]


def test_containers_run_unprivileged(manifests, container):
    dockerfile_user = re.search(r"^USER (\d+)", DOCKERFILE.read_text(), flags=re.MULTILINE).group(1)
    assert container["securityContext"]["runAsUser"] == int(dockerfile_user)
    for doc in manifests.values():
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []):
            context = c.get("securityContext", {})
            assert context.get("allowPrivilegeEscalation") is False, c["name"]
            assert context.get("capabilities", {}).get("drop") == ["ALL"], c["name"]


# --- Makefile targets ---------------------------------------------------------------------------------------


def _recipe(target: str) -> str:
    text = MAKEFILE.read_text()
    match = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n?)+)", text, flags=re.MULTILINE)
    assert match, f"no Makefile target {target}"
    return match.group(1)


@pytest.mark.parametrize("target", ["minikube", "knative-install", "knative-image", "knative-deploy", "knative-smoke"])
def test_knative_make_targets_exist_and_are_documented(target):
    assert re.search(rf"^{target}:.*## \S", MAKEFILE.read_text(), flags=re.MULTILINE)
    assert _recipe(target).strip()


def test_make_targets_are_pinned_and_consistent(make_vars, ksvc):
    assert make_vars["MINIKUBE_PROFILE"] == "rasterfn"
    assert re.fullmatch(r"v1\.30\.\d+", make_vars["KUBERNETES_VERSION"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", make_vars["KNATIVE_VERSION"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", make_vars["KOURIER_VERSION"])
    assert "--cpus=4 --memory=8g" in _recipe("minikube")
    install = _recipe("knative-install")
    for part in ("serving-crds.yaml", "serving-core.yaml", "kourier.yaml", "config-network", "config-domain"):
        assert part in install, part
    assert "kourier.ingress.networking.knative.dev" in install
    assert "image build -t $(KNATIVE_IMAGE) ." in _recipe("knative-image")
    deploy = _recipe("knative-deploy")
    assert "apply -f infra/knative/" in deploy
    assert f"ksvc/{ksvc['metadata']['name']}" in deploy
    assert "infra/knative/smoke.sh" in _recipe("knative-smoke")


def test_smoke_script_matches_the_deployment(ksvc, secret):
    text = SMOKE.read_text()
    assert f"SERVICE=${{SERVICE:-{ksvc['metadata']['name']}}}" in text
    assert f"SECRET=${{SECRET:-{secret['metadata']['name']}}}" in text
    for key in re.findall(r"secret (\S+)\)", text):
        assert key in secret["stringData"], key
    # The old README's curl, through the ingress, on the route the app serves.
    assert '/inference" \\\n    -F "file=@./$INPUT"' in text
    assert f"{DEFAULT_STEM}.npy" in text
    assert "svc/kourier" in text and "svc/minio" in text
