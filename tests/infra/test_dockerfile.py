"""The image definition: Dockerfile, .dockerignore and docker/entrypoint.sh, checked without a Docker engine.

The entrypoint is run for real with stand-in ``python`` and ``rasterfn`` commands that print their arguments,
so both runtimes' command lines are asserted exactly; tests/test_lambda_runtime.py runs it with the real ones.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from handler import settings
from tests.fixtures.paths import REPO_ROOT

ROOT = REPO_ROOT
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
KNATIVE_DIR = ROOT / "infra" / "knative"
BASE_IMAGE = "python:3.11-slim-bookworm"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
LAMBDA_HANDLER = "handler.lambda_function.lambda_handler"
NON_ROOT_UID = "10001"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped; ``stage`` counts FROMs (pure)."""
    instructions: list[Instruction] = []
    stage = -1
    logical = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not logical and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        keyword, _, args = logical.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, args.strip(), stage))
        logical = ""
    return instructions


def stage_instructions(instructions: list[Instruction], stage: int) -> list[Instruction]:
    return [i for i in instructions if i.stage == stage]


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", instruction.args))
    return env


def build_args(instructions: list[Instruction]) -> dict[str, str]:
    """``ARG NAME=default`` values (ARGs without a default are left out)."""
    pairs = (i.args.partition("=") for i in instructions if i.keyword == "ARG" and "=" in i.args)
    return {name: value for name, _, value in pairs}


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore glob: ``*`` within one path element, ``**`` across any number of them."""
    parts = []
    for index, chunk in enumerate(re.split(r"(\*\*/?|\*|\?)", pattern)):
        if index % 2 == 0:
            parts.append(re.escape(chunk))
        elif chunk.startswith("**"):
            parts.append("(?:.*/)?" if chunk.endswith("/") else ".*")
        else:
            parts.append("[^/]*" if chunk == "*" else "[^/]")
    return re.compile("".join(parts) + r"\Z")


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``path`` out of the build context: the last matching rule wins, and a rule
    matching a parent directory matches everything under it (moby/patternmatcher's semantics)."""
    excluded = False
    parents = [str(p) for p in reversed(Path(path).parents) if str(p) != "."] + [path]
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw.removeprefix("!").strip().rstrip("/")
        if _pattern_regex(pattern).match(path) or any(_pattern_regex(pattern).match(p) for p in parents):
            excluded = not negate
    return excluded


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def final_stage(instructions) -> list[Instruction]:
    return stage_instructions(instructions, max(i.stage for i in instructions))


def read_ignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


@pytest.fixture(scope="module")
def ignore_patterns() -> list[str]:
    return read_ignore_patterns()


# --- Stages and base image


def test_multi_stage_on_the_pinned_slim_base(instructions):
    froms = [i.args for i in instructions if i.keyword == "FROM"]
    assert len(froms) >= 2, "a builder stage keeps pip and build outputs out of the runtime image"
    assert build_args(instructions)["PYTHON_IMAGE"] == BASE_IMAGE
    # Every stage starts from the pinned base or from an earlier stage (the venv one picks by RUNTIME_VENV).
    earlier: set[str] = set()
    for source, _, name in (f.partition(" AS ") for f in froms):
        assert source == "${PYTHON_IMAGE}" or source in earlier or source == "venv-${RUNTIME_VENV}", source
        earlier.add(name)
    assert {"venv-serving", "venv-torch"} <= earlier


def test_torch_comes_from_the_cpu_index_at_the_pinned_version(instructions):
    args = build_args(instructions)
    assert args["TORCH_INDEX_URL"] == TORCH_CPU_INDEX
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = [d for d in pyproject["project"]["optional-dependencies"]["torch"] if d.replace(" ", "").startswith("torch")]
    assert pins == [f"torch=={args['TORCH_VERSION']}"]
    assert not [d for d in pyproject["project"]["dependencies"] if d.startswith("torch")]
    torch_runs = [i.args for i in instructions if i.keyword == "RUN" and "torch==" in i.args]
    assert len(torch_runs) == 1
    assert '--index-url "${TORCH_INDEX_URL}"' in torch_runs[0]


