"""Every Knative-side YAML validates against pinned schemas, and none holds a literal secret.

- Kubernetes objects (Deployment, Service, Job, PVC, NetworkPolicy): the OpenAPI schemas of Kubernetes 1.30 from
  the pinned ``kubernetes-validate`` package, in strict mode (an unknown field is an error).
- Knative objects (Service, Broker, Trigger, SinkBinding): the CustomResourceDefinitions of Knative 1.15.2 in
  ``../shared/schemas`` (beside the clone; CI and developers have it), with every field the CRD does not declare
  refused, as Knative's webhooks do.
- ``func.yaml``: func's own JSON schema from the same place.
"""

from __future__ import annotations

import copy
import datetime
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.fixtures.paths import REPO_ROOT

KUBERNETES_VERSION = "1.30"
SCHEMAS_SUBDIR = Path("schemas") / "knative-v1.15.2"
MANIFESTS = sorted((REPO_ROOT / "infra" / "knative").glob("*.yaml"))
FUNC_YAML = REPO_ROOT / "func.yaml"
CRD_FILES = {
    ("serving.knative.dev", "Service"): "serving/service.yaml",
    ("eventing.knative.dev", "Broker"): "eventing/broker.yaml",
    ("eventing.knative.dev", "Trigger"): "eventing/trigger.yaml",
    ("sources.knative.dev", "SinkBinding"): "eventing/sinkbindings.yaml",
}


def documents() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc)
        for path in MANIFESTS
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def is_knative(doc: dict[str, Any]) -> bool:
    return doc["apiVersion"].split("/")[0].endswith("knative.dev")


def shared_dirs() -> list[Path]:
    """``../shared`` beside the clone; for a git worktree, also beside the clone it belongs to."""
    dirs = [REPO_ROOT.parent / "shared"]
    dot_git = REPO_ROOT / ".git"
    if dot_git.is_file():  # a worktree: "gitdir: <clone>/.git/worktrees/<name>"
        gitdir = Path(dot_git.read_text().partition(":")[2].strip())
        if gitdir.parent.name == "worktrees":
            dirs.append(gitdir.parents[2].parent / "shared")
    return dirs


def need_knative_schemas() -> Path:
    candidates = [d / SCHEMAS_SUBDIR for d in shared_dirs()]
    found = next((c for c in candidates if c.is_dir()), None)
    if found is None:
        reason = f"Knative's schemas are in none of {[str(c) for c in candidates]}: not validated"
        print(reason)
        pytest.skip(reason)
    return found


def crd_schema(group: str, kind: str, version: str) -> dict[str, Any]:
    crd = yaml.safe_load((need_knative_schemas() / CRD_FILES[(group, kind)]).read_text())
    assert crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind
    [served] = [v for v in crd["spec"]["versions"] if v["name"] == version]
    assert served["served"], f"{group}/{version} {kind} is not served by Knative 1.15.2"
    return served["schema"]["openAPIV3Schema"]


def unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> Iterator[str]:
    """Paths of fields the schema does not declare.

    Knative's webhooks decode strictly (an undeclared field is refused), so a field is unknown wherever the schema
    lists ``properties``, even under ``x-kubernetes-preserve-unknown-fields``; only objects the CRD leaves opaque
    (no ``properties``: feature-flagged parts of the pod spec) are not looked into.
    """
    if isinstance(value, dict):
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if properties is not None and key in properties:
                yield from unknown_fields(item, properties[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                yield from unknown_fields(item, extra, f"{path}.{key}")
            elif properties is not None and extra is None:
                yield f"{path}.{key}"
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield from unknown_fields(item, schema["items"], f"{path}[{index}]")


# Fields a CRD leaves undeclared because an experimental feature adds them ("This is necessary to enable the
# experimental feature delivery-timeout", eventing/trigger.yaml): allowed where `make knative-install` enables it.
FEATURE_FIELDS = {("Trigger", ".spec.delivery.timeout"): '"delivery-timeout":"enabled"'}


FEATURE_FLAG = re.compile(r"behind a feature flag - ([a-z0-9.-]+)")


def feature_flags_used(value: Any, schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, str]]:
    """(path, flag) of every field whose CRD description says it is behind a Knative feature flag."""
    if match := FEATURE_FLAG.search(schema.get("description", "")):
        yield path, match.group(1)
    if isinstance(value, dict) and "properties" in schema:
        for key, item in value.items():
            if key in schema["properties"]:
                yield from feature_flags_used(item, schema["properties"][key], f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield from feature_flags_used(item, schema["items"], f"{path}[{index}]")


def body_of(doc: dict[str, Any]) -> dict[str, Any]:
    """The object without apiVersion, kind and metadata, which every CRD's schema leaves to the API server."""
    return {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}


DOCS = documents()


def test_every_manifest_is_covered():
    kinds = {doc["kind"] for _, doc in DOCS}
    assert kinds == {
        "Service", "Deployment", "Job", "PersistentVolumeClaim", "NetworkPolicy", "Broker", "Trigger", "SinkBinding",
    }  # fmt: skip
    for _, doc in DOCS:
        if is_knative(doc):
            group, _ = doc["apiVersion"].split("/")
            assert (group, doc["kind"]) in CRD_FILES, doc["apiVersion"]


@pytest.mark.parametrize(("name", "doc"), [d for d in DOCS if not is_knative(d[1])], ids=lambda v: str(v)[:60])
def test_kubernetes_objects_validate_against_kubernetes_1_30_strictly(name, doc):
    assert kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True) == KUBERNETES_VERSION


@pytest.mark.parametrize(("name", "doc"), [d for d in DOCS if is_knative(d[1])], ids=lambda v: str(v)[:60])
def test_knative_objects_validate_against_knative_1_15_crds(name, doc):
    group, version = doc["apiVersion"].split("/")
    schema = crd_schema(group, doc["kind"], version)
    jsonschema.Draft7Validator(schema).validate(doc)
    unknown = set(unknown_fields(body_of(doc), schema))
    allowed = {field for (kind, field) in FEATURE_FIELDS if kind == doc["kind"]}
    assert unknown <= allowed, sorted(unknown - allowed)
    install = (REPO_ROOT / "Makefile").read_text()
    for field in unknown:
        assert FEATURE_FIELDS[(doc["kind"], field)] in install, f"{field} needs its feature flag enabled"
    # metadata is opaque to a CRD: check it against Kubernetes' ObjectMeta through a ConfigMap shell
    kubernetes_validate.validate(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]}, KUBERNETES_VERSION, strict=True
    )


def test_every_feature_flagged_field_has_its_flag_enabled_by_knative_install():
    # Knative's webhook refuses a flagged field (an emptyDir, a pod securityContext) unless config-features
    # enables it: the Revision would never be created.
    install = (REPO_ROOT / "Makefile").read_text()
    used = []
    for _, doc in DOCS:
        if is_knative(doc):
            group, version = doc["apiVersion"].split("/")
            used += feature_flags_used(body_of(doc), crd_schema(group, doc["kind"], version))
    assert ("".join(p for p, _ in used), [f for _, f in used]) == (
        ".spec.template.spec.volumes[0].emptyDir",
        ["kubernetes.podspec-emptydir"],
    )
    for path, flag in used:
        assert f'"{flag}":"enabled"' in install, f"{path} needs config-features {flag}: enabled"


def test_the_unknown_field_check_can_fail():
    # GIVEN a Trigger with a misspelt field (its CRD preserves unknown fields; Knative's webhook refuses them)
    trigger = next(d for _, d in DOCS if d["kind"] == "Trigger" and d["metadata"]["name"] == "rasterfn-uploads")
    typo = {**trigger, "spec": {**trigger["spec"], "deliveryy": {}}}
    # THEN the check names it (beside the feature-flagged timeout)
    unknown = list(unknown_fields(body_of(typo), crd_schema("eventing.knative.dev", "Trigger", "v1")))
    assert unknown == [".spec.delivery.timeout", ".spec.deliveryy"]


def test_the_knative_service_pod_spec_is_a_valid_kubernetes_pod_spec():
    # Knative's CRD leaves parts of the pod spec open (feature-flagged fields): the template is a PodSpec too.
    [(_, ksvc)] = [d for d in DOCS if d[1]["kind"] == "Service" and is_knative(d[1])]
    template = copy.deepcopy(ksvc["spec"]["template"])
    pod_spec = {k: v for k, v in template["spec"].items() if k not in ("containerConcurrency", "timeoutSeconds")}
    for container in pod_spec["containers"]:
        for probe in ("readinessProbe", "livenessProbe"):
            # Knative fills in the serving port (its queue-proxy probes); Kubernetes requires one
            container[probe]["httpGet"].setdefault("port", container["ports"][0]["containerPort"])
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": template["metadata"], "spec": pod_spec}
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


