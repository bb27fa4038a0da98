"""The built image, run as each platform runs it (`make image-test`): every container on ``--network host``,
addressed on 127.0.0.1 only, each stopped by its id. RASTERFN_IMAGE names the image, RASTERFN_TORCH_IMAGE its
torch variant; the figures the tests measure are printed at the end of the run."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from tests.fixtures.aws import FAKE_CREDENTIALS

DOCKER = os.environ.get("DOCKER", "docker")
# What both platforms impose: nothing but /tmp writable, no capabilities, no privilege escalation.
HARDENED = ["--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
FIGURES: dict[str, str] = {}


def required_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run these tests with `make image-test`, which builds the images")
    return value


@pytest.fixture(scope="session")
def image() -> str:
    return required_env("RASTERFN_IMAGE")


@pytest.fixture(scope="session")
def torch_image() -> str:
    return required_env("RASTERFN_TORCH_IMAGE")


def record_figure(name: str, value: str) -> None:
    """A measured figure for the end-of-run summary (the README's image section quotes them)."""
    FIGURES[name] = value


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("image figures")
        for name, value in FIGURES.items():
            terminalreporter.write_line(f"{name}: {value}")


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout, check=check)


@dataclass
class RunningContainer:
    """A container started by a test: ``process`` is the attached ``docker run`` client, ``cid`` its id."""

    process: subprocess.Popen[bytes]
    cid: str
    log_path: Path
    started: float

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def exit_code(self, timeout: float) -> int:
        """Wait for the container to end; its own exit status, as the platform sees it."""
        return int(docker("wait", self.cid, timeout=timeout).stdout.strip())

    def alive(self) -> bool:
        result = docker("inspect", "--format", "{{.State.Running}}", self.cid, check=False)
        return result.stdout.strip() == "true"


@contextlib.contextmanager
def run_container(
    image: str, tmp: Path, env: dict[str, str], *, user: str, tmpfs_mb: int, memory: str, args: tuple[str, ...] = ()
) -> Iterator[RunningContainer]:
    """``docker run`` the image hardened as both platforms run it; removed by its id afterwards."""
    cidfile = tmp / f"cid-{uuid.uuid4().hex}"
    log_path = tmp / f"container-{uuid.uuid4().hex[:8]}.log"
    env_args = [item for name, value in env.items() for item in ("-e", f"{name}={value}")]
    command = [
        DOCKER, "run", "--cidfile", str(cidfile), "--network", "host", *HARDENED,
        "--tmpfs", f"/tmp:rw,size={tmpfs_mb}m,mode=1777", "--user", user, "--memory", memory,
        *env_args, image, *args,
    ]  # fmt: skip
    started = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not (cidfile.exists() and cidfile.read_text().strip()):
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"docker run did not start the container:\n{log_path.read_text()}")
        time.sleep(0.05)
    container = RunningContainer(process, cidfile.read_text().strip(), log_path, started)
    try:
        yield container
    finally:
        docker("rm", "--force", container.cid, check=False)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)


@pytest.fixture(scope="session")
def s3(moto_server) -> Any:
    """The user's side: a plain client straight to moto's server on 127.0.0.1."""
    keys = {k.lower(): FAKE_CREDENTIALS[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")}
    return boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1", **keys)


@pytest.fixture(scope="session")
def new_bucket(s3) -> Callable[[str], str]:
    def make(prefix: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        s3.create_bucket(Bucket=name)
        return name

    return make


def wait_until_ready(url: str, container: RunningContainer, timeout: float = 120) -> float:
    """Poll ``url`` until it answers 200; returns the seconds since ``docker run`` started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not container.alive() and container.process.poll() is not None:
            raise AssertionError(f"the container exited before it was ready:\n{container.log_tail()}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=2).status_code == 200:
                return time.monotonic() - container.started
        time.sleep(0.05)
    raise AssertionError(f"{url} not ready after {timeout} s:\n{container.log_tail()}")
