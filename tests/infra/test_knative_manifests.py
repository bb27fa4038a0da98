"""infra/knative/*.yaml, func.yaml, the Makefile's knative targets, the Dockerfile and the code agree.

These cannot be deployed here, so what can go wrong between them is checked as data: every variable is one the
code reads (or a documented boto3 standard one), the literal values are valid settings, names, ports, image
tags, health paths, secrets, the MinIO webhook target and the bucket are the same everywhere.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from handler import knative
from handler.event_types import DELIVERED_TYPES, REPLY_TYPE_PREFIX, SHARD_EVENT_TYPE
from handler.fanout.sender import sender_from_settings
from handler.http import app as http_app
from handler.http import relay as relay_module
from handler.http import replies
from handler.http.relay import EVENT_TYPE as RELAY_EVENT_TYPE
from handler.http.relay import create_relay_app
from handler.http.uploads import DEFAULT_STEM
from handler.objects import ERROR_SUFFIX, JOB_PREFIX, error_key, product_keys
from handler.settings import OUTPUT_FORMATS, OUTPUT_MODES, RelaySettings, Settings, env_var_names
from model.options import OUTPUT_DTYPES
from tests.fixtures.oidc import relay_settings, trigger_subject
from tests.fixtures.paths import REPO_ROOT
from tests.infra.test_terraform import OWN_OUTPUT_NAMES

REPO = REPO_ROOT
KNATIVE_DIR = REPO / "infra" / "knative"
FUNC_YAML = REPO / "func.yaml"
MAKEFILE = REPO / "Makefile"
DOCKERFILE = REPO / "Dockerfile"
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
SMOKE = KNATIVE_DIR / "smoke.sh"
README = REPO / "README.md"
RELAY_SETTINGS = relay_settings(sink_url="http://broker", target_url="http://function", webhook_token="t")

# boto3/botocore read these themselves (AWS_ENDPOINT_URL since botocore 1.31): documented standard variables.
BOTO3_STANDARD_VARS = {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}
# Read by aws-lambda-powertools' logger and the Python logging setup, if a deployment sets them.
POWERTOOLS_STANDARD_VARS = {"LOG_LEVEL", "POWERTOOLS_LOG_LEVEL", "POWERTOOLS_SERVICE_NAME"}
ALLOWED_FUNCTION_VARS = set(env_var_names()) | BOTO3_STANDARD_VARS | POWERTOOLS_STANDARD_VARS
FUNC_PYTHON_HEALTH = {"liveness": "/health/liveness", "readiness": "/health/readiness"}
SECRET_NAME = "rasterfn-minio"
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
def secret_keys(make_vars) -> dict[str, str]:
    """The keys ``make knative-secrets`` puts in the Secret, each with the shell expression of its value."""
    recipe = _recipe("knative-secrets")
    assert "create secret generic $(KNATIVE_SECRET)" in recipe and make_vars["KNATIVE_SECRET"] == SECRET_NAME
    return dict(re.findall(r"--from-literal=([a-z-]+)=(\S+)", recipe))


@pytest.fixture(scope="module")
def relay(manifests) -> dict[str, Any]:
    [container] = manifests[("Deployment", "rasterfn-relay")]["spec"]["template"]["spec"]["containers"]
    return container


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
        assert "npy" in settings.outputs  # what smoke.sh and fanout-smoke.sh wait for
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


def test_every_secret_reference_exists(manifests, secret_keys, func):
    keys = set(secret_keys)
    refs = []
    for doc in manifests.values():
        refs += re.findall(r"'name': '([^']+)', 'key': '([^']+)'", str(doc))
    refs += [SECRET_TEMPLATE.match(e["value"]).groups() for e in func["run"]["envs"] if "secret:" in e["value"]]
    assert refs
    for name, key in refs:
        assert name == SECRET_NAME, name
        assert key in keys, key


def test_s3_credentials_point_at_minio_with_the_function_s_own_user(container, manifests):
    env = {e["name"]: e for e in container["env"]}
    minio_port = next(p["port"] for p in manifests[("Service", "minio")]["spec"]["ports"] if p["name"] == "api")
    assert env["AWS_ENDPOINT_URL"]["value"] == f"http://minio.default.svc.cluster.local:{minio_port}"
    assert env["AWS_DEFAULT_REGION"]["value"] == "us-east-1"
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["key"] == "function-access-key"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "function-secret-key"


# --- MinIO -> function webhook ------------------------------------------------------------------------------


def test_minio_webhook_targets_the_relay_and_the_relay_the_function_with_one_token(
    ksvc, container, minio_env, relay, manifests
):
    target_ids = {name.rsplit("_", 1)[1] for name in minio_env if name.startswith("MINIO_NOTIFY_WEBHOOK_")}
    assert target_ids == {"RASTERFN"}
    assert minio_env["MINIO_NOTIFY_WEBHOOK_ENABLE_RASTERFN"]["value"] == "on"
    # MinIO -> the relay's Service, on the route that publishes to the Broker
    relay_service = manifests[("Service", "rasterfn-relay")]["metadata"]
    endpoint = f"http://{relay_service['name']}.{relay_service['namespace']}.svc.cluster.local/minio"
    assert minio_env["MINIO_NOTIFY_WEBHOOK_ENDPOINT_RASTERFN"]["value"] == endpoint
    assert "/minio" in {route.path for route in create_relay_app(RELAY_SETTINGS).routes}
    # the relay -> the function's cluster-local address; the event route is POST /
    relay_env = {e["name"]: e for e in relay["env"]}
    meta = ksvc["metadata"]
    assert relay_env["RELAY_TARGET_URL"]["value"] == f"http://{meta['name']}.{meta['namespace']}.svc.cluster.local/"
    routes = {route.path for route in http_app.create_app(Settings(webhook_token="t"), knative.RuntimeLoader()).routes}
    assert "/" in routes
    # MinIO's auth token, the relay's and the function's WEBHOOK_TOKEN are the same Secret key.
    token_ref = minio_env["MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_RASTERFN"]["valueFrom"]["secretKeyRef"]
    function_ref = next(e for e in container["env"] if e["name"] == "WEBHOOK_TOKEN")["valueFrom"]["secretKeyRef"]
    assert token_ref == function_ref == relay_env["WEBHOOK_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert set(relay_env) <= set(env_var_names())
    assert "K_SINK" not in relay_env  # the SinkBinding injects it


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
    # ...and the function accepts events for that bucket only
    assert Settings.from_env(literal_env(container["env"])).allowed_buckets == (bucket,)


def minio_policy(manifests) -> list[dict[str, Any]]:
    [job] = manifests[("Job", "minio-setup")]["spec"]["template"]["spec"]["containers"]
    script = job["args"][0]
    policy = re.search(r"<<POLICY\n(.*?)\n\s*POLICY", script, flags=re.DOTALL).group(1)
    return json.loads(policy.replace("$BUCKET", "rasterfn"))["Statement"]


def test_the_function_s_minio_policy_covers_storage_s_calls_and_no_more(manifests):
    # GIVEN the policy the setup Job attaches to the function's MinIO user
    allowed: dict[str, set[str]] = {}
    for statement in minio_policy(manifests):
        assert statement["Effect"] == "Allow"
        for action in statement["Action"]:
            allowed.setdefault(action, set()).update(statement["Resource"])
    # THEN it may read the bucket's objects (HEAD/GET, versions; ListBucket so a missing key is a 404, not 403),
    # write only the function's outputs (every one OUTPUTS may name: it can change without the Job running again),
    # markers and fan-out job state (JOB_PREFIX), and delete only its own markers
    bucket, objects = "arn:aws:s3:::rasterfn", "arn:aws:s3:::rasterfn/"
    outputs = {objects + "*" + suffix for suffix in (*OWN_OUTPUT_NAMES, ERROR_SUFFIX)}
    assert allowed == {
        "s3:ListBucket": {bucket},
        "s3:GetBucketLocation": {bucket},
        "s3:GetObject": {objects + "*"},
        "s3:GetObjectVersion": {objects + "*"},
        "s3:PutObject": outputs | {objects + JOB_PREFIX + "*"},
        "s3:AbortMultipartUpload": outputs,
        "s3:DeleteObject": {objects + "*" + ERROR_SUFFIX},
        "s3:DeleteObjectVersion": {objects + "*" + ERROR_SUFFIX},
    }


def test_the_function_s_minio_user_may_write_every_output_of_every_setting(manifests):
    # GIVEN every OUTPUTS and OUTPUT_MODE the function accepts WHEN it names the files of an upload
    put = [r for st in minio_policy(manifests) if "s3:PutObject" in st["Action"] for r in st["Resource"]]
    for mode in OUTPUT_MODES:
        keys = product_keys("scenes/a.tif", OUTPUT_FORMATS, mode).values()
        # THEN MinIO's policy (a glob, case-sensitive) lets the function's user write each one
        for key in (*keys, error_key("scenes/a.tif")):
            assert any(fnmatch.fnmatchcase("arn:aws:s3:::rasterfn/" + key, r) for r in put), key


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


def test_every_image_knative_runs_is_on_its_skip_list_and_tagged_with_the_package_version(
    manifests, container, func, make_vars
):
    # Knative resolves tags to digests through the registry unless the registry is on this list; the image built
    # into minikube's runtime is in no registry, so any other name fails with ContainerMissing.
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    skip_list = make_vars["KNATIVE_SKIP_TAG_RESOLVING"].split(",")
    assert "registries-skipping-tag-resolving" in _recipe("knative-install")
    image = f"dev.local/rasterfn:{version}"
    assert image.split("/")[0] in skip_list
    assert container["image"] == image and container["imagePullPolicy"] == "IfNotPresent"
    assert make_vars["KNATIVE_IMAGE"] == image
    assert func["image"] == image and func["registry"] == "dev.local"
    ours = [c["image"] for _, c in pod_containers(manifests) if "rasterfn" in c["image"]]
    assert ours and set(ours) == {image}  # the relay runs the same image


def test_func_deploy_works_without_a_build_or_a_push(func, make_vars):
    # --build=false alone fails ("not built"): --push defaults to true and needs a build stamp.
    recipe = _recipe("knative-func-deploy")
    args = shlex.split(recipe.strip())
    assert args[:2] == ["func", "deploy"]
    assert {"--build=false", "--push=false"} <= set(args)
    assert args[args.index("--image") + 1] == "$(KNATIVE_IMAGE)"
    assert re.search(r"^knative-func-deploy: knative-secrets", MAKEFILE.read_text(), flags=re.MULTILINE)
    readme = README.read_text()
    assert "func deploy --build=false --push=false --image dev.local/rasterfn:" in readme
    assert "func deploy --build=false --push=false --image dev.local/rasterfn:" in FUNC_YAML.read_text()


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


def test_one_pod_per_in_flight_scene_scale_to_zero_and_timeout(ksvc, func):
    annotations = ksvc["spec"]["template"]["metadata"]["annotations"]
    low, high = (
        int(annotations["autoscaling.knative.dev/min-scale"]),
        int(annotations["autoscaling.knative.dev/max-scale"]),
    )
    assert low == 0 and high >= 1  # scale to zero kept
    # utilisation 100 of a target of 1: the first request starts one pod, not two (the default is 70 %)
    assert annotations["autoscaling.knative.dev/metric"] == "concurrency"
    assert float(annotations["autoscaling.knative.dev/target"]) == 1
    assert float(annotations["autoscaling.knative.dev/target-utilization-percentage"]) == 100
    scale = func["deploy"]["options"]["scale"]
    assert (scale["min"], scale["max"], scale["metric"]) == (low, high, annotations["autoscaling.knative.dev/metric"])
    assert float(annotations["autoscaling.knative.dev/target"]) == scale["target"]
    assert float(annotations["autoscaling.knative.dev/target-utilization-percentage"]) == scale["utilization"]
    # the other annotations func.yaml carries as they are
    expressed = {f"autoscaling.knative.dev/{k}" for k in ("min-scale", "max-scale", "metric", "target")}
    expressed.add("autoscaling.knative.dev/target-utilization-percentage")
    rest = {k: v for k, v in annotations.items() if k not in expressed}
    assert func["deploy"]["annotations"] == rest
    # func.yaml cannot set timeoutSeconds: knative-install makes the Service's value the cluster default
    timeout = ksvc["spec"]["template"]["spec"]["timeoutSeconds"]
    assert f'"revision-timeout-seconds":"{timeout}"' in _recipe("knative-install")
    assert 60 <= timeout <= 600  # Knative's default maximum


def test_resources_are_sized_for_the_model_and_match_func_yaml(container, func):
    resources = container["resources"]
    for kind in ("cpu", "memory"):
        assert _quantity(resources["requests"][kind]) <= _quantity(resources["limits"][kind])
    assert _quantity(resources["limits"]["memory"]) >= 3 * 2**30
    assert _quantity(resources["limits"]["cpu"]) >= 2
    func_resources = func["deploy"]["options"]["resources"]
    # func.yaml cannot say ephemeral-storage (its schema has cpu and memory only)
    for kind in ("requests", "limits"):
        service_side = {k: v for k, v in resources[kind].items() if k != "ephemeral-storage"}
        assert {k: v for k, v in func_resources[kind].items() if k != "concurrency"} == service_side


def pod_specs(manifests) -> list[tuple[str, dict[str, Any]]]:
    """(name, pod spec) of every workload: Deployments, the Job and the Knative Service's revision template."""
    return [
        (name, doc["spec"]["template"]["spec"])
        for (kind, name), doc in manifests.items()
        if kind in ("Deployment", "Job", "Service") and "template" in doc.get("spec", {})
    ]