def test_func_yaml_validates_against_func_s_schema():
    schema_path = need_knative_schemas() / "func" / "func_yaml-schema.json"
    schema = json.loads(schema_path.read_text())
    func = _stringify_dates(yaml.safe_load(FUNC_YAML.read_text()))
    jsonschema.Draft4Validator(schema).validate(func)
    with pytest.raises(jsonschema.ValidationError):
        # additionalProperties: false everywhere: a field func does not know is refused
        jsonschema.Draft4Validator(schema).validate({**func, "deploy": {**func["deploy"], "timeout": 600}})


def _stringify_dates(value: Any) -> Any:
    # YAML reads `created: 2024-06-12T09:41:27Z` as a datetime; func's schema (and func itself) a string.
    if isinstance(value, dict):
        return {k: _stringify_dates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_stringify_dates(v) for v in value]
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat().replace("+00:00", "Z")
    return value


# --- no literal secrets -------------------------------------------------------------------------------------------

SECRET_NAME = re.compile(r"(TOKEN|PASSWORD|SECRET|ACCESS_KEY)", re.IGNORECASE)
SECRET_TEXT = [
    re.compile(r"AKIA[0-9A-Z]{16}"),  # an AWS access key id
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"change-?me", re.IGNORECASE),
    re.compile(r"Bearer (?![A-Z_]+\b)[A-Za-z0-9._~+/-]{8,}"),  # not "Bearer WEBHOOK_TOKEN", a variable's name
    re.compile(r"(?<!\{\{ )\b(password|secret|token)\s*[:=]\s*['\"]?[A-Za-z0-9+/_-]{8,}", re.IGNORECASE),
]
FUNC_SECRET_TEMPLATE = re.compile(r"^\{\{ secret:[a-z0-9-]+:[a-z0-9-]+ \}\}$")


def literal_secrets(text: str, docs: list[dict[str, Any]]) -> list[str]:
    """What looks like a secret written into a manifest: Secret objects, secret-named variables with a literal
    value (not a secretKeyRef or func's ``{{ secret: }}`` template), and secret-shaped text."""
    found = [f"Secret {d['metadata']['name']}" for d in docs if d.get("kind") == "Secret"]
    for env in _env_entries(docs):
        name, value = str(env.get("name", "")), env.get("value")
        if SECRET_NAME.search(name) and value is not None and not FUNC_SECRET_TEMPLATE.match(str(value)):
            found.append(f"{name}={value}")
    found += [match.group(0) for pattern in SECRET_TEXT for match in pattern.finditer(text)]
    return found


def _env_entries(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("env", "envs") and isinstance(item, list):
                yield from (e for e in item if isinstance(e, dict))
            else:
                yield from _env_entries(item)
    elif isinstance(value, list):
        for item in value:
            yield from _env_entries(item)


@pytest.mark.parametrize("path", [*MANIFESTS, FUNC_YAML], ids=lambda p: p.name)
def test_no_manifest_holds_a_literal_secret(path):
    text = path.read_text()
    assert literal_secrets(text, [d for d in yaml.safe_load_all(text) if d]) == []


def test_the_makefile_generates_every_secret_value_at_deploy_time():
    recipe = re.search(r"^knative-secrets:.*\n((?:\t.*\n?)+)", (REPO_ROOT / "Makefile").read_text(), re.MULTILINE)
    values = dict(re.findall(r'--from-literal=([a-z-]+)=("[^"]*"|\S+)', recipe.group(1)))
    assert set(values) == {"root-user", "root-password", "webhook-token", "function-access-key", "function-secret-key"}
    for key in ("root-password", "webhook-token", "function-secret-key"):
        assert re.fullmatch(r'"\$\$\(openssl rand -hex \d+\)"', values[key]), key
        assert int(re.search(r"-hex (\d+)", values[key]).group(1)) >= 24, key  # >= 192 random bits
    assert "get secret $(KNATIVE_SECRET)" in recipe.group(1)  # created once, kept on the next deploy


@pytest.mark.parametrize(
    "planted",
    [
        "kind: Secret\nmetadata: {name: s}\nstringData: {password: x}\n",
        "env:\n  - name: WEBHOOK_TOKEN\n    value: abc\n",
        "env:\n  - name: MINIO_ROOT_PASSWORD\n    value: '{{ secret:a:b }} extra'\n",
        "args: ['--token=0123456789abcdef']\n",
        "key: AKIAABCDEFGHIJKLMNOP\n",
        "header: 'Bearer 0123456789abcdef'\n",
    ],
)
def test_the_secret_check_finds_planted_secrets(planted):
    assert literal_secrets(planted, [d for d in yaml.safe_load_all(planted) if d])
