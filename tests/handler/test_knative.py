"""handler.knative: func-python's function protocol, its health routes, and `rasterfn serve` as a real process
answering the old README's curl command exactly like `rasterfn predict`."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import anyio
import httpx
import numpy as np
import pytest
from func_python.http import ASGIApplication

from handler.knative import Function, listen_address, new
from handler.runtime import Runtime
from handler.settings import Settings
from handler.storage import Storage
from model.card import DEFAULT_CARD_PATH, load_card
from model.errors import ConfigError
from model.network.checkpoint import build_model
from tests.fixtures.paths import REPO_ROOT
from tests.fixtures.servers import free_port, wait_ready

REPO = REPO_ROOT
VENV_BIN = Path(sys.executable).parent
TEST_TIF = REPO / "data" / "test-1.tif"
# The old README's command, verbatim but for the port.
OLD_README_CURL = 'curl -X POST "http://127.0.0.1:{port}/inference" -F "file=@./data/test-1.tif" --output output.npy'


@pytest.fixture(scope="module")
def tiny_card(tmp_path_factory) -> Path:
    from tests.fixtures.models import write_random_card

    return write_random_card(
        tmp_path_factory.mktemp("tiny-card"),
        seed=7,
        depth=3,
        start_filts=4,
        tile_size=128,
        tile_overlap=16,
        name="tiny",
    )


@pytest.fixture
def runtime(tiny_card, tmp_path) -> Runtime:
    return Runtime(
        settings=Settings(model_card=tiny_card, tmp_dir=tmp_path, allow_unauthenticated_events=True),
        model=build_model(load_card(tiny_card)),
        storage=Storage.from_defaults("http://127.0.0.1:9"),
    )


class GatedLoad:
    """A load function that blocks until released: the model "loading" for as long as a test wants."""

    def __init__(self, result: object = None, error: BaseException | None = None) -> None:
        self.gate = threading.Event()
        self.result, self.error = result, error

    def __call__(self) -> object:
        assert self.gate.wait(30)
        if self.error is not None:
            raise self.error
        return self.result


def serve_in_process(function: Function):
    """httpx client on func-python's own ASGI application around ``function`` (health routes included)."""
    app = ASGIApplication(function)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fn")


def test_new_returns_a_function_with_the_func_python_protocol():
    function = new()
    for name in ("handle", "start", "stop", "alive", "ready"):
        assert callable(getattr(function, name)), name
    assert function.ready() == (False, "not started")
    assert function.alive() == (True, "alive")


def test_ready_is_false_until_the_model_is_loaded(runtime):
    # GIVEN a function whose model takes a while to load
    load = GatedLoad(result=runtime)
    function = Function(load=load, settings=runtime.settings)
    # WHEN it starts THEN it is alive but not ready
    function.start(dict(os.environ))
    assert function.ready() == (False, "loading model")
    assert function.alive()[0] is True
    # WHEN the model is loaded THEN it is ready
    load.gate.set()
    function.loader.wait()
    assert function.ready() == (True, "ready: model tiny")
    function.stop()


def test_a_model_that_cannot_load_fails_readiness_and_liveness(runtime):
    load = GatedLoad(error=ConfigError("weights /w.pt have sha256 0000, but card expects 1111"))
    function = Function(load=load, settings=runtime.settings)
    function.start({})
    load.gate.set()
    with pytest.raises(ConfigError):
        function.loader.wait()
    ready, message = function.ready()
    assert not ready and "sha256 0000" in message
    alive, message = function.alive()
    assert not alive and "model failed to load" in message


def test_func_python_health_routes_follow_the_model_load(runtime):
    load = GatedLoad(result=runtime)
    function = Function(load=load, settings=runtime.settings)

    async def main() -> None:
        async with serve_in_process(function) as client:
            function.start({})
            readiness = await client.get("/health/readiness")
            assert (readiness.status_code, readiness.text) == (500, "loading model")
            assert (await client.get("/health/liveness")).status_code == 200
            load.gate.set()
            await anyio.to_thread.run_sync(function.loader.wait)
            readiness = await client.get("/health/readiness")
            assert (readiness.status_code, readiness.text) == (200, "ready: model tiny")
            # Everything else is delegated to the Starlette app
            healthz = await client.get("/healthz")
            assert healthz.status_code == 200 and healthz.json()["status"] == "ok"
            missing = await client.get("/nope")
            assert missing.status_code == 404 and missing.json()["error"] == "not found"

    anyio.run(main)


