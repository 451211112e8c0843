"""The harness for the Python suites: one real `sbx serve` for the session.

Like the Rust e2e harness (tests/src/lib.rs), it starts the binaries that
scripts/build made, on the embedded youki runtime, on a fresh data dir
under SBX_TEST_DATA_ROOT, on a free loopback port; it fails (never skips)
when what it needs is missing. When the session ends it deletes whatever
sandboxes are left, stops the server (SIGTERM, then SIGKILL) and removes
the data dir, keeping it only if a test failed.

Fixtures:
- ``server``: the running server (``url``, ``admin_token``, ``data_dir``,
  ``log()``);
- ``admin``: an ``httpx.Client`` on the server with the admin token;
- ``client``: an ``sbx.Client`` (the SDK) with the admin token;
- ``sandbox``: a new sandbox through the SDK, deleted after the test.
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

import httpx
import pytest
import sbx

READY_TIMEOUT_S = 30.0


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
    data_dir: Path
    process: subprocess.Popen

    def log(self) -> str:
        try:
            return (self.data_dir / "serve.log").read_text(errors="replace")
        except OSError:
            return ""

    def client(self, token: str | None = None, **kwargs) -> httpx.Client:
        headers = {"authorization": f"Bearer {token or self.admin_token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kwargs)


def start_server(data_dir: Path, *extra_args: str) -> Server:
    """`sbx serve` on a free loopback port, with ``extra_args`` after the
    harness's own."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(data_dir / "serve.log", "ab")
    process = subprocess.Popen(
        [
            required_env("SBX_BIN"),
            "serve",
            "--runtime",
            "youki",
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
            *extra_args,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    log.close()
    token_path = data_dir / "admin.token"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"sbx serve exited with {process.returncode}")
        if token_path.exists() and token_path.read_text().strip():
            token = token_path.read_text().strip()
            try:
                info = httpx.get(
                    f"{url}/v1/info", headers={"authorization": f"Bearer {token}"}, timeout=2
                )
                if info.status_code == 200:
                    return Server(url, token, data_dir, process)
            except httpx.TransportError:
                pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"sbx serve not ready after {READY_TIMEOUT_S} s")
        time.sleep(0.02)


def stop_server(server: Server) -> None:
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


@pytest.fixture(scope="session")
def server(request: pytest.FixtureRequest):
    root = Path(required_env("SBX_TEST_DATA_ROOT"))
    root.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="sbx-pytest-", dir=root))
    running = start_server(data_dir)
    failed_before = request.session.testsfailed
    try:
        yield running
    finally:
        stop_server(running)
        if request.session.testsfailed == failed_before:
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            print(f"\nsbx serve data dir kept for inspection: {data_dir}")


@pytest.fixture
def admin(server: Server):
    with server.client() as client:
        yield client


@pytest.fixture
def client(server: Server):
    with sbx.Client(server.url, server.admin_token) as sdk:
        yield sdk


@pytest.fixture
def sandbox(client):
    with sbx.Sandbox.create(client=client) as created:
        yield created


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A skipped test fails the run: nothing here may pass by not running."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and reporter.stats.get("skipped") and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
