"""The SDK's Dockerfile builds (``images.build``): the context tar it
sends (sorted, symlinks as symlinks, ``.dockerignore`` applied), the
request, and each outcome of the streamed answer, sync and async, without
a server; then one build against the session's real ``sbx serve``.

The live build starts from the two-layer image of ``test_sdk_images``
(no shell in it), so it uses ``COPY`` only: it stays quick.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import httpx
import pytest
import sbx
from sbx import _core
from sbx._context import BuildContext, DockerIgnore
from test_sdk_images import (  # noqa: F401 (image_name is a fixture)
    IMAGE_JSON,
    image_name,
    mocked,
    ndjson,
    streamed,
    two_layer_image,
)

BUILT_JSON = dict(IMAGE_JSON, source="build")
DONE_LINE = {"type": "done", "image": BUILT_JSON}


def step_line(index: int, total: int, instruction: str, cached: bool = False) -> Dict[str, Any]:
    return {
        "type": "step",
        "index": index,
        "total": total,
        "line": index + 1,
        "instruction": instruction,
        "cached": cached,
    }


def error_line(code: str, request_id: Optional[str] = "req-1") -> Dict[str, Any]:
    error = {"error_code": code, "message": f"Dockerfile line 3: {code}"}
    if request_id is not None:
        error["request_id"] = request_id
    return {"type": "error", "error": error}


def write(root: Path, path: str, content: str = "", mode: int = 0o644) -> None:
    full = root / path
    full.parent.mkdir(parents=True, exist_ok=True)
    full.write_text(content)
    full.chmod(mode)


def entries(tar: bytes) -> List[Tuple[str, str, int, str]]:
    """``(name, kind, mode, link target or content)`` of each entry, in
    order; every owner is checked to be 0 without a name."""
    found = []
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as archive:
        for member in archive:
            assert (member.uid, member.gid, member.uname, member.gname) == (0, 0, "", "")
            if member.isdir():
                found.append((member.name + "/", "d", member.mode, ""))
            elif member.issym():
                found.append((member.name, "l", member.mode, member.linkname))
            else:
                assert member.isreg(), member
                data = archive.extractfile(member)
                assert data is not None
                found.append((member.name, "f", member.mode, data.read().decode()))
    return found


def names(tar: bytes) -> List[str]:
    return [name for name, *_ in entries(tar)]


def context_tar(root: Path, dockerfile: Optional[str] = None) -> bytes:
    out = io.BytesIO()
    BuildContext(root, dockerfile).write_tar(out)
    return out.getvalue()


# --- the context --------------------------------------------------------------


def test_dockerignore_patterns_match_a_path_or_its_parents_from_the_root():
    rules = DockerIgnore("# deps\n\n  node_modules  \n*.log\nbuild/\n**/tmp\n/dist\n./out\n")
    for path in [
        "node_modules",
        "node_modules/x/y.js",
        "error.log",
        "build",
        "build/a/b",
        "tmp",
        "src/tmp",
        "src/deep/tmp/file",
        "dist/app.js",
        "out",
    ]:
        assert rules.excludes(path), path
    for path in [
        "src/node_modules",
        "src/error.log",
        "error.log.txt",
        "src/build",
        "tmpfile",
        "# deps",
        "src/dist",
    ]:
        assert not rules.excludes(path), path


def test_dockerignore_globs_stay_within_a_component():
    # The same cases as the CLI's matcher (orchestrator/src/cli/context.rs).
    rules = DockerIgnore("src/*.py\na?c\n**/*.o\ndocs/**\n[abc]x\n[!a-y]z\n\\*lit\n")
    assert rules.excludes("src/a.py")
    assert not rules.excludes("src/pkg/a.py")
    assert rules.excludes("abc")
    assert not rules.excludes("ac")
    assert not rules.excludes("a/c")
    assert rules.excludes("x.o")
    assert rules.excludes("a/b/c/x.o")
    assert rules.excludes("docs/a/b")
    assert rules.excludes("bx")
    assert not rules.excludes("dx")
    assert rules.excludes("zz")
    assert not rules.excludes("az")
    assert rules.excludes("*lit")
    assert not rules.excludes("xlit")
    assert DockerIgnore("[^a]z").excludes("bz")
    assert not DockerIgnore("[^a]z").excludes("az")
    assert DockerIgnore("a[b").excludes("a[b")
    assert DockerIgnore("a**b").excludes("axyzb")
    assert DockerIgnore("a/**/b").excludes("a/b")
    assert DockerIgnore("a/**/b").excludes("a/x/y/b/c")
    assert not DockerIgnore("a/**/b").excludes("a/x/c")


def test_the_last_matching_dockerignore_pattern_decides():
    rules = DockerIgnore("*.md\n!README.md\nlogs\n!logs/keep.txt\n")
    assert rules.excludes("NOTES.md")
    assert not rules.excludes("README.md")
    assert rules.excludes("logs")
    assert rules.excludes("logs/a.txt")
    assert not rules.excludes(["logs", "keep.txt"])
    assert DockerIgnore("!README.md\n*.md\n").excludes("README.md")
    assert not DockerIgnore("/\n!\n.\n").excludes("a")


def test_the_context_is_sorted_relative_and_keeps_links_and_modes(tmp_path: Path):
    write(tmp_path, "Dockerfile", "FROM base\n")
    write(tmp_path, "src/run.sh", "#!/bin/sh\n", 0o755)
    write(tmp_path, "src/a.py", "a", 0o600)
    write(tmp_path, "src-b.txt", "b")
    (tmp_path / "src").chmod(0o750)
    os.symlink("/etc/passwd", tmp_path / "link")
    os.symlink("src", tmp_path / "src-link")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty").chmod(0o755)
    os.mkfifo(tmp_path / "fifo")
    assert entries(context_tar(tmp_path)) == [
        ("Dockerfile", "f", 0o644, "FROM base\n"),
        ("empty/", "d", 0o755, ""),
        ("link", "l", 0o777, "/etc/passwd"),
        ("src/", "d", 0o750, ""),
        ("src/a.py", "f", 0o600, "a"),
        ("src/run.sh", "f", 0o755, "#!/bin/sh\n"),
        ("src-b.txt", "f", 0o644, "b"),
        ("src-link", "l", 0o777, "src"),
    ]


def ignoring_context(root: Path) -> None:
    write(root, "docker/build.Dockerfile", "FROM base\n")
    write(root, "docker/other", "o")
    write(root, "app.txt", "app")
    write(root, "secret.txt", "s3cr3t-content", 0o600)
    write(root, "debug.log", "log")
    write(root, "node_modules/x/y.js", "y")
    write(root, "logs/a.txt", "a")
    write(root, "logs/keep.txt", "keep")
    write(
        root,
        ".dockerignore",
        "secret.txt\n*.log\nnode_modules\ndocker\nlogs\n!logs/keep.txt\n.dockerignore\n",
    )


def test_dockerignore_leaves_things_out_but_never_the_dockerfile(tmp_path: Path):
    ignoring_context(tmp_path)
    expected = [".dockerignore", "app.txt", "docker/build.Dockerfile", "logs/keep.txt"]
    assert names(context_tar(tmp_path, "docker/build.Dockerfile")) == expected
    # An absolute path inside the context names the same file.
    absolute = tmp_path / "docker" / "build.Dockerfile"
    context = BuildContext(tmp_path, absolute)
    assert context.dockerfile == "docker/build.Dockerfile"
    roundabout = BuildContext(tmp_path / "docker" / "..", "docker/../docker/build.Dockerfile")
    assert roundabout.dockerfile == "docker/build.Dockerfile"


def test_a_dockerfile_outside_the_context_or_missing_is_refused(tmp_path: Path):
    write(tmp_path, "ctx/app.txt", "app")
    write(tmp_path, "Outside", "FROM base\n")
    context = tmp_path / "ctx"
    with pytest.raises(ValueError, match="outside the context"):
        BuildContext(context, "../Outside")
    with pytest.raises(ValueError, match="outside the context"):
        BuildContext(context, tmp_path / "Outside")
    with pytest.raises(FileNotFoundError, match="Dockerfile"):
        BuildContext(context)
    (context / "Dockerfile").mkdir()
    with pytest.raises(FileNotFoundError, match="not a regular file"):
        BuildContext(context)
    with pytest.raises(NotADirectoryError):
        BuildContext(tmp_path / "Outside")


# --- the request and its outcomes, without a server -------------------------


def test_a_build_sends_its_context_and_options_as_the_api_says(tmp_path: Path):
    ignoring_context(tmp_path)
    write(tmp_path, "Dockerfile", "FROM base\n")
    seen: List[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        return streamed(ndjson(DONE_LINE))

    with mocked(answer) as client:
        image = client.images.build(tmp_path, "team/app")
        assert image == sbx.ImageInfo.from_json(BUILT_JSON)
        assert image.source == "build"
        client.images.build(
            str(tmp_path),
            "team/app:v2",
            dockerfile="docker/build.Dockerfile",
            build_args={"VERSION": "1.2", "A": 3},  # type: ignore[dict-item]
            allow=["pypi.org", "*.github.com:443"],
            no_cache=True,
            request_timeout=5,
        )
        # Refused before anything is sent.
        with pytest.raises(TypeError):
            client.images.build(tmp_path, "x", allow="pypi.org")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            client.images.build(tmp_path / "docker", "x", dockerfile="../Dockerfile")
    assert len(seen) == 2
    for request in seen:
        assert (request.method, request.url.path) == ("POST", "/v1/images/build")
        assert request.headers["content-type"] == "application/x-tar"
        assert request.headers["accept"] == "application/x-ndjson"
    assert dict(seen[0].url.params) == {"name": "team/app"}
    assert dict(seen[1].url.params) == {
        "name": "team/app:v2",
        "dockerfile": "docker/build.Dockerfile",
        "build_args": json.dumps({"A": "3", "VERSION": "1.2"}),
        "allow": "pypi.org,*.github.com:443",
        "no_cache": "true",
    }
    assert json.loads(seen[1].url.params["build_args"]) == {"A": "3", "VERSION": "1.2"}
    # The default Dockerfile is sent; docker/ is left out but for the
    # Dockerfile named in it.
    assert names(seen[0].content) == [".dockerignore", "Dockerfile", "app.txt", "logs/keep.txt"]
    assert names(seen[1].content) == [
        ".dockerignore",
        "Dockerfile",
        "app.txt",
        "docker/build.Dockerfile",
        "logs/keep.txt",
    ]
    assert b"s3cr3t-content" not in seen[0].content
    # A build waits for its next line without limit; connecting stays
    # bounded; an explicit request_timeout bounds every wait.
    assert seen[0].extensions["timeout"]["read"] is None
    assert seen[0].extensions["timeout"]["connect"] == _core.DEFAULT_TIMEOUT
    assert set(seen[1].extensions["timeout"].values()) == {5}


def test_a_build_reports_each_step_and_its_output_then_returns_the_image(tmp_path: Path):
    write(tmp_path, "Dockerfile", "FROM base\nRUN make\n")
    lines = [
        step_line(1, 2, "FROM base", cached=True),
        step_line(2, 2, "RUN make"),
        {"type": "stdout", "data": "compiling\n"},
        {"type": "something_new", "detail": "ignored"},
        {"type": "stderr", "data": "warning: x\n"},
        DONE_LINE,
        step_line(3, 3, "after the outcome: not reported"),
    ]
    body = ndjson(*lines).replace(b"\n", b"\n\n", 1)  # an empty line is skipped
    events: List[sbx.BuildEvent] = []
    with mocked(lambda request: streamed(body)) as client:
        image = client.images.build(tmp_path, "app", on_event=events.append)
        assert image == sbx.ImageInfo.from_json(BUILT_JSON)
        # Without a callback.
        assert client.images.build(tmp_path, "app") == image
    assert events == [
        sbx.BuildStep(index=1, total=2, line=2, instruction="FROM base", cached=True),
        sbx.BuildStep(index=2, total=2, line=3, instruction="RUN make", cached=False),
        sbx.BuildOutput(stream="stdout", data="compiling\n"),
        sbx.BuildOutput(stream="stderr", data="warning: x\n"),
    ]
    # With the last line missing its newline.
    unterminated = ndjson(step_line(1, 1, "FROM base"), DONE_LINE).rstrip(b"\n")
    with mocked(lambda request: streamed(unterminated, pieces=1)) as client:
        assert client.images.build(tmp_path, "app") == image


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("invalid_request", sbx.InvalidRequest),
        ("not_found", sbx.NotFound),
        ("internal", sbx.InternalError),
        ("a_code_from_a_newer_server", sbx.ApiError),
    ],
)
def test_an_error_line_raises_what_an_error_answer_with_its_body_would(
    tmp_path: Path, code: str, error: type
):
    write(tmp_path, "Dockerfile", "FROM base\n")
    body = ndjson(
        step_line(1, 3, "FROM base"),
        {"type": "stdout", "data": "before\n"},
        error_line(code),
        DONE_LINE,
    )
    events: List[sbx.BuildEvent] = []
    with mocked(lambda request: streamed(body)) as client:
        with pytest.raises(sbx.ApiError) as raised:
            client.images.build(tmp_path, "app", on_event=events.append)
    as_answer = sbx.errors.error_from_response(
        500, json.dumps(error_line(code)["error"]).encode(), {}
    )
    assert type(raised.value) is type(as_answer) is error
    assert (raised.value.error_code, raised.value.message, raised.value.request_id) == (
        code,
        f"Dockerfile line 3: {code}",
        "req-1",
    )
    assert events == [
        sbx.BuildStep(1, 3, 2, "FROM base", False),
        sbx.BuildOutput("stdout", "before\n"),
    ]


def test_build_errors_before_and_without_an_outcome(tmp_path: Path):
    write(tmp_path, "Dockerfile", "FROM base\n")
    # A line without a request id takes the answer's, as an error answer does.
    body = ndjson(error_line("invalid_request", request_id=None))
    with mocked(lambda request: streamed(body, **{"x-request-id": "from-header"})) as client:
        with pytest.raises(sbx.InvalidRequest) as raised:
            client.images.build(tmp_path, "app")
    assert raised.value.request_id == "from-header"

    # Refused before the stream starts: an ordinary error answer.
    refused = {"error_code": "forbidden", "message": "needs images:write", "request_id": "r"}
    with mocked(lambda request: httpx.Response(403, json=refused)) as client:
        with pytest.raises(sbx.Forbidden) as forbidden:
            client.images.build(tmp_path, "app")
    assert forbidden.value.status == 403

    # A stream that ends without done or error, or breaks the format.
    for body in [
        b"",
        ndjson(step_line(1, 2, "FROM base")),
        ndjson({"type": "stdout", "data": "half"}),
        ndjson({"type": "something_new"}),
        ndjson(step_line(1, 2, "FROM base")) + b'{"type": "done", "ima',
        ndjson({"type": "done"}),
        ndjson({"type": "error", "error": {"message": "no code"}}),
        ndjson({"type": "step", "index": 1}),
        ndjson({"type": "stderr", "data": 7}),
        ndjson({"no": "type"}),
        ndjson(step_line(1, 2, "FROM base")) + b"not json\n",
    ]:
        with mocked(lambda request, body=body: streamed(body)) as client:
            with pytest.raises(sbx.ProtocolError):
                client.images.build(tmp_path, "app")


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_async_sdk_builds_with_plain_or_coroutine_callbacks(tmp_path: Path):
    ignoring_context(tmp_path)
    write(tmp_path, "Dockerfile", "FROM base\n")
    bodies: List[bytes] = []
    seen: List[Tuple[Dict[str, str], Optional[str], Optional[str], List[str]]] = []

    async def answer(request: httpx.Request) -> httpx.Response:
        tar = await request.aread()
        seen.append(
            (
                dict(request.url.params),
                request.headers.get("accept"),
                request.headers.get("content-type"),
                names(tar),
            )
        )
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
        events: List[sbx.BuildEvent] = []

        async def on_event(event: sbx.BuildEvent) -> None:
            events.append(event)

        bodies.append(ndjson(step_line(1, 1, "FROM base"), DONE_LINE))
        image = await client.images.build(tmp_path, "app", on_event=on_event)
        assert image == sbx.ImageInfo.from_json(BUILT_JSON)
        bodies.append(
            ndjson({"type": "stderr", "data": "oops\n"}, error_line("invalid_request"))
        )
        with pytest.raises(sbx.InvalidRequest):
            await client.images.build(
                tmp_path,
                "app",
                dockerfile="docker/build.Dockerfile",
                no_cache=True,
                on_event=events.append,
            )
        bodies.append(ndjson(step_line(1, 1, "FROM base")))
        with pytest.raises(sbx.ProtocolError):
            await client.images.build(tmp_path, "app", build_args={"A": "b"})
        with pytest.raises(ValueError):
            await client.images.build(tmp_path, "app", dockerfile="/elsewhere/Dockerfile")
    assert events == [
        sbx.BuildStep(1, 1, 2, "FROM base", False),
        sbx.BuildOutput("stderr", "oops\n"),
    ]
    default = [".dockerignore", "Dockerfile", "app.txt", "logs/keep.txt"]
    tar, ndjson_type = "application/x-tar", "application/x-ndjson"
    assert seen == [
        ({"name": "app"}, ndjson_type, tar, default),
        (
            {"name": "app", "dockerfile": "docker/build.Dockerfile", "no_cache": "true"},
            ndjson_type,
            tar,
            sorted(default + ["docker/build.Dockerfile"]),
        ),
        ({"name": "app", "build_args": '{"A": "b"}'}, ndjson_type, tar, default),
    ]


# --- against the server ---------------------------------------------------------


def test_a_build_from_an_imported_image_copies_the_context_and_caches(
    client, image_name, tmp_path: Path
):
    base = client.images.import_image(two_layer_image(), name=image_name())
    name = image_name()
    write(tmp_path, "Dockerfile", f"FROM {base.name}\nCOPY app.txt /app/\nCOPY . /ctx/\n")
    write(tmp_path, "app.txt", "from the context\n")
    write(tmp_path, "secret.txt", "never sent\n")
    write(tmp_path, ".dockerignore", "secret.txt\n")
    events: List[sbx.BuildEvent] = []
    built = client.images.build(tmp_path, name, on_event=events.append)
    assert (built.name, built.source) == (name, "build")
    assert built.config.working_dir == "/app"
    steps = [event for event in events if isinstance(event, sbx.BuildStep)]
    assert [(step.index, step.total, step.line) for step in steps] == [
        (1, 3, 1),
        (2, 3, 2),
        (3, 3, 3),
    ]
    assert steps[1].instruction == "COPY app.txt /app/"
    assert not any(step.cached for step in steps[1:])
    sb = sbx.Sandbox.create(client=client, image=built)
    try:
        assert sb.files.read_text("/app/app.txt") == "from the context\n"
        assert sb.files.read_text("/etc/motd") == "two"
        assert sb.files.read_text("/ctx/Dockerfile").startswith("FROM ")
        assert sb.files.exists("/ctx/.dockerignore")
        assert not sb.files.exists("/ctx/secret.txt")
    finally:
        with contextlib.suppress(sbx.NotFound):
            sb.delete()
        sb.close()

    # The same context again: every step from the cache, the same image.
    again: List[sbx.BuildEvent] = []
    rebuilt = client.images.build(tmp_path, name, on_event=again.append)
    assert rebuilt.id == built.id
    assert all(event.cached for event in again if isinstance(event, sbx.BuildStep))
    client.images.delete(rebuilt)
    client.images.delete(base)
