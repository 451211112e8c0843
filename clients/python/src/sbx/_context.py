"""The build context ``images.build`` sends: a directory as a tar.

It is the same tar ``sbx image build`` sends (``orchestrator/src/cli/context.rs``
in the sbx repo), so a context builds alike, and hits the same build cache,
from either:

- entries are named relative to the directory (``Dockerfile``,
  ``src/a.py``), with no entry for the directory itself, in a pre-order
  walk whose siblings are sorted by the bytes of their names;
- regular files, directories and symlinks (as symlinks, never followed);
  FIFOs, sockets and devices are left out, a hard link is sent as a file of
  its own; permission bits and mtimes are kept, owners are 0 without names;
- ``.dockerignore`` takes Docker's simple patterns, anchored at the root
  (``*.log`` is at the top only, ``**/*.log`` at any depth), matching a path
  or any of its parents; ``*`` and ``?`` stay within a component,
  ``[a-z]``, ``[!x]`` and ``[^x]`` are classes, ``\\`` escapes outside
  classes, a ``**`` component matches any number of components; the last
  pattern that matches decides, so ``!pattern`` takes a path back;
- the Dockerfile and ``.dockerignore`` are always sent.
"""

from __future__ import annotations

import fnmatch
import os
import stat
import tarfile
from pathlib import Path
from typing import IO, FrozenSet, List, Optional, Sequence, Tuple, Union

__all__ = ["DOCKERIGNORE", "DockerIgnore", "BuildContext"]

DOCKERIGNORE = ".dockerignore"
_CHUNK = 64 * 1024

PathLike = Union[str, "os.PathLike[str]"]
#: A pattern's components: an ``fnmatch`` pattern each, ``None`` for ``**``.
_Parts = Tuple[Optional[str], ...]


def _literal(char: str) -> str:
    return f"[{char}]" if char in "*?[" else char


def _class_end(glob: str, start: int) -> Optional[int]:
    """Where the class opened at ``start`` closes; ``None`` when it does not."""
    at = start + 1
    if at < len(glob) and glob[at] in "!^":
        at += 1
    if at < len(glob) and glob[at] == "]":
        at += 1
    end = glob.find("]", at)
    return None if end < 0 else end


def _fnmatch_pattern(glob: str) -> str:
    """One component of a ``.dockerignore`` pattern in ``fnmatch``'s terms."""
    out: List[str] = []
    at = 0
    while at < len(glob):
        char = glob[at]
        if char == "\\" and at + 1 < len(glob):
            at += 1
            out.append(_literal(glob[at]))
        elif char == "[":
            end = _class_end(glob, at)
            if end is None:
                out.append("[[]")
            else:
                body = glob[at + 1 : end]
                if body.startswith("^"):
                    body = "!" + body[1:]
                out.append(f"[{body}]")
                at = end
        else:
            out.append(char)
        at += 1
    return "".join(out)


def _parts_match(pattern: _Parts, path: Sequence[str]) -> bool:
    if not pattern:
        return not path
    first, rest = pattern[0], pattern[1:]
    if first is None:
        return _parts_match(rest, path) or (bool(path) and _parts_match(pattern, path[1:]))
    return bool(path) and fnmatch.fnmatchcase(path[0], first) and _parts_match(rest, path[1:])


