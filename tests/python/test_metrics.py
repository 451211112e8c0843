"""GET /metrics, read by a parser nobody here wrote.

``prometheus_client.parser.text_string_to_metric_families`` is the stock
parser of the Prometheus text format 0.0.4 (what the server says it
serves). It must take the whole exposition, find every family sbx
documents with the type it documents (a counter whose TYPE line does not
match its samples would come out "untyped"), and read the values that a
create, an exec, a file round trip, a 404 and a delete moved.
"""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

EXPECTED = {
    "sbx_sandboxes": "gauge",
    "sbx_warm_pool_ready": "gauge",
    "sbx_warm_pool_size": "gauge",
    "sbx_create_duration_seconds": "histogram",
    "sbx_delete_duration_seconds": "histogram",
    "sbx_exec_duration_seconds": "histogram",
    "sbx_execs": "counter",
    "sbx_file_upload_bytes": "counter",
    "sbx_file_download_bytes": "counter",
    "sbx_egress_decisions": "counter",
    "sbx_errors": "counter",
    "sbx_auto_resume_duration_seconds": "histogram",
    "sbx_storage_pool_bytes": "gauge",
    "sbx_storage_used_bytes": "gauge",
    "sbx_storage_promised_bytes": "gauge",
}


def scrape(client) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = list(text_string_to_metric_families(response.text))
    names = [family.name for family in families]
    assert len(names) == len(set(names)), f"a family twice: {names}"
    return {family.name: family for family in families}


def value(families: dict, name: str, sample: str | None = None, **labels: str) -> float:
    """The sum of the samples `sample` (default: the family's own name) of
    family `name` whose labels include `labels`."""
    sample = sample or name
    return sum(
        s.value
        for s in families[name].samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_every_family_parses_with_its_type_and_moves(admin):
    before = scrape(admin)
    for name, kind in EXPECTED.items():
        assert name in before, f"{name} missing: {sorted(before)}"
        assert before[name].type == kind, (name, before[name].type)
        assert before[name].documentation, f"{name} has no HELP"
    strays = [name for name, family in before.items() if family.type == "untyped"]
    assert not strays, f"samples outside their family: {strays}"
    assert set(before) == set(EXPECTED), sorted(before)

    created = admin.post("/v1/sandboxes", json={})
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    try:
        ran = admin.post(f"/v1/sandboxes/{sid}/exec", json={"cmd": ["true"]})
        assert ran.status_code == 200 and ran.json()["exit_code"] == 0, ran.text
        blob = b"y" * 4096
        put = admin.put(f"/v1/sandboxes/{sid}/files", params={"path": "/workspace/b"}, content=blob)
        assert put.status_code in (200, 201, 204), put.text
        got = admin.get(f"/v1/sandboxes/{sid}/files", params={"path": "/workspace/b"})
        assert got.status_code == 200 and got.content == blob
        missing = admin.get("/v1/sandboxes/0000000000000000")
        assert missing.status_code == 404
        during = scrape(admin)
    finally:
        deleted = admin.delete(f"/v1/sandboxes/{sid}")
    assert deleted.status_code == 204, deleted.text
    after = scrape(admin)

    def moved(later, name, sample=None, **labels):
        return value(later, name, sample, **labels) - value(before, name, sample, **labels)

    assert moved(during, "sbx_sandboxes", state="running") == 1
    assert moved(during, "sbx_create_duration_seconds", "sbx_create_duration_seconds_count") == 1
    assert moved(during, "sbx_execs", "sbx_execs_total", mode="buffered") == 1
    assert moved(during, "sbx_exec_duration_seconds", "sbx_exec_duration_seconds_count") == 1
    assert moved(during, "sbx_file_upload_bytes", "sbx_file_upload_bytes_total", route="files") == 4096
    assert moved(during, "sbx_file_download_bytes", "sbx_file_download_bytes_total", route="files") == 4096
    assert moved(during, "sbx_errors", "sbx_errors_total", error_code="not_found") == 1
    assert moved(after, "sbx_delete_duration_seconds", "sbx_delete_duration_seconds_count") == 1
    assert value(after, "sbx_sandboxes") == value(before, "sbx_sandboxes")
    buckets = [
        s for s in after["sbx_exec_duration_seconds"].samples
        if s.name.endswith("_bucket") and s.labels["mode"] == "buffered"
    ]
    assert buckets[-1].labels["le"] == "+Inf"
    counts = [s.value for s in buckets]
    assert counts == sorted(counts), "buckets are cumulative"


def test_scraping_takes_the_metrics_read_scope(server, admin):
    anonymous = httpx.get(f"{server.url}/metrics", timeout=60)
    assert anonymous.status_code == 401
    assert anonymous.json()["error_code"] == "unauthorized"
    with server.client(token="sbx_not-a-token") as stranger:
        assert stranger.get("/metrics").status_code == 401
    minted = admin.post("/v1/tokens", json={"name": "py-reader", "scopes": ["sandboxes:read"]})
    assert minted.status_code == 201, minted.text
    with server.client(token=minted.json()["secret"]) as reader:
        refused = reader.get("/metrics")
        assert refused.status_code == 403
        assert refused.json()["error_code"] == "forbidden"
    minted = admin.post("/v1/tokens", json={"name": "py-scraper", "scopes": ["metrics:read"]})
    assert minted.status_code == 201, minted.text
    with server.client(token=minted.json()["secret"]) as scraper:
        families = scrape(scraper)
        assert families["sbx_errors"].type == "counter"
