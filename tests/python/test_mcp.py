"""MCP, through the official MCP Python SDK as a stock client.

Over streamable HTTP against the session's real `sbx serve` (`/mcp`), and
once over stdio, the SDK spawning `sbx mcp` with SBX_URL/SBX_TOKEN set.
Every tool's input schema is also checked as a JSON Schema (draft 2020-12).
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid

import anyio
import httpx
import httpx2
import pytest
from jsonschema import Draft202012Validator
from mcp import Client, ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

ALL_TOOLS = {
    "create_sandbox",
    "list_sandboxes",
    "delete_sandbox",
    "exec",
    "read_file",
    "write_file",
    "list_files",
    "edit_file",
    "start_process",
    "process_logs",
    "kill_process",
    "set_egress",
    "stop_sandbox",
    "start_sandbox",
    "pause_sandbox",
    "resume_sandbox",
    "extend_sandbox",
    "snapshot_sandbox",
    "list_snapshots",
    "delete_snapshot",
    "fork_sandbox",
    "restore_sandbox",
    "list_images",
    "get_image",
    "build_image",
    "delete_image",
    "session_exec",
    "fetch_port",
    "preview_port",
}
SANDBOX_TOOLS = {
    "exec",
    "read_file",
    "write_file",
    "list_files",
    "edit_file",
    "start_process",
    "process_logs",
    "kill_process",
    "session_exec",
    "fetch_port",
    "preview_port",
}


@contextlib.asynccontextmanager
async def mcp_session(server, token: str | None = None):
    headers = {"authorization": f"Bearer {token or server.admin_token}"}
    timeout = httpx2.Timeout(30, read=300)
    async with httpx2.AsyncClient(headers=headers, timeout=timeout) as http:
        async with streamable_http_client(f"{server.url}/mcp", http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                yield session


def run(server, body, token: str | None = None):
    """Runs `body(session)` in a fresh MCP session and returns its result."""

    async def main():
        async with mcp_session(server, token) as session:
            return await body(session)

    return anyio.run(main)


def text_of(result) -> str:
    return "".join(block.text for block in result.content if block.type == "text")


def ok(result) -> str:
    text = text_of(result)
    assert not result.is_error, text
    return text


def error_code(result) -> str:
    assert result.is_error, text_of(result)
    code = result.structured_content["error_code"]
    assert text_of(result).startswith(f"{code}: "), text_of(result)
    return code


@pytest.fixture(scope="module")
def sandbox(server):
    """A sandbox made through MCP's create_sandbox, deleted after the module."""
    result = run(server, lambda s: s.call_tool("create_sandbox", {"labels": {"suite": "mcp"}}))
    text = ok(result)
    sandbox_id = result.structured_content["id"]
    assert sandbox_id in text
    assert result.structured_content["state"] == "running"
    assert "token" not in result.structured_content, "the sandbox token stays out of the model's context"
    yield sandbox_id
    with server.client() as admin:
        admin.delete(f"/v1/sandboxes/{sandbox_id}")


def call(server, name: str, arguments: dict, token: str | None = None):
    return run(server, lambda s: s.call_tool(name, arguments), token)


def test_initialize_lists_every_tool_with_a_valid_schema(server):
    async def body(session):
        tools = await session.list_tools()
        return tools.tools

    tools = run(server, body)
    assert {tool.name for tool in tools} == ALL_TOOLS
    for tool in tools:
        Draft202012Validator.check_schema(tool.input_schema)
        assert tool.input_schema["type"] == "object", tool.name
        assert len(tool.description) > 40, tool.name
        if tool.name not in {
            "create_sandbox", "list_sandboxes", "list_snapshots", "delete_snapshot",
            "list_images", "get_image", "build_image", "delete_image",
        }:
            assert "sandbox_id" in tool.input_schema["required"], tool.name
    exec_tool = next(tool for tool in tools if tool.name == "exec")
    assert {"command", "timeout_seconds"} <= set(exec_tool.input_schema["properties"])


