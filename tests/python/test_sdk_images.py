"""The SDK's image calls: import (from a path, bytes or a file), list, get
and delete, and sandboxes made from an imported image, against the
session's real `sbx serve`; and their wire format, without it.

The archives are OCI image layouts built here in memory: two layers (one
plain tar, one gzipped), the second overwriting a file and whiting out
another. The image holds no shell and no binaries, so its sandboxes are
read through the files API only. Images are server-wide: every test uses
names of its own.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import gzip
import hashlib
import io
import json
import socket
import tarfile
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import httpx
import pytest
import sbx
from sbx import _core

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

# (name, contents): a name ending in "/" is a directory.
LAYER_ONE = [
    ("etc/", b""),
    ("etc/motd", b"one"),
    ("app/", b""),
    ("app/old", b"old file"),
]
LAYER_TWO = [("app/.wh.old", b""), ("etc/motd", b"two")]


def tar_of(entries: List[Tuple[str, bytes]]) -> bytes:
    """A tar of the entries, in order, with fixed owners and times."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name.rstrip("/"))
            info.mtime = 1_700_000_000
            if name.endswith("/"):
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.mode = 0o644
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image_blobs(
    layers: List[Tuple[List[Tuple[str, bytes]], bool]],
) -> Tuple[bytes, Dict[str, bytes]]:
    """One image with these layers, each as ``(entries, gzipped)``: its
    manifest, and every blob (config and layers) by digest; its config sets
    env, working dir and user."""
    blobs: Dict[str, bytes] = {}

    def blob(data: bytes, media_type: str) -> Dict[str, object]:
        blobs[digest(data)] = data
        return {"mediaType": media_type, "digest": digest(data), "size": len(data)}

    descriptors, diff_ids = [], []
    for entries, gzipped in layers:
        plain = tar_of(entries)
        diff_ids.append(digest(plain))
        if gzipped:
            descriptors.append(blob(gzip.compress(plain, mtime=0), OCI_LAYER_GZIP))
        else:
            descriptors.append(blob(plain, OCI_LAYER))
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["GREETING=hello"], "WorkingDir": "/app", "User": "0"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": blob(json.dumps(config).encode(), OCI_CONFIG),
        "layers": descriptors,
    }
    return json.dumps(manifest).encode(), blobs


