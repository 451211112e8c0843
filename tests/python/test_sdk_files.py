"""Files and archives through the SDK, including hostile archives from a
sandbox, which must never write outside their destination."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import sbx


ALL_BYTES = bytes(range(256)) * 64


def test_write_and_read_bytes_and_text(sandbox):
    info = sandbox.files.write("/workspace/deep/er/blob.bin", ALL_BYTES)
    assert info.is_file and info.size == len(ALL_BYTES)
    assert info.path == "/workspace/deep/er/blob.bin" and info.name == "blob.bin"
    assert sandbox.files.read("/workspace/deep/er/blob.bin") == ALL_BYTES
    sandbox.files.write("/workspace/text.txt", "héllo wörld\n")
    assert sandbox.files.read_text("/workspace/text.txt") == "héllo wörld\n"
    assert sandbox.exec("cat /workspace/text.txt").stdout == "héllo wörld\n"
    sandbox.files.write("/workspace/empty", b"")
    assert sandbox.files.read("/workspace/empty") == b""


def test_write_streams_files_and_iterables_and_reads_in_chunks(sandbox):
    big = os.urandom(3 * 1024 * 1024 + 17)
    assert sandbox.files.write("/workspace/big", io.BytesIO(big)).size == len(big)
    chunks = list(sandbox.files.read_stream("/workspace/big"))
    assert len(chunks) > 1
    assert b"".join(chunks) == big
    sandbox.files.write("/workspace/parts", (part for part in [b"one ", b"two ", b"three"]))
    assert sandbox.files.read("/workspace/parts") == b"one two three"
    digest = sandbox.exec(["sha256sum", "/workspace/big"]).stdout.split()[0]
    import hashlib

    assert digest == hashlib.sha256(big).hexdigest()


def test_mode_stat_list_mkdir_move_remove(sandbox):
    script = sandbox.files.write("/workspace/run.sh", "#!/bin/sh\necho ran\n", mode=0o750)
    assert script.mode == 0o750
    assert sandbox.exec("/workspace/run.sh").stdout == "ran\n"
    made = sandbox.files.mkdir("/workspace/a/b/c", mode=0o700)
    assert made.is_dir and made.mode == 0o700
    assert sandbox.files.stat("/workspace/a").type == "dir"
    sandbox.files.write("/workspace/a/b/file", b"x")
    sandbox.exec("ln -s file /workspace/a/b/link")
    names = {entry.name for entry in sandbox.files.list("/workspace/a/b")}
    assert names == {"c", "file", "link"}
    link = sandbox.files.stat("/workspace/a/b/link")
    assert link.type == "symlink" and link.link_target == "file"
    deep = {entry.path for entry in sandbox.files.list("/workspace/a", depth=3)}
    assert {"/workspace/a/b", "/workspace/a/b/c", "/workspace/a/b/file"} <= deep
    shallow = {entry.path for entry in sandbox.files.list("/workspace/a")}
    assert shallow == {"/workspace/a/b"}

    sandbox.files.move("/workspace/a/b/file", "/workspace/moved")
    assert not sandbox.files.exists("/workspace/a/b/file")
    assert sandbox.files.read("/workspace/moved") == b"x"
    sandbox.files.remove("/workspace/moved")
    assert not sandbox.files.exists("/workspace/moved")
    with pytest.raises(sbx.ApiError):
        sandbox.files.remove("/workspace/a")
    assert sandbox.files.exists("/workspace/a")
    sandbox.files.remove("/workspace/a", recursive=True)
    assert not sandbox.files.exists("/workspace/a")


def test_file_errors_have_their_classes(sandbox):
    with pytest.raises(sbx.NotFound) as caught:
        sandbox.files.read("/workspace/missing")
    assert caught.value.status == 404 and caught.value.error_code == "not_found"
    with pytest.raises(sbx.NotFound):
        sandbox.files.stat("/workspace/missing")
    with pytest.raises(sbx.NotFound):
        sandbox.files.list("/workspace/missing")
    with pytest.raises(sbx.NotFound):
        sandbox.files.remove("/workspace/missing")
    with pytest.raises(sbx.NotFound):
        sandbox.files.move("/workspace/missing", "/workspace/elsewhere")
    with pytest.raises(sbx.InvalidRequest):
        sandbox.files.read("relative/path")
    # The run directory is a read-only mount: EROFS is the sandbox's own
    # permissions refusing, not the token's.
    with pytest.raises(sbx.PermissionDenied) as denied:
        sandbox.files.write("/.sbx/run/planted", b"x")
    assert denied.value.status == 403 and denied.value.error_code == "permission_denied"
    sandbox.files.mkdir("/workspace/dir")
    with pytest.raises(sbx.Conflict):
        sandbox.files.write("/workspace/dir", b"not over a directory")


def make_tree(root: Path) -> None:
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "pkg" / "mod.py").write_text("print('hi')\n")
    (root / "bin").mkdir()
    tool = root / "bin" / "tool"
    tool.write_bytes(b"#!/bin/sh\necho tool\n")
    tool.chmod(0o755)
    (root / "data.bin").write_bytes(ALL_BYTES)
    (root / "empty-dir").mkdir()
    (root / "src" / "link-to-mod").symlink_to("pkg/mod.py")
    (root / "bin" / "up-link").symlink_to("../src/pkg")


def tree_of(root: Path) -> dict:
    found = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            found[rel] = ("dir",)
        else:
            found[rel] = ("file", path.read_bytes(), path.stat().st_mode & 0o777)
    return found


def test_upload_and_download_round_trip(sandbox, tmp_path):
    source = tmp_path / "source"
    make_tree(source)
    summary = sandbox.upload_dir(source, "/workspace/project")
    assert summary.entries == len(tree_of(source))
    assert summary.bytes >= len(ALL_BYTES)
    assert sandbox.exec("/workspace/project/bin/tool").stdout == "tool\n"
    assert sandbox.exec("cat /workspace/project/src/link-to-mod").stdout == "print('hi')\n"

    back = tmp_path / "back"
    sandbox.download_dir("/workspace/project", back)
    assert tree_of(back) == tree_of(source)
    # Into an existing directory, contents merge in.
    sandbox.files.write("/workspace/project/new.txt", b"new")
    sandbox.download_dir("/workspace/project", back)
    assert (back / "new.txt").read_bytes() == b"new"


def test_download_refuses_a_link_pointing_out(sandbox, tmp_path):
    sandbox.exec("mkdir -p /workspace/evil/sub && echo ok > /workspace/evil/fine")
    for target in ["/etc/passwd", "../../../../outside"]:
        sandbox.exec(["ln", "-sfn", target, "/workspace/evil/sub/escape"])
        dest = tmp_path / f"dest-{len(target)}"
        with pytest.raises(sbx.UnsafeArchiveError):
            sandbox.download_dir("/workspace/evil", dest)
        # Checked before writing: nothing of the archive landed.
        assert not dest.exists() or list(dest.iterdir()) == []
    with pytest.raises(NotADirectoryError):
        sandbox.download_dir("/workspace/evil/fine", tmp_path / "file")
    with pytest.raises(sbx.NotFound):
        sandbox.download_dir("/workspace/nothing-here", tmp_path / "none")


# Each tar is built inside the sandbox by its python3, as code in a
# hostile sandbox would, then fetched as bytes and handed to the SDK's
# extractor (the one download_dir uses).
HOSTILE_TARS = r"""
import io, tarfile

