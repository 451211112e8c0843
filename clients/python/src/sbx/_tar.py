"""Tar archives both ways: built from a local tree, extracted from a sandbox.

Uploads are easy: the sandbox's agent extracts them confined to the target
directory, so a local tree goes in as it is (symlinks as symlinks).

Downloads are the dangerous half. Everything inside a sandbox is hostile,
and a tar it sends can name ``../../.bashrc`` or ``/etc/cron.d/x``, carry a
symlink to ``/`` and then a file "inside" it, or a hard link to a host
file. Python's own ``tarfile`` filters are missing from the Python this SDK
supports (3.9 to 3.11 before their security releases) and have had holes
of exactly this kind, so extraction here is its own, in two passes:

1. **Check the whole archive before writing anything**, from names alone:
   no absolute names, no ``..``, no name twice, nothing below an entry that
   is a symlink; symlink targets relative, with ``..`` only as a prefix and
   never climbing above the destination (so a link cannot point out, and,
   since every link in the tree then resolves inside it, nor can a chain of
   links); hard links only to regular files earlier in the archive.
   Devices and FIFOs are skipped. Any violation raises
   :class:`~sbx.errors.UnsafeArchiveError` and nothing is written.
2. **Extract without following anything**: every parent directory is
   checked with ``lstat`` to be a real directory (a symlink already at the
   destination cannot redirect a write either), files are created with
   ``O_EXCL | O_NOFOLLOW``, setuid/setgid bits are dropped, ownership is
   not restored.

The archive is spooled to a temporary file first (in memory up to
:data:`SPOOL_MEMORY` bytes), because checking everything before writing
needs two reads.
"""

from __future__ import annotations

import os
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Dict, Iterator, List, Optional, Set, Tuple, Union

from .errors import UnsafeArchiveError

__all__ = ["extract_tar", "write_tar", "spool", "SPOOL_MEMORY"]

#: Archives up to this size are spooled in memory, larger ones on disk.
SPOOL_MEMORY = 8 * 1024 * 1024
_CHUNK = 64 * 1024
_PERMISSIONS = 0o777

PathLike = Union[str, "os.PathLike[str]"]


def spool() -> IO[bytes]:
    """A temporary file for an archive, in memory while it is small."""
    return tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115


def write_tar(local_dir: PathLike, out: IO[bytes]) -> None:
    """Writes the tree under ``local_dir`` (not the directory itself) as a tar.

    Entries are named relative to ``local_dir``; symlinks are archived as
    symlinks, never followed; sockets and devices are left out.
    """
    root = Path(local_dir)
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a directory")
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        for path, name in _walk(root):
            info = archive.gettarinfo(str(path), arcname=name)
            if info is None or not (info.isdir() or info.isreg() or info.issym() or info.islnk()):
                continue
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isreg():
                with open(path, "rb") as data:
                    archive.addfile(info, data)
            else:
                archive.addfile(info)


def _walk(root: Path) -> Iterator[Tuple[Path, str]]:
    """Pre-order, sorted, without following symlinks to directories."""
    for current, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        base = Path(current)
        for name in sorted(dirs + files):
            path = base / name
            yield path, path.relative_to(root).as_posix()


@dataclass
class _Entry:
    member: tarfile.TarInfo
    #: The path relative to the destination, as components.
    parts: Tuple[str, ...]
    #: For hard links: the target's parts.
    link_parts: Optional[Tuple[str, ...]] = None


