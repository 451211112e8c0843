"""Schemathesis hooks for test_openapi.py (loaded through SCHEMATHESIS_HOOKS).

- Tar bodies (`PUT /archive`) are sent as the bytes generated, like
  `application/octet-stream`: the agent must refuse what is not a tar.
- NDJSON answers (an exec stream, process logs) are read line by line, and
  every line is validated against the spec's `ExecEvent` schema here;
  schemathesis then checks the first event itself as the answer's body.
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
EVENT = jsonschema.Draft202012Validator(
    {"$ref": "#/components/schemas/ExecEvent", "components": SPEC["components"]}
)
MIN_DISK_MB = 64
MAX_DISK_MB = 16 * 1024 * 1024

schemathesis.serializer.alias("application/x-tar", "application/octet-stream")


@schemathesis.deserializer("application/x-ndjson")
def ndjson_events(ctx, response):
    events = [json.loads(line) for line in response.content.splitlines() if line.strip()]
    if not events:
        raise ValueError("an NDJSON stream without a single event")
    for event in events:
        EVENT.validate(event)
    return events[0]


@schemathesis.hook
def map_body(context, body):
    operation = context.operation
    if operation is None or (operation.method.upper(), operation.path) != ("POST", "/v1/sandboxes"):
        return body
    if isinstance(body, dict):
        disk = body.get("disk_mb")
        if isinstance(disk, int) and not isinstance(disk, bool) and 128 < disk <= MAX_DISK_MB:
            body["disk_mb"] = MIN_DISK_MB * (1 + disk % 2)
    return body
