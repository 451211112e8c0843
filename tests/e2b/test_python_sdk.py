"""The official E2B Python SDK (``e2b``, sync API, plus one async run)
against `sbx serve`'s E2B surface, unchanged: the SDK is configured only
through its environment (E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY; see
conftest.py), as any E2B user's code would be.

Every test runs on both runtimes (the ``server`` fixture is parametrized).
What the SDK reports is cross-checked against sbx's own REST API, where an
E2B sandbox is an sbx sandbox: E2B ``metadata`` are sbx ``labels``, E2B's
``timeout`` is ``lifecycle.timeout_s`` with ``on_timeout: delete`` (E2B
kills a sandbox at its timeout), ``envs`` are the sandbox's ``env``, and the
template ``base`` is sbx's image ``base``.

E2B's semantics this suite holds sbx to, read from the SDK (e2b 2.63.0):
- a create without ``timeout`` gets 300 s (``NewSandboxV2.timeout``'s
  default; the SDK sends none);
- commands and file operations without ``user`` run as the template's
  default user, which for E2B's ``base`` is ``user`` (the SDK's own
  ``default_username``, which it sends itself to envd older than 0.4.0),
  in that user's home; relative paths are relative to it;
- ``commands.run`` is ``/bin/bash -l -c CMD``; a non-zero exit raises
  ``CommandExitException``; a background command survives the client
  disconnecting from it;
- ``pause()`` answers False for a sandbox already paused, and
  ``Sandbox.connect`` resumes a paused one;
- ``Sandbox.kill(id)`` answers False, without raising, for an unknown id;
  envd calls for a sandbox that is gone answer what E2B's proxy answers, a
  502 saying the sandbox "was not found", which ``is_running()`` reads as
  False and the SDK raises as ``SandboxNotRunningException``.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from typing import List

import httpx
import pytest
from e2b import (
    AsyncSandbox,
    AuthenticationException,
    CommandExitException,
    FileNotFoundException,
    FilesystemEventType,
    FileType,
    NotFoundException,
    Sandbox,
    SandboxException,
    SandboxNotFoundException,
    SandboxNotRunningException,
    SandboxQuery,
    SandboxState,
    TimeoutException,
)
from helpers import (
    assert_expires_in,
    list_all,
    parse_time,
    rest_create,
    rest_gone,
    rest_sandbox,
    seconds_until,
    wait_until,
)

# What a command killed by SIGKILL reports as its exit code: sbx's
# convention, 128 + 9, as a shell reports it (envd reports Go's -1 for a
# death by signal; README "Using the E2B SDKs" says so). Either way a
# non-zero exit the SDK raises on.
KILLED_EXIT_CODES = (137,)
# The E2B default for a create that names no timeout (NewSandboxV2).
E2B_DEFAULT_TIMEOUT_S = 300
# envd's port, which the SDK names in E2b-Sandbox-Port.
ENVD_PORT = 49983


def tag() -> str:
    return secrets.token_hex(4)


def kill_quietly(admin: httpx.Client, sandbox_id: str) -> None:
    admin.delete(f"/v1/sandboxes/{sandbox_id}")


def is_template_base(info) -> bool:
    """E2B reports a template's id and, apart, its alias (``name``); sbx's
    images have names only, so ``base`` may be either."""
    return "base" in (info.template_id, info.name)


# ----- create, info, timeouts -----


def test_create_with_template_envs_metadata_and_timeout(e2b_env, admin):
    metadata = {"suite": "e2b-python", "run": tag()}
    secret = f"value with spaces {tag()}"
    sandbox = Sandbox.create(
        template="base",
        envs={"SBX_E2B_SECRET": secret},
        metadata=metadata,
        timeout=600,
    )
    try:
        assert sandbox.sandbox_id

        info = sandbox.get_info()
        assert info.sandbox_id == sandbox.sandbox_id
        assert is_template_base(info), (info.template_id, info.name)
        assert info.metadata == metadata
        assert info.state == SandboxState.RUNNING
        assert info.envd_version
        assert_expires_in(info.end_at, 600, "get_info().end_at")
        assert -60 <= seconds_until(info.started_at) <= 2, info.started_at

        # The same sandbox, as sbx sees it.
        rest = rest_sandbox(admin, sandbox.sandbox_id)
        assert rest is not None
        assert rest["state"] == "running"
        assert rest["image"] == "base"
        assert rest["labels"] == metadata
        lifecycle = rest["lifecycle"]
        assert lifecycle["timeout_s"] == 600
        # E2B kills a sandbox at its timeout.
        assert lifecycle["on_timeout"] == "delete"
        # Nothing ends an E2B sandbox before its timeout: no idle stop that
        # would kill its background processes first.
        assert lifecycle.get("idle_timeout_s") is None or lifecycle["idle_timeout_s"] >= 600, lifecycle
        assert_expires_in(parse_time(rest["expires_at"]), 600, "REST expires_at")

        # The sandbox's envs reach every command.
        assert sandbox.commands.run('printf %s "$SBX_E2B_SECRET"').stdout == secret
        assert sandbox.is_running() is True
    finally:
        kill_quietly(admin, sandbox.sandbox_id)


def test_a_create_without_timeout_gets_e2b_s_default(e2b_env, admin):
    sandbox = Sandbox.create()
    try:
        assert is_template_base(sandbox.get_info())
        assert sandbox.get_info().metadata == {}
        rest = rest_sandbox(admin, sandbox.sandbox_id)
        assert rest["image"] == "base"
        assert rest["lifecycle"]["timeout_s"] == E2B_DEFAULT_TIMEOUT_S
        assert rest["lifecycle"]["on_timeout"] == "delete"
        assert_expires_in(sandbox.get_info().end_at, E2B_DEFAULT_TIMEOUT_S, "end_at")
    finally:
        kill_quietly(admin, sandbox.sandbox_id)


def test_a_create_from_an_unknown_template_fails(e2b_env):
    with pytest.raises(SandboxException) as refused:
        Sandbox.create(template=f"no-such-template-{tag()}")
    # sbx answers 404 for an image it does not have; the SDK raises it as
    # a SandboxException carrying the status.
    assert refused.value.status_code in (400, 404), refused.value


def test_set_timeout_moves_the_deadline(sandbox, admin):
    sandbox.set_timeout(900)
    assert_expires_in(sandbox.get_info().end_at, 900, "end_at after set_timeout(900)")
    rest = rest_sandbox(admin, sandbox.sandbox_id)
    assert_expires_in(parse_time(rest["expires_at"]), 900, "REST expires_at")
    # Shorter is allowed too (E2B: "extend or reduce").
    Sandbox.set_timeout(sandbox.sandbox_id, 120)
    assert_expires_in(sandbox.get_info().end_at, 120, "end_at after set_timeout(120)")
    # An unknown sandbox is not found.
    with pytest.raises(SandboxNotFoundException):
        Sandbox.set_timeout(f"no-such-sandbox-{tag()}", 60)


def test_a_sandbox_is_killed_at_its_timeout(e2b_env, admin):
    sandbox = Sandbox.create(timeout=3)
    sandbox_id = sandbox.sandbox_id
    try:
        wait_until(lambda: rest_gone(admin, sandbox_id), 90, "the sandbox ended by its timeout")
        # Gone for E2B: not found, not listed, and a kill finds nothing.
        with pytest.raises(SandboxNotFoundException):
            Sandbox.get_info(sandbox_id)
        with pytest.raises(SandboxNotFoundException):
            Sandbox.connect(sandbox_id)
        assert sandbox_id not in {listed.sandbox_id for listed in list_all(Sandbox.list())}
        assert Sandbox.kill(sandbox_id) is False
        assert sandbox.is_running() is False
    finally:
        kill_quietly(admin, sandbox_id)


# ----- commands -----


def test_run_streams_stdout_and_stderr_to_callbacks(sandbox):
    out: List[str] = []
    err: List[str] = []
    result = sandbox.commands.run(
        "echo out1; echo err1 >&2; echo out2; printf 'no newline'",
        on_stdout=out.append,
        on_stderr=err.append,
    )
    assert result.exit_code == 0
    assert result.stdout == "out1\nout2\nno newline"
    assert result.stderr == "err1\n"
    assert "".join(out) == result.stdout
    assert "".join(err) == result.stderr


def test_output_arrives_while_the_command_runs(sandbox):
    started = time.monotonic()
    first: List[float] = []

    def on_stdout(chunk: str) -> None:
        if not first:
            first.append(time.monotonic() - started)

    result = sandbox.commands.run("echo first; sleep 3; echo second", on_stdout=on_stdout)
    total = time.monotonic() - started
    assert result.stdout == "first\nsecond\n"
    assert total >= 3
    # Streamed, not buffered until the exit.
    assert first and first[0] < total - 2, (first, total)


def test_envs_cwd_and_user_of_a_command(sandbox):
    assert sandbox.commands.run('printf %s "$GREETING"', envs={"GREETING": "hi there"}).stdout == "hi there"
    assert sandbox.commands.run("pwd", cwd="/tmp").stdout == "/tmp\n"
    # A command's envs win over the sandbox's and the image's.
    assert sandbox.commands.run('printf %s "$HOME"', envs={"HOME": "/elsewhere"}).stdout == "/elsewhere"

    as_root = sandbox.commands.run("id -un; id -u; pwd", user="root")
    assert as_root.stdout == "root\n0\n/root\n"
    as_user = sandbox.commands.run('id -un; id -u; pwd; printf "%s\\n" "$HOME"', user="user")
    assert as_user.stdout == "user\n1000\n/home/user\n/home/user\n"
    # An explicit cwd holds for another user too.
    assert sandbox.commands.run("id -un; pwd", user="user", cwd="/tmp").stdout == "user\n/tmp\n"


def test_the_default_user_is_e2b_s_default_user(sandbox):
    """E2B runs what names no user as the template's default user, ``user``
    for ``base`` (see the module's docstring), in that user's home."""
    assert sandbox.commands.run("id -un; id -u; pwd").stdout == "user\n1000\n/home/user\n"
    # Files too: a relative path is relative to the user's home, and what
    # is written belongs to that user.
    sandbox.files.write("relative.txt", "mine\n")
    assert sandbox.files.read("/home/user/relative.txt") == "mine\n"
    assert sandbox.files.get_info("/home/user/relative.txt").owner == "user"
    assert sandbox.commands.run("cat relative.txt").stdout == "mine\n"


def test_files_belong_to_the_user_that_wrote_them(sandbox):
    sandbox.files.write("/tmp/by-root.txt", "r", user="root")
    sandbox.files.write("/tmp/by-user.txt", "u", user="user")
    assert sandbox.files.get_info("/tmp/by-root.txt").owner == "root"
    assert sandbox.files.get_info("/tmp/by-user.txt").owner == "user"
    assert sandbox.commands.run("stat -c %U /tmp/by-root.txt /tmp/by-user.txt").stdout == "root\nuser\n"
    # Directories made for a user's file are theirs too, so their commands
    # can write next to it.
    sandbox.files.write("/tmp/made-for-user/deep/f.txt", "u", user="user")
    sandbox.commands.run("touch /tmp/made-for-user/deep/g.txt", user="user")
    # Not checked: the user's permissions on the way (sbx's agent writes as
    # root, then gives the file away); README "Using the E2B SDKs".


def test_a_non_zero_exit_raises_command_exit_exception(sandbox):
    with pytest.raises(CommandExitException) as failed:
        sandbox.commands.run("echo partial; echo oops >&2; exit 3")
    assert failed.value.exit_code == 3
    assert failed.value.stdout == "partial\n"
    assert failed.value.stderr == "oops\n"
    # A missing command is bash's 127, raised the same way.
    with pytest.raises(CommandExitException) as missing:
        sandbox.commands.run("no-such-command-anywhere")
    assert missing.value.exit_code == 127
    assert "no-such-command-anywhere" in missing.value.stderr


def test_a_command_that_outlives_its_timeout_raises(sandbox):
    started = time.monotonic()
    with pytest.raises(TimeoutException):
        sandbox.commands.run("sleep 60", timeout=2)
    assert time.monotonic() - started < 30
    # The sandbox still answers.
    assert sandbox.commands.run("echo still here").stdout == "still here\n"


def test_background_commands_wait_and_kill(sandbox):
    finished = sandbox.commands.run("sleep 0.5; echo done; echo warn >&2", background=True)
    assert finished.pid > 0
    out: List[str] = []
    err: List[str] = []
    result = finished.wait(on_stdout=out.append, on_stderr=err.append)
    assert (result.exit_code, result.stdout, result.stderr) == (0, "done\n", "warn\n")
    assert "".join(out) == "done\n" and "".join(err) == "warn\n"

    sleeper = sandbox.commands.run("sleep 600", background=True)
    listed = {p.pid: p for p in sandbox.commands.list()}
    assert sleeper.pid in listed, listed
    assert listed[sleeper.pid].cmd == "/bin/bash"
    assert listed[sleeper.pid].args == ["-l", "-c", "sleep 600"]
    assert sleeper.kill() is True
    with pytest.raises(CommandExitException) as killed:
        sleeper.wait()
    assert killed.value.exit_code in KILLED_EXIT_CODES
    wait_until(
        lambda: sleeper.pid not in {p.pid for p in sandbox.commands.list()},
        10,
        "the killed command left the process list",
    )
    # Killing it again finds nothing.
    assert sandbox.commands.kill(sleeper.pid) is False


def test_a_background_command_survives_a_disconnect(sandbox):
    handle = sandbox.commands.run("sleep 600", background=True)
    handle.disconnect()
    assert handle.pid in {p.pid for p in sandbox.commands.list()}
    # Another handle on it, by pid: killing through it ends the command,
    # and the stream sees the end.
    again = sandbox.commands.connect(handle.pid)
    assert again.pid == handle.pid
    assert sandbox.commands.kill(handle.pid) is True
    with pytest.raises(CommandExitException) as killed:
        again.wait()
    assert killed.value.exit_code in KILLED_EXIT_CODES


def test_stdin_of_a_background_command(sandbox):
    cat = sandbox.commands.run("cat", background=True, stdin=True)
    cat.send_stdin("hello\n")
    cat.send_stdin(b"bytes too\n")
    cat.close_stdin()
    result = cat.wait()
    assert result.stdout == "hello\nbytes too\n"

    # By pid, through the module: `head` exits after one line.
    head = sandbox.commands.run("head -n 1; echo after", background=True, stdin=True)
    sandbox.commands.send_stdin(head.pid, "one line\nnot read\n")
    assert head.wait().stdout == "one line\nafter\n"


# ----- files -----


def test_files_write_read_list_make_dir_exists_rename_remove(sandbox):
    base = f"/home/user/files-{tag()}"

    written = sandbox.files.write(f"{base}/nested/a.txt", "hello\n")
    assert (written.name, written.path, written.type) == ("a.txt", f"{base}/nested/a.txt", FileType.FILE)
    assert sandbox.files.read(f"{base}/nested/a.txt") == "hello\n"

    blob = bytes(range(256)) * 64
    sandbox.files.write(f"{base}/nested/blob.bin", blob)
    read_back = sandbox.files.read(f"{base}/nested/blob.bin", format="bytes")
    assert isinstance(read_back, bytearray)
    assert bytes(read_back) == blob
    # Overwrite.
    sandbox.files.write(f"{base}/nested/a.txt", "replaced")
    assert sandbox.files.read(f"{base}/nested/a.txt") == "replaced"

    assert sandbox.files.make_dir(f"{base}/nested/sub/deeper") is True
    assert sandbox.files.make_dir(f"{base}/nested/sub/deeper") is False

    entries = {entry.name: entry for entry in sandbox.files.list(f"{base}/nested")}
    assert sorted(entries) == ["a.txt", "blob.bin", "sub"]
    assert entries["a.txt"].type == FileType.FILE
    assert entries["a.txt"].path == f"{base}/nested/a.txt"
    assert entries["a.txt"].size == len("replaced")
    assert entries["blob.bin"].size == len(blob)
    assert entries["sub"].type == FileType.DIR
    two_deep = {entry.path for entry in sandbox.files.list(f"{base}/nested", depth=2)}
    assert two_deep == {
        f"{base}/nested/a.txt",
        f"{base}/nested/blob.bin",
        f"{base}/nested/sub",
        f"{base}/nested/sub/deeper",
    }

    info = sandbox.files.get_info(f"{base}/nested/sub")
    assert (info.type, info.name, info.path) == (FileType.DIR, "sub", f"{base}/nested/sub")

    assert sandbox.files.exists(f"{base}/nested/a.txt") is True
    assert sandbox.files.exists(f"{base}/nested/missing.txt") is False

    renamed = sandbox.files.rename(f"{base}/nested/a.txt", f"{base}/nested/b.txt")
    assert (renamed.name, renamed.path, renamed.type) == ("b.txt", f"{base}/nested/b.txt", FileType.FILE)
    assert sandbox.files.exists(f"{base}/nested/a.txt") is False
    assert sandbox.files.read(f"{base}/nested/b.txt") == "replaced"

    sandbox.files.remove(f"{base}/nested/b.txt")
    assert sandbox.files.exists(f"{base}/nested/b.txt") is False
    # A directory goes with what it holds, as envd's RemoveAll does.
    sandbox.files.write(f"{base}/nested/sub/deeper/leaf.txt", "leaf")
    sandbox.files.remove(f"{base}/nested/sub")
    assert sandbox.files.exists(f"{base}/nested/sub") is False

    with pytest.raises(FileNotFoundException):
        sandbox.files.read(f"{base}/nested/missing.txt")
    with pytest.raises(NotFoundException):
        sandbox.files.list(f"{base}/no-such-dir")

    # What the SDK wrote is what a command sees.
    digest = sandbox.commands.run(f"sha256sum < {base}/nested/blob.bin").stdout.split()[0]
    assert digest == hashlib.sha256(blob).hexdigest()


def test_watch_dir_reports_what_happens_after_it_starts(sandbox):
    watched = f"/home/user/watched-{tag()}"
    sandbox.files.make_dir(f"{watched}/sub")
    handle = sandbox.files.watch_dir(watched, recursive=True)
    seen = []

    def saw(name: str, *types: FilesystemEventType) -> bool:
        seen.extend(handle.get_new_events())
        return any(event.name == name and event.type in types for event in seen)

    try:
        sandbox.commands.run(f"printf data > {watched}/new.txt")
        wait_until(lambda: saw("new.txt", FilesystemEventType.CREATE), 15, lambda: f"CREATE new.txt in {seen}")
        wait_until(lambda: saw("new.txt", FilesystemEventType.WRITE), 15, lambda: f"WRITE new.txt in {seen}")

        sandbox.files.write(f"{watched}/written.txt", "through the SDK")
        wait_until(
            lambda: saw("written.txt", FilesystemEventType.CREATE, FilesystemEventType.WRITE),
            15,
            lambda: f"CREATE or WRITE written.txt in {seen}",
        )

        sandbox.commands.run(f"rm {watched}/new.txt")
        wait_until(lambda: saw("new.txt", FilesystemEventType.REMOVE), 15, lambda: f"REMOVE new.txt in {seen}")

        # Recursive: a subdirectory's events name their path below the
        # watched directory.
        sandbox.commands.run(f"touch {watched}/sub/deep.txt")
        wait_until(lambda: saw("sub/deep.txt", FilesystemEventType.CREATE), 15, lambda: f"CREATE sub/deep.txt in {seen}")

        # Nothing from before the watch (sub was made before it), and every
        # name is relative to the watched directory.
        assert not any(e.name == "sub" and e.type == FilesystemEventType.CREATE for e in seen), seen
        assert not any(e.name.startswith("/") for e in seen), seen
    finally:
        handle.stop()
    with pytest.raises(SandboxException):
        handle.get_new_events()


# ----- connect, pause, kill, list -----


def test_connect_from_a_second_client(sandbox, admin):
    sandbox.set_timeout(600)
    sandbox.files.write("/tmp/shared.txt", "from the first client")

    second = Sandbox.connect(sandbox.sandbox_id)
    assert second.sandbox_id == sandbox.sandbox_id
    assert second.files.read("/tmp/shared.txt") == "from the first client"
    second.files.write("/tmp/shared.txt", "from the second client")
    assert sandbox.files.read("/tmp/shared.txt") == "from the second client"
    assert second.commands.run("cat /tmp/shared.txt").stdout == "from the second client"

    # A longer timeout extends a running sandbox; a shorter one (or none:
    # the SDK then sends nothing, and E2B's default applies) leaves it.
    Sandbox.connect(sandbox.sandbox_id, timeout=1200)
    assert_expires_in(sandbox.get_info().end_at, 1200, "end_at after connect(timeout=1200)")
    Sandbox.connect(sandbox.sandbox_id, timeout=60)
    Sandbox.connect(sandbox.sandbox_id)
    assert_expires_in(sandbox.get_info().end_at, 1200, "end_at after shorter connects")

    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect(f"no-such-sandbox-{tag()}")


def test_pause_then_connect_resumes_with_files_and_processes(sandbox, admin):
    sandbox.files.write("/home/user/kept.txt", "across the pause")
    sleeper = sandbox.commands.run("sleep 600", background=True)
    sleeper.disconnect()

    assert sandbox.pause() is True
    assert rest_sandbox(admin, sandbox.sandbox_id)["state"] == "paused"
    assert sandbox.get_info().state == SandboxState.PAUSED
    # Pausing a paused sandbox is a no-op that says so.
    assert Sandbox.pause(sandbox.sandbox_id) is False
    paused = list_all(Sandbox.list(query=SandboxQuery(state=[SandboxState.PAUSED])))
    assert sandbox.sandbox_id in {listed.sandbox_id for listed in paused}

    resumed = Sandbox.connect(sandbox.sandbox_id)
    assert resumed.sandbox_id == sandbox.sandbox_id
    assert rest_sandbox(admin, sandbox.sandbox_id)["state"] == "running"
    assert resumed.get_info().state == SandboxState.RUNNING
    assert resumed.files.read("/home/user/kept.txt") == "across the pause"
    # Paused, not stopped: the process lived through it.
    assert sleeper.pid in {p.pid for p in resumed.commands.list()}
    assert resumed.commands.run("echo awake").stdout == "awake\n"

    with pytest.raises(SandboxNotFoundException):
        Sandbox.pause(f"no-such-sandbox-{tag()}")


def test_kill(e2b_env, admin):
    sandbox = Sandbox.create()
    sandbox_id = sandbox.sandbox_id
    try:
        assert sandbox.kill() is True
        assert rest_sandbox(admin, sandbox_id) is None
        # envd's side says so the way E2B's proxy does (a 502 whose message
        # says the sandbox "was not found"), which the SDK turns into these.
        assert sandbox.is_running() is False
        with pytest.raises(SandboxNotRunningException):
            sandbox.commands.run("true")
        with pytest.raises(SandboxNotRunningException):
            sandbox.files.read("/etc/hostname")
        # Killing what is gone, or never was, answers False and raises nothing.
        assert Sandbox.kill(sandbox_id) is False
        assert Sandbox.kill(f"no-such-sandbox-{tag()}") is False
        with pytest.raises(SandboxNotFoundException):
            Sandbox.get_info(sandbox_id)
        with pytest.raises(SandboxNotFoundException):
            Sandbox.connect(sandbox_id)
    finally:
        kill_quietly(admin, sandbox_id)


def test_a_with_block_kills_its_sandbox(e2b_env, admin):
    with Sandbox.create() as sandbox:
        sandbox_id = sandbox.sandbox_id
        assert sandbox.commands.run("echo inside").stdout == "inside\n"
    assert rest_sandbox(admin, sandbox_id) is None


def test_list_shows_sandboxes_with_their_metadata(e2b_env, admin):
    suite = tag()
    first = Sandbox.create(metadata={"suite": suite, "n": "1"})
    second = Sandbox.create(metadata={"suite": suite, "n": "2"})
    try:
        everything = {listed.sandbox_id: listed for listed in list_all(Sandbox.list())}
        assert {first.sandbox_id, second.sandbox_id} <= set(everything)
        listed = everything[first.sandbox_id]
        assert listed.metadata == {"suite": suite, "n": "1"}
        assert listed.state == SandboxState.RUNNING
        assert is_template_base(listed)
        assert_expires_in(listed.end_at, E2B_DEFAULT_TIMEOUT_S, "listed end_at")

        def ids(query: SandboxQuery) -> set:
            return {found.sandbox_id for found in list_all(Sandbox.list(query=query))}

        assert ids(SandboxQuery(metadata={"suite": suite})) == {first.sandbox_id, second.sandbox_id}
        assert ids(SandboxQuery(metadata={"suite": suite, "n": "2"})) == {second.sandbox_id}
        assert ids(SandboxQuery(metadata={"suite": f"not-{suite}"})) == set()

        assert second.pause() is True
        assert ids(SandboxQuery(metadata={"suite": suite}, state=[SandboxState.PAUSED])) == {second.sandbox_id}
        assert ids(SandboxQuery(metadata={"suite": suite}, state=[SandboxState.RUNNING])) == {first.sandbox_id}
        # Running and paused by default.
        assert ids(SandboxQuery(metadata={"suite": suite})) == {first.sandbox_id, second.sandbox_id}

        # Pages: one sandbox a page, the same two in all.
        paged = Sandbox.list(query=SandboxQuery(metadata={"suite": suite}), limit=1)
        pages = []
        while paged.has_next:
            pages.append([found.sandbox_id for found in paged.next_items()])
        assert sorted(sum(pages, [])) == sorted([first.sandbox_id, second.sandbox_id])
        assert all(len(page) <= 1 for page in pages), pages

        assert first.kill() is True
        assert ids(SandboxQuery(metadata={"suite": suite})) == {second.sandbox_id}
    finally:
        kill_quietly(admin, first.sandbox_id)
        kill_quietly(admin, second.sandbox_id)


# ----- tokens -----


def test_a_sandbox_token_works_in_its_own_sandbox_only(e2b_env, admin, server):
    own = rest_create(admin, labels={"suite": "e2b-isolation"})
    other = rest_create(admin)
    try:
        e2b_env.use_key(own["token"])

        mine = Sandbox.connect(own["id"])
        assert mine.sandbox_id == own["id"]
        assert mine.commands.run("echo hi from inside").stdout == "hi from inside\n"
        mine.files.write("/tmp/own.txt", "own")
        assert mine.files.read("/tmp/own.txt") == "own"
        info = Sandbox.get_info(own["id"])
        assert info.sandbox_id == own["id"]
        assert info.metadata == {"suite": "e2b-isolation"}

        # Another sandbox: refused, as sbx refuses it (403 forbidden).
        with pytest.raises(SandboxException) as elsewhere:
            Sandbox.connect(other["id"])
        assert elsewhere.value.status_code == 403, elsewhere.value
        with pytest.raises(SandboxException) as peek:
            Sandbox.get_info(other["id"])
        assert peek.value.status_code == 403, peek.value

        # No new sandboxes from a sandbox's token.
        with pytest.raises(SandboxException) as create:
            Sandbox.create()
        assert create.value.status_code == 403, create.value

        # Listing is refused outright, as sbx's GET /v1/sandboxes refuses a
        # sandbox's token (README "Using the E2B SDKs").
        with pytest.raises(SandboxException) as listing:
            list_all(Sandbox.list())
        assert listing.value.status_code == 403, listing.value

        # Nor may it end, pause or prolong its own sandbox: a sandbox's
        # token has no sandboxes:delete or sandboxes:lifecycle.
        for attempt in (
            lambda: Sandbox.kill(own["id"]),
            lambda: Sandbox.pause(own["id"]),
            lambda: Sandbox.set_timeout(own["id"], 86_400),
        ):
            with pytest.raises(SandboxException) as refused:
                attempt()
            assert refused.value.status_code == 403, refused.value
        assert rest_sandbox(admin, own["id"])["state"] == "running"

        # envd traffic for the other sandbox, with this sandbox's access
        # token, gets nothing of it.
        with httpx.Client(timeout=30) as raw:
            answer = raw.get(
                f"{server.e2b_url}/files",
                params={"path": "/etc/hostname"},
                headers={
                    "E2b-Sandbox-Id": other["id"],
                    "E2b-Sandbox-Port": str(ENVD_PORT),
                    "X-Access-Token": mine._envd_access_token or "",
                },
            )
        assert answer.status_code in (401, 403), (answer.status_code, answer.text)
    finally:
        kill_quietly(admin, own["id"])
        kill_quietly(admin, other["id"])


def test_a_wrong_key_is_an_authentication_error(e2b_env):
    e2b_env.use_key(f"not-a-token-{tag()}")
    with pytest.raises(AuthenticationException):
        Sandbox.create()
    with pytest.raises(AuthenticationException):
        list_all(Sandbox.list())
    with pytest.raises(AuthenticationException):
        Sandbox.connect(f"no-such-sandbox-{tag()}")


# ----- the async API -----


def test_the_async_sdk(e2b_env, admin):
    async def main() -> str:
        sandbox = await AsyncSandbox.create(template="base", metadata={"api": "async"}, envs={"FLAVOUR": "async"})
        try:
            out: List[str] = []
            result = await sandbox.commands.run('printf %s "$FLAVOUR"', on_stdout=out.append)
            assert result.stdout == "async" and "".join(out) == "async"
            await sandbox.files.write("/tmp/async.txt", "written async")
            assert await sandbox.files.read("/tmp/async.txt") == "written async"
            assert (await sandbox.get_info()).metadata == {"api": "async"}
            handle = await sandbox.commands.run("sleep 600", background=True)
            assert await handle.kill() is True
            with pytest.raises(CommandExitException):
                await handle.wait()
            return sandbox.sandbox_id
        finally:
            assert await sandbox.kill() is True

    sandbox_id = asyncio.run(main())
    assert rest_sandbox(admin, sandbox_id) is None


# ----- templates, uploads, policy -----


def test_a_snapshot_is_a_template(e2b_env, admin):
    source = rest_create(admin)
    name = f"e2b-template-{tag()}"
    try:
        wrote = admin.put(
            f"/v1/sandboxes/{source['id']}/files",
            params={"path": "/srv/baked.txt"},
            content=b"baked into the snapshot",
        )
        assert wrote.status_code == 200, wrote.text
        taken = admin.post(f"/v1/sandboxes/{source['id']}/snapshots", json={"name": name})
        assert taken.status_code == 201, taken.text
        sandbox = Sandbox.create(template=name)
        try:
            assert sandbox.files.read("/srv/baked.txt") == "baked into the snapshot"
            assert sandbox.get_info().template_id == rest_sandbox(admin, sandbox.sandbox_id)["image"]
        finally:
            sandbox.kill()
    finally:
        kill_quietly(admin, source["id"])
        admin.delete(f"/v1/snapshots/{name}")


def test_streamed_and_multi_file_uploads(sandbox):
    import io

    base = f"/home/user/uploads-{tag()}"
    blob = secrets.token_bytes(3 * 1024 * 1024 + 7)
    # A file object is uploaded as one octet-stream body, streamed.
    streamed = sandbox.files.write(f"{base}/streamed.bin", io.BytesIO(blob))
    assert streamed.path == f"{base}/streamed.bin"
    assert bytes(sandbox.files.read(f"{base}/streamed.bin", format="bytes")) == blob
    # Several files are one multipart request, each part named by its path.
    infos = sandbox.files.write_files([
        {"path": f"{base}/one.txt", "data": "1"},
        {"path": f"{base}/two/deep.txt", "data": b"2"},
    ])
    assert sorted(info.path for info in infos) == [f"{base}/one.txt", f"{base}/two/deep.txt"]
    assert sandbox.files.read(f"{base}/two/deep.txt") == "2"
    digest = hashlib.sha256(blob).hexdigest()
    assert sandbox.commands.run(f"sha256sum {base}/streamed.bin").stdout.split()[0] == digest


def test_e2b_calls_are_sbx_calls_in_the_audit_trail(sandbox, admin):
    sandbox.commands.run("true")
    sandbox.files.write("/tmp/audited.txt", "x")
    records = admin.get("/v1/audit", params={"sandbox": sandbox.sandbox_id, "limit": 500})
    assert records.status_code == 200, records.text
    summaries = [record.get("summary") or "" for record in records.json()["records"]]
    assert any(summary.startswith("e2b create") for summary in summaries), summaries
    assert any(summary.startswith("e2b process.Start") for summary in summaries), summaries
    assert any(summary.startswith("e2b files.write") for summary in summaries), summaries
    # The envd calls were made with the sandbox's own token, not the key
    # that created it.
    start = next(r for r in records.json()["records"] if (r.get("summary") or "").startswith("e2b process.Start"))
    create = next(r for r in records.json()["records"] if (r.get("summary") or "").startswith("e2b create"))
    assert create["identity"] == "admin"
    assert start["identity"] == f"sandbox:{sandbox.sandbox_id}"


def test_an_e2b_sandbox_has_sbx_s_default_network_policy(sandbox, admin):
    # The egress policy is sbx's: a sandbox made through E2B gets the same
    # policy as one made through the REST API, enforced the same way (the
    # egress suites test the enforcement).
    plain = rest_create(admin)
    try:
        e2b_policy = rest_sandbox(admin, sandbox.sandbox_id)["network"]
        assert e2b_policy == rest_sandbox(admin, plain["id"])["network"]
    finally:
        kill_quietly(admin, plain["id"])