def pod_containers(manifests) -> list[tuple[str, dict[str, Any]]]:
    return [(name, c) for name, spec in pod_specs(manifests) for c in spec["containers"]]


def test_every_pod_is_hardened(manifests, container):
    dockerfile_user, dockerfile_group = re.search(
        r"^USER (\d+):(\d+)", DOCKERFILE.read_text(), flags=re.MULTILINE
    ).groups()
    assert container["securityContext"]["runAsUser"] == int(dockerfile_user)
    assert container["securityContext"]["runAsGroup"] == int(dockerfile_group)
    specs = pod_specs(manifests)
    assert {name for name, _ in specs} == {"rasterfn", "rasterfn-relay", "minio", "minio-setup"}
    for name, spec in specs:
        assert spec.get("automountServiceAccountToken") is False, name
        for c in spec["containers"]:
            # pod-level securityContext is behind a Knative feature flag: the container's own wins anyway
            context = {**spec.get("securityContext", {}), **c.get("securityContext", {})}
            assert context.get("runAsNonRoot") is True, name
            assert context.get("runAsUser", 0) > 0 and context.get("runAsGroup", 0) > 0, name  # no group 0
            assert context.get("readOnlyRootFilesystem") is True, name
            assert context.get("allowPrivilegeEscalation") is False, name
            assert context.get("capabilities", {}).get("drop") == ["ALL"], name
            assert context.get("seccompProfile") == {"type": "RuntimeDefault"}, name
            resources = c["resources"]
            assert "ephemeral-storage" in resources["requests"] and "ephemeral-storage" in resources["limits"], name
            assert _quantity(resources["requests"]["ephemeral-storage"]) <= _quantity(
                resources["limits"]["ephemeral-storage"]
            )
            # a read-only root needs a writable, bounded /tmp
            tmp = next(m for m in c["volumeMounts"] if m["mountPath"] == "/tmp")
            volume = next(v for v in spec["volumes"] if v["name"] == tmp["name"])
            limit = _quantity(volume["emptyDir"]["sizeLimit"])
            assert limit <= _quantity(resources["limits"]["ephemeral-storage"]), name


