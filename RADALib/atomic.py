"""Write-then-rename, verified: a crash, Ctrl-C or a full disk never leaves a half-written or
empty file under the real name.

Every output is written to a hidden temporary sibling (:func:`replacing`), flushed to disk,
checked (not empty; callers add their own read-back) and only then renamed into place. A write
that fails becomes one :class:`~RADALib.errors.InputError` naming the final file, e.g.
``"<file>: could not be written: no space left on device"``. Temporary files and folders get the
mode a plain ``open()`` / ``mkdir()`` would give them under the user's umask (or the mode of the
file they replace), not the private mode of :mod:`tempfile`.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO

from .errors import InputError

NO_SPACE = "no space left on device"
INCOMPLETE = f"the file written is empty or incomplete ({NO_SPACE}?)"

_PROBLEMS = {
    errno.ENOSPC: NO_SPACE,
    errno.EFBIG: f"{NO_SPACE} (file too large)",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a folder on its path is a file",
    errno.EISDIR: "is a folder",
}
if hasattr(errno, "EDQUOT"):
    _PROBLEMS[errno.EDQUOT] = f"{NO_SPACE} (disk quota exceeded)"

WRITE_ERRNOS = frozenset(_PROBLEMS)
"""The errors of a write that the user can fix (space, permissions, the output's location)."""


def write_problem(exc: OSError) -> str:
    """What went wrong in a failed write, in a few words (``"no space left on device"``)."""
    return _PROBLEMS.get(exc.errno, exc.strerror or str(exc))  # type: ignore[arg-type]


def write_error(path: str | os.PathLike[str], exc: OSError) -> InputError:
    """The one-line error for a write of ``path`` that failed with ``exc``."""
    return InputError(path, f"could not be written: {write_problem(exc)}")


def incomplete_error(path: str | os.PathLike[str]) -> InputError:
    """The one-line error for a writer that left ``path``'s file empty or short without saying
    why: "no space left on device" when its disk is full, else that it may be."""
    try:
        full = shutil.disk_usage(Path(path).parent).free == 0
    except OSError:
        full = False
    return InputError(path, f"could not be written: {NO_SPACE if full else INCOMPLETE}")


# ----------------------------------------------------------------------------- folders


def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (a path under a file does not)."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def check_output_folder(folder: str | os.PathLike[str]) -> Path:
    """``InputError`` unless ``folder`` is, or can be created as, a writable folder.

    Creates nothing: commands call it before reading their inputs, so a refused input never
    leaves an empty output folder behind, and a bad location is said before any long work.
    """
    folder = Path(folder)
    existing = _nearest_existing(folder)
    if existing == folder and not folder.is_dir():
        raise InputError(folder, "exists and is not a folder; give a folder or a new name")
    _check_writable(folder, existing, "cannot create the output folder")
    if existing == folder and not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(folder, f"output folder is not writable: {_why_not(folder)}")
    return folder


def check_output_file(path: str | os.PathLike[str]) -> Path:
    """``InputError`` unless ``path`` can be written as a file (see :func:`check_output_folder`);
    creates nothing."""
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "is a folder; give a file name")
    _check_writable(path, _nearest_existing(path.parent), "cannot be written")
    return path


def _check_writable(path: Path, existing: Path, cannot: str) -> None:
    """``InputError`` naming ``path`` when ``existing``, where it would be created, is a file
    or not writable."""
    if not existing.is_dir():
        raise InputError(path, f"{cannot}: {existing} is a file")
    if existing != path and not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(path, f"{cannot}: {existing} is not writable ({_why_not(existing)})")


def _why_not(folder: Path) -> str:
    """Why a folder ``os.access`` refuses cannot be written."""
    try:
        if os.statvfs(folder).f_flag & getattr(os, "ST_RDONLY", 1):
            return "read-only file system"
    except (AttributeError, OSError):  # no statvfs on Windows
        pass
    return "permission denied"