def oci_layout(layers: List[Tuple[List[Tuple[str, bytes]], bool]]) -> bytes:
    """An OCI image layout tarball of the image of :func:`image_blobs`."""
    manifest, blobs = image_blobs(layers)
    blobs[digest(manifest)] = manifest
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": digest(manifest),
                "size": len(manifest),
            }
        ],
    }
    files = [
        ("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
        ("index.json", json.dumps(index).encode()),
        ("blobs/", b""),
        ("blobs/sha256/", b""),
    ]
    files += [
        (f"blobs/sha256/{name.split(':', 1)[1]}", data) for name, data in blobs.items()
    ]
    return tar_of(files)


def two_layer_image() -> bytes:
    return oci_layout([(LAYER_ONE, False), (LAYER_TWO, True)])


@pytest.fixture
def image_name(client):
    """A fresh image name per call (with a slash and a tag, as real ones
    have); whatever was imported under them is deleted after the test."""
    names: List[str] = []

    def fresh() -> str:
        names.append(f"pytest-{uuid.uuid4().hex[:12]}/img:v1")
        return names[-1]

    yield fresh
    for name in names:
        with contextlib.suppress(sbx.NotFound):
            client.images.delete(name)


def assert_the_two_layer_image(
    image: sbx.ImageInfo, name: str, source: str = "import"
) -> None:
    assert image.name == name
    assert image.source == source
    assert image.id.startswith("sha256:")
    assert image.layers == 2
    assert "GREETING=hello" in image.config.env
    assert image.config.working_dir == "/app"
    assert image.config.user == "0"
    assert image.skipped_devices == []


def test_import_from_a_path_and_from_bytes_then_list_and_get(
    client, image_name, tmp_path: Path
):
    archive = two_layer_image()
    path = tmp_path / "image.tar"
    path.write_bytes(archive)
    from_path, from_bytes = image_name(), image_name()

    imported = client.images.import_image(path, name=from_path)
    assert_the_two_layer_image(imported, from_path)
    assert_the_two_layer_image(
        client.images.import_image(archive, name=from_bytes), from_bytes
    )
    # A str path works as well as a Path, and a file object streams.
    from_str, from_file = image_name(), image_name()
    assert client.images.import_image(str(path), name=from_str).id == imported.id
    with open(path, "rb") as file:
        assert client.images.import_image(file, from_file).id == imported.id

    listed = {image.name: image for image in client.images.list()}
    assert {from_path, from_bytes, from_str, from_file, "base"} <= set(listed)
    assert listed[from_path].id == imported.id
    assert listed["base"].source == "recipe"

    # The name holds a slash and a colon: it travels as one path segment.
    assert client.images.get(from_path) == imported
    assert client.images.get(imported).name == from_path
    with pytest.raises(sbx.NotFound):
        client.images.get(f"pytest-{uuid.uuid4().hex[:12]}/missing:v1")


def test_a_sandbox_sees_the_layers_applied_and_holds_the_image(client, image_name):
    name = image_name()
    image = client.images.import_image(two_layer_image(), name=name)
    sb = sbx.Sandbox.create(client=client, image=name)
    try:
        assert sb.get_info().image == name
        # The second layer overwrote the first's file and whited out another.
        assert sb.files.read_text("/etc/motd") == "two"
        assert not sb.files.exists("/app/old")
        with pytest.raises(sbx.NotFound):
            sb.files.read("/app/old")
        assert sb.files.stat("/app").is_dir
        # The image is in use: it cannot go while the sandbox is made from it.
        with pytest.raises(sbx.Conflict):
            client.images.delete(name)
        assert client.images.get(name).id == image.id
    finally:
        with contextlib.suppress(sbx.NotFound):
            sb.delete()
        sb.close()
    client.images.delete(image)
    with pytest.raises(sbx.NotFound):
        client.images.get(name)
    with pytest.raises(sbx.NotFound):
        client.images.delete(name)


def test_the_default_image_stays_and_garbage_is_refused(client, image_name):
    with pytest.raises(sbx.Conflict):
        client.images.delete("base")
    assert client.images.get("base").source == "recipe"
    name = image_name()
    with pytest.raises(sbx.InvalidRequest):
        client.images.import_image(b"not a tar", name=name)
    # A tar that is no image layout is refused too, and leaves nothing.
    with pytest.raises(sbx.InvalidRequest):
        client.images.import_image(tar_of([("hello.txt", b"hi")]), name=name)
    with pytest.raises(sbx.NotFound):
        client.images.get(name)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_async_api_imports_lists_gets_and_deletes(server, image_name):
    name = image_name()
    async with sbx.AsyncClient(server.url, server.admin_token) as client:
        imported = await client.images.import_image(io.BytesIO(two_layer_image()), name)
        try:
            assert_the_two_layer_image(imported, name)
            assert name in {image.name for image in await client.images.list()}
            assert (await client.images.get(name)).id == imported.id
            async with sbx.AsyncSandbox.create(client=client, image=imported) as sb:
                assert await sb.files.read_text("/etc/motd") == "two"
        finally:
            await client.images.delete(name)
        with pytest.raises(sbx.NotFound):
            await client.images.get(name)


# --- pulls from a registry on loopback ---------------------------------------


# A first layer big enough for several progress lines (one per MiB).
BIG_FILE = bytes(range(256)) * (10 * 1024 + 7)


def pull_image_blobs() -> Tuple[bytes, Dict[str, bytes]]:
    """The two-layer image, its first layer with a 2.5 MiB file more."""
    return image_blobs(
        [(LAYER_ONE + [("app/big.bin", BIG_FILE)], False), (LAYER_TWO, True)]
    )


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


class FakeRegistry:
    """One repository over the OCI distribution API on loopback (which the
    server reaches over plain HTTP): ``GET /v2/``, the manifest by tag or
    digest, the blobs. With ``credentials`` it answers 401 and a Basic
    challenge to every request without them. It records every request's
    path and Authorization header."""

    def __init__(
        self,
        repository: str,
        tag: str,
        image: Tuple[bytes, Dict[str, bytes]],
        credentials: Optional[Tuple[str, str]] = None,
    ) -> None:
        manifest, self.blobs = image
        self.repository = repository
        self.manifests = {tag: manifest, digest(manifest): manifest}
        self.credentials = credentials
        self.seen: List[Tuple[str, Optional[str]]] = []
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: object) -> None:
                pass

            def do_GET(self) -> None:
                registry.answer(self)

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.addr = f"127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()

    def __enter__(self) -> FakeRegistry:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @staticmethod
    def send(
        handler: BaseHTTPRequestHandler, status: int, body: bytes, **headers: str
    ) -> None:
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key.replace("_", "-"), value)
        handler.send_header("content-length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def refuse(
        self, handler: BaseHTTPRequestHandler, status: int, code: str, **headers: str
    ) -> None:
        body = json.dumps(
            {"errors": [{"code": code, "message": code.lower()}]}
        ).encode()
        self.send(handler, status, body, content_type="application/json", **headers)

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        authorization = handler.headers.get("authorization")
        self.seen.append((handler.path, authorization))
        if self.credentials is not None and authorization != basic(*self.credentials):
            self.refuse(
                handler, 401, "UNAUTHORIZED", www_authenticate='Basic realm="pytest"'
            )
            return
        if handler.path == "/v2/":
            self.send(handler, 200, b"{}", content_type="application/json")
            return
        prefix = f"/v2/{self.repository}/"
        kind, _, ref = handler.path[len(prefix) :].partition("/")
        if not handler.path.startswith(prefix):
            self.refuse(handler, 404, "NAME_UNKNOWN")
        elif kind == "manifests" and ref in self.manifests:
            manifest = self.manifests[ref]
            self.send(
                handler,
                200,
                manifest,
                content_type=OCI_MANIFEST,
                docker_content_digest=digest(manifest),
            )
        elif kind == "manifests":
            self.refuse(handler, 404, "MANIFEST_UNKNOWN")
        elif kind == "blobs" and ref in self.blobs:
            self.send(
                handler, 200, self.blobs[ref], content_type="application/octet-stream"
            )
        else:
            self.refuse(handler, 404, "BLOB_UNKNOWN")


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def assert_progress_covers_every_blob(
    progress: List[sbx.PullProgress], blobs: Dict[str, bytes]
):
    """Every blob reported, whole at the end, never going back; the big
    layer in several steps."""
    by_blob: Dict[str, List[int]] = {}
    for step in progress:
        assert step.size == len(blobs[step.digest])
        by_blob.setdefault(step.digest, []).append(step.received)
    assert set(by_blob) == set(blobs)
    for name, received in by_blob.items():
        assert received == sorted(received)
        assert received[-1] == len(blobs[name])
    # At least one line before the end (lines come per MiB received).
    assert max(len(received) for received in by_blob.values()) >= 2