def test_the_function_s_tmp_holds_the_largest_input_and_output_and_matches_func_yaml(ksvc, container, func):
    settings = Settings.from_env(literal_env(container["env"]))
    assert str(settings.tmp_dir) == "/tmp"
    [volume] = ksvc["spec"]["template"]["spec"]["volumes"]
    largest_output = settings.max_pixels * max(np.dtype(t).itemsize for t in OUTPUT_DTYPES.values())
    # containerConcurrency 1: one upload and its output on disk at a time
    assert ksvc["spec"]["template"]["spec"]["containerConcurrency"] == 1
    assert _quantity(volume["emptyDir"]["sizeLimit"]) >= settings.max_input_bytes + largest_output
    assert _quantity(container["resources"]["requests"]["ephemeral-storage"]) >= _quantity(
        volume["emptyDir"]["sizeLimit"]
    )
    assert func["run"]["volumes"] == [{"path": "/tmp", "emptyDir": volume["emptyDir"]}]


def test_func_yaml_and_the_service_differ_only_in_what_func_cannot_express(ksvc, container, func):
    # The fields service.yaml sets beyond func.yaml's schema; anything else that drifts fails the tests above.
    spec = ksvc["spec"]["template"]["spec"]
    func_cannot = {"automountServiceAccountToken", "timeoutSeconds", "containerConcurrency", "volumes", "containers"}
    assert set(spec) == func_cannot
    assert set(container["securityContext"]) == {
        "runAsNonRoot", "runAsUser", "runAsGroup", "readOnlyRootFilesystem", "allowPrivilegeEscalation",
        "capabilities", "seccompProfile",
    }  # fmt: skip
    labels = {item["key"]: item["value"] for item in func["deploy"]["labels"]}
    assert labels == ksvc["metadata"]["labels"]
    assert func["name"] == ksvc["metadata"]["name"] and func["namespace"] == ksvc["metadata"]["namespace"]
    assert func["deploy"]["namespace"] == ksvc["metadata"]["namespace"]


