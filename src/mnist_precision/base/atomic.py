"""Write files so that readers see either the old content or the new, never half."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mnist_precision.base.errors import UserError

# mkstemp creates files readable by the owner alone; finished files get the usual mode.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


# The errors of a write that found no room: the disk, a quota, a file-size limit.
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class NoSpaceError(UserError, OSError):
    """A write found no room; the file it would have replaced is untouched."""


def no_space(target: Path, error: OSError) -> NoSpaceError:
    free = shutil.disk_usage(target.parent).free
    return NoSpaceError(
        f"no room to write {target} ({error.strerror}; {free / 2**20:,.0f} MiB free on its "
        f"filesystem): {target} and the other outputs were left as they were; free some space "
        "(or raise the file-size limit), then run the stage again"
    )


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it over `target` on success.
    A write that finds no room raises `NoSpaceError`, naming `target`."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as error:
        if error.errno in NO_ROOM:
            raise no_space(target, error) from None
        raise
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        yield Path(tmp)
        # On disk before the rename, and the rename on disk after it: after a
        # crash or a reboot the target is the old file or the new, never a torn one.
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp, target)
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as error:
        if error.errno in NO_ROOM:
            raise no_space(target, error) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(target: str | Path, value: Any, indent: int | None = 2) -> None:
    atomic_write_bytes(target, (json.dumps(value, indent=indent) + "\n").encode())