def test_a_pull_reports_progress_and_gives_the_image_ready_to_use(client, image_name):
    image = pull_image_blobs()
    with FakeRegistry(
        "pytest/app", "v1", image, credentials=("bot", "s3cret")
    ) as registry:
        reference = f"{registry.addr}/pytest/app:v1"
        name = image_name()
        progress: List[sbx.PullProgress] = []
        pulled = client.images.pull(
            reference,
            name=name,
            username="bot",
            password="s3cret",
            on_progress=progress.append,
        )
        assert_the_two_layer_image(pulled, name, source="pull")
        assert_progress_covers_every_blob(progress, image[1])
        # Basic auth reached the registry on the manifest and every blob.
        fetched = [
            path for path, auth in registry.seen if auth == basic("bot", "s3cret")
        ]
        assert "/v2/pytest/app/manifests/v1" in fetched
        assert {f"/v2/pytest/app/blobs/{blob}" for blob in image[1]} <= set(fetched)
        assert client.images.get(name) == pulled
        sb = sbx.Sandbox.create(client=client, image=pulled)
        try:
            assert sb.files.read_text("/etc/motd") == "two"
            assert sb.files.read("/app/big.bin") == BIG_FILE
            assert not sb.files.exists("/app/old")
        finally:
            with contextlib.suppress(sbx.NotFound):
                sb.delete()
            sb.close()

        # Without the credentials, or with wrong ones, the registry refuses.
        for credentials in [{}, {"username": "bot", "password": "wrong"}]:
            with pytest.raises(sbx.InvalidRequest, match="credentials"):
                client.images.pull(reference, name=image_name(), **credentials)


