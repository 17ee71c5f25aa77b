"""Atomic file writes: results and checkpoints are never left half-written.

Every writer goes through a temp file in the target's directory and ``os.replace`` (atomic on POSIX). The temp
file is made by ``mkstemp`` (mode 0600, so no other process can write into it); before it takes the target's
name it gets the mode a plain ``open`` would have given it (0666 less the user's umask), so an atomic write
changes nothing about who may read the result.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from unikd.errors import ConfigError


def _umask() -> int:
    """The process's umask: from /proc on Linux (reading it there changes nothing); elsewhere os.umask, which
    can only be read by setting it, so it is set straight back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temp path beside ``path`` to write to; on success it is fsynced, given the umask's mode and renamed
    onto ``path``; on any error it is removed and ``path`` is left as it was.

    The temp name keeps ``path``'s suffix, so writers that pick a format from the name (``savefig``) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def follow_umask(root: str | os.PathLike) -> None:
    """Give ``root`` and everything under it the mode a plain ``open`` / ``mkdir`` would have (0666 / 0777 less the
    umask): writers that go through their own temp files (safetensors: 0600) otherwise decide who may read a
    result."""
    mask = _umask()
    root = Path(root)
    for path in [root, *root.rglob("*")] if root.is_dir() else [root]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see ``atomic_path``)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=float) + "\n")


def check_writable_dir(path: str | os.PathLike, field: str) -> None:
    """``path`` is, or can become, a directory this process can write into; else a ``ConfigError`` naming
    ``field``. Nothing is created: the nearest existing ancestor is probed with a temp file that is removed
    at once (a permission bit check would pass for root on a read-only mount)."""
    path = Path(path).expanduser()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file" if existing == path else f"lies under {existing}, which is a file"
        raise ConfigError(field, f"{str(path)!r} {what}, not a directory", f"choose another {field}")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise ConfigError(
            field,
            f"cannot write into {str(existing)!r} ({exc.strerror or exc}), so the run could save nothing",
            f"choose a {field} on a writable disk, or fix the directory's permissions",
        ) from exc
