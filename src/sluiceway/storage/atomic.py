"""The one durable-write routine of storage: write a temp file next to the target, flush and
fsync it, ``os.replace`` it over the target, then fsync the directory. Readers see the old file
or the new one, never a partial one; a failure removes the temp file and raises ``StorageError``.
These functions block: call them from a worker thread when on the event loop."""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from sluiceway.errors import StorageError

TEMP_SUFFIX = ".tmp"


def temp_path_for(path: Path) -> Path:
    """A fresh temp name in the target's directory: ``<name>.<random>.tmp``."""
    return path.with_name(f"{path.name}.{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}")


def write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> int:
    """Creates or replaces ``path`` with what ``write`` puts into the open binary file.

    Returns the size of the new file in bytes. Blocks (disk I/O and fsync). Any ``OSError`` on
    the way, including one raised by ``write``, becomes a ``StorageError`` naming ``path`` and
    the cause; other exceptions from ``write`` propagate unchanged. In both cases the temp file
    is removed and an existing file at ``path`` is left untouched.
    """
    temp = temp_path_for(path)
    try:
        # 0o666 lets the umask decide the final permissions, like an ordinary open().
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
            size_bytes = handle.tell()
        os.replace(temp, path)
        fsync_directory(path.parent)
    except OSError as exc:
        _remove_quietly(temp)
        raise StorageError(
            f"could not write {path}: {type(exc).__name__}: {exc}. Check that the output "
            "directory exists, is a directory, is writable and has free space, or choose "
            "another output path."
        ) from exc
    except BaseException:
        _remove_quietly(temp)
        raise
    return size_bytes


def write_bytes_atomically(path: Path, data: bytes) -> int:
    """Creates or replaces ``path`` with ``data``; see ``write_atomically``."""
    return write_atomically(path, lambda handle: _write_all(handle, data))


def _write_all(handle: BinaryIO, data: bytes) -> None:
    handle.write(data)


def fsync_directory(directory: Path) -> None:
    """Makes a rename in ``directory`` durable (POSIX); a no-op where directories cannot be
    opened (Windows) or the filesystem does not support syncing them (``EINVAL``)."""
    if os.name == "nt":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)


def _remove_quietly(path: Path) -> None:
    # The original error matters more; a leftover ``*.tmp`` is ignored by every reader and
    # removed by ``prepare_output_directory(overwrite=True)``.
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)