def test_requests_before_start_are_503_json():
    async def main() -> httpx.Response:
        async with serve_in_process(new()) as client:
            return await client.get("/healthz")

    response = anyio.run(main)
    assert response.status_code == 503
    assert response.json() == {"error": "unavailable", "detail": "function not started"}


def test_inference_through_func_python(runtime, make_raster):
    scene = make_raster(64, 64, name="s.tif")
    function = Function(load=lambda: runtime, settings=runtime.settings)

    async def main() -> httpx.Response:
        async with serve_in_process(function) as client:
            function.start({})
            return await client.post("/inference", files={"file": ("s.tif", scene.read_bytes())})

    response = anyio.run(main)
    assert response.status_code == 200, response.text
    assert np.load(io.BytesIO(response.content)).shape == (64, 64)


@pytest.mark.parametrize(
    ("host", "port", "address"),
    [("127.0.0.1", 8080, "127.0.0.1:8080"), ("0.0.0.0", 80, "0.0.0.0:80"), ("::1", 9000, "[::1]:9000")],
)
def test_listen_address(host, port, address):
    assert listen_address(host, port) == address


@pytest.mark.parametrize("port", [0, 70000])
def test_listen_address_refuses_bad_ports(port):
    with pytest.raises(ValueError, match="port"):
        listen_address("127.0.0.1", port)


