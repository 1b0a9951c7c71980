"""An instance's mounted files (ConfigMap and Secret data) on disk, for both drivers.

Contract: every file is created anew with exactly its mode (never wider for a
moment: created with it, then ``fchmod`` past the umask) and belongs to the
user the app runs as (the agent's, or given to the app's with :func:`give`).
The caller removes the files when the instance stops. File contents never go
into a log line or an error message.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from pathlib import Path

from sidecar.drivers.base import DriverError, MountedFiles


def mount_path(mounted: MountedFiles) -> str:
    """The mount's directory inside the instance, normalised (``/etc/app``)."""
    path = "/" + posixpath.normpath("/" + mounted.path).lstrip("/")
    if not mounted.path.startswith("/") or path == "/":
        raise DriverError(f"mount path {mounted.path!r}: mount at an absolute directory "
                          "other than '/', like /etc/app")
    if ":" in path or "\x00" in path:  # docker's bind syntax separates with ':'
        raise DriverError(f"mount path {mounted.path!r}: a path may not hold ':'")
    return path


def check_mounts(mounts: Sequence[MountedFiles]) -> list[str]:
    """The normalised paths of ``mounts``; DriverError when one repeats or
    lies inside another (each key must be exactly one file)."""
    paths = [mount_path(m) for m in mounts]
    for i, path in enumerate(paths):
        for other in paths[:i]:
            if path == other or path.startswith(other + "/") or other.startswith(path + "/"):
                raise DriverError(
                    f"spec.mounts: {other} and {path} overlap; give each mount a directory "
                    "of its own, outside the others")
    return paths


def write_mounts(root: Path, mounts: Sequence[MountedFiles]) -> list[tuple[Path, str]]:
    """Writes mount ``n`` into ``root/<n>`` (``root`` must not exist yet);
    returns each directory with the normalised path it is mounted at."""
    paths = check_mounts(mounts)
    root.mkdir(mode=0o700, parents=True)
    directories = [root / str(number) for number in range(len(mounts))]
    for directory, mounted in zip(directories, mounts):
        write_mount(directory, mounted)
    return list(zip(directories, paths))


def write_mount(directory: Path, mounted: MountedFiles) -> None:
    """Creates ``directory`` (not there yet) holding one file per key, owned
    by the agent's user (see :func:`give`)."""
    directory.mkdir(mode=0o700, parents=True)
    for name, content in sorted(mounted.files.items()):
        if name in ("", ".", "..") or "/" in name:
            raise DriverError(f"mount {mounted.path}: key {name!r} cannot be a file name; "
                              "rename it")
        fd = os.open(directory / name,
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mounted.mode)
        try:
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mounted.mode)  # exactly: the umask only narrowed it
        finally:
            os.close(fd)
    # Only the app's user may list a Secret's files.
    directory.chmod(0o755 if mounted.mode & 0o044 else 0o700)


def give(directories: Sequence[Path], uid: int, gid: int) -> None:
    """Hands every directory and file under ``directories`` to uid:gid (the
    user the app runs as), keeping their modes. An agent that may not chown
    (not root) leaves an app that runs as root the agent's files: root reads
    them all the same."""
    if uid == os.getuid() and gid == os.getgid():
        return
    try:
        for directory in directories:
            os.chown(directory, uid, gid, follow_symlinks=False)
            for path in directory.iterdir():
                os.chown(path, uid, gid, follow_symlinks=False)
    except PermissionError as error:
        if uid == 0:
            return
        raise DriverError(
            f"the agent (uid {os.getuid()}) may not give the files of spec.mounts to uid "
            f"{uid}, the user the app runs as ({error.strerror}); run the agent as root, or "
            "the app as the agent's user") from None
