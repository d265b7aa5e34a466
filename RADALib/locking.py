"""One writer per experiment folder: an operating-system lock on a file inside it.

Two ``rada train`` runs into the same folder would overwrite each other's checkpoint, metrics
and model. :func:`folder_lock` takes an exclusive lock on ``FOLDER/.rada.lock`` (``flock`` on
POSIX, ``msvcrt.locking`` on Windows) without waiting; a second run gets a one-line
:class:`~RADALib.errors.InputError` naming the folder. The operating system drops the lock when
the process ends, however it ends (Ctrl-C, a cancel from Slicer, a crash, ``kill -9``), so a
stale lock never blocks a resumed run. The lock file itself stays (it holds the last holder's
process id, for the message).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .atomic import write_error
from .errors import InputError

LOCK_FILE = ".rada.lock"


def _try_lock(handle: int) -> bool:
    """Lock the open file ``handle`` exclusively without waiting; False when another holds it."""
    if os.name == "nt":
        import msvcrt

        try:
            os.lseek(handle, 0, os.SEEK_SET)
            msvcrt.locking(handle, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _unlock(handle: int) -> None:
    """Windows wants its byte lock undone before the file is closed; flock goes with the close."""
    if os.name == "nt":
        import msvcrt

        try:
            os.lseek(handle, 0, os.SEEK_SET)
            msvcrt.locking(handle, msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined]
        except OSError:  # not ours (another run holds it): nothing to undo
            pass


def _holder(path: Path) -> str:
    """`` (process N)`` from the lock file, when it says."""
    try:
        pid = path.read_text().strip()
    except OSError:
        return ""
    return f" (process {pid})" if pid.isdigit() else ""


@contextmanager
def folder_lock(folder: str | os.PathLike[str], user: str = "rada train") -> Iterator[Path]:
    """Hold the exclusive lock of ``folder`` (which must exist) for the block.

    Raises ``InputError`` naming ``folder`` when another process holds it; ``user`` names what
    holds such locks in the message.
    """
    folder = Path(folder)
    path = folder / LOCK_FILE
    try:
        handle = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        if not _try_lock(handle):
            raise InputError(
                folder,
                f"another {user} is using this folder{_holder(path)}; wait for it to finish, "
                "or give another folder",
            )
        try:  # who holds it, for the message of a second run (the lock is what counts)
            os.ftruncate(handle, 0)
            os.lseek(handle, 0, os.SEEK_SET)
            os.write(handle, str(os.getpid()).encode())
        except OSError:
            pass
        yield path
    finally:
        _unlock(handle)
        os.close(handle)  # releases the lock on POSIX (and when the process ends, anywhere)
