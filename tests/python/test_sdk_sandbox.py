"""The SDK's sandbox lifecycle, connection settings, errors and egress,
against the session's real `sbx serve`."""

from __future__ import annotations

import socket

import pytest
import sbx
from sbx.errors import error_for, error_from_response


def test_create_applies_every_field(client):
    isolation = client.info().runtime.isolation
    disk = {"disk_mb": 256} if isolation.disk_quota else {}
    with sbx.Sandbox.create(
        client=client,
        image="base",
        memory_mb=256,
        cpus=0.5,
        egress=["Example.COM", "*.pypi.org:443"],
        env={"GREETING": "hello from env"},
        labels={"team": "sdk", "run": "1"},
        **disk,
    ) as sb:
        info = sb.get_info()
        assert info.id == sb.id
        assert info.state == "running"
        assert info.image == "base"
        assert info.memory_mb == 256
        assert info.cpus == 0.5
        assert info.labels == {"team": "sdk", "run": "1"}
        assert info.egress == ["example.com", "*.pypi.org:443"]
        if isolation.disk_quota:
            assert info.disk_mb == 256
        assert info.created_at.tzinfo is not None
        assert sb.exec("echo $GREETING").stdout == "hello from env\n"
        assert sb.token is not None and sb.token.startswith("sbx_")


def test_create_with_invalid_fields_raises_invalid_request(client):
    with pytest.raises(sbx.InvalidRequest) as caught:
        sbx.Sandbox.create(client=client, memory_mb=1)
    assert caught.value.status == 400
    assert caught.value.error_code == "invalid_request"
    assert "memory_mb" in caught.value.message
    with pytest.raises(sbx.InvalidRequest):
        sbx.Sandbox.create(client=client, egress=["https://example.com/path"])
    with pytest.raises(TypeError):
        sbx.Sandbox.create(client=client, egress="example.com")  # type: ignore[arg-type]


def test_connect_list_and_delete(client):
    sb = sbx.Sandbox.create(client=client, labels={"purpose": "connect"})
    try:
        again = sbx.Sandbox.connect(sb.id, client=client)
        assert again.id == sb.id
        assert again.token is None
        assert again.exec(["echo", "connected"]).stdout == "connected\n"
        listed = {info.id: info for info in sbx.Sandbox.list(client=client)}
        assert listed[sb.id].labels == {"purpose": "connect"}
    finally:
        sb.delete()
    with pytest.raises(sbx.NotFound) as caught:
        sbx.Sandbox.connect(sb.id, client=client)
    assert caught.value.status == 404
    assert caught.value.request_id and len(caught.value.request_id) == 16
    with pytest.raises(sbx.NotFound):
        sb.delete()
    assert sb.id not in {info.id for info in client.list_sandboxes()}


def test_context_manager_deletes_even_on_error(client):
    with pytest.raises(RuntimeError):
        with sbx.Sandbox.create(client=client) as sb:
            sandbox_id = sb.id
            assert sb.exec("true").exit_code == 0
            raise RuntimeError("boom")
    with pytest.raises(sbx.NotFound):
        sbx.Sandbox.connect(sandbox_id, client=client)
    # A sandbox deleted inside the block is not an error at its end.
    with sbx.Sandbox.create(client=client) as sb:
        sb.delete()


def test_connected_sandbox_context_manager_leaves_it_running(server, sandbox):
    with sbx.Sandbox.connect(sandbox.id, url=server.url, token=server.admin_token) as again:
        assert again.exec("true").ok
    assert sandbox.get_info().state == "running"


def test_sandbox_token_works_inside_its_sandbox_only(server, client, sandbox):
    assert sandbox.token is not None
    with sbx.Sandbox.connect(sandbox.id, url=server.url, token=sandbox.token) as own:
        assert own.exec("echo mine").stdout == "mine\n"
        assert own.get_info().id == sandbox.id
    with pytest.raises(sbx.Forbidden) as caught:
        sbx.Sandbox.list(url=server.url, token=sandbox.token)
    assert caught.value.status == 403
    assert caught.value.error_code == "forbidden"
    with sbx.Sandbox.create(client=client) as other:
        with pytest.raises(sbx.Forbidden):
            sbx.Sandbox.connect(other.id, url=server.url, token=sandbox.token)
    with pytest.raises(sbx.Forbidden):
        sbx.Sandbox.create(url=server.url, token=sandbox.token)


def test_settings_come_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("SBX_URL", server.url)
    monkeypatch.setenv("SBX_TOKEN", server.admin_token)
    with sbx.Client() as c:
        assert c.url == server.url
        assert c.info().runtime.name == "youki"
    with sbx.Sandbox.create() as sb:
        assert sb.exec("echo env").stdout == "env\n"
        assert sb.id in {info.id for info in sbx.Sandbox.list()}
    monkeypatch.setenv("SBX_TOKEN", "sbx_not-a-real-token")
    with pytest.raises(sbx.Unauthorized) as caught:
        sbx.Sandbox.list()
    assert caught.value.status == 401
    # Arguments win over the environment.
    monkeypatch.setenv("SBX_URL", f"http://127.0.0.1:{free_port()}")
    assert sbx.Sandbox.list(url=server.url, token=server.admin_token) is not None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_no_server_is_a_transport_error():
    with sbx.Client(f"http://127.0.0.1:{free_port()}", "token", timeout=5) as c:
        with pytest.raises(sbx.TransportError) as caught:
            c.info()
    assert not isinstance(caught.value, sbx.ApiError)


def test_update_egress_replaces_the_allowlist(sandbox):
    assert sandbox.get_info().egress == []
    updated = sandbox.update_egress(["GitHub.com.", "*.example.com:8443", "10.1.2.3:8080"])
    assert updated.egress == ["github.com", "*.example.com:8443", "10.1.2.3:8080"]
    assert sandbox.get_info().egress == updated.egress
    assert sandbox.update_egress([]).egress == []
    with pytest.raises(sbx.InvalidRequest):
        sandbox.update_egress(["*"])


def test_info_reports_the_runtime(client):
    info = client.info()
    assert info.version
    assert info.runtime.name == "youki"
    assert info.runtime.version
    assert isinstance(info.runtime.isolation.user_namespace, bool)


def test_every_error_code_has_its_class():
    expected = {
        "invalid_request": sbx.InvalidRequest,
        "unauthorized": sbx.Unauthorized,
        "forbidden": sbx.Forbidden,
        "permission_denied": sbx.PermissionDenied,
        "not_found": sbx.NotFound,
        "method_not_allowed": sbx.MethodNotAllowed,
        "conflict": sbx.Conflict,
        "payload_too_large": sbx.PayloadTooLarge,
        "internal": sbx.InternalError,
        "unavailable": sbx.Unavailable,
    }
    for code, cls in expected.items():
        err = error_for(code, "message", status=400, request_id="r")
        assert type(err) is cls
        assert isinstance(err, sbx.ApiError) and isinstance(err, sbx.SbxError)
        assert (err.error_code, err.message, err.status, err.request_id) == (
            code,
            "message",
            400,
            "r",
        )
    unknown = error_for("teapot", "short and stout", status=418)
    assert type(unknown) is sbx.ApiError
    assert unknown.error_code == "teapot"
    proxied = error_from_response(502, b"<html>bad gateway</html>", {"x-request-id": "abc"})
    assert type(proxied) is sbx.ApiError
    assert proxied.error_code is None
    assert proxied.status == 502
    assert proxied.request_id == "abc"
    assert "bad gateway" in proxied.message