def test_project_installed_non_editable_with_its_weights(instructions, ignore_patterns):
    runs = " ".join(i.args for i in instructions if i.keyword == "RUN")
    assert "pip install --no-cache-dir --no-deps ." in runs
    assert " -e " not in runs and "--editable" not in runs
    copies = [i.args for i in instructions if i.keyword == "COPY"]
    assert "model ./model" in copies and "handler ./handler" in copies
    # The weights travel as package data...
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert {"weights/*.pt", "weights/*.json"} <= set(package_data["model"])
    # ...and the build context lets them in, and the build checks the card's weights are installed.
    for path in ("model/weights/demo.pt", "model/weights/demo.json", "pyproject.toml", "README.md"):
        assert not dockerignore_excludes(path, ignore_patterns), path
    assert "weights_path.is_file()" in runs


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_distributions() -> set[str]:
    """Every distribution ``pip install .`` brings (pyproject's dependencies, their extras, transitively)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    todo = [Requirement(r) for r in pyproject["project"]["dependencies"]]
    seen: set[str] = set()
    while todo:
        requirement = todo.pop()
        name = _normalise(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(requirement.name) or []
        except metadata.PackageNotFoundError:
            continue  # not installed here: nothing to follow
        for raw in requires:
            child = Requirement(raw)
            extras = requirement.extras or {""}
            if child.marker is None or any(child.marker.evaluate({"extra": e}) for e in extras):
                todo.append(child)
    return seen


def imported_top_level_modules(*packages: str) -> set[str]:
    """Absolute imports in the sources the image gets (the build context), by top-level name (pure AST)."""
    import ast

    patterns = read_ignore_patterns()
    names = set()
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            if dockerignore_excludes(path.relative_to(ROOT).as_posix(), patterns):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return names


def test_code_imports_only_what_the_image_installs():
    # GIVEN the image installs pyproject's dependencies only (no dev extra)
    from importlib.metadata import packages_distributions

    installed = runtime_distributions()
    providers = packages_distributions()
    # WHEN every third-party module our packages import is traced to its distribution
    third_party = imported_top_level_modules("handler", "model") - set(sys.stdlib_module_names) - {"handler", "model"}
    missing = {
        module: providers.get(module)
        for module in third_party
        if not any(_normalise(d) in installed for d in providers.get(module, []))
    }
    # THEN each is installed by the image, but for the reference engine's and the export's (torch, NNCF: the
    # [torch] and [export] extras, which tests/test_serving_engine.py shows the serving path never imports)
    assert set(missing) <= {"torch", "nncf"}
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "torch==" in " ".join(extras["torch"]) and "nncf" in " ".join(extras["export"])
    # AND powertools' Tracer, which imports aws-xray-sdk itself in Lambda, has it
    if "Tracer" in (ROOT / "handler" / "observability.py").read_text():
        assert "aws-xray-sdk" in installed


def test_runtime_stage_has_no_build_tools(final_stage):
    runs = " ".join(i.args for i in final_stage if i.keyword == "RUN")
    assert "pip install" not in runs
    assert "apt-get" not in runs
    assert [i.args for i in final_stage if i.keyword == "COPY" and "--from=" in i.args] == [
        "--from=venv /opt/venv /opt/venv",
        "--from=venv /opt/model /opt/model",
    ]


def stage_named(instructions: list[Instruction], name: str) -> list[Instruction]:
    [stage] = {i.stage for i in instructions if i.keyword == "FROM" and i.args.endswith(f" AS {name}")}
    return stage_instructions(instructions, stage)


def test_the_default_image_has_no_torch_and_runs_the_export_made_with_it(instructions, final_stage, ignore_patterns):
    # GIVEN the stages: the serving venv is the builder's (no torch) plus the exporter's /opt/model
    assert build_args(instructions)["RUNTIME_VENV"] == "serving"
    assert [i.args for i in instructions if i.keyword == "FROM" and i.args.endswith(" AS venv")] == [
        "venv-${RUNTIME_VENV} AS venv"
    ]
    serving = stage_named(instructions, "venv-serving")
    assert serving[0].args == "builder AS venv-serving"
    for stage in (stage_named(instructions, "builder"), serving):
        assert "torch==" not in " ".join(i.args for i in stage if i.keyword == "RUN")
    # THEN the export runs where torch is (installed in the stage it starts from, so code changes keep that
    # layer), and the serving venv checks INIT imports no torch
    exporter_stage = stage_named(instructions, "exporter")
    assert exporter_stage[0].args == "export-deps AS exporter"
    exporter = " ".join(i.args for i in exporter_stage + stage_named(instructions, "export-deps") if i.keyword == "RUN")
    assert "torch==" in exporter and "handler.cli export" in exporter and "--out-dir /opt/model" in exporter
    assert "'torch' not in sys.modules" in " ".join(i.args for i in serving if i.keyword == "RUN")
    assert "--from=exporter /opt/model /opt/model" in [i.args for i in serving if i.keyword == "COPY"]
    # AND the runtime runs the exported card, on the engine the build chose (auto unless the torch variant)
    env = env_of(final_stage)
    assert env["MODEL_CARD"] == "/opt/model/demo.json" and env["ENGINE"] == "${ENGINE}"
    assert "ENGINE=auto" in [i.args for i in final_stage if i.keyword == "ARG"]
    assert {"MODEL_CARD", "ENGINE"} <= set(settings.env_var_names())
    # AND the export and its scene generator reach the build context (for the exporter), nothing else of training
    for path, excluded in [("model/training/export.py", False), ("model/training/synthetic.py", False),
                           ("model/training/train_demo.py", True), ("model/training/__init__.py", True)]:  # fmt: skip
        assert dockerignore_excludes(path, ignore_patterns) is excluded, path


def test_precompiled_and_never_writes_bytecode(instructions, final_stage):
    runs = " ".join(i.args for i in instructions if i.keyword == "RUN")
    assert "compileall" in runs
    assert env_of(final_stage)["PYTHONDONTWRITEBYTECODE"] == "1"


# --- Runtime user, environment, port


def test_runs_as_a_non_root_user(final_stage):
    users = [i.args for i in final_stage if i.keyword == "USER"]
    assert users, "the runtime stage must set USER"
    uid = users[-1].split(":")[0]
    assert uid == NON_ROOT_UID
    assert f"--uid {NON_ROOT_UID}" in " ".join(i.args for i in final_stage if i.keyword == "RUN")


def test_writes_only_under_tmp(final_stage):
    env = env_of(final_stage)
    assert env["HOME"] == "/tmp"
    assert env["TMPDIR"] == "/tmp"
    assert env["MODEL_CACHE_DIR"].startswith("/tmp/")
    assert env["PYTHONUNBUFFERED"] == "1"
    # Variables the image sets for the code are ones the code reads.
    code_vars = {"MODEL_CACHE_DIR", "TMPDIR"}
    assert code_vars <= set(settings.env_var_names())


def knative_containers() -> list[dict]:
    """Containers of the Knative Services in infra/knative (not the other manifests there, e.g. MinIO)."""
    containers = []
    for path in sorted(KNATIVE_DIR.glob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and str(doc.get("apiVersion", "")).startswith("serving.knative.dev/"):
                containers += doc["spec"]["template"]["spec"]["containers"]
    return containers


def test_exposes_the_knative_port(final_stage):
    exposed = [i.args for i in final_stage if i.keyword == "EXPOSE"]
    assert exposed == ["8080"]
    containers = knative_containers()
    if not containers:
        pytest.skip("no Knative Service in infra/knative yet")
    ports = {port["containerPort"] for c in containers for port in c.get("ports", [{"containerPort": 8080}])}
    assert ports == {8080}


def test_knative_runs_as_the_image_user():
    containers = knative_containers()
    if not containers:
        pytest.skip("no Knative Service in infra/knative yet")
    users = {str(c.get("securityContext", {}).get("runAsUser", NON_ROOT_UID)) for c in containers}
    assert users == {NON_ROOT_UID}


def test_entrypoint_is_the_script(final_stage):
    entrypoints = [i.args for i in final_stage if i.keyword == "ENTRYPOINT"]
    assert entrypoints == ['["/usr/local/bin/rasterfn-entrypoint"]']
    assert "docker/entrypoint.sh /usr/local/bin/rasterfn-entrypoint" in " ".join(
        i.args for i in final_stage if i.keyword == "COPY"
    )


def test_build_context_leaves_out_local_state(ignore_patterns):
    for path in (
        ".venv/bin/python",
        ".venv-checkov/bin/checkov",
        ".git/HEAD",
        "tests/test_x.py",
        ".bench/r.json",
        "handler/__pycache__/cli.cpython-311.pyc",
        "data/test-1.tif",
        "output.npy",
        # The local tools and demo training: the image ships only what the function runs.
        "handler/local/demo.py",
        "handler/local/moto_stack.py",
        "model/training/train_demo.py",
    ):
        assert dockerignore_excludes(path, ignore_patterns), path
    for path in ("handler/cli.py", "handler/http/app.py", "model/network/unet.py", "docker/entrypoint.sh"):
        assert not dockerignore_excludes(path, ignore_patterns), path


@pytest.mark.parametrize(
    ("path", "patterns", "excluded"),
    [
        ("a/b.py", ["*"], True),
        ("a/b.py", ["*", "!a/"], False),
        ("a/__pycache__/x.pyc", ["*", "!a/", "**/__pycache__"], True),
        ("a/b/c.txt", ["a/*.txt"], False),
        ("a/c.txt", ["a/*.txt"], True),
    ],
)
def test_dockerignore_matcher(path, patterns, excluded):
    assert dockerignore_excludes(path, patterns) is excluded


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "hadolint").exists(), reason="hadolint not installed")
def test_hadolint_is_clean():
    result = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "hadolint"), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- The entrypoint script, run with stand-in commands


def test_entrypoint_is_executable_posix_sh():
    assert ENTRYPOINT.read_text().startswith("#!/bin/sh\n")
    assert ENTRYPOINT.stat().st_mode & stat.S_IXUSR
    subprocess.run(["sh", "-n", str(ENTRYPOINT)], check=True, timeout=10)


@pytest.fixture
def stub_bin(tmp_path) -> Path:
    """A PATH directory whose ``python`` and ``rasterfn`` print their own name and arguments."""
    directory = tmp_path / "bin"
    directory.mkdir()
    for name in ("python", "rasterfn"):
        stub = directory / name
        stub.write_text(f'#!/bin/sh\necho {name} "$@"\n')
        stub.chmod(0o755)
    return directory


def run_entrypoint(stub_bin: Path, env: dict[str, str], *args: str) -> str:
    base = {"PATH": f"{stub_bin}{os.pathsep}/usr/bin{os.pathsep}/bin"}
    result = subprocess.run(
        [shutil.which("sh") or "/bin/sh", str(ENTRYPOINT), *args],
        env=base | env,
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return result.stdout.strip()


@pytest.mark.parametrize(
    ("env", "args", "expected"),
    [
        ({"AWS_LAMBDA_RUNTIME_API": "127.0.0.1:9001"}, (), f"python -m awslambdaric {LAMBDA_HANDLER}"),
        # Lambda passes image_config.command as arguments: a handler name, as with AWS's base images.
        ({"AWS_LAMBDA_RUNTIME_API": "127.0.0.1:9001"}, ("pkg.mod.fn",), "python -m awslambdaric pkg.mod.fn"),
        ({}, (), "rasterfn serve --host 0.0.0.0 --port 8080"),
        ({"PORT": "9090"}, (), "rasterfn serve --host 0.0.0.0 --port 9090"),
        ({"AWS_LAMBDA_RUNTIME_API": ""}, (), "rasterfn serve --host 0.0.0.0 --port 8080"),
        ({}, ("predict", "in.tif", "-o", "/tmp/out.npy"), "rasterfn predict in.tif -o /tmp/out.npy"),
    ],
)
def test_entrypoint_picks_the_runtime(stub_bin, env, args, expected):
    # GIVEN the environment of Lambda, Knative or `docker run` WHEN the entrypoint starts THEN it execs:
    assert run_entrypoint(stub_bin, env, *args) == expected


def test_entrypoint_execs_instead_of_forking(stub_bin):
    # GIVEN a runtime that reports its parent WHEN started THEN its parent is the entrypoint's own parent,
    # i.e. the shell was replaced (exec) and signals reach the runtime directly
    (stub_bin / "rasterfn").write_text('#!/bin/sh\necho "$PPID"\n')
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, subprocess, sys; print(os.getpid()); sys.stdout.flush(); "
            f"subprocess.run(['sh', {str(ENTRYPOINT)!r}], check=True)",
        ],
        env={"PATH": f"{stub_bin}{os.pathsep}/usr/bin{os.pathsep}/bin"},
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    launcher_pid, runtime_parent = result.stdout.split()
    assert runtime_parent == launcher_pid