def add(tar, name, kind=tarfile.REGTYPE, data=b"pwned", link=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = 0o644
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        tar.addfile(info)

cases = {
    "dotdot": [("ok.txt",), ("../escape.txt",)],
    "nested-dotdot": [("a/../../escape.txt",)],
    "absolute": [("/tmp/abs-escape.txt",)],
    "symlink-absolute": [("link", tarfile.SYMTYPE, b"", "/tmp")],
    "symlink-up": [("link", tarfile.SYMTYPE, b"", "../..")],
    "write-through-symlink": [("dir", tarfile.DIRTYPE), ("dir/link", tarfile.SYMTYPE, b"", ".."),
                              ("dir/link/escape.txt",)],
    "hardlink-out": [("hard", tarfile.LNKTYPE, b"", "/etc/passwd")],
    "hardlink-dotdot": [("hard", tarfile.LNKTYPE, b"", "../outside")],
    "link-chain": [("sub", tarfile.DIRTYPE), ("sub/c", tarfile.SYMTYPE, b"", ".."),
                   ("d", tarfile.SYMTYPE, b"", "sub/c"), ("l", tarfile.SYMTYPE, b"", "d/..")],
    "duplicate": [("same",), ("same", tarfile.SYMTYPE, b"", "/etc/passwd")],
}
for name, members in cases.items():
    with tarfile.open(f"/workspace/tars/{name}.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        for member in members:
            add(tar, *member)
"""

HOSTILE = [
    "dotdot",
    "nested-dotdot",
    "absolute",
    "symlink-absolute",
    "symlink-up",
    "write-through-symlink",
    "hardlink-out",
    "hardlink-dotdot",
    "link-chain",
    "duplicate",
]


def test_hostile_tars_are_refused_before_anything_is_written(sandbox, tmp_path):
    sandbox.files.write("/workspace/make_tars.py", HOSTILE_TARS)
    sandbox.files.mkdir("/workspace/tars")
    made = sandbox.exec(["python3", "/workspace/make_tars.py"])
    assert made.ok, made.stderr
    for name in HOSTILE:
        data = sandbox.files.read(f"/workspace/tars/{name}.tar")
        outer = tmp_path / name
        dest = outer / "a" / "b" / "dest"
        with pytest.raises(sbx.UnsafeArchiveError):
            sbx.extract_tar(data, dest)
        assert not outer.exists(), f"{name} wrote {list(outer.rglob('*'))}"
    assert not Path("/tmp/abs-escape.txt").exists()


def test_a_benign_tar_with_inside_links_extracts(sandbox, tmp_path):
    sandbox.exec(
        "mkdir -p /workspace/ok/node_modules/.bin /workspace/ok/node_modules/pkg && "
        "echo js > /workspace/ok/node_modules/pkg/cli.js && "
        "ln -s ../pkg/cli.js /workspace/ok/node_modules/.bin/cli && "
        "ln /workspace/ok/node_modules/pkg/cli.js /workspace/ok/hard"
    )
    sandbox.download_dir("/workspace/ok", tmp_path / "ok")
    assert (tmp_path / "ok" / "node_modules" / ".bin" / "cli").read_text() == "js\n"
    assert os.readlink(tmp_path / "ok" / "node_modules" / ".bin" / "cli") == "../pkg/cli.js"
    assert (tmp_path / "ok" / "hard").read_text() == "js\n"