def _refuse(member: tarfile.TarInfo, why: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(f"refusing archive entry {member.name!r}: {why}")


def _name_parts(name: str, member: tarfile.TarInfo) -> Tuple[str, ...]:
    if name.startswith("/"):
        raise _refuse(member, "absolute path")
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if ".." in parts:
        raise _refuse(member, "'..' in its path")
    if any("\0" in part for part in parts):
        raise _refuse(member, "NUL in its path")
    return parts


def _check_symlink(member: tarfile.TarInfo, parts: Tuple[str, ...]) -> None:
    target = member.linkname
    if not target:
        raise _refuse(member, "empty symlink target")
    if target.startswith("/"):
        raise _refuse(member, f"symlink to the absolute path {target!r}")
    components = [part for part in target.split("/") if part not in ("", ".")]
    ups = 0
    while ups < len(components) and components[ups] == "..":
        ups += 1
    if ".." in components[ups:]:
        raise _refuse(member, f"symlink target {target!r} climbs after descending")
    if ups > len(parts) - 1:
        raise _refuse(member, f"symlink to {target!r} points outside the destination")


def _plan(archive: tarfile.TarFile, strip_top: bool) -> List[_Entry]:
    """Pass 1: every check that needs only the archive."""
    entries: List[_Entry] = []
    seen: Dict[Tuple[str, ...], tarfile.TarInfo] = {}
    symlinks: Set[Tuple[str, ...]] = set()
    top: Optional[Tuple[str, ...]] = None
    for member in archive:
        parts = _name_parts(member.name, member)
        if strip_top:
            if top is None:
                if not member.isdir():
                    raise NotADirectoryError(f"{member.name!r} is not a directory")
                top = parts
                continue
            if parts[: len(top)] != top or len(parts) == len(top):
                raise _refuse(member, "outside the archive's top directory")
            parts = parts[len(top) :]
        if not parts:
            if member.isdir():
                continue
            raise _refuse(member, "names the destination itself")
        if parts in seen:
            raise _refuse(member, "appears twice")
        for depth in range(1, len(parts)):
            if parts[:depth] in symlinks:
                raise _refuse(member, f"inside the symlink {'/'.join(parts[:depth])!r}")
        entry = _Entry(member, parts)
        if member.issym():
            _check_symlink(member, parts)
            symlinks.add(parts)
        elif member.islnk():
            link_parts = _name_parts(member.linkname, member)
            if strip_top and top is not None:
                if link_parts[: len(top)] != top:
                    raise _refuse(member, f"hard link to {member.linkname!r} outside the archive")
                link_parts = link_parts[len(top) :]
            target = seen.get(link_parts)
            if target is None or not target.isreg():
                raise _refuse(member, f"hard link to {member.linkname!r}, not a file before it")
            entry.link_parts = link_parts
        elif not (member.isdir() or member.isreg()):
            continue  # devices, FIFOs: skipped, as the agent does
        seen[parts] = member
        entries.append(entry)
    if strip_top and top is None:
        raise UnsafeArchiveError("the archive is empty")
    return entries


def _real_dir(dest: Path, parts: Tuple[str, ...], modes: Dict[Path, tarfile.TarInfo]) -> Path:
    """The directory ``dest/parts``, created as needed; never through a symlink."""
    current = dest
    for part in parts:
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            os.mkdir(current, 0o755)
            continue
        if not stat.S_ISDIR(mode):
            raise UnsafeArchiveError(f"{current} is not a directory; refusing to write through it")
    return current


def _clear(path: Path) -> None:
    """Makes room for a non-directory entry; an existing directory stays an error."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(f"{path} is a directory")
    os.unlink(path)


def _extract(archive: tarfile.TarFile, entries: List[_Entry], dest: Path) -> None:
    """Pass 2: write what pass 1 allowed, following nothing."""
    dir_fixups: Dict[Path, tarfile.TarInfo] = {}
    for entry in entries:
        member = entry.member
        parent = _real_dir(dest, entry.parts[:-1], dir_fixups)
        target = parent / entry.parts[-1]
        if member.isdir():
            try:
                mode = os.lstat(target).st_mode
            except FileNotFoundError:
                os.mkdir(target, 0o700)
            else:
                if not stat.S_ISDIR(mode):
                    raise UnsafeArchiveError(f"{target} exists and is not a directory")
            dir_fixups[target] = member
        elif member.issym():
            _clear(target)
            os.symlink(member.linkname, target)
        elif member.islnk():
            assert entry.link_parts is not None
            source = _real_dir(dest, entry.link_parts[:-1], dir_fixups) / entry.link_parts[-1]
            _clear(target)
            os.link(source, target, follow_symlinks=False)
        else:
            _clear(target)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(target, flags, 0o600)
            with os.fdopen(fd, "wb") as out:
                data = archive.extractfile(member)
                if data is not None:
                    while True:
                        chunk = data.read(_CHUNK)
                        if not chunk:
                            break
                        out.write(chunk)
                out.flush()
                os.fchmod(out.fileno(), member.mode & _PERMISSIONS)
                os.utime(out.fileno(), (member.mtime, member.mtime))
    # Directory modes last and deepest first, so a read-only directory
    # does not stop its own entries from being written.
    for path in sorted(dir_fixups, key=lambda p: len(p.parts), reverse=True):
        member = dir_fixups[path]
        os.chmod(path, member.mode & _PERMISSIONS, follow_symlinks=False)
        os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)


def extract_tar(
    source: Union[IO[bytes], bytes, PathLike], dest: PathLike, *, strip_top: bool = False
) -> None:
    """Extracts an untrusted tar into ``dest`` (created if missing).

    ``source`` is a seekable binary file, the archive's bytes, or a path to
    it. With ``strip_top`` the archive must consist of one top directory,
    whose contents land in ``dest`` (what ``GET /archive`` sends for a
    directory). Raises :class:`~sbx.errors.UnsafeArchiveError`, before
    writing anything, when an entry would land or point outside ``dest``;
    see the module docs for the rules.
    """
    if isinstance(source, (bytes, bytearray)):
        import io

        with io.BytesIO(source) as buffer:
            extract_tar(buffer, dest, strip_top=strip_top)
        return
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as file:
            extract_tar(file, dest, strip_top=strip_top)
        return
    try:
        archive = tarfile.open(fileobj=source, mode="r:")
    except tarfile.TarError as err:
        raise UnsafeArchiveError(f"not a readable tar archive: {err}") from err
    with archive:
        try:
            entries = _plan(archive, strip_top)
        except tarfile.TarError as err:
            raise UnsafeArchiveError(f"not a readable tar archive: {err}") from err
        root = Path(dest)
        root.mkdir(parents=True, exist_ok=True)
        _extract(archive, entries, Path(os.path.realpath(root)))
