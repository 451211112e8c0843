"""Schemathesis hooks for test_openapi.py (loaded through SCHEMATHESIS_HOOKS).

- Tar bodies (`PUT /archive`) are sent as the bytes generated, like
  `application/octet-stream`: the agent must refuse what is not a tar.
- NDJSON answers (an exec stream, process logs, lifecycle events) are read
  line by line, and every line is validated against the spec's schema for
  it here (`ExecEvent`, or `Event` for the lifecycle events); schemathesis then
  checks the first line itself as the answer's body. An event stream may
  be empty (a sandbox with no events), and then there is no line to check:
  schemathesis is handed `NO_EVENTS`, a well-formed event that stands for
  none, since it checks every 200 body against the line's schema. An exec
  stream may not be empty.
- Lifecycle events are never asked to `follow`: a followed stream stays open
  until the server stops, which would hang the run, not test anything.
- A fork's `count` is brought down to 1 or 2: each is a real sandbox.
- Timeouts (a create's lifecycle, `POST …/timeout`) are brought up to at
  least 10 minutes: a sandbox the fuzzer gave a second to live would end
  under the calls that follow (a stream cut mid-body), which is not what
  they test. `test_sdk_lifecycle.py` and the e2e suite test timeouts.
- A create's `disk_mb` is brought down to 64 or 128 when the fuzzer drew a
  larger valid size. Every valid size is a real, thin disk, formatted once
  per size into a template; hundreds of random sizes up to 16 TiB would
  cost the CI machine minutes of mkfs and gigabytes of metadata while
  testing nothing the two small sizes do not. A valid value stays valid,
  and values outside the schema (the negative cases) are left for the
  server to refuse.
"""

import json
from pathlib import Path

import jsonschema
import schemathesis

SPEC = json.loads((Path(__file__).resolve().parents[2] / "api" / "openapi.json").read_text())
EXEC_EVENT = jsonschema.Draft202012Validator(
    {"$ref": "#/components/schemas/ExecEvent", "components": SPEC["components"]}
)
LIFECYCLE_EVENT = jsonschema.Draft202012Validator(
    {"$ref": "#/components/schemas/Event", "components": SPEC["components"]}
)
NO_EVENTS = {
    "seq": 0,
    "time": "1970-01-01T00:00:00Z",
    "sandbox_id": "",
    "kind": "created",
}
FOLLOWABLE = {("GET", "/v1/events"), ("GET", "/v1/sandboxes/{id}/events")}
MIN_DISK_MB = 64
MAX_DISK_MB = 16 * 1024 * 1024

schemathesis.serializer.alias("application/x-tar", "application/octet-stream")


@schemathesis.deserializer("application/x-ndjson")
def ndjson_events(ctx, response):
    events = [json.loads(line) for line in response.content.splitlines() if line.strip()]
    lifecycle = response.request.url.split("?")[0].endswith("/events")
    if lifecycle and not events:
        return NO_EVENTS
    if not events:
        raise ValueError("an NDJSON stream without a single event")
    validator = LIFECYCLE_EVENT if lifecycle else EXEC_EVENT
    for event in events:
        validator.validate(event)
    return events[0]


PORT_WAIT = ("GET", "/v1/sandboxes/{id}/ports/{port}/wait")

@schemathesis.hook
def before_call(context, case, **kwargs):
    """Every phase's requests pass here (`map_body` misses the coverage
    phase's boundary values, such as a timeout of one second)."""
    route = (case.operation.method.upper(), case.operation.path)
    if route in FOLLOWABLE and isinstance(case.query, dict):
        if str(case.query.get("follow")).lower() == "true":
            case.query["follow"] = "false"
    if isinstance(case.body, dict):
        keep_small(route, case.body)
    if route == PORT_WAIT:
        # Nothing listens on a fuzzed port: a wait of minutes, or the
        # default 30 s when none is named, would outlast the request
        # timeout. A second at most keeps it an answer. (Some phases give
        # the query's numbers as strings; other values are left for the
        # server to refuse.)
        if case.query is None:
            case.query = {}
        if isinstance(case.query, dict):
            waited = case.query.get("timeout_ms")
            if waited is None:
                case.query["timeout_ms"] = 500
            elif str(waited).isdigit() and int(str(waited)) > 1000:
                case.query["timeout_ms"] = 1 + int(str(waited)) % 1000


def at_least_ten_minutes(fields, key):
    """A valid timeout stays valid (and 0, "none", stays 0)."""
    seconds = fields.get(key) if isinstance(fields, dict) else None
    if isinstance(seconds, int) and not isinstance(seconds, bool) and 0 < seconds < 600:
        fields[key] = 600 + seconds


def keep_small(route, body):
    if route == ("POST", "/v1/sandboxes/{id}/fork"):
        count = body.get("count")
        if isinstance(count, int) and not isinstance(count, bool) and 2 < count <= 100:
            body["count"] = 1 + count % 2
    elif route == ("POST", "/v1/sandboxes/{id}/timeout"):
        at_least_ten_minutes(body, "timeout_s")
    elif route == ("POST", "/v1/sandboxes"):
        lifecycle = body.get("lifecycle")
        at_least_ten_minutes(lifecycle, "timeout_s")
        at_least_ten_minutes(lifecycle, "idle_timeout_s")
        disk = body.get("disk_mb")
        if isinstance(disk, int) and not isinstance(disk, bool) and 128 < disk <= MAX_DISK_MB:
            body["disk_mb"] = MIN_DISK_MB * (1 + disk % 2)