def test_initialize_names_the_server(server):
    async def main():
        headers = {"authorization": f"Bearer {server.admin_token}"}
        async with httpx2.AsyncClient(headers=headers) as http:
            async with streamable_http_client(f"{server.url}/mcp", http_client=http) as (read, write):
                async with ClientSession(read, write) as session:
                    return await session.initialize()

    result = anyio.run(main)
    assert result.server_info.name == "sbx"
    assert result.capabilities.tools is not None
    assert "sandbox" in (result.instructions or "")


def test_no_token_or_a_bad_one_is_401(server):
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    headers = {"accept": "application/json, text/event-stream"}
    for auth in [None, "Bearer sbx_not-a-token", "Basic abc"]:
        sent = dict(headers, **({"authorization": auth} if auth else {}))
        response = httpx.post(f"{server.url}/mcp", json=body, headers=sent, timeout=10)
        assert response.status_code == 401, response.text
        assert response.json()["error_code"] == "unauthorized"
        assert response.json()["request_id"] == response.headers["x-request-id"]
    admin = dict(headers, authorization=f"Bearer {server.admin_token}")
    listed = httpx.post(f"{server.url}/mcp", json=body, headers=admin, timeout=10)
    assert listed.status_code == 200, listed.text
    assert len(listed.headers["x-request-id"]) == 16


def test_create_list_and_delete(server):
    created = call(server, "create_sandbox", {"memory_mb": 256, "egress": ["example.test"]})
    ok(created)
    sandbox_id = created.structured_content["id"]
    listed = call(server, "list_sandboxes", {})
    assert sandbox_id in ok(listed)
    assert "example.test" in ok(listed)
    assert sandbox_id in {s["id"] for s in listed.structured_content["sandboxes"]}
    assert f"deleted sandbox {sandbox_id}" in ok(call(server, "delete_sandbox", {"sandbox_id": sandbox_id}))
    assert sandbox_id not in ok(call(server, "list_sandboxes", {}))


def test_exec_returns_exit_code_and_both_streams(server, sandbox):
    result = call(server, "exec", {"sandbox_id": sandbox, "command": "echo hello; echo oops >&2; exit 3"})
    text = ok(result)
    assert "exit code 3" in text
    assert "--- stdout ---\nhello\n" in text
    assert "--- stderr ---\noops\n" in text
    assert result.structured_content["exit_code"] == 3
    cwd = ok(call(server, "exec", {"sandbox_id": sandbox, "command": "pwd"}))
    assert "/workspace" in cwd


def test_exec_times_out(server, sandbox):
    started = time.monotonic()
    result = call(server, "exec", {"sandbox_id": sandbox, "command": "sleep 60", "timeout_seconds": 1})
    assert "timed out after 1 s" in ok(result)
    assert result.structured_content["timed_out"] is True
    assert time.monotonic() - started < 20


def test_long_output_is_cut_and_can_be_read_in_full(server, sandbox):
    result = call(server, "exec", {"sandbox_id": sandbox, "command": "seq 1 200000"})
    text = ok(result)
    assert len(text) < 40_000, len(text)
    assert text.startswith("exit code 0")
    assert "\n1\n2\n3\n" in text and text.rstrip().endswith("200000")
    marker = re.search(r"\[… (\d+) bytes cut here, of (\d+); the whole output \((\d+) bytes, (\d+) lines\) is in (\S+):", text)
    assert marker, text[:6000]
    cut, total, _, lines, path = marker.groups()
    assert int(total) == len("".join(f"{i}\n" for i in range(1, 200001)))
    assert int(lines) == 200000 and int(cut) > 0
    assert path.startswith("/tmp/sbx-output/")
    page = ok(call(server, "read_file", {"sandbox_id": sandbox, "path": path, "offset": 100000, "limit": 3}))
    assert "100000\t100000\n100001\t100001\n100002\t100002\n" in page
    assert "offset=100003" in page
    end = ok(call(server, "read_file", {"sandbox_id": sandbox, "path": path, "offset": 199999}))
    assert "200000\t200000\n" in end and "end of" in end
    count = ok(call(server, "exec", {"sandbox_id": sandbox, "command": f"wc -l < {path}"}))
    assert "\n200000\n" in count