# --- the real server ----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not TEST_TIF.is_file(), reason="data/test-1.tif is not in the checkout")
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_rasterfn_serve_answers_the_old_readme_curl_like_rasterfn_predict(tmp_path, tiny_card):
    # GIVEN `rasterfn serve` on a free loopback port, with the demo model when it exists
    card = DEFAULT_CARD_PATH if DEFAULT_CARD_PATH.is_file() else tiny_card
    port = free_port()
    work = tmp_path / "client"
    (work / "data").mkdir(parents=True)
    shutil.copy(TEST_TIF, work / "data" / "test-1.tif")
    env = {**os.environ, "MODEL_CARD": str(card), "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "2"}
    log = tmp_path / "serve.log"
    with log.open("wb") as log_fh:
        server = subprocess.Popen(
            [str(VENV_BIN / "rasterfn"), "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_ready(port, server, log)
            # WHEN the old README's command runs, verbatim, from a directory holding data/test-1.tif
            curl = subprocess.run(
                OLD_README_CURL.format(port=port), shell=True, cwd=work, capture_output=True, timeout=300
            )
            assert curl.returncode == 0, curl.stderr.decode()
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        finally:
            # Knative stops pods with SIGTERM: the server must shut down cleanly and promptly.
            server.send_signal(signal.SIGTERM)
            try:
                returncode = server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
                raise
    assert returncode == 0, log.read_text()

    # THEN output.npy is a 512 x 512 array equal to `rasterfn predict` on the same file
    served = np.load(work / "output.npy")
    predicted = subprocess.run(
        [
            str(VENV_BIN / "rasterfn"),
            "predict",
            "data/test-1.tif",
            "-o",
            str(tmp_path / "predicted.npy"),
            "--model",
            str(card),
            "--no-progress",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert predicted.returncode == 0, predicted.stderr.decode()
    assert served.shape == (512, 512)
    np.testing.assert_array_equal(served, np.load(tmp_path / "predicted.npy"))
    assert 'rasterfn_http_requests_total{method="POST",route="/inference",status="200"} 1.0' in metrics
    assert not list(tmp_path.glob("rasterfn-http-*")), "temp files left behind"


# --- closed by default (issue 9)


def test_the_function_refuses_to_start_with_an_open_event_route(tiny_card, tmp_path):
    function = Function(settings=Settings(model_card=tiny_card, tmp_dir=tmp_path))
    with pytest.raises(ConfigError, match="WEBHOOK_TOKEN is not set"):
        function.start({})
    assert function.loader is None, "no worker was started"


def test_the_function_runs_inference_in_worker_processes_by_default(tiny_card, tmp_path):
    from handler.http.workers import WorkerPool

    function = Function(settings=Settings(model_card=tiny_card, tmp_dir=tmp_path, webhook_token="t"))
    function.start({})
    try:
        assert isinstance(function.loader, WorkerPool)
        function.loader.wait()
        assert function.ready() == (True, "ready: 1 worker process(es)")
    finally:
        function.stop()


@pytest.fixture
def serve_once(monkeypatch):
    """``serve_once(host, **flags) -> (settings, Function)``: ``run_serve`` up to the server, in a private env."""
    import os

    import handler.knative as knative
    from handler.settings import get_settings

    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if not k.startswith(SERVE_VARIABLES)})
    served = []
    monkeypatch.setattr(knative.func_python.http, "serve", lambda new: served.append(new()))

    def serve(host: str = "127.0.0.1", **flags):
        get_settings.cache_clear()
        args = {"host": host, "port": 8080, "allowed_buckets": None, "allow_unauthenticated": False, **flags}
        knative.run_serve(type("Args", (), args)())
        return get_settings(), served[-1]

    yield serve
    get_settings.cache_clear()


SERVE_VARIABLES = ("WEBHOOK_TOKEN", "ALLOW_UNAUTHENTICATED_EVENTS", "ALLOWED_BUCKETS", "LISTEN_ADDRESS", "K_SERVICE")


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("::1", True), ("0.0.0.0", False)])
def test_serve_without_configuration_makes_and_prints_a_token(serve_once, capsys, host, loopback):
    # GIVEN no WEBHOOK_TOKEN, no ALLOWED_BUCKETS; WHEN `rasterfn serve` starts
    settings, function = serve_once(host)
    out = capsys.readouterr().out
    # THEN a random token guards POST /, printed with a ready curl line; nothing is open, on loopback neither
    assert settings.webhook_token and len(settings.webhook_token) >= 32
    assert settings.allow_unauthenticated_events is False
    assert f"WEBHOOK_TOKEN={settings.webhook_token}" in out
    assert "curl -X POST http://" in out and f"Authorization: Bearer {settings.webhook_token}" in out
    # no bucket unless given, and loopback Host names only when bound to loopback
    assert settings.allowed_buckets == ("-",) and "ALLOWED_BUCKETS is not set" in out
    assert function._loopback_only is loopback


def test_serve_makes_a_new_token_each_time(serve_once):
    import os

    first = serve_once()[0].webhook_token
    del os.environ["WEBHOOK_TOKEN"]  # the next start, in a fresh shell
    assert serve_once()[0].webhook_token != first


def test_serve_is_open_only_with_the_flag_and_says_so(serve_once, capsys):
    settings, _ = serve_once(allow_unauthenticated=True, allowed_buckets="scenes/in/")
    out = capsys.readouterr().out
    assert settings.allow_unauthenticated_events is True and settings.webhook_token is None
    assert "WARNING: --allow-unauthenticated" in out and "Bearer" not in out
    assert settings.allowed_buckets == ("scenes/in/",)


def test_serve_keeps_a_configured_token(serve_once, capsys, monkeypatch):
    import os

    os.environ["WEBHOOK_TOKEN"] = "chosen-token"
    settings, _ = serve_once()
    assert settings.webhook_token == "chosen-token" and "Bearer" not in capsys.readouterr().out


def test_serve_on_knative_without_a_token_fails_at_start_up(serve_once):
    import os

    os.environ["K_SERVICE"] = "rasterfn"  # the image's entry point runs `rasterfn serve` there
    with pytest.raises(ConfigError, match="WEBHOOK_TOKEN is not set on Knative service 'rasterfn'"):
        serve_once(host="0.0.0.0")


def test_serve_refuses_the_flag_beside_a_token(serve_once):
    import os

    os.environ["WEBHOOK_TOKEN"] = "chosen-token"
    with pytest.raises(ConfigError, match="both set"):
        serve_once(allow_unauthenticated=True)
