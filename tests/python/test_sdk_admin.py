"""Admin calls through the SDK: tokens and the audit trail."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sbx


def test_tokens_create_list_use_and_revoke(server, client):
    created = client.tokens.create(
        "sdk-reader", ["sandboxes:read", "sandboxes:create"], ttl=timedelta(hours=1)
    )
    assert created.secret.startswith("sbx_")
    assert created.token.name == "sdk-reader"
    assert sorted(created.token.scopes) == ["sandboxes:create", "sandboxes:read"]
    assert created.token.created_by == "admin"
    assert created.token.expires_at is not None
    remaining = created.token.expires_at - datetime.now(timezone.utc)
    assert timedelta(minutes=55) < remaining <= timedelta(hours=1, minutes=1)
    assert created.secret not in repr(created)

    listed = {token.id: token for token in client.tokens.list()}
    assert listed[created.id].name == "sdk-reader"
    assert listed[created.id].sandbox is None

    with sbx.Client(server.url, created.secret) as reader:
        assert isinstance(reader.list_sandboxes(), list)
        with pytest.raises(sbx.Forbidden):
            reader.tokens.list()
        with pytest.raises(sbx.Forbidden):
            reader.audit()
        # It may create; it works inside through the new sandbox's own
        # token, and holds no sandboxes:delete: the admin deletes.
        own = sbx.Sandbox.create(client=reader)
        try:
            assert own.get_info().id == own.id
            with pytest.raises(sbx.Forbidden):
                own.exec("echo mine")
            assert own.token is not None
            with sbx.Sandbox.connect(own.id, url=server.url, token=own.token) as inside:
                assert inside.exec("echo mine").stdout == "mine\n"
            with pytest.raises(sbx.Forbidden):
                own.delete()
        finally:
            sbx.Sandbox.connect(own.id, client=client).delete()

    client.tokens.revoke(created.id)
    assert created.id not in {token.id for token in client.tokens.list()}
    with sbx.Client(server.url, created.secret) as revoked:
        with pytest.raises(sbx.Unauthorized):
            revoked.list_sandboxes()
    with pytest.raises(sbx.NotFound):
        client.tokens.revoke(created.id)


def test_a_token_bound_to_a_sandbox(server, client):
    with sbx.Sandbox.create(client=client) as sb:
        bound = client.tokens.create(
            "sdk-bound", ["sandboxes:exec", "sandboxes:read"], sandbox=sb.id
        )
        assert bound.token.sandbox == sb.id
        assert bound.token.expires_at is None
        with sbx.Sandbox.connect(sb.id, url=server.url, token=bound.secret) as via:
            assert via.exec(["echo", "bound"]).stdout == "bound\n"
        with pytest.raises(sbx.Forbidden):
            sbx.Sandbox.list(url=server.url, token=bound.secret)
    # The sandbox's own token is listed too, bound to it, until it goes.
    assert sb.id not in {token.sandbox for token in client.tokens.list()}


def test_token_requests_are_validated(client):
    with pytest.raises(sbx.InvalidRequest):
        client.tokens.create("sdk-bad", ["sandboxes:everything"])
    with pytest.raises(sbx.InvalidRequest):
        client.tokens.create("admin", ["sandboxes:read"])
    with pytest.raises(sbx.InvalidRequest):
        client.tokens.create("sdk-bound-wrong", ["tokens:admin"], sandbox="abc")
    with pytest.raises(TypeError):
        client.tokens.create("sdk-str", "sandboxes:read")  # type: ignore[arg-type]
    # Every scope the server's spec names on an operation, and no other.
    spec = json.loads((Path(__file__).resolve().parents[2] / "api" / "openapi.json").read_text())
    named = {
        scope
        for path in spec["paths"].values()
        for operation in path.values()
        for requirement in operation.get("security", [])
        for scope in requirement.get("bearer", [])
    }
    assert set(sbx.SCOPES) == named


def test_audit_records_calls_with_filters(server, client):
    before = datetime.now(timezone.utc) - timedelta(seconds=1)
    with sbx.Sandbox.create(client=client) as sb:
        sb.exec(["echo", "audited words"])
        sb.files.write("/workspace/audited.txt", b"secret contents")
        records = client.audit(sandbox=sb.id, limit=1000)
        assert records, "no audit records for the sandbox"
        assert all(record.sandbox == sb.id for record in records)
        seqs = [record.seq for record in records]
        assert seqs == sorted(seqs, reverse=True), "newest first"
        execs = [r for r in records if r.route == "/v1/sandboxes/{id}/exec"]
        assert len(execs) == 1
        exec_record = execs[0]
        assert exec_record.method == "POST"
        assert exec_record.identity == "admin"
        assert exec_record.status == 200
        assert exec_record.summary is not None and "audited words" in exec_record.summary
        assert exec_record.request_id and len(exec_record.request_id) == 16
        assert exec_record.time >= before
        writes = [r for r in records if r.route == "/v1/sandboxes/{id}/files" and r.method == "PUT"]
        assert writes and writes[0].summary == "/workspace/audited.txt"
        assert all("secret contents" not in (r.summary or "") for r in records)

        assert len(client.audit(sandbox=sb.id, limit=1)) == 1
        assert client.audit(sandbox=sb.id, since=before)
        future = datetime.now(timezone.utc) + timedelta(hours=1)
        assert client.audit(sandbox=sb.id, since=future) == []
        assert client.audit(sandbox=sb.id, since=future.isoformat()) == []
        with pytest.raises(sbx.InvalidRequest):
            client.audit(limit=0)
        with pytest.raises(sbx.InvalidRequest):
            client.audit(since="yesterday")

        assert sb.token is not None
        with sbx.Client(server.url, sb.token) as own:
            with pytest.raises(sbx.Forbidden):
                own.audit(sandbox=sb.id)
        refusals = [
            r
            for r in client.audit(limit=20)
            if r.route == "/v1/audit" and r.identity == f"sandbox:{sb.id}"
        ]
        assert refusals and refusals[0].status == 403


def test_metrics_need_their_scope(server, client):
    exposition = client.metrics()
    assert "# TYPE sbx_execs_total counter" in exposition
    created = client.tokens.create("sdk-scraper", ["metrics:read"])
    with sbx.Client(server.url, created.secret) as scraper:
        assert "sbx_sandboxes" in scraper.metrics()
    reader = client.tokens.create("sdk-no-metrics", ["sandboxes:read"])
    with sbx.Client(server.url, reader.secret) as stranger:
        with pytest.raises(sbx.Forbidden):
            stranger.metrics()
    client.tokens.revoke(created.id)
    client.tokens.revoke(reader.id)


def test_a_sandbox_token_cannot_widen_its_own_network(server, client):
    with sbx.Sandbox.create(url=server.url, token=server.admin_token) as sandbox:
        with sbx.Sandbox.connect(sandbox.id, url=server.url, token=sandbox.token) as own:
            with pytest.raises(sbx.Forbidden):
                own.update_egress(["example.com"])
        network = client.tokens.create(
            "sdk-network", ["sandboxes:network", "sandboxes:read"], sandbox=sandbox.id
        )
        with sbx.Sandbox.connect(sandbox.id, url=server.url, token=network.secret) as governed:
            governed.update_egress(["example.com:443"])
        assert sandbox.get_info().egress == ["example.com:443"]
        client.tokens.revoke(network.id)