def test_a_failed_pull_raises_the_error_of_its_code_and_leaves_nothing(
    client, image_name
):
    with FakeRegistry("pytest/app", "v1", pull_image_blobs()) as registry:
        name = image_name()
        with pytest.raises(sbx.NotFound) as missing:
            client.images.pull(f"{registry.addr}/pytest/app:nope", name=name)
        assert missing.value.error_code == "not_found"
        assert missing.value.request_id
        with pytest.raises(sbx.Unavailable):
            client.images.pull(f"127.0.0.1:{unused_port()}/pytest/app:v1", name=name)
        with pytest.raises(sbx.InvalidRequest):
            client.images.pull("Not A Reference!", name=name)
        with pytest.raises(sbx.NotFound):
            client.images.get(name)
        # Half a pair of credentials, or both kinds, never leave the client.
        before = len(registry.seen)
        with pytest.raises(ValueError):
            client.images.pull(f"{registry.addr}/pytest/app:v1", username="bot")
        with pytest.raises(ValueError):
            client.images.pull(
                f"{registry.addr}/pytest/app:v1", username="a", password="b", token="c"
            )
        assert len(registry.seen) == before


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_async_api_pulls_with_a_coroutine_for_progress(server):
    image = pull_image_blobs()
    progress: List[sbx.PullProgress] = []

    async def on_progress(step: sbx.PullProgress) -> None:
        progress.append(step)

    with FakeRegistry("pytest/async", "v2", image) as registry:
        # No name: the image is named by its reference.
        reference = f"{registry.addr}/pytest/async:v2"
        async with sbx.AsyncClient(server.url, server.admin_token) as client:
            pulled = await client.images.pull(reference, on_progress=on_progress)
            try:
                assert_the_two_layer_image(pulled, reference, source="pull")
                assert_progress_covers_every_blob(progress, image[1])
                with pytest.raises(sbx.NotFound):
                    await client.images.pull(f"{registry.addr}/pytest/async:v3")
            finally:
                await client.images.delete(pulled)


# --- without a server ------------------------------------------------------


IMAGE_JSON = {
    "name": "localhost:5000/team/app:v1",
    "id": "sha256:" + "ab" * 32,
    "source": "import",
    "created_at": "2026-11-30T16:04:25.123456789Z",
    "size_bytes": 1234,
    "layers": 2,
    "config": {
        "env": ["PATH=/usr/bin", "GREETING=hello"],
        "working_dir": "/app",
        "user": "app",
        "entrypoint": ["/entry"],
        "cmd": [],
        "labels": {"org.example": "yes"},
    },
    "skipped_devices": ["dev/null"],
}


def test_images_decode_with_and_without_their_optional_fields():
    image = sbx.ImageInfo.from_json(IMAGE_JSON)
    assert image.name == "localhost:5000/team/app:v1"
    assert image.source == "import"
    assert image.created_at.microsecond == 123456
    assert (image.size_bytes, image.layers) == (1234, 2)
    assert image.config == sbx.ImageConfig(
        env=["PATH=/usr/bin", "GREETING=hello"],
        working_dir="/app",
        user="app",
        entrypoint=["/entry"],
        cmd=[],
        labels={"org.example": "yes"},
    )
    assert image.skipped_devices == ["dev/null"]
    recipe = sbx.ImageInfo.from_json(
        {
            "name": "base",
            "id": "recipe:abc",
            "source": "recipe",
            "created_at": "2026-01-01T00:00:00Z",
        }
    )
    assert (recipe.size_bytes, recipe.layers, recipe.skipped_devices) == (
        None,
        None,
        [],
    )
    assert recipe.config == sbx.ImageConfig()
    assert recipe.config.entrypoint is None and recipe.config.env == []
    with pytest.raises(sbx.ProtocolError):
        sbx.ImageInfo.from_json({"name": "base"})
    listed = _core.list_images().decode(json.dumps({"images": [IMAGE_JSON]}).encode())
    assert listed == [image]
    assert {"images:read", "images:write"} <= set(sbx.SCOPES)


