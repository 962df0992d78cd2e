"""Writing files so that no reader ever sees half of one, and clearing what an interrupted
write left behind."""
import contextlib
import errno
import os
import re
import secrets
import shutil
import socket
import time

import torch

__all__ = [
    "atomic_open",
    "atomic_write",
    "is_disk_full",
    "make_temporary_folder",
    "remove_stale_temporaries",
    "save_atomically",
]

# Temporary files and folders are named <final name>.<host>.<pid>.<8 hex>.tmp, so that a
# later run can tell whether their writer still runs (same host, live pid).
_TEMPORARY = re.compile(r"^(?P<final>.+)\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")
# A writer that is still running finishes a save in seconds; a temporary older than this is
# stale even when its owner cannot be checked (another host, pid reused, older naming).
STALE_AFTER_S = 3600


def _host():
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _temporary_path(path):
    return f"{os.path.abspath(path)}.{_host()}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def _create_temporary_file(path):
    """(path, fd) of a new file beside ``path``. Created with mode 0o666 like open(): the
    umask applies (tempfile.mkstemp would force 0o600)."""
    while True:
        tmp = _temporary_path(path)
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue


def make_temporary_folder(path):
    """A new, empty folder beside ``path`` to build ``path`` in before renaming it into
    place; mode 0o777 less the umask (tempfile.mkdtemp would force 0o700)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    while True:
        tmp = _temporary_path(path)
        try:
            os.mkdir(tmp, 0o777)
            return tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_open(path, mode="wb"):
    """``open(path, mode)`` for writing, through a temporary file beside ``path`` that is
    renamed to ``path`` (a rename within one folder is atomic) when the block ends without
    an exception: an interrupted run leaves the old file or none, and at most a temporary
    file that ``remove_stale_temporaries`` clears later."""
    if not any(c in mode for c in "wx") or "+" in mode:
        raise ValueError(f"atomic_open writes new files: mode {mode!r} is not w/wb/x/xb")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp, fd = _create_temporary_file(path)
    try:
        with os.fdopen(fd, mode.replace("x", "w")) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def atomic_write(path, write):
    """Call ``write(f)`` on a binary file opened with :func:`atomic_open`."""
    with atomic_open(path, "wb") as f:
        write(f)


def save_atomically(obj, path):
    """torch.save ``obj`` to ``path`` atomically."""
    atomic_write(path, lambda f: torch.save(obj, f))


def is_disk_full(exc):
    """Whether ``exc`` or an exception it was raised from is "no space left on device"
    (torch.save reports it as a RuntimeError of its zip writer, caused by the OSError)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _writer_is_gone(match, now, mtime):
    if now - mtime > STALE_AFTER_S:
        return True
    if match is None or match["host"] != _host():
        return False  # unknown or remote writer: only age tells
    pid = int(match["pid"])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # a live process of another user
        return False
    return False


def remove_stale_temporaries(folder, legacy=None):
    """Remove the temporary files and folders that interrupted atomic writes left in
    ``folder``: those named by this module whose writer ran on this host and has exited,
    and any older than STALE_AFTER_S (writer on another host, or its pid reused). Names
    matching the regular expression ``legacy`` (temporaries of earlier versions, which
    carry no owner) are removed by age only. A concurrent writer's temporary is kept.
    Returns the paths removed."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    removed, now = [], time.time()
    for name in names:
        match = _TEMPORARY.match(name)
        if match is None and not (legacy is not None and re.match(legacy, name)):
            continue
        path = os.path.join(folder, name)
        try:
            mtime = os.lstat(path).st_mtime
        except FileNotFoundError:  # removed by a concurrent run
            continue
        if not _writer_is_gone(match, now, mtime):
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
        removed.append(path)
    return removed