def test_write_then_read_a_file_by_lines(server, sandbox):
    content = "".join(f"line {i}\n" for i in range(1, 11))
    wrote = ok(call(server, "write_file", {"sandbox_id": sandbox, "path": "/workspace/notes/a.txt", "content": content}))
    assert f"wrote {len(content)} bytes" in wrote
    whole = ok(call(server, "read_file", {"sandbox_id": sandbox, "path": "/workspace/notes/a.txt"}))
    assert "     1\tline 1\n" in whole and "    10\tline 10\n" in whole
    assert "lines 1-10 of 10" in whole
    page = ok(call(server, "read_file", {"sandbox_id": sandbox, "path": "/workspace/notes/a.txt", "offset": 4, "limit": 2}))
    assert page.startswith("     4\tline 4\n     5\tline 5\n")
    assert "offset=6" in page
    listing = ok(call(server, "list_files", {"sandbox_id": sandbox, "path": "/workspace/notes"}))
    assert re.search(r"file\s+\d+\s+/workspace/notes/a.txt", listing), listing
    top = ok(call(server, "list_files", {"sandbox_id": sandbox}))
    assert "/workspace/notes/" in top


def test_binary_files_are_refused_by_read_file(server, sandbox):
    ok(call(server, "exec", {"sandbox_id": sandbox, "command": "head -c 100 /dev/zero > /workspace/zeros"}))
    result = call(server, "read_file", {"sandbox_id": sandbox, "path": "/workspace/zeros"})
    assert error_code(result) == "invalid_request"
    assert "binary" in text_of(result)


def test_edit_file_replaces_exactly_one_occurrence(server, sandbox):
    path = "/workspace/edit/prog.py"
    source = "def f():\n    return 1\n\n\ndef g():\n    return 1\n"
    ok(call(server, "write_file", {"sandbox_id": sandbox, "path": path, "content": source, "mode": "0755"}))

    ambiguous = call(server, "edit_file", {"sandbox_id": sandbox, "path": path, "old_string": "return 1", "new_string": "return 2"})
    assert error_code(ambiguous) == "invalid_request"
    assert "occurs 2 times" in text_of(ambiguous)
    missing = call(server, "edit_file", {"sandbox_id": sandbox, "path": path, "old_string": "return 9", "new_string": "x"})
    assert "not found" in text_of(missing) and error_code(missing) == "invalid_request"

    edited = ok(call(server, "edit_file", {"sandbox_id": sandbox, "path": path, "old_string": "def g():\n    return 1", "new_string": "def g():\n    return 2"}))
    assert "replaced 1 occurrence" in edited and "     6\t    return 2" in edited
    every = ok(call(server, "edit_file", {"sandbox_id": sandbox, "path": path, "old_string": "def ", "new_string": "async def ", "replace_all": True}))
    assert "replaced 2 occurrences" in every

    after = ok(call(server, "exec", {"sandbox_id": sandbox, "command": f"cat {path}; stat -c %a {path}"}))
    assert "async def f():\n    return 1\n\n\nasync def g():\n    return 2\n" in after
    assert "\n755\n" in after, "the file keeps its mode"
    unchanged = ok(call(server, "read_file", {"sandbox_id": sandbox, "path": path, "limit": 1}))
    assert "async def f" in unchanged
    not_a_file = call(server, "edit_file", {"sandbox_id": sandbox, "path": "/workspace/edit", "old_string": "a", "new_string": "b"})
    assert error_code(not_a_file) == "invalid_request"


def test_process_start_logs_and_kill(server, sandbox):
    started = call(server, "start_process", {"sandbox_id": sandbox, "command": "for i in 1 2 3; do echo line$i; done; echo warn >&2; sleep 300", "name": "looper"})
    pid = started.structured_content["pid"]
    assert f"started pid {pid}" in ok(started)

    deadline = time.monotonic() + 20
    while True:
        logs = call(server, "process_logs", {"sandbox_id": sandbox, "pid": pid})
        text = ok(logs)
        if "line3" in text and "warn" in text or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert f"pid {pid} is running" in text
    assert "line1\nline2\nline3\n" in text and "--- stderr ---\nwarn" in text
    assert logs.structured_content["running"] is True

    assert "SIGTERM" in ok(call(server, "kill_process", {"sandbox_id": sandbox, "pid": pid}))
    deadline = time.monotonic() + 20
    while True:
        logs = call(server, "process_logs", {"sandbox_id": sandbox, "pid": pid})
        if "exited" in ok(logs) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert f"pid {pid} exited with code 143" in text_of(logs)
    missing = call(server, "process_logs", {"sandbox_id": sandbox, "pid": 999999})
    assert error_code(missing) == "not_found"