def test_image_names_travel_as_one_path_segment():
    assert _core.image_path("base") == "/v1/images/base"
    assert _core.image_path("pull") == "/v1/images/%70ull"
    assert _core.image_path("import") == "/v1/images/%69mport"
    assert _core.image_path("localhost:5000/team/app:v1") == (
        "/v1/images/localhost:5000%2Fteam%2Fapp:v1"
    )
    assert _core.image_path("a/b@sha256:00") == "/v1/images/a%2Fb@sha256:00"
    assert _core.image_path("a b?#%") == "/v1/images/a%20b%3F%23%25"
    image = sbx.ImageInfo.from_json(IMAGE_JSON)
    assert _core.get_image(image).request.path == _core.image_path(image.name)
    created = _core.create_sandbox(
        image=image,
        memory_mb=None,
        cpus=None,
        disk_mb=None,
        egress=None,
        env=None,
        labels=None,
        request_timeout=_core.DEFAULT,
    )
    assert created.request.json == {"image": "localhost:5000/team/app:v1"}


def test_the_sdk_sends_image_calls_as_the_api_says(tmp_path: Path):
    seen = []

    def answer(request: httpx.Request) -> httpx.Response:
        body = request.read()
        seen.append(
            (
                request.method,
                request.url.raw_path.decode(),
                request.headers.get("content-type"),
                body,
            )
        )
        if request.method == "DELETE":
            return httpx.Response(204)
        if request.url.path == "/v1/images":
            return httpx.Response(200, json={"images": [IMAGE_JSON]})
        return httpx.Response(201 if request.method == "POST" else 200, json=IMAGE_JSON)

    archive = tmp_path / "a.tar"
    archive.write_bytes(b"x" * (_core.CHUNK * 2 + 5))
    with sbx.Client("http://sbx.invalid", "token") as client:
        client._http.close()
        client._http = httpx.Client(
            base_url="http://sbx.invalid", transport=httpx.MockTransport(answer)
        )
        assert client.images.import_image(b"tar", name="team/app:v1").layers == 2
        client.images.import_image(archive)
        client.images.import_image(bytearray(b"ba"))
        with open(archive, "rb") as file:
            client.images.import_image(file, "f")
        assert [i.name for i in client.images.list()] == ["localhost:5000/team/app:v1"]
        client.images.get("team/app:v1")
        client.images.delete(sbx.ImageInfo.from_json(IMAGE_JSON))
        with pytest.raises(TypeError):
            client.images.import_image(42)  # type: ignore[arg-type]
    tar = "application/x-tar"
    big = archive.read_bytes()
    assert seen == [
        ("POST", "/v1/images/import?name=team%2Fapp%3Av1", tar, b"tar"),
        ("POST", "/v1/images/import", tar, big),
        ("POST", "/v1/images/import", tar, b"ba"),
        ("POST", "/v1/images/import?name=f", tar, big),
        ("GET", "/v1/images", None, b""),
        ("GET", "/v1/images/team%2Fapp:v1", None, b""),
        ("DELETE", "/v1/images/localhost:5000%2Fteam%2Fapp:v1", None, b""),
    ]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_async_sdk_streams_an_import_from_a_file(tmp_path: Path):
    seen = []

    async def answer(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.raw_path.decode(), await request.aread()))
        return httpx.Response(201, json=IMAGE_JSON)

    archive = tmp_path / "a.tar"
    archive.write_bytes(b"y" * (_core.CHUNK + 1))
    async with sbx.AsyncClient("http://sbx.invalid", "token") as client:
        await client._http.aclose()
        client._http = httpx.AsyncClient(
            base_url="http://sbx.invalid", transport=httpx.MockTransport(answer)
        )
        await client.images.import_image(archive, "a/b:c")
        await client.images.import_image(b"raw")
    assert seen == [
        ("/v1/images/import?name=a%2Fb%3Ac", archive.read_bytes()),
        ("/v1/images/import", b"raw"),
    ]


def ndjson(*lines: Any) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def blob_line(name: str, received: int, size: int) -> Dict[str, Any]:
    return {"type": "blob", "digest": name, "received": received, "size": size}


DONE_LINE = {"type": "done", "image": IMAGE_JSON}


def error_line(code: str, request_id: Optional[str] = "req-1") -> Dict[str, Any]:
    error = {"error_code": code, "message": f"the pull failed: {code}"}
    if request_id is not None:
        error["request_id"] = request_id
    return {"type": "error", "error": error}


