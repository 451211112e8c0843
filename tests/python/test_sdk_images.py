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

import contextlib
import gzip
import hashlib
import io
import json
import tarfile
import uuid
from pathlib import Path
from typing import Dict, List, Tuple

import httpx
import pytest
import sbx
from sbx import _core

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

# (name, contents): a name ending in "/" is a directory.
LAYER_ONE = [("etc/", b""), ("etc/motd", b"one"), ("app/", b""), ("app/old", b"old file")]
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


def oci_layout(layers: List[Tuple[List[Tuple[str, bytes]], bool]]) -> bytes:
    """An OCI image layout tarball of one image with these layers, each
    as ``(entries, gzipped)``; its config sets env, working dir and user."""
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
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [blob(json.dumps(manifest).encode(), OCI_MANIFEST)],
    }
    files = [
        ("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
        ("index.json", json.dumps(index).encode()),
        ("blobs/", b""),
        ("blobs/sha256/", b""),
    ]
    files += [(f"blobs/sha256/{name.split(':', 1)[1]}", data) for name, data in blobs.items()]
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


def assert_the_two_layer_image(image: sbx.ImageInfo, name: str) -> None:
    assert image.name == name
    assert image.source == "import"
    assert image.id.startswith("sha256:")
    assert image.layers == 2
    assert "GREETING=hello" in image.config.env
    assert image.config.working_dir == "/app"
    assert image.config.user == "0"
    assert image.skipped_devices == []


def test_import_from_a_path_and_from_bytes_then_list_and_get(client, image_name, tmp_path: Path):
    archive = two_layer_image()
    path = tmp_path / "image.tar"
    path.write_bytes(archive)
    from_path, from_bytes = image_name(), image_name()

    imported = client.images.import_image(path, name=from_path)
    assert_the_two_layer_image(imported, from_path)
    assert_the_two_layer_image(client.images.import_image(archive, name=from_bytes), from_bytes)
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
    assert (recipe.size_bytes, recipe.layers, recipe.skipped_devices) == (None, None, [])
    assert recipe.config == sbx.ImageConfig()
    assert recipe.config.entrypoint is None and recipe.config.env == []
    with pytest.raises(sbx.ProtocolError):
        sbx.ImageInfo.from_json({"name": "base"})
    listed = _core.list_images().decode(json.dumps({"images": [IMAGE_JSON]}).encode())
    assert listed == [image]
    assert {"images:read", "images:write"} <= set(sbx.SCOPES)


def test_image_names_travel_as_one_path_segment():
    assert _core.image_path("base") == "/v1/images/base"
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