def test_a_session_keeps_cd_and_variables_between_calls(server, sandbox):
    first = call(server, "session_exec", {"sandbox_id": sandbox, "command": "cd /tmp && export MARK=kept"})
    session = re.search(r"^session (\S+) ", ok(first)).group(1)
    second = call(
        server,
        "session_exec",
        {"sandbox_id": sandbox, "session_id": session, "command": "pwd; echo $MARK; exit 3"},
    )
    text = ok(second)
    assert "/tmp\nkept\n" in text and "exit code 3" in text, text
    gone = call(server, "session_exec", {"sandbox_id": sandbox, "session_id": session, "command": "true"})
    assert error_code(gone) == "not_found"


def test_a_server_in_the_sandbox_is_fetched_and_previewed(server, sandbox):
    ok(call(server, "write_file", {"sandbox_id": sandbox, "path": "/workspace/www/index.html", "content": "<h1>mcp page</h1>\n"}))
    ok(call(server, "start_process", {"sandbox_id": sandbox, "command": "python3 -m http.server 8123 --bind 127.0.0.1 --directory /workspace/www"}))
    fetched = call(server, "fetch_port", {"sandbox_id": sandbox, "port": 8123, "path": "/index.html", "wait_seconds": 30})
    assert "HTTP 200" in ok(fetched) and "<h1>mcp page</h1>" in text_of(fetched)
    assert fetched.structured_content["status"] == 200
    missing = call(server, "fetch_port", {"sandbox_id": sandbox, "port": 8123, "path": "/nope"})
    assert "HTTP 404" in ok(missing), "the app's own 404 is an answer, not a tool error"

    preview = call(server, "preview_port", {"sandbox_id": sandbox, "port": 8123, "ttl_seconds": 600})
    url = preview.structured_content["url"]
    assert url in ok(preview) and "/p/" in url
    page = httpx.get(url + "index.html", timeout=30)
    assert page.status_code == 200 and page.text == "<h1>mcp page</h1>\n"


def test_set_egress_replaces_the_allowlist(server, sandbox, admin):
    result = call(server, "set_egress", {"sandbox_id": sandbox, "egress": ["Example.Test", "*.pypi.org:443"]})
    assert "may now reach: example.test, *.pypi.org:443" in ok(result)
    assert admin.get(f"/v1/sandboxes/{sandbox}").json()["network"]["egress"] == ["example.test", "*.pypi.org:443"]
    assert "no host" in ok(call(server, "set_egress", {"sandbox_id": sandbox, "egress": []}))
    assert admin.get(f"/v1/sandboxes/{sandbox}").json()["network"]["egress"] == []
    bad = call(server, "set_egress", {"sandbox_id": sandbox, "egress": ["https://example.test/x"]})
    assert error_code(bad) == "invalid_request"


