"""Cancel an engine run through its standard input, where no signal can reach it.

On Windows the Slicer application has no console, so the engine it starts (a console program
started with a hidden window) sits in a console the application is not attached to, and
``CTRL_BREAK_EVENT`` cannot be delivered to it. The application therefore starts the engine with
``RADA_CANCEL_ON_STDIN=1`` and a pipe as its stdin; writing ``cancel`` (or closing the pipe, which
also happens when the application dies) interrupts the engine's main thread exactly as Ctrl-C
would, so training stops after its last checkpoint and propagation keeps its finished cases.
"""

from __future__ import annotations

import _thread
import os
import threading
from collections.abc import Callable, Mapping
from typing import IO

CANCEL_ON_STDIN_ENV = "RADA_CANCEL_ON_STDIN"
CANCEL_LINE = "cancel"


def cancel_on_stdin_requested(environment: Mapping[str, str] | None = None) -> bool:
    """True when the process that started the engine asked for cancelling through stdin."""
    value = (os.environ if environment is None else environment).get(CANCEL_ON_STDIN_ENV, "")
    return value.strip().lower() in {"1", "true", "yes", "on"}


def watch_for_cancel(
    stream: IO[str], interrupt: Callable[[], None] = _thread.interrupt_main
) -> threading.Thread:
    """Start a daemon thread that calls ``interrupt`` once ``stream`` says ``cancel`` or ends.

    Any other line is ignored. The default ``interrupt`` raises ``KeyboardInterrupt`` in the main
    thread (at its next Python instruction), the same path as Ctrl-C.
    """

    def _watch() -> None:
        try:
            for line in iter(stream.readline, ""):
                if line.strip().lower() == CANCEL_LINE:
                    break
        except (OSError, ValueError):
            pass
        interrupt()

    thread = threading.Thread(target=_watch, name="rada-cancel-watch", daemon=True)
    thread.start()
    return thread