def ensure_writable_folder(folder: str | os.PathLike[str], purpose: str = "") -> Path:
    """Create ``folder`` if needed; an ``InputError`` naming it when it cannot be written."""
    folder = Path(folder)
    if folder.is_dir() and os.access(folder, os.W_OK | os.X_OK):
        return folder
    try:
        check_output_folder(folder)
    except InputError as exc:
        raise InputError(
            exc.source, exc.problem + (f" (needed for {purpose})" if purpose else "")
        ) from None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(folder, f"cannot create the output folder: {write_problem(exc)}") from None
    return folder


def new_temporary_folder(folder: str | os.PathLike[str]) -> Path:
    """Create a hidden, uniquely named sibling of ``folder`` to build it in (umask mode)."""
    folder = Path(folder)
    for _ in range(100):
        candidate = folder.with_name(f".{folder.name}.{secrets.token_hex(4)}.part")
        try:
            os.mkdir(candidate, 0o777)
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(folder))


# ----------------------------------------------------------------------------- files


def new_temporary(path: str | os.PathLike[str], suffix: str = "") -> Path:
    """Create an empty, hidden, uniquely named sibling of ``path`` ending in ``suffix``.

    Its mode is 0666 less the umask, as ``open()`` gives a new file (``tempfile.mkstemp`` would
    make it 0600); :func:`commit` gives it the mode of the file it replaces, if any.
    """
    path = Path(path)
    stem = path.name[: -len(suffix)] if suffix and path.name.endswith(suffix) else path.name
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        candidate = path.with_name(f".{stem}.{secrets.token_hex(4)}.part{suffix}")
        try:
            handle = os.open(candidate, flags, 0o666)
        except FileExistsError:
            continue
        os.close(handle)
        return candidate
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))


def fsync_path(path: str | os.PathLike[str]) -> int:
    """Flush ``path``'s data to the disk; returns its size. Raises ``OSError`` as the disk does."""
    handle = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(handle)
        return os.fstat(handle).st_size
    finally:
        os.close(handle)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; nothing to do, or possible, elsewhere)."""
    if os.name != "posix":
        return
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def commit(temporary: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Flush the written ``temporary`` to disk, check that it is not empty and rename it onto
    ``path`` (keeping the mode of the file it replaces, as writing that file in place would).
    On failure ``temporary`` is removed, ``path`` is left as it was and the error is an
    ``InputError`` naming ``path``."""
    temporary, path = Path(temporary), Path(path)
    try:
        if fsync_path(temporary) == 0:
            raise incomplete_error(path)
        with suppress(FileNotFoundError):
            os.chmod(temporary, stat.S_IMODE(os.stat(path).st_mode))
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise write_error(path, exc) from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


@contextmanager
def replacing(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Write ``path`` through a temporary sibling: the block writes the yielded path (ending in
    ``suffix``, for writers that pick the format by it), then it is committed (:func:`commit`).

    If the block raises, the temporary file is removed and ``path`` keeps its old content; an
    ``OSError`` of the block becomes an ``InputError`` naming ``path``.
    """
    path = Path(path)
    try:
        temporary = new_temporary(path, suffix)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        yield temporary
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise write_error(path, exc) from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    commit(temporary, path)


class RecordingWriter:
    """A binary file for libraries that turn a failed ``write`` into another exception (torch
    raises ``RuntimeError``): it keeps the first ``OSError`` so the caller can re-raise it."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.handle.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        try:
            self.handle.flush()
        except OSError as exc:
            self.error = self.error or exc
            raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to a hidden temporary sibling of ``path``, then rename it into place."""
    path = Path(path)
    with replacing(path) as temporary:
        temporary.write_text(text)
    return path


def write_npz_atomic(path: str | os.PathLike[str], arrays: dict, compress: bool = True) -> Path:
    """Save named arrays as ``.npz`` under a temporary name, check that the archive reads back
    whole (its index, written last), then rename it into place."""
    import zipfile

    import numpy as np

    path = Path(path)
    with replacing(path, ".npz") as temporary:
        (np.savez_compressed if compress else np.savez)(temporary, **arrays)
        try:
            with zipfile.ZipFile(temporary) as archive:
                complete = len(archive.namelist()) == len(arrays)
        except (zipfile.BadZipFile, EOFError):
            complete = False
        if not complete:
            raise incomplete_error(path)
    return path