def test_snapshot_fork_restore_and_the_lifecycle(server, admin):
    created = call(server, "create_sandbox", {
        "disk_mb": 256, "timeout_s": 3600, "on_timeout": "stop", "auto_resume": False,
    })
    ok(created)
    sandbox_id = created.structured_content["id"]
    lifecycle = created.structured_content["lifecycle"]
    assert (lifecycle["timeout_s"], lifecycle["on_timeout"], lifecycle["auto_resume"]) == (3600, "stop", False)
    name = f"mcp-{sandbox_id}"
    path = {"sandbox_id": sandbox_id, "path": "/workspace/f"}
    forks = []
    try:
        ok(call(server, "write_file", dict(path, content="one\n")))
        snapshot = call(server, "snapshot_sandbox", {"sandbox_id": sandbox_id, "name": name})
        assert f"took snapshot {name} of sandbox {sandbox_id}" in ok(snapshot)
        assert snapshot.structured_content["sandbox_id"] == sandbox_id
        assert name in ok(call(server, "list_snapshots", {}))
        ok(call(server, "write_file", dict(path, content="two\n")))

        forked = call(server, "fork_sandbox", {"sandbox_id": sandbox_id, "count": 2})
        ok(forked)
        forks = [fork["id"] for fork in forked.structured_content["sandboxes"]]
        assert len(forks) == 2 and forked.structured_content["errors"] == []
        assert all("token" not in fork for fork in forked.structured_content["sandboxes"])
        for fork in forks:
            assert "two" in ok(call(server, "read_file", dict(path, sandbox_id=fork)))

        restored = call(server, "restore_sandbox", {"sandbox_id": sandbox_id, "snapshot": name})
        assert f"restored sandbox {sandbox_id} to snapshot {name}" in ok(restored)
        assert "one" in ok(call(server, "read_file", path))

        extended = call(server, "extend_sandbox", {"sandbox_id": sandbox_id, "timeout_s": 7200})
        assert "it will stop" in ok(extended)
        assert extended.structured_content["expires_at"]
        assert error_code(call(server, "extend_sandbox", {"sandbox_id": sandbox_id, "timeout_s": 0})) == "invalid_request"

        for tool, state in [("pause_sandbox", "paused"), ("resume_sandbox", "running"), ("stop_sandbox", "stopped")]:
            changed = call(server, tool, {"sandbox_id": sandbox_id})
            ok(changed)
            assert changed.structured_content["state"] == state, tool
        # auto_resume is off: a stopped sandbox is not woken by a call.
        assert error_code(call(server, "exec", {"sandbox_id": sandbox_id, "command": "true"})) == "conflict"
        started = call(server, "start_sandbox", {"sandbox_id": sandbox_id})
        assert started.structured_content["state"] == "running", text_of(started)
        assert "one" in ok(call(server, "read_file", path))

        assert error_code(call(server, "delete_snapshot", {"name": "../tokens"})) == "invalid_request"
        assert f"deleted snapshot {name}" in ok(call(server, "delete_snapshot", {"name": name}))
        assert error_code(call(server, "delete_snapshot", {"name": name})) == "not_found"
        missing = call(server, "restore_sandbox", {"sandbox_id": sandbox_id, "snapshot": name})
        assert error_code(missing) == "not_found"
    finally:
        for id_ in [sandbox_id, *forks]:
            admin.delete(f"/v1/sandboxes/{id_}")


def test_images_list_get_and_delete(server, admin):
    listed = call(server, "list_images", {})
    text = ok(listed)
    names = {image["name"] for image in listed.structured_content["images"]}
    assert "base" in names, listed.structured_content
    assert re.search(r"^base  id \S+  source recipe  ", text, re.MULTILINE), text
    create = next(tool for tool in run(server, lambda s: s.list_tools()).tools if tool.name == "create_sandbox")
    assert "list_images" in create.description
    assert "list_images" in create.input_schema["properties"]["image"]["description"]

    got = call(server, "get_image", {"name": "base"})
    assert ok(got).startswith("image base\n")
    assert got.structured_content["name"] == "base"
    assert got.structured_content["source"] == "recipe"
    assert got.structured_content == admin.get("/v1/images/base").json()

    # The default image is never deleted: the API's 409, as the tool's error.
    refused = call(server, "delete_image", {"name": "base"})
    assert error_code(refused) == "conflict"
    assert "default image" in text_of(refused)
    assert "base" in ok(call(server, "list_images", {}))

    # A name is one path segment: slashes are encoded, not routes.
    missing = call(server, "get_image", {"name": "localhost:5000/team/app:v1"})
    assert error_code(missing) == "not_found"
    assert "localhost:5000/team/app:v1" in text_of(missing)
    assert error_code(call(server, "delete_image", {"name": "localhost:5000/no/such:v1"})) == "not_found"
    assert error_code(call(server, "get_image", {"name": "../tokens"})) == "invalid_request"
    records = admin.get("/v1/audit", params={"limit": 20}).json()["records"]
    assert any(
        r["route"] == "/v1/images/{name}" and r["method"] == "DELETE" and r["status"] == 409
        and (r.get("summary") or "").startswith("mcp delete_image")
        for r in records
    ), records