def streamed(body: bytes, pieces: int = 7, **headers: str) -> httpx.Response:
    """A 200 NDJSON answer whose body arrives in ``pieces`` chunks (lines split anywhere)."""
    step = max(1, -(-len(body) // pieces))
    chunks = [body[at : at + step] for at in range(0, len(body), step)]
    return httpx.Response(
        200,
        headers={"content-type": "application/x-ndjson", **headers},
        content=iter(chunks),
    )


@contextlib.contextmanager
def mocked(answer) -> Iterator[sbx.Client]:
    with sbx.Client("http://sbx.invalid", "token") as client:
        client._http.close()
        client._http = httpx.Client(
            base_url="http://sbx.invalid", transport=httpx.MockTransport(answer)
        )
        yield client


def test_a_pull_sends_its_request_as_the_api_says():
    seen: List[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        return streamed(ndjson(DONE_LINE))

    with mocked(answer) as client:
        client.images.pull("registry.example.com/team/app")
        client.images.pull(
            "localhost:5000/team/app:v1",
            name="app:v1",
            username="bot",
            password="s3cret",
            insecure=True,
        )
        client.images.pull(
            "ghcr.io/team/app@sha256:" + "0" * 64, token="t0k", request_timeout=5
        )
        # Half a pair of credentials, or both kinds: refused before sending.
        for credentials in [
            {"username": "bot"},
            {"password": "s3cret"},
            {"token": "t", "username": "bot", "password": "s3cret"},
            {"token": "t", "password": "s3cret"},
        ]:
            with pytest.raises(ValueError):
                client.images.pull("r/a", **credentials)
    assert [(r.method, r.url.raw_path.decode()) for r in seen] == [
        ("POST", "/v1/images/pull")
    ] * 3
    for request in seen:
        assert request.headers["accept"] == "application/x-ndjson"
        assert request.headers["content-type"] == "application/json"
    assert [json.loads(r.content) for r in seen] == [
        {"reference": "registry.example.com/team/app"},
        {
            "reference": "localhost:5000/team/app:v1",
            "name": "app:v1",
            "username": "bot",
            "password": "s3cret",
            "insecure": True,
        },
        {"reference": "ghcr.io/team/app@sha256:" + "0" * 64, "token": "t0k"},
    ]
    # A pull waits for its next line without limit (the server is quiet
    # while it applies layers); connecting stays bounded; an explicit
    # request_timeout bounds every wait.
    assert seen[0].extensions["timeout"] == {
        "connect": _core.DEFAULT_TIMEOUT,
        "read": None,
        "write": _core.DEFAULT_TIMEOUT,
        "pool": _core.DEFAULT_TIMEOUT,
    }
    assert set(seen[2].extensions["timeout"].values()) == {5}


def test_a_pull_reports_each_blob_and_returns_the_image():
    lines = [
        blob_line("sha256:aa", 1 << 20, 3 << 20),
        {"type": "something_new", "detail": "ignored"},
        blob_line("sha256:aa", 3 << 20, 3 << 20),
        blob_line("sha256:bb", 10, 10),
        DONE_LINE,
        blob_line("sha256:cc", 1, 1),  # after the outcome: not reported
    ]
    body = ndjson(*lines).replace(b"\n", b"\n\n", 1)  # an empty line is skipped

    with mocked(lambda request: streamed(body)) as client:
        progress: List[sbx.PullProgress] = []
        image = client.images.pull("r/a", on_progress=progress.append)
        assert image == sbx.ImageInfo.from_json(IMAGE_JSON)
        assert progress == [
            sbx.PullProgress("sha256:aa", 1 << 20, 3 << 20),
            sbx.PullProgress("sha256:aa", 3 << 20, 3 << 20),
            sbx.PullProgress("sha256:bb", 10, 10),
        ]
        with pytest.raises(dataclasses.FrozenInstanceError):
            progress[0].received = 0  # type: ignore[misc]
        # Without a callback, and with the last line missing its newline.
        assert client.images.pull("r/a") == image
    last_unterminated = ndjson(blob_line("sha256:aa", 1, 1), DONE_LINE).rstrip(b"\n")
    with mocked(lambda request: streamed(last_unterminated, pieces=1)) as client:
        assert client.images.pull("r/a") == image


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("not_found", sbx.NotFound),
        ("invalid_request", sbx.InvalidRequest),
        ("unavailable", sbx.Unavailable),
        ("internal", sbx.InternalError),
        ("a_code_from_a_newer_server", sbx.ApiError),
    ],
)
def test_an_error_line_raises_what_an_error_answer_with_its_body_would(code, error):
    body = ndjson(blob_line("sha256:aa", 5, 9), error_line(code), DONE_LINE)
    progress: List[sbx.PullProgress] = []
    with mocked(lambda request: streamed(body)) as client:
        with pytest.raises(sbx.ApiError) as raised:
            client.images.pull("r/a", on_progress=progress.append)
    as_answer = sbx.errors.error_from_response(
        500, json.dumps(error_line(code)["error"]).encode(), {}
    )
    assert type(raised.value) is type(as_answer) is error
    assert (raised.value.error_code, raised.value.message, raised.value.request_id) == (
        code,
        f"the pull failed: {code}",
        "req-1",
    )
    assert progress == [sbx.PullProgress("sha256:aa", 5, 9)]


def test_pull_errors_before_and_without_an_outcome():
    # A line without a request id takes the answer's, as an error answer does.
    body = ndjson(error_line("not_found", request_id=None))
    with mocked(
        lambda request: streamed(body, **{"x-request-id": "from-header"})
    ) as client:
        with pytest.raises(sbx.NotFound) as raised:
            client.images.pull("r/a")
    assert raised.value.request_id == "from-header"

    # Refused before the stream starts: an ordinary error answer.
    refused = {
        "error_code": "invalid_request",
        "message": "bad body",
        "request_id": "r",
    }
    with mocked(lambda request: httpx.Response(400, json=refused)) as client:
        with pytest.raises(sbx.InvalidRequest) as raised:
            client.images.pull("r/a")
    assert raised.value.status == 400

    # A stream that ends without done or error, or breaks the format.
    for body in [
        b"",
        ndjson(blob_line("sha256:aa", 1, 2)),
        ndjson({"type": "something_new"}),
        ndjson(blob_line("sha256:aa", 1, 2)) + b'{"type": "done", "ima',
        ndjson({"type": "done"}),
        ndjson({"type": "error", "error": {"message": "no code"}}),
        ndjson({"no": "type"}),
        ndjson(blob_line("sha256:aa", 1, 2)) + b"not json\n",
    ]:
        with mocked(lambda request, body=body: streamed(body)) as client:
            with pytest.raises(sbx.ProtocolError):
                client.images.pull("r/a")


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_async_sdk_pulls_with_plain_or_coroutine_callbacks():
    bodies: List[bytes] = []
    seen: List[Tuple[Dict[str, Any], Optional[str]]] = []

    async def answer(request: httpx.Request) -> httpx.Response:
        seen.append((json.loads(await request.aread()), request.headers.get("accept")))
        body = bodies.pop(0)

        async def chunks():
            for at in range(0, len(body), 5):
                yield body[at : at + 5]

        return httpx.Response(200, content=chunks())

    async with sbx.AsyncClient("http://sbx.invalid", "token") as client:
        await client._http.aclose()
        client._http = httpx.AsyncClient(
            base_url="http://sbx.invalid", transport=httpx.MockTransport(answer)
        )
        progress: List[sbx.PullProgress] = []

        async def on_progress(step: sbx.PullProgress) -> None:
            progress.append(step)

        bodies.append(ndjson(blob_line("sha256:aa", 2, 2), DONE_LINE))
        image = await client.images.pull("r/a", name="n", on_progress=on_progress)
        assert image == sbx.ImageInfo.from_json(IMAGE_JSON)
        bodies.append(ndjson(blob_line("sha256:bb", 1, 3), error_line("not_found")))
        with pytest.raises(sbx.NotFound):
            await client.images.pull("r/b", token="t", on_progress=progress.append)
        bodies.append(ndjson(blob_line("sha256:cc", 1, 3)))
        with pytest.raises(sbx.ProtocolError):
            await client.images.pull("r/c")
        with pytest.raises(ValueError):
            await client.images.pull("r/d", password="p")
    assert progress == [
        sbx.PullProgress("sha256:aa", 2, 2),
        sbx.PullProgress("sha256:bb", 1, 3),
    ]
    assert seen == [
        ({"reference": "r/a", "name": "n"}, "application/x-ndjson"),
        ({"reference": "r/b", "token": "t"}, "application/x-ndjson"),
        ({"reference": "r/c"}, "application/x-ndjson"),
    ]
