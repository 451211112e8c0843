"""A preview URL in a real browser: headless Chromium (Debian's
/usr/bin/chromium, driven by playwright-core through
tests/browser/open_preview.mjs) opens a site served inside a sandbox.

The page loads a script by a relative path, follows a relative link into a
subdirectory (whose page loads the script by ``../``), and talks to a
WebSocket echo server in the same sandbox through a second preview; the
test reads what the pages reported. A revoked preview's URL answers 404,
to the browser as to anyone.

A second server, run with ``--preview-domain localhost``, serves the site
as a host of its own (Chromium resolves ``*.localhost`` to loopback): the
browser trades the URL's secret for the host's cookie and then loads the
script and follows the link with that cookie alone.

It fails, never skips, without chromium or the node modules
(scripts/test installs and names them: SBX_BROWSER_NODE_MODULES).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Dict
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import pytest
import sbx
from conftest import Server, required_env, start_server, stop_server

REPO = Path(__file__).resolve().parents[2]
DRIVER = REPO / "tests" / "browser" / "open_preview.mjs"
WS_ECHO = REPO / "tests" / "fixtures" / "ws_echo.py"
CHROMIUM = Path("/usr/bin/chromium")
HTTP_PORT = 8080
WS_PORT = 8081
# Per page the driver waits for; the whole run is bounded apart.
PAGE_TIMEOUT_MS = 30_000
DRIVER_TIMEOUT_S = 120

# An empty icon: no /favicon.ico request leaves the preview's prefix.
INDEX_HTML = """<!doctype html>
<html>
<head>
<meta charset="utf-8">
<link rel="icon" href="data:,">
<title>sbx preview</title>
<script src="app.js" defer></script>
</head>
<body data-page="index">
<h1>first page</h1>
<p id="status">app.js has not run</p>
<p id="echo">no echo yet</p>
<a id="next" href="pages/second.html">the second page</a>
</body>
</html>
"""

SECOND_HTML = """<!doctype html>
<html>
<head>
<meta charset="utf-8">
<link rel="icon" href="data:,">
<title>sbx preview, second page</title>
<script src="../app.js" defer></script>
</head>
<body data-page="second">
<h1>second page</h1>
<p id="status">app.js has not run</p>
</body>
</html>
"""

# Reports through window.sbxResult, which the driver waits for; with a
# WebSocket URL and a message in the query, it first sends the message
# there and writes the reply into the page.
APP_JS = """
"use strict";
function report(fields) {
  const result = Object.assign(
    { script: "app.js", page: document.body.dataset.page, path: location.pathname },
    fields,
  );
  document.getElementById("status").textContent = "app.js ran on " + result.page;
  window.sbxResult = result;
}
const query = new URLSearchParams(location.search);
const target = query.get("ws");
if (target === null) {
  report({});
} else {
  const socket = new WebSocket(target);
  socket.onopen = () => socket.send(query.get("message"));
  socket.onmessage = (event) => {
    document.getElementById("echo").textContent = "echo: " + event.data;
    report({ echo: event.data });
    socket.close();
  };
  socket.onerror = () => report({ error: "the WebSocket to " + target + " failed" });
}
"""


def run_driver(url: str, *args: str) -> Dict[str, Any]:
    """What the driver printed for ``url``; fails the test with the page's
    errors when the driver failed."""
    named = os.environ.get("SBX_BROWSER_NODE_MODULES")
    assert named, "SBX_BROWSER_NODE_MODULES is not set: run the suite through scripts/test"
    node_modules = Path(named)
    assert (node_modules / "playwright-core").is_dir(), f"no playwright-core in {node_modules}"
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: scripts/setup installs Debian's chromium"
    node = shutil.which("node")
    assert node is not None, "node is not on PATH: scripts/setup installs nodejs"
    finished = subprocess.run(
        [node, str(DRIVER), url, "--timeout-ms", str(PAGE_TIMEOUT_MS), *args],
        capture_output=True,
        text=True,
        timeout=DRIVER_TIMEOUT_S,
        env=dict(os.environ, SBX_BROWSER_NODE_MODULES=str(node_modules)),
        stdin=subprocess.DEVNULL,
    )
    assert finished.returncode == 0, (
        f"the browser driver exited {finished.returncode}:\n{finished.stderr}"
    )
    return json.loads(finished.stdout)


def serve(sandbox: sbx.Sandbox) -> None:
    """The site on HTTP_PORT and the WebSocket echo server on WS_PORT."""
    sandbox.files.write("/workspace/site/index.html", INDEX_HTML)
    sandbox.files.write("/workspace/site/app.js", APP_JS)
    sandbox.files.write("/workspace/site/pages/second.html", SECOND_HTML)
    sandbox.files.write("/workspace/ws_echo.py", WS_ECHO.read_bytes())
    sandbox.processes.start(
        f"exec python3 -m http.server {HTTP_PORT} --bind 127.0.0.1",
        cwd="/workspace/site",
        name="site",
    )
    sandbox.processes.start(f"exec python3 /workspace/ws_echo.py {WS_PORT}", name="ws-echo")
    for port in (HTTP_PORT, WS_PORT):
        assert sandbox.ports.wait(port, timeout=60).listening


def test_a_browser_opens_a_preview_follows_its_links_and_talks_over_a_websocket(server, sandbox):
    serve(sandbox)
    site = sandbox.previews.create(HTTP_PORT, ttl_s=600)
    echo = sandbox.previews.create(WS_PORT, ttl_s=600)
    assert site.url is not None and echo.url is not None
    assert site.url.startswith(server.url + "/p/") and site.url.endswith("/")
    prefix = urlsplit(site.url).path
    ws_url = "ws" + echo.url[len("http") :]
    message = f"hello through a preview {secrets.token_hex(8)}"

    opened = run_driver(
        f"{site.url}index.html?ws={quote(ws_url, safe='')}&message={quote(message)}",
        "--click",
        "#next",
    )
    assert opened["console_errors"] == [], opened
    first, second = opened["pages"]

    # app.js, fetched by its relative path, ran and heard the echo.
    assert first["status"] == 200
    assert first["result"] == {
        "script": "app.js",
        "page": "index",
        "path": f"{prefix}index.html",
        "echo": message,
    }, first
    assert f"echo: {message}" in first["text"]
    assert "app.js ran on index" in first["text"]

    # The relative link stayed under the preview's prefix, and so did the
    # second page's "../app.js".
    assert second["status"] == 200
    assert second["url"] == f"{site.url}pages/second.html"
    assert second["title"] == "sbx preview, second page"
    assert second["result"] == {
        "script": "app.js",
        "page": "second",
        "path": f"{prefix}pages/second.html",
    }, second
    assert "app.js ran on second" in second["text"]

    # Revoked: the same URL is a 404, in the browser and to a plain client.
    sandbox.previews.revoke(site)
    index = f"{site.url}index.html"
    gone = run_driver(index, "--status-only")
    assert gone["pages"] == [{"url": index, "status": 404}], gone
    with httpx.Client(timeout=30) as anonymous:
        assert anonymous.get(index).status_code == 404
        # The other preview is untouched by it.
        assert anonymous.get(echo.url).text == "a WebSocket echo server\n"
    sandbox.previews.revoke(echo)


@pytest.fixture(scope="module")
def domain_server():
    """A server whose previews are hosts under ``localhost``."""
    root = Path(required_env("SBX_TEST_DATA_ROOT"))
    root.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="sbx-pytest-domain-", dir=root))
    running = start_server(data_dir, "--preview-domain", "localhost")
    try:
        yield running
    finally:
        stop_server(running)
        shutil.rmtree(data_dir, ignore_errors=True)


def test_a_browser_opens_a_preview_on_its_own_host(domain_server: Server):
    with sbx.Client(domain_server.url, domain_server.admin_token) as client:
        with sbx.Sandbox.create(client=client) as sandbox:
            serve(sandbox)
            site = sandbox.previews.create(HTTP_PORT, ttl_s=600)
            echo = sandbox.previews.create(WS_PORT, ttl_s=600)
            assert site.url is not None and echo.url is not None
            port = urlsplit(domain_server.url).port
            host = f"{HTTP_PORT}-{sandbox.id}.localhost:{port}"
            parts = urlsplit(site.url)
            assert (parts.scheme, parts.netloc, parts.path) == ("http", host, "/"), site.url
            assert parts.query.startswith("sbx_preview_token="), site.url
            secret = parts.query.split("=", 1)[1]
            # WebSockets need no cookie of the page's host: the echo
            # server's preview is its own host with its own token; a
            # WebSocket cannot follow the first visit's redirect, so the
            # page reaches it by the path form instead.
            echo_path = f"{domain_server.url}/p/{urlsplit(echo.url).query.split('=', 1)[1]}/"
            ws_url = "ws" + echo_path[len("http") :]
            message = f"hello through a host preview {secrets.token_hex(8)}"
            query = f"ws={quote(ws_url, safe='')}&message={quote(message)}&{parts.query}"
            opened = run_driver(
                urlunsplit(("http", host, "/index.html", query, "")), "--click", "#next"
            )
            assert opened["console_errors"] == [], opened
            first, second = opened["pages"]
            # The secret left the URL at once; the cookie carried the rest.
            assert secret not in first["url"], first
            assert first["status"] == 200
            assert first["result"] == {
                "script": "app.js",
                "page": "index",
                "path": "/index.html",
                "echo": message,
            }, first
            assert second["url"] == f"http://{host}/pages/second.html"
            assert second["result"] == {
                "script": "app.js",
                "page": "second",
                "path": "/pages/second.html",
            }, second

            # Without the cookie (a fresh browser), the host answers 404.
            bare = f"http://{host}/index.html"
            assert run_driver(bare, "--status-only")["pages"] == [{"url": bare, "status": 404}]