def test_build_image_from_a_dockerfile_and_files(server, admin):
    name = f"mcp-built-{uuid.uuid4().hex[:8]}:v1"
    unsupported = call(server, "build_image", {"name": name, "dockerfile": "FROM base\nEXPOSE 80\n"})
    assert error_code(unsupported) == "invalid_request"
    assert "line 2" in text_of(unsupported) and "EXPOSE" in text_of(unsupported)

    dockerfile = "FROM base\nARG WHO\nCOPY notes/hello.txt /srv/\nRUN echo \"$WHO: $(cat /srv/hello.txt)\" > /srv/said\n"
    built = call(server, "build_image", {
        "name": name,
        "dockerfile": dockerfile,
        "files": {"notes/hello.txt": "hello from a file"},
        "build_args": {"WHO": "mcp"},
    })
    assert ok(built).startswith(f"built {name}\n"), text_of(built)
    assert built.structured_content["source"] == "build"
    created = admin.post("/v1/sandboxes", json={"image": name}).json()
    try:
        said = admin.post(f"/v1/sandboxes/{created['id']}/exec", json={"cmd": ["cat", "/srv/said"]}).json()
        assert said["stdout"] == "mcp: hello from a file\n", said
    finally:
        admin.delete(f"/v1/sandboxes/{created['id']}")
    failing = call(server, "build_image", {"name": name, "dockerfile": "FROM base\nRUN echo oops >&2; exit 7\n"})
    assert error_code(failing) == "invalid_request"
    assert "exit code 7" in text_of(failing) and "oops" in text_of(failing)
    ok(call(server, "delete_image", {"name": name}))


def test_errors_are_tool_errors_with_their_error_code(server, sandbox):
    missing_file = call(server, "read_file", {"sandbox_id": sandbox, "path": "/workspace/no/such/file"})
    assert error_code(missing_file) == "not_found"
    assert missing_file.structured_content["request_id"]
    missing_sandbox = call(server, "exec", {"sandbox_id": "0123456789abcdef", "command": "true"})
    assert error_code(missing_sandbox) == "not_found"
    relative = call(server, "read_file", {"sandbox_id": sandbox, "path": "relative.txt"})
    assert error_code(relative) == "invalid_request"
    bad_args = call(server, "exec", {"sandbox_id": sandbox})
    assert error_code(bad_args) == "invalid_request"
    assert "command" in text_of(bad_args)


def test_tool_calls_are_audited_with_the_tool_name(server, sandbox, admin):
    ok(call(server, "exec", {"sandbox_id": sandbox, "command": "echo audit-me"}))
    ok(call(server, "write_file", {"sandbox_id": sandbox, "path": "/workspace/audited.txt", "content": "SECRET-CONTENT"}))
    records = admin.get("/v1/audit", params={"sandbox": sandbox, "limit": 50}).json()["records"]
    execs = [r for r in records if r.get("summary") == "mcp exec: shell: echo audit-me"]
    assert len(execs) == 1, records
    assert execs[0]["route"] == "/v1/sandboxes/{id}/exec"
    assert execs[0]["identity"] == "admin" and execs[0]["status"] == 200
    writes = [r for r in records if r.get("summary") == "mcp write_file: /workspace/audited.txt"]
    assert len(writes) == 1, records
    assert not any("SECRET-CONTENT" in (r.get("summary") or "") for r in records)
    refused = call(server, "exec", {"sandbox_id": sandbox, "commandd": "x"})
    assert error_code(refused) == "invalid_request"
    recent = admin.get("/v1/audit", params={"limit": 5}).json()["records"]
    assert any(r["route"] == "/mcp" and r.get("summary") == "mcp exec" and r["status"] == 400 for r in recent), recent


