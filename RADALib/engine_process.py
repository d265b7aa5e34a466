"""Run one engine command in its own process group and collect its JSON events.

The Slicer module and batch scripts start ``python -m RADALib.cli <command> ... --events json``
through :class:`EngineProcess` so that the GUI never waits on the engine. Two reader threads
move the engine's stdout and stderr lines into a queue; :meth:`EngineProcess.poll` turns them
into events without blocking, and :meth:`EngineProcess.cancel` ends the whole process tree
(the engine and any worker processes it started). Standard library only: no Qt, no Slicer.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cancel_channel import CANCEL_LINE, CANCEL_ON_STDIN_ENV
from .errors import RADAError

IS_WINDOWS = os.name == "nt"
EXIT_INPUT = 2
STDERR_TAIL_LINES = 200
# Once the engine has exited, how long to wait for its pipes to close before giving up on
# worker processes that still hold them (they are then killed with the group).
PIPE_CLOSE_GRACE_S = 5.0
FINAL_STATES = ("succeeded", "failed", "cancelled")
CANCEL_CHANNELS = ("signal", "stdin")
# Windows process-creation values (subprocess defines them only on Windows).
CREATE_NEW_PROCESS_GROUP = 0x00000200
STARTF_USESHOWWINDOW = 0x00000001
SW_HIDE = 0

Event = dict[str, Any]


def engine_command(command: str, *arguments: str, python: str | None = None) -> list[str]:
    """The command line that runs ``rada <command> <arguments...>`` with ``python``."""
    return [python or sys.executable, "-m", "RADALib.cli", command, *arguments]


def default_cancel_channel() -> str:
    """``stdin`` on Windows (no console signal reaches a hidden console), ``signal`` elsewhere."""
    return "stdin" if IS_WINDOWS else "signal"


def start_options(windows: bool = IS_WINDOWS) -> dict[str, Any]:
    """Keyword arguments for ``subprocess.Popen`` that start the engine in its own group.

    On Windows the process gets a new process group and a hidden console window, as
    ``slicer.util.launchConsoleProcess`` starts console programs (``STARTF_USESHOWWINDOW`` with
    ``SW_HIDE``); elsewhere it gets a new session, so its process group can be signalled.
    """
    if not windows:
        return {"start_new_session": True}
    info = subprocess.STARTUPINFO()  # type: ignore[attr-defined]  # Windows only
    info.dwFlags |= getattr(subprocess, "STARTF_USESHOWWINDOW", STARTF_USESHOWWINDOW)
    info.wShowWindow = SW_HIDE
    flags = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", CREATE_NEW_PROCESS_GROUP)
    return {"creationflags": flags, "startupinfo": info}


def engine_environment(radalib_parent: str | None = None) -> dict[str, str]:
    """Environment additions that let a child Python import RADALib and print unbuffered.

    ``radalib_parent`` is the folder that holds the ``RADALib`` package (default: the one this
    module was imported from); it is put first on PYTHONPATH.
    """
    parent = str(Path(radalib_parent) if radalib_parent else Path(__file__).resolve().parent.parent)
    existing = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != parent]
    return {
        "PYTHONPATH": os.pathsep.join([parent, *existing]),
        "PYTHONUNBUFFERED": "1",
        "PYTHONIOENCODING": "utf-8",
    }


@dataclass
class EngineProcess:
    """Runs one engine command in its own process (group) and collects its JSON events.

    ``state`` is ``"idle"`` before :meth:`start`, ``"running"`` until :meth:`poll` or
    :meth:`wait` has seen the process end and both pipes close, then ``"succeeded"``,
    ``"failed"`` or ``"cancelled"``.

    ``cancel_via`` says how :meth:`cancel` first asks the engine to stop cleanly: ``signal``
    (SIGINT to the group, or CTRL_BREAK_EVENT) or ``stdin`` (the line ``cancel`` on a pipe the
    engine watches, see :mod:`RADALib.cancel_channel`); either way a hard kill follows after the
    grace period.
    """

    args: Sequence[str]
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    cancel_via: str = field(default_factory=default_cancel_channel)
    state: str = field(default="idle", init=False)
    _proc: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _lines: queue.Queue = field(default_factory=queue.Queue, init=False, repr=False)
    _open_pipes: int = field(default=0, init=False, repr=False)
    _tail: deque = field(
        default_factory=lambda: deque(maxlen=STDERR_TAIL_LINES), init=False, repr=False
    )
    _tail_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _readers: list = field(default_factory=list, init=False, repr=False)
    _cancelled: bool = field(default=False, init=False, repr=False)
    _exited_at: float | None = field(default=None, init=False, repr=False)
    _start_error: str | None = field(default=None, init=False, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False)

    # ------------------------------------------------------------------ starting

    def start(self) -> EngineProcess:
        """Start the process with piped output in a new process group; returns ``self``.

        Raises :class:`RADAError` (one line) when the program cannot be started.
        """
        if self.state != "idle":
            raise RuntimeError(f"the engine process was already started (state {self.state})")
        if not self.args:
            raise RADAError("cannot start the engine: the command line is empty")
        if self.cancel_via not in CANCEL_CHANNELS:
            raise ValueError(
                f"cancel_via must be one of {CANCEL_CHANNELS}, not {self.cancel_via!r}"
            )
        environment = dict(os.environ)
        environment.update(self.env or {})
        by_stdin = self.cancel_via == "stdin"
        if by_stdin:
            environment[CANCEL_ON_STDIN_ENV] = "1"
        try:
            self._proc = subprocess.Popen(
                [str(a) for a in self.args],
                cwd=self.cwd,
                env=environment,
                stdin=subprocess.PIPE if by_stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                encoding="utf-8",
                errors="replace",
                bufsize=1,
                **start_options(),
            )
        except OSError as exc:
            self.state = "failed"
            self._start_error = _start_problem(str(self.args[0]), self.cwd, exc)
            raise RADAError(self._start_error) from None
        self.state = "running"
        self._open_pipes = 2
        for name, stream in (("stdout", self._proc.stdout), ("stderr", self._proc.stderr)):
            reader = threading.Thread(
                target=self._read, args=(name, stream), name=f"rada-{name}", daemon=True
            )
            reader.start()
            self._readers.append(reader)
        return self

    def _read(self, name: str, stream: Any) -> None:
        """Reader thread: one queue item per line, then ``(name, None)`` at end of file."""
        try:
            for line in iter(stream.readline, ""):
                line = line.rstrip("\r\n")
                if name == "stderr":
                    with self._tail_lock:  # kept current even when nobody polls
                        self._tail.append(line)
                self._lines.put((name, line))
        except (OSError, ValueError):
            pass
        finally:
            self._lines.put((name, None))
            try:
                stream.close()
            except OSError:
                pass

    # ------------------------------------------------------------------ status

    @property
    def running(self) -> bool:
        """True from :meth:`start` until poll/wait/cancel has seen the process finish."""
        return self.state == "running"

    @property
    def returncode(self) -> int | None:
        """The exit status (negative signal number on POSIX), or None while it runs."""
        return None if self._proc is None else self._proc.poll()

    @property
    def pid(self) -> int | None:
        """The engine's process id (also its process group id on POSIX)."""
        return None if self._proc is None else self._proc.pid

    @property
    def stderr_tail(self) -> list[str]:
        """The last stderr lines read so far (at most 200)."""
        with self._tail_lock:
            return list(self._tail)

    # ------------------------------------------------------------------ events

    def poll(self) -> list[Event]:
        """Events that arrived since the last call, without blocking."""
        return self._drain(0.0)

    def wait(
        self,
        timeout: float | None = None,
        on_event: Callable[[Event], None] | None = None,
        interval: float = 0.1,
    ) -> str:
        """Block until the process finishes, passing events to ``on_event``; returns the state.

        Raises :class:`TimeoutError` when it is still running after ``timeout`` seconds (the
        process keeps running; call :meth:`cancel` to end it).
        """
        if self.state == "idle":
            raise RuntimeError("the engine process was not started")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            block = interval
            if deadline is not None:
                block = max(0.0, min(interval, deadline - time.monotonic()))
            for event in self._drain(block):
                if on_event is not None:
                    on_event(event)
            if self.state in FINAL_STATES:
                return self.state
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"the engine did not finish within {timeout:g} s")

    def _drain(self, block_s: float) -> list[Event]:
        """Move queued lines into events (waiting up to ``block_s`` for the first one)."""
        events: list[Event] = []
        with self._lock:
            first = True
            while True:
                try:
                    if first and block_s > 0 and self._open_pipes:
                        name, line = self._lines.get(timeout=block_s)
                    else:
                        name, line = self._lines.get_nowait()
                except queue.Empty:
                    break
                first = False
                if line is None:
                    self._open_pipes -= 1
                    continue
                event = self._event(name, line)
                if event is not None:
                    events.append(event)
            if not self._open_pipes and block_s > 0 and self.running and self._proc is not None:
                # Pipes closed: the process is exiting; give it the rest of the interval.
                try:
                    self._proc.wait(timeout=block_s)
                except subprocess.TimeoutExpired:
                    pass
            self._update_state()
        return events

    def _event(self, name: str, line: str) -> Event | None:
        if name == "stderr":
            return {"stage": "log", "message": line, "level": "stderr"} if line.strip() else None
        if not line.strip():
            return None
        try:
            value = json.loads(line)
        except ValueError:
            value = None
        if isinstance(value, dict):
            return value
        return {"stage": "log", "message": line, "level": "info"}

    def _update_state(self) -> None:
        """Settle the final state once the process ended and both pipes are drained."""
        if self.state != "running" or self._proc is None or self._proc.poll() is None:
            return
        now = time.monotonic()
        if self._exited_at is None:
            self._exited_at = now
        if self._open_pipes:
            if now - self._exited_at < PIPE_CLOSE_GRACE_S:
                return
            # The engine is gone but a worker of its group still holds the pipes: end it.
            self._kill_group(hard=True)
        self.state = self._final_state()
        self._close_stdin()

    def _close_stdin(self) -> None:
        stream = self._proc.stdin if self._proc is not None else None
        if stream is not None and not stream.closed:
            try:
                stream.close()
            except (OSError, ValueError):
                pass

    def _final_state(self) -> str:
        if self._cancelled:
            return "cancelled"
        return "succeeded" if self._proc is not None and self._proc.returncode == 0 else "failed"

    # ------------------------------------------------------------------ cancelling

    def cancel(self, grace_s: float = 5.0) -> None:
        """End the whole process tree: interrupt it, then kill it after ``grace_s`` seconds.

        The engine is first asked to stop cleanly, keeping its last checkpoint: through its stdin
        (``cancel_via="stdin"``, the default on Windows) or by SIGINT to its group on POSIX
        (CTRL_BREAK_EVENT on Windows). Then whatever is left is killed: SIGKILL to the group, or
        ``taskkill /F /T`` on Windows. Does nothing once the state is final; safe to call twice.
        """
        with self._lock:
            if self.state in FINAL_STATES:
                return
            if self.state == "idle" or self._proc is None:
                self.state = "cancelled"
                return
            self._cancelled = True
            if self._proc.poll() is None:
                self._ask_to_stop()
                try:
                    self._proc.wait(timeout=max(0.0, grace_s))
                except subprocess.TimeoutExpired:
                    pass
            # Kill whatever is left of the group (also workers that outlived the engine).
            self._kill_group(hard=True)
            try:
                self._proc.wait(timeout=10.0)
            except subprocess.TimeoutExpired:
                pass
            for reader in self._readers:
                reader.join(timeout=2.0)
            if self._proc.poll() is not None:
                self.state = "cancelled"

    def _ask_to_stop(self) -> None:
        """The clean stop: ``cancel`` on the engine's stdin, or an interrupt signal."""
        if self.cancel_via != "stdin":
            self._kill_group(hard=False)
            return
        stream = self._proc.stdin if self._proc is not None else None
        if stream is None:
            return
        try:
            stream.write(CANCEL_LINE + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass  # the engine already closed its end: it is exiting
        try:
            stream.close()
        except (OSError, ValueError):
            pass

    def _kill_group(self, hard: bool) -> None:
        """Signal the engine's process group (``hard``: kill it outright)."""
        proc = self._proc
        if proc is None:
            return
        if IS_WINDOWS:
            if not hard:
                try:
                    proc.send_signal(signal.CTRL_BREAK_EVENT)
                except OSError:
                    pass
                return
            subprocess.run(
                ["taskkill", "/F", "/T", "/PID", str(proc.pid)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL if hard else signal.SIGINT)
        except (ProcessLookupError, PermissionError):
            pass

    # ------------------------------------------------------------------ reporting

    def failure_message(self) -> str | None:
        """One line saying why the run failed or was cancelled; None otherwise."""
        if self.state == "cancelled":
            return "cancelled by the user"
        if self.state != "failed":
            return None
        if self._start_error is not None:
            return self._start_error
        code = self.returncode
        tail = self.stderr_tail
        lines = [line.strip() for line in tail if line.strip()]
        if code == EXIT_INPUT:
            own = [line for line in lines if line.startswith("rada: ")]
            if own:
                return _one_line(own[-1])
        if code is not None and code < 0:
            return _one_line(_signal_message(-code))
        detail = _traceback_error(tail) or (lines[-1] if lines else "")
        text = f"the engine exited with status {code}"
        return _one_line(f"{text}: {detail}" if detail else text)


def _start_problem(program: str, cwd: str | None, exc: OSError) -> str:
    """One line for an OSError raised while starting ``program``."""
    if isinstance(exc, FileNotFoundError):
        if cwd is not None and exc.filename is not None and str(exc.filename) == str(cwd):
            return f"cannot start the engine: working folder {cwd} does not exist"
        return f"cannot start the engine: {program} was not found"
    if isinstance(exc, PermissionError):
        return f"cannot start the engine: {program} cannot be run (permission denied)"
    return _one_line(f"cannot start the engine: {program}: {exc.strerror or exc}")


def _signal_message(number: int) -> str:
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = "unknown signal"
    text = f"the engine process was killed by signal {number} ({name})"
    if number == getattr(signal, "SIGKILL", -1):
        text += ": out of memory?"
    elif number == getattr(signal, "SIGSEGV", -1):
        text += ": it crashed"
    return text


def _traceback_error(lines: list[str]) -> str | None:
    """The exception line of the last Python traceback in ``lines``, if any."""
    starts = [
        i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")
    ]
    if not starts:
        return None
    candidates = [
        line.strip()
        for line in lines[starts[-1] + 1 :]
        if line.strip() and not line.startswith((" ", "\t"))
    ]
    return candidates[-1] if candidates else None


def _one_line(text: str) -> str:
    return " ".join(text.split())