class DockerIgnore:
    """The patterns of a ``.dockerignore``."""

    def __init__(self, text: str = "") -> None:
        self._patterns: List[Tuple[bool, _Parts]] = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            excludes = not line.startswith("!")
            if not excludes:
                line = line[1:].strip()
            parts = tuple(
                None if part == "**" else _fnmatch_pattern(part)
                for part in line.split("/")
                if part not in ("", ".")
            )
            # `/`, `.` or a lone `!` name nothing.
            if parts:
                self._patterns.append((excludes, parts))

    @classmethod
    def read(cls, root: PathLike) -> DockerIgnore:
        """The directory's ``.dockerignore``; none is no pattern."""
        try:
            data = Path(root, DOCKERIGNORE).read_bytes()
        except FileNotFoundError:
            return cls()
        return cls(data.decode("utf-8", "replace"))

    @property
    def has_exceptions(self) -> bool:
        """Whether a ``!pattern`` could take back a path below an excluded one."""
        return any(not excludes for excludes, _ in self._patterns)

    def excludes(self, path: Union[str, Sequence[str]]) -> bool:
        """Whether ``path`` (relative to the root; ``a/b`` or its components) is left out."""
        parts = path.split("/") if isinstance(path, str) else list(path)
        excluded = False
        for excludes, pattern in self._patterns:
            if any(_parts_match(pattern, parts[:depth]) for depth in range(1, len(parts) + 1)):
                excluded = excludes
        return excluded


class BuildContext:
    """A context directory and its Dockerfile, checked before anything is sent.

    ``dockerfile`` is a path inside the context, relative to it (or
    absolute); ``None`` is its ``Dockerfile``. One outside it raises
    :class:`ValueError`; a missing one :class:`FileNotFoundError`.
    """

    def __init__(self, context_dir: PathLike, dockerfile: Optional[PathLike] = None) -> None:
        root = Path(os.path.realpath(context_dir))
        if not root.is_dir():
            shown = os.fspath(context_dir)
            raise NotADirectoryError(f"the build context {shown} is not a directory")
        self.root = root
        #: What the request names as ``dockerfile``: ``None`` for the default.
        self.dockerfile: Optional[str] = None
        if dockerfile is None:
            relative = Path("Dockerfile")
        else:
            given = Path(context_dir, dockerfile)
            inside = Path(os.path.realpath(given.parent)) / given.name
            try:
                relative = inside.relative_to(root)
            except ValueError:
                raise ValueError(
                    f"the Dockerfile {os.fspath(dockerfile)} is outside the context "
                    f"{os.fspath(context_dir)}"
                ) from None
            self.dockerfile = relative.as_posix()
        try:
            mode = os.lstat(root / relative).st_mode
        except FileNotFoundError:
            raise FileNotFoundError(f"no Dockerfile at {Path(context_dir, relative)}") from None
        if not stat.S_ISREG(mode):
            raise FileNotFoundError(f"{Path(context_dir, relative)} is not a regular file")
        self.ignore = DockerIgnore.read(root)
        self._always: FrozenSet[Tuple[str, ...]] = frozenset({relative.parts, (DOCKERIGNORE,)})

    def write_tar(self, out: IO[bytes]) -> None:
        """Writes the context to ``out`` as a tar."""
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as archive:
            self._walk(archive, ())

    def _walk(self, archive: tarfile.TarFile, parts: Tuple[str, ...]) -> None:
        directory = self.root.joinpath(*parts)
        for name in sorted(os.listdir(directory), key=os.fsencode):
            path = parts + (name,)
            full = directory / name
            status = os.lstat(full)
            excluded = path not in self._always and self.ignore.excludes(path)
            info = tarfile.TarInfo("/".join(path))
            info.mode = stat.S_IMODE(status.st_mode)
            info.mtime = max(0, int(status.st_mtime))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if stat.S_ISDIR(status.st_mode):
                if not excluded:
                    info.type = tarfile.DIRTYPE
                    archive.addfile(info)
                needed = any(sent[: len(path)] == path for sent in self._always)
                if not excluded or self.ignore.has_exceptions or needed:
                    self._walk(archive, path)
            elif excluded:
                continue
            elif stat.S_ISLNK(status.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(full)
                archive.addfile(info)
            elif stat.S_ISREG(status.st_mode):
                fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                with os.fdopen(fd, "rb") as file:
                    # The size of what was opened; tarfile fails a file that
                    # shrinks before it is read whole.
                    opened = os.fstat(file.fileno())
                    info.size = opened.st_size
                    info.mode = stat.S_IMODE(opened.st_mode)
                    archive.addfile(info, file)