def test_a_sandbox_token_sees_only_its_sandbox(server, admin):
    created = admin.post("/v1/sandboxes", json={})
    assert created.status_code == 201, created.text
    sandbox_id, token = created.json()["id"], created.json()["token"]
    try:
        async def body(session):
            tools = (await session.list_tools()).tools
            ran = await session.call_tool("exec", {"command": "echo inside"})
            create = await session.call_tool("create_sandbox", {})
            other = await session.call_tool("exec", {"command": "true", "sandbox_id": "0123456789abcdef"})
            return tools, ran, create, other

        tools, ran, create, other = run(server, body, token=token)
        assert {tool.name for tool in tools} == SANDBOX_TOOLS
        for tool in tools:
            assert "sandbox_id" not in tool.input_schema.get("properties", {}), tool.name
            assert "sandbox_id" not in tool.input_schema.get("required", []), tool.name
            Draft202012Validator.check_schema(tool.input_schema)
        assert "inside" in ok(ran)
        assert error_code(create) == "forbidden"
        assert error_code(other) == "invalid_request"
        records = admin.get("/v1/audit", params={"sandbox": sandbox_id}).json()["records"]
        assert any(r.get("summary") == "mcp exec: shell: echo inside" and r["identity"] == f"sandbox:{sandbox_id}" for r in records)
    finally:
        admin.delete(f"/v1/sandboxes/{sandbox_id}")


def test_stdio_relays_to_the_server(server, sandbox):
    params = StdioServerParameters(
        command=os.environ["SBX_BIN"],
        args=["mcp"],
        env={"SBX_URL": server.url, "SBX_TOKEN": server.admin_token, "PATH": os.environ.get("PATH", "")},
    )

    async def main():
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                init = await session.initialize()
                tools = (await session.list_tools()).tools
                ran = await session.call_tool("exec", {"sandbox_id": sandbox, "command": "echo over-stdio"})
                missing = await session.call_tool("read_file", {"sandbox_id": sandbox, "path": "/nope"})
                return init, tools, ran, missing

    init, tools, ran, missing = anyio.run(main)
    assert init.server_info.name == "sbx"
    assert {tool.name for tool in tools} == ALL_TOOLS
    assert "over-stdio" in ok(ran)
    assert error_code(missing) == "not_found"


def test_stdio_with_a_bad_token_fails_cleanly(server):
    params = StdioServerParameters(
        command=os.environ["SBX_BIN"],
        args=["mcp"],
        env={"SBX_URL": server.url, "SBX_TOKEN": "sbx_bad", "PATH": os.environ.get("PATH", "")},
    )

    async def main():
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write, read_timeout_seconds=30) as session:
                await session.initialize()

    # The relay answers the initialize with a JSON-RPC error naming the 401,
    # instead of leaving the client waiting.
    with pytest.raises(Exception) as raised:
        anyio.run(main)
    assert "HTTP 401" in repr(raised.value) and "invalid or revoked bearer token" in repr(raised.value)


def test_a_2026_client_discovers_instead_of_initializing(server, sandbox):
    """The SDK's default `Client` probes `server/discover` (stateless, per-request
    protocol version) before falling back to `initialize`."""
    async def main():
        headers = {"authorization": f"Bearer {server.admin_token}"}
        async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300)) as http:
            transport = streamable_http_client(f"{server.url}/mcp", http_client=http)
            async with Client(transport, mode="auto") as client:
                tools = await client.list_tools()
                ran = await client.call_tool("exec", {"sandbox_id": sandbox, "command": "echo modern"})
                return client.protocol_version, client.server_info, tools, ran

    version, info, tools, ran = anyio.run(main)
    assert version == "2026-07-28"
    assert info.name == "sbx"
    assert {tool.name for tool in tools.tools} == ALL_TOOLS
    assert "modern" in ok(ran)


def test_stdio_relays_a_2026_client_too(server, sandbox):
    params = StdioServerParameters(
        command=os.environ["SBX_BIN"],
        args=["mcp"],
        env={"SBX_URL": server.url, "SBX_TOKEN": server.admin_token, "PATH": os.environ.get("PATH", "")},
    )

    async def main():
        async with Client(params, mode="auto") as client:
            ran = await client.call_tool("exec", {"sandbox_id": sandbox, "command": "echo relayed"})
            return client.protocol_version, ran

    version, ran = anyio.run(main)
    assert version == "2026-07-28"
    assert "relayed" in ok(ran)