# --- exposure and NetworkPolicies ---------------------------------------------------------------------------


def test_the_function_is_cluster_local(ksvc):
    # No route through the external gateway: events come from the relay, /inference in-cluster or by port-forward.
    assert ksvc["metadata"]["labels"]["networking.knative.dev/visibility"] == "cluster-local"
    readme = README.read_text()
    assert "### Exposing `/inference`" in readme


def policy_sources(manifests, name: str) -> list[dict[str, Any]]:
    policy = manifests[("NetworkPolicy", name)]["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    [rule] = policy["ingress"]
    return rule["from"]


def labels_of(manifests, kind: str, name: str) -> dict[str, str]:
    return manifests[(kind, name)]["spec"]["template"]["metadata"]["labels"]


def test_only_the_function_and_the_setup_job_reach_minio(manifests, ksvc):
    policy = manifests[("NetworkPolicy", "minio-ingress")]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels_of(manifests, "Deployment", "minio").items()
    sources = [s["podSelector"]["matchLabels"] for s in policy_sources(manifests, "minio-ingress")]
    # Knative labels every revision pod with its Service's name
    assert sources == [
        {"serving.knative.dev/service": ksvc["metadata"]["name"]},
        {"app.kubernetes.io/name": "minio-setup"},
    ]
    assert labels_of(manifests, "Job", "minio-setup").items() >= sources[1].items()
    assert all("namespaceSelector" not in s for s in policy_sources(manifests, "minio-ingress"))


def test_nothing_reaches_the_setup_job(manifests):
    policy = manifests[("NetworkPolicy", "minio-setup-ingress")]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels_of(manifests, "Job", "minio-setup").items()
    assert policy["policyTypes"] == ["Ingress"] and "ingress" not in policy  # no rule: every connection refused


def test_only_minio_and_the_broker_s_dispatchers_reach_the_relay(manifests, relay):
    policy = manifests[("NetworkPolicy", "rasterfn-relay-ingress")]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels_of(manifests, "Deployment", "rasterfn-relay").items()
    eventing = {"matchLabels": {"kubernetes.io/metadata.name": "knative-eventing"}}
    # the labels of Eventing 1.15's broker-filter and imc-dispatcher Deployments (mt-channel-broker.yaml,
    # in-memory-channel.yaml): the Triggers' deliveries, and their retries and dead letters
    assert policy_sources(manifests, "rasterfn-relay-ingress") == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "minio"}}},
        {"namespaceSelector": eventing, "podSelector": {"matchLabels": {"eventing.knative.dev/brokerRole": "filter"}}},
        {
            "namespaceSelector": eventing,
            "podSelector": {
                "matchLabels": {
                    "messaging.knative.dev/channel": "in-memory-channel",
                    "messaging.knative.dev/role": "dispatcher",
                }
            },
        },
    ]
    [port] = policy["ingress"][0]["ports"]
    assert port["port"] == relay["ports"][0]["containerPort"]


