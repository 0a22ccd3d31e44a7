"""The one bounded way every process reads routing.yaml's bytes: the edge, edgectl, the consumers.

Reading is bounded before parsing starts: only a regular file (a symlink to one is fine, which
is how Kubernetes mounts a ConfigMap), at most ``max_bytes``, opened without blocking, so a link
to ``/dev/zero``, a FIFO or a directory is refused at once instead of read forever. The YAML
reader (common/routing_yaml.py) then refuses aliases, deep nesting and ambiguous numbers, so the
time a parse can take is bounded too.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from common.routing_yaml import RoutingError

# (device, inode, size, mtime, ctime): any write or replace changes at least one of them.
Signature = tuple[int, int, int, int, int]


class RoutingFileError(RoutingError):
    """The file could not be read as routing.yaml at all (missing, not a regular file, too big, not UTF-8)."""


class FileChanging(RoutingFileError):
    """The file changed while it was being read: someone is still writing it."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    data: bytes
    signature: Signature


def signature_of(st: os.stat_result) -> Signature:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _cannot_read(path: Path, exc: OSError) -> RoutingFileError:
    return RoutingFileError(f"cannot read {path}: {exc.strerror or exc} ({exc.__class__.__name__})")


def read_bounded(path: str | os.PathLike[str], max_bytes: int) -> Snapshot:
    """The file's bytes, or RoutingFileError; never blocks on a FIFO or reads past ``max_bytes``."""
    path = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO with no writer would otherwise wait forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise _cannot_read(path, exc) from None
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise RoutingFileError(f"{path} is {_kind(before.st_mode)}: routing.yaml must be a regular file (or a symlink to one)")
        if before.st_size > max_bytes:
            raise RoutingFileError(f"{path} is {before.st_size} bytes, more than the {max_bytes} allowed (EDGE_ROUTING_MAX_BYTES)")
        chunks: list[bytes] = []
        size = 0
        while size <= max_bytes:
            chunk = os.read(fd, min(65536, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > max_bytes:
            raise RoutingFileError(f"{path} grew past the {max_bytes} bytes allowed (EDGE_ROUTING_MAX_BYTES) while being read")
        after = os.fstat(fd)
        if signature_of(after) != signature_of(before) or size != after.st_size:
            raise FileChanging(f"{path} changed while being read (is someone still writing it?)")
    except OSError as exc:
        raise _cannot_read(path, exc) from None
    finally:
        os.close(fd)
    return Snapshot(b"".join(chunks), signature_of(after))


def decode(path: str | os.PathLike[str], data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RoutingFileError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
