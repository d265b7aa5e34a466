"""Worker processes end when the process that started them dies.

A multiprocessing worker waits for tasks on a queue whose write end it holds itself, so when its
parent is killed outright (``kill -9``, the out-of-memory killer, a crash) the worker never sees
the end of the queue: it runs on, reparented to init, holding its memory. :func:`exit_with_parent`,
called in the worker (e.g. from a pool's initializer), starts a daemon thread that watches the
parent and ends the worker at once when the parent is gone.

The thread waits on multiprocessing's parent sentinel: on POSIX the read end of a pipe whose
write end only the parent holds (it reads end-of-file when the parent dies, whatever killed
it), on Windows a handle of the parent process (signalled when it exits). On POSIX it also
checks, every ``interval_s``, that the worker was not reparented (``os.getppid()`` changed),
which covers a parent whose pipe end a forked child of its own still holds.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable
from multiprocessing.connection import wait

ORPHAN_EXIT_CODE = 1
"""Exit status of a worker that ended because its parent was gone."""


def exit_with_parent(
    cleanup: Callable[[], None] | None = None, interval_s: float = 0.5
) -> threading.Thread:
    """Watch this process's parent from a daemon thread; when it is gone, run ``cleanup`` (its
    errors are ignored) and end this process with ``os._exit`` (no Python shutdown, which
    could wait on the threads of a task still running). Returns the watching thread."""
    parent = multiprocessing.parent_process()
    sentinel = parent.sentinel if parent is not None else None
    first_parent = os.getppid()
    posix = os.name != "nt"

    def parent_gone() -> bool:
        if sentinel is not None:
            if wait([sentinel], timeout=interval_s):
                return True
        else:
            threading.Event().wait(interval_s)
        return posix and os.getppid() != first_parent

    def watch() -> None:
        while not parent_gone():
            pass
        if cleanup is not None:
            try:
                cleanup()
            except Exception:  # ending is what matters now
                pass
        os._exit(ORPHAN_EXIT_CODE)

    thread = threading.Thread(target=watch, name="rada-parent-watch", daemon=True)
    thread.start()
    return thread