def test_the_relay_trusts_exactly_the_triggers_that_deliver_to_it(manifests, relay):
    env = {e["name"]: e.get("value", "secret") for e in relay["env"]}
    settings = RelaySettings.from_env({**env, "K_SINK": "http://broker"})
    triggers = [doc for (kind, _), doc in manifests.items() if kind == "Trigger"]
    assert triggers and all(t["spec"]["subscriber"]["uri"] == "/deliver" for t in triggers)
    assert {t["spec"]["subscriber"]["audience"] for t in triggers} == {settings.oidc_audience}
    expected = {trigger_subject(t["metadata"]["name"], t["metadata"]["namespace"]) for t in triggers}
    assert set(settings.oidc_subjects) == expected
    # the issuer's keys are read with a projected token and the cluster's CA, mounted where the settings say
    [mount] = [m for m in relay["volumeMounts"] if m["name"] == "issuer"]
    assert settings.oidc_jwks_bearer_file == mount["mountPath"] + "/token"
    assert settings.oidc_jwks_ca_file == mount["mountPath"] + "/ca.crt"
    assert "authentication-oidc" in (REPO / "Makefile").read_text()


def test_only_knative_s_data_plane_reaches_the_function(manifests, ksvc):
    policy = manifests[("NetworkPolicy", "rasterfn-ingress")]["spec"]
    assert policy["podSelector"]["matchLabels"] == {"serving.knative.dev/service": ksvc["metadata"]["name"]}
    namespaces = {
        s["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for s in policy_sources(manifests, "rasterfn-ingress")
    }
    assert namespaces == {"kourier-system", "knative-serving"}


# --- Eventing ---------------------------------------------------------------------------------------------------


def test_broker_trigger_sinkbinding_relay_and_dead_letter_are_wired_by_name(manifests, relay):
    broker = manifests[("Broker", "default")]
    trigger = manifests[("Trigger", "rasterfn-uploads")]["spec"]
    binding = manifests[("SinkBinding", "rasterfn-relay")]["spec"]
    relay_service = manifests[("Service", "rasterfn-relay")]
    assert broker["metadata"]["annotations"]["eventing.knative.dev/broker.class"] == "MTChannelBasedBroker"
    # the relay publishes to the Broker (K_SINK from the SinkBinding whose subject is the relay's Deployment)
    assert binding["subject"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "rasterfn-relay"}
    assert binding["sink"]["ref"] == {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "default"}
    # the Trigger takes the relay's events from that Broker, and no others (not the function's own replies)
    assert trigger["broker"] == broker["metadata"]["name"]
    assert trigger["filter"] == {"attributes": {"type": RELAY_EVENT_TYPE}}
    assert not RELAY_EVENT_TYPE.startswith(replies.CLOUDEVENT_TYPE_PREFIX)
    # and delivers to the relay's Service, on the routes the relay serves
    relay_routes = {route.path for route in create_relay_app(RELAY_SETTINGS).routes}
    for destination, path in (
        (trigger["subscriber"], "/deliver"),
        (trigger["delivery"]["deadLetterSink"], "/dead-letter"),
    ):
        assert destination["ref"] == {"apiVersion": "v1", "kind": "Service", "name": relay_service["metadata"]["name"]}
        assert destination["uri"] == path and path in relay_routes
    assert relay_service["spec"]["selector"].items() <= labels_of(manifests, "Deployment", "rasterfn-relay").items()
    assert relay_service["spec"]["ports"][0]["targetPort"] == relay["ports"][0]["name"]
    assert relay["args"][0] == "relay"  # docker/entrypoint.sh runs `rasterfn relay ...`
    from handler.cli import build_parser

    assert build_parser().parse_args(relay["args"]).command == "relay"


def test_trigger_delivery_has_a_timeout_retries_with_backoff_and_a_dead_letter_sink(manifests, ksvc):
    delivery = manifests[("Trigger", "rasterfn-uploads")]["spec"]["delivery"]
    assert set(delivery) == {"timeout", "retry", "backoffPolicy", "backoffDelay", "deadLetterSink"}
    timeout_s = _iso_seconds(delivery["timeout"])
    # the delivery may take as long as the function may (one scene), and the relay waits a little longer
    assert timeout_s == ksvc["spec"]["template"]["spec"]["timeoutSeconds"]
    assert timeout_s < relay_module.DELIVER_TIMEOUT_S
    assert delivery["retry"] >= 1 and delivery["backoffPolicy"] == "exponential"
    assert _iso_seconds(delivery["backoffDelay"]) >= 1
    assert '"delivery-timeout":"enabled"' in _recipe("knative-install")


# --- Fan-out through the Broker (fanout.yaml) ---------------------------------------------------------------


def test_fanout_sinkbinding_gives_the_function_the_broker_as_k_sink(manifests, ksvc):
    binding = manifests[("SinkBinding", "rasterfn-fanout")]["spec"]
    broker = manifests[("Broker", "default")]["metadata"]["name"]
    assert binding["subject"] == {"apiVersion": ksvc["apiVersion"], "kind": "Service", "name": ksvc["metadata"]["name"]}
    assert binding["sink"]["ref"] == {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": broker}


def test_fanout_is_on_exactly_when_the_sinkbinding_injects_k_sink(container):
    env = literal_env(container["env"])
    assert "K_SINK" not in env  # the SinkBinding's, never hard-coded
    assert sender_from_settings(Settings.from_env(env)) is None
    with_sink = Settings.from_env({**env, "K_SINK": "http://broker-ingress.knative-eventing.svc/default/default"})
    assert sender_from_settings(with_sink) is not None


def test_a_shard_fits_one_request_of_the_service(container, ksvc):
    # A band is planned to take about FANOUT_THRESHOLD_SECONDS: it must fit the Service's request timeout.
    settings = Settings.from_env(literal_env(container["env"]))
    assert 0 < settings.fanout_threshold_seconds < ksvc["spec"]["template"]["spec"]["timeoutSeconds"]
    assert settings.max_scene_pixels >= settings.max_pixels


def test_shard_trigger_takes_only_shard_events_to_the_relay_which_forwards_them(manifests):
    shards = manifests[("Trigger", "rasterfn-shards")]["spec"]
    uploads = manifests[("Trigger", "rasterfn-uploads")]["spec"]
    assert shards["broker"] == uploads["broker"] == manifests[("Broker", "default")]["metadata"]["name"]
    assert shards["filter"] == {"attributes": {"type": SHARD_EVENT_TYPE}}
    # every Trigger matches one of the types the relay forwards, none the function's replies, no two the same
    filters = [t["spec"]["filter"]["attributes"]["type"] for (kind, _), t in manifests.items() if kind == "Trigger"]
    assert sorted(filters) == sorted(DELIVERED_TYPES)
    assert not any(f.startswith(REPLY_TYPE_PREFIX) for f in filters)
    # the same subscriber, dead-letter sink and retry policy as uploads (the relay adds the bearer token)
    assert shards["subscriber"] == uploads["subscriber"]
    assert shards["delivery"] == uploads["delivery"]


def test_minio_expires_fanout_job_state_and_lets_the_function_write_it(manifests):
    [job] = manifests[("Job", "minio-setup")]["spec"]["template"]["spec"]["containers"]
    script = job["args"][0]
    rule = re.search(r"mc ilm rule add \S+ --prefix (\S+) --expire-days (\d+)", script)
    assert rule and rule.group(1) == JOB_PREFIX and 1 <= int(rule.group(2)) <= 30
    assert any("arn:aws:s3:::rasterfn/" + JOB_PREFIX + "*" in st["Resource"] for st in minio_policy(manifests))


def test_fanout_smoke_forces_sharding_on_the_deployed_service_and_puts_it_back(ksvc, secret_keys):
    script = (KNATIVE_DIR / "fanout-smoke.sh").read_text()
    assert "infra/knative/fanout-smoke.sh" in _recipe("knative-fanout-smoke")
    # it waits for the fan-out wiring by its manifest names, and the names it changes are real settings
    assert "trigger/rasterfn-shards sinkbinding/rasterfn-fanout" in script
    assert f"SERVICE=${{SERVICE:-{ksvc['metadata']['name']}}}" in script
    for name in ("FANOUT_THRESHOLD_SECONDS", "FANOUT_MAX_SHARDS"):
        assert name in env_var_names() and f'"name": "{name}"' in script
    assert "trap cleanup EXIT" in script and 'set_env "$WORK/env.json"' in script  # the original env comes back
    used = re.findall(r"secret (\S+)\)", script)
    assert len(used) == 2 and set(used) <= set(secret_keys)


def test_knative_deploy_waits_for_the_fanout_wiring():
    recipe = _recipe("knative-deploy")
    assert "trigger/rasterfn-shards" in recipe and "sinkbinding/rasterfn-fanout" in recipe


def _iso_seconds(duration: str) -> float:
    """``PT10M`` -> 600.0 (the ISO 8601 durations Knative's delivery spec uses)."""
    match = re.fullmatch(r"PT(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?", duration)
    assert match, duration
    hours, minutes, seconds = (float(g or 0) for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


# --- Makefile targets ---------------------------------------------------------------------------------------


def _recipe(target: str) -> str:
    text = MAKEFILE.read_text()
    match = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n?)+)", text, flags=re.MULTILINE)
    assert match, f"no Makefile target {target}"
    return match.group(1)


@pytest.mark.parametrize(
    "target",
    [
        "minikube", "knative-install", "knative-image", "knative-secrets", "knative-deploy", "knative-func-deploy",
        "knative-smoke", "knative-fanout-smoke",
    ],
)  # fmt: skip
def test_knative_make_targets_exist_and_are_documented(target):
    assert re.search(rf"^{target}:.*## \S", MAKEFILE.read_text(), flags=re.MULTILINE)
    assert _recipe(target).strip()


def test_make_targets_are_pinned_and_consistent(make_vars, ksvc):
    assert make_vars["MINIKUBE_PROFILE"] == "rasterfn"
    assert re.fullmatch(r"v1\.30\.\d+", make_vars["KUBERNETES_VERSION"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", make_vars["KNATIVE_VERSION"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", make_vars["KOURIER_VERSION"])
    assert "--cpus=4 --memory=8g" in _recipe("minikube")
    assert "--cni=calico" in _recipe("minikube")  # a CNI that enforces NetworkPolicies
    install = _recipe("knative-install")
    for part in ("serving-crds.yaml", "serving-core.yaml", "kourier.yaml", "config-network", "config-domain"):
        assert part in install, part
    # Eventing pinned like Serving: core, the in-memory channel and the MT channel-based Broker
    assert make_vars["EVENTING_VERSION"] == make_vars["KNATIVE_VERSION"]
    assert "eventing/releases/download/knative-v$(EVENTING_VERSION)" in MAKEFILE.read_text()
    for part in ("eventing-crds.yaml", "eventing-core.yaml", "in-memory-channel.yaml", "mt-channel-broker.yaml"):
        assert f"$(EVENTING_RELEASE)/{part}" in install, part
    assert '"kubernetes.podspec-emptydir":"enabled"' in install  # the /tmp emptyDir
    assert "kourier.ingress.networking.knative.dev" in install
    assert "image build -t $(KNATIVE_IMAGE) ." in _recipe("knative-image")
    deploy = _recipe("knative-deploy")
    assert "apply -f infra/knative/" in deploy
    assert re.search(r"^knative-deploy: knative-secrets", MAKEFILE.read_text(), flags=re.MULTILINE)
    assert "delete job/minio-setup --ignore-not-found" in deploy
    assert "broker/default trigger/rasterfn-uploads sinkbinding/rasterfn-relay" in deploy
    assert f"ksvc/{ksvc['metadata']['name']}" in deploy
    assert "infra/knative/smoke.sh" in _recipe("knative-smoke")


def test_smoke_script_matches_the_deployment(ksvc, secret_keys):
    text = SMOKE.read_text()
    assert f"SERVICE=${{SERVICE:-{ksvc['metadata']['name']}}}" in text
    assert f"SECRET=${{SECRET:-{SECRET_NAME}}}" in text
    for key in re.findall(r"secret (\S+)\)", text):
        assert key in secret_keys, key
    # The old README's curl, through the cluster-internal gateway (the Service is cluster-local).
    assert '/inference" \\\n    -F "file=@./$INPUT"' in text
    assert f"{DEFAULT_STEM}.npy" in text
    assert "svc/kourier-internal" in text and "svc/minio" in text
    assert "broker/default trigger/rasterfn-uploads" in text
