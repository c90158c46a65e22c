"""Staging directories and directory replacement that survive a killed process.

Checkpoints and exported models are built in a *staging directory* next to their target and then
renamed into place. A process killed while building (SIGKILL, power loss) cannot clean up, so
staging directories carry the owning process id in their name
(``.aitune_triton-staging-<pid>-h<host>-<random>``); the next save or export in the same parent directory
removes those whose process is gone, or that are older than :data:`STALE_AFTER_S` (a process id
reused by an unrelated process, or a directory written from another PID namespace).

:func:`replace_dir` swaps a complete new directory into an existing path with Linux's
``renameat2(RENAME_EXCHANGE)``: the path holds the old directory, then the new one, and is never
absent. Where that call is missing (another OS, an old kernel or C library, a file system without
it), it falls back to two renames, and a kill between them leaves the path absent with the old
directory kept under a staging name (removed by the next save or export).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["STAGING_PREFIX", "STALE_AFTER_S", "exchange", "make_staging_dir", "remove_stale_staging", "replace_dir"]

STAGING_PREFIX = ".aitune_triton-staging-"
#: A staging directory older than this is stale even when a process with its pid is alive.
STALE_AFTER_S = 6 * 3600.0
_STAGING_NAME = re.compile(re.escape(STAGING_PREFIX) + r"(\d+)-(?:h([0-9a-f]{8})-)?")
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


#: This host (and PID namespace), as 8 hex digits in staging names: a directory shared between hosts (or containers with
#: their own PID namespaces and host names) holds staging directories whose pids mean nothing here.
def _host_identity() -> str:
    """Host name plus, where Linux shows it, the PID namespace (containers sharing a host name)."""
    try:
        namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}/{namespace}"


_HOST = hashlib.sha256(_host_identity().encode()).hexdigest()[:8]


def _own_prefix() -> str:
    return f"{STAGING_PREFIX}{os.getpid()}-h{_HOST}-"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale_staging(parent: Path, max_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove staging directories in ``parent`` whose owning process is gone or that are too old.

    Args:
        parent: Directory to scan (only its direct entries named ``.aitune_triton-staging-<pid>-*``).
        max_age_s: Age in seconds (by modification time) past which a staging directory is stale
            even if its pid is alive.

    Returns:
        The directories removed.
    """
    removed: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = _STAGING_NAME.match(entry.name)
        if match is None or entry.is_symlink() or not entry.is_dir():
            continue
        try:
            age_s = now - entry.stat().st_mtime
        except OSError:
            continue
        other_host = match.group(2) is not None and match.group(2) != _HOST
        if (other_host or _pid_alive(int(match.group(1)))) and age_s < max_age_s:
            continue  # a pid seen from another host (a shared volume) says nothing: only age counts there
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():
            removed.append(entry)
    return removed


def make_staging_dir(parent: Path) -> Path:
    """Create an empty staging directory in ``parent`` (after removing stale ones there).

    Returns:
        ``parent/.aitune_triton-staging-<this pid>-h<this host>-<random>``.
    """
    remove_stale_staging(parent)
    return Path(tempfile.mkdtemp(prefix=_own_prefix(), dir=parent))


def exchange(first: Path, second: Path) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2`` with ``RENAME_EXCHANGE``).

    Returns:
        True when swapped; False when this system cannot exchange atomically (not Linux, no
        ``renameat2`` in the C library, or a file system that refuses the flag). Nothing moved then.

    Raises:
        OSError: the call failed for another reason (a path is missing, permissions...).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, f"renameat2(RENAME_EXCHANGE) {first} <-> {second}: {os.strerror(code)}")


def replace_dir(new: Path, path: Path) -> None:
    """Put the complete directory ``new`` at ``path``, replacing what is there, then delete the old one.

    ``path`` always holds either the old or the new directory where :func:`exchange` works;
    elsewhere the old directory is renamed to a staging name first (see the module docstring).

    Args:
        new: The directory to move into place (a staging directory in ``path``'s parent).
        path: The target; a directory or absent.
    """
    if not path.exists():
        os.rename(new, path)
        return
    if exchange(new, path):
        retired = new  # now holds the old directory, under a staging name
    else:
        retired = Path(tempfile.mkdtemp(prefix=_own_prefix(), dir=path.parent))
        os.rmdir(retired)
        os.rename(path, retired)
        os.rename(new, path)
    shutil.rmtree(retired, ignore_errors=True)
