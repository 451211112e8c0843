"""The harness for the E2B SDK suites: one real `sbx serve` per runtime.

The official E2B SDKs (Python ``e2b`` and JavaScript ``e2b``, pinned in
requirements.txt and js/package-lock.json) drive sbx's E2B surface, which
``sbx serve`` mounts at ``/e2b`` on its own port. The SDKs find it through
their environment: ``E2B_API_URL`` and ``E2B_SANDBOX_URL`` both name
``<server>/e2b``, and ``E2B_API_KEY`` is an sbx token.

Like tests/python/conftest.py and the Rust e2e harness (tests/src/lib.rs),
the ``server`` fixture starts the binaries that scripts/build made on a
fresh data dir under SBX_TEST_DATA_ROOT and a free loopback port, once per
runtime: every test runs on ``youki`` and on ``docker`` (sbx's own Docker
engine, which scripts/docker-up starts and DOCKER_HOST names; scripts/lib.sh
exports it). It fails, never skips, when what it needs is missing. When a
server's tests are done it deletes whatever sandboxes are left, stops the
server (SIGTERM, then SIGKILL) and removes the data dir, keeping it only if
a test failed.

Fixtures:
- ``server``: the running server (``url``, ``e2b_url``, ``admin_token``,
  ``runtime``, ``data_dir``, ``log()``), parametrized over the runtimes;
- ``admin``: an ``httpx.Client`` on sbx's REST API with the admin token;
- ``e2b_env``: the E2B SDKs' environment for this server, set for the
  test (``e2b_env.use_key(token)`` switches the key; ``e2b_env.env``
  is the environment to hand a subprocess);
- ``sandbox``: a sandbox made through the Python SDK with the admin key,
  deleted after the test.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator

import httpx
import pytest

READY_TIMEOUT_S = 30.0
RUNTIMES = ("youki", "docker")
# Anything harmless: with E2B_API_URL and E2B_SANDBOX_URL set the SDKs never
# build a URL from it, but they read it, and it must not be e2b.app.
E2B_DOMAIN = "sbx.localhost"


def required_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set: run the suite through scripts/test")
    return value


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Server:
    url: str
    admin_token: str
    runtime: str
    data_dir: Path
    process: subprocess.Popen

    @property
    def e2b_url(self) -> str:
        """What E2B_API_URL and E2B_SANDBOX_URL name."""
        return f"{self.url}/e2b"

    def log(self) -> str:
        try:
            return (self.data_dir / "serve.log").read_text(errors="replace")
        except OSError:
            return ""

    def client(self, token: str | None = None) -> httpx.Client:
        """sbx's REST API with ``token`` (the admin's by default)."""
        headers = {"authorization": f"Bearer {token or self.admin_token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


def start_server(runtime: str, data_dir: Path) -> Server:
    """`sbx serve --runtime RUNTIME` on a free loopback port, ready."""
    if runtime == "docker":
        # sbx's own engine (scripts/docker-up); without it sbx serve would
        # talk to a system engine at /var/run/docker.sock, set up for
        # nothing of sbx's.
        required_env("DOCKER_HOST")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(data_dir / "serve.log", "ab")
    process = subprocess.Popen(
        [
            required_env("SBX_BIN"),
            "serve",
            "--runtime",
            runtime,
            "--listen",
            f"127.0.0.1:{port}",
            "--data-dir",
            str(data_dir),
            "--images-dir",
            required_env("SBX_TEST_IMAGES_DIR"),
            "--agent-bin",
            required_env("SBX_AGENT_BIN"),
            # Many sandboxes of the default 10 GiB disk on one pool: the
            # safe default overcommit (1.0) would refuse them after a few.
            "--disk-overcommit",
            "1000",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=dict(os.environ, SBX_LOG=os.environ.get("SBX_LOG", "info")),
    )
    log.close()
    token_path = data_dir / "admin.token"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"sbx serve --runtime {runtime} exited with {process.returncode}; "
                f"log:\n{(data_dir / 'serve.log').read_text(errors='replace')}"
            )
        if token_path.exists() and token_path.read_text().strip():
            token = token_path.read_text().strip()
            try:
                info = httpx.get(
                    f"{url}/v1/info", headers={"authorization": f"Bearer {token}"}, timeout=2
                )
            except httpx.TransportError:
                info = None
            if info is not None and info.status_code == 200:
                served = info.json()["runtime"]["name"]
                if served != runtime:
                    process.kill()
                    process.wait()
                    raise RuntimeError(f"asked sbx serve for {runtime}, it runs {served}")
                return Server(url, token, runtime, data_dir, process)
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise RuntimeError(f"sbx serve --runtime {runtime} not ready after {READY_TIMEOUT_S} s")
        time.sleep(0.02)


def stop_server(server: Server) -> None:
    """Deletes the sandboxes left (whatever state they are in), then stops
    the server."""
    try:
        with server.client() as admin:
            for sandbox in admin.get("/v1/sandboxes").json()["sandboxes"]:
                admin.delete(f"/v1/sandboxes/{sandbox['id']}")
    except (httpx.HTTPError, KeyError, ValueError):
        pass
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="session", params=RUNTIMES)
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    runtime = request.param
    root = Path(required_env("SBX_TEST_DATA_ROOT"))
    root.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix=f"sbx-e2b-{runtime}-", dir=root))
    running = start_server(runtime, data_dir)
    failed_before = request.session.testsfailed
    try:
        yield running
    finally:
        stop_server(running)
        if request.session.testsfailed == failed_before:
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            print(f"\nsbx serve ({runtime}) data dir kept for inspection: {data_dir}")


@pytest.fixture
def admin(server: Server) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


class E2bEnv:
    """The SDKs' environment for one server, set in this process for the
    test (the Python SDK reads it at every call) and ready for a child
    process (the JS SDK)."""

    def __init__(self, server: Server, monkeypatch: pytest.MonkeyPatch):
        self.server = server
        self._monkeypatch = monkeypatch
        self.api_key = server.admin_token
        self._set("E2B_API_URL", server.e2b_url)
        self._set("E2B_SANDBOX_URL", server.e2b_url)
        self._set("E2B_DOMAIN", E2B_DOMAIN)
        self._set("E2B_API_KEY", self.api_key)
        # Nothing of a developer's own E2B setup may leak in: debug mode
        # would send envd traffic to localhost:49983, an access token would
        # be sent to sbx.
        for name in ("E2B_DEBUG", "E2B_ACCESS_TOKEN", "E2B_HTTP_VERSION"):
            monkeypatch.delenv(name, raising=False)
        # Straight to 127.0.0.1 whatever proxy the machine names.
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        self._set("NO_PROXY", "127.0.0.1,localhost")
        self._set("no_proxy", "127.0.0.1,localhost")

    def _set(self, name: str, value: str) -> None:
        self._monkeypatch.setenv(name, value)

    def use_key(self, token: str) -> None:
        """Makes ``token`` the SDKs' E2B_API_KEY from now on."""
        self.api_key = token
        self._set("E2B_API_KEY", token)

    @property
    def env(self) -> Dict[str, str]:
        """This process's environment, E2B settings included, for a child."""
        return dict(os.environ)


@pytest.fixture
def e2b_env(server: Server, monkeypatch: pytest.MonkeyPatch) -> E2bEnv:
    return E2bEnv(server, monkeypatch)


@pytest.fixture
def sandbox(e2b_env: E2bEnv, server: Server):
    """A sandbox made through the Python SDK with the admin key; deleted
    through the REST API after the test, whatever the test did to it."""
    from e2b import Sandbox

    created = Sandbox.create(template="base")
    try:
        yield created
    finally:
        with server.client() as admin:
            admin.delete(f"/v1/sandboxes/{created.sandbox_id}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A skipped test fails the run: nothing here may pass by not running."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and reporter.stats.get("skipped") and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
