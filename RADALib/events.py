"""Progress events: one JSON object per line for the Slicer module, a bar on a terminal.

Every long command reports through a :class:`Progress`. An event carries ``stage``, ``step``,
``total``, ``message`` and ``eta_s`` (seconds left in the stage, from the mean time per step so
far), plus any metrics (``loss``, ``dice``...). With ``--events json`` each event is printed as
one line of JSON on standard output, which the module parses as it comes; on a terminal the
same events drive a progress bar on standard error.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

Sink = Callable[[dict[str, Any]], None]


def json_sink(stream: TextIO | None = None) -> Sink:
    """Writes each event as one JSON line (flushed at once)."""

    def emit(event: dict[str, Any]) -> None:
        out = stream or sys.stdout
        out.write(json.dumps(event, default=_plain, allow_nan=False) + "\n")
        out.flush()

    return emit


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def terminal_sink(
    stream: TextIO | None = None,
    width: int = 30,
    every_s: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
) -> Sink:
    """Draws a one-line bar per stage when ``stream`` is a terminal, else prints a line per event.

    Off a terminal (a log file), a counted step without a message (an inference window) is
    printed only when ``every_s`` seconds have passed since the stage's last line; a stage's
    first and last steps, and every step with a message, are always printed.
    """
    last_line: dict[str, float] = {}  # stage -> time of its last printed line

    def emit(event: dict[str, Any]) -> None:
        out = stream or sys.stderr
        total, step = event.get("total") or 0, event.get("step") or 0
        message = event.get("message", "")
        if event.get("level") in ("warning", "error") or not total:
            prefix = (
                f"{event['level'].upper()}: " if event.get("level") in ("warning", "error") else ""
            )
            out.write(f"{prefix}[{event['stage']}] {message}\n")
            out.flush()
            return
        eta = event.get("eta_s")
        eta_text = f" eta {_duration(eta)}" if eta is not None else ""
        extras = " ".join(
            f"{k} {v:.4g}"
            for k, v in event.items()
            if k in ("loss", "dice") and isinstance(v, float)
        )
        if out.isatty():
            filled = int(width * step / total)
            bar = "#" * filled + "." * (width - filled)
            out.write(
                f"\r[{event['stage']}] |{bar}| {step}/{total}{eta_text} {extras} {message[:60]}\033[K"
            )
            if step >= total:
                out.write("\n")
        else:
            now = clock()
            quiet = not message and not extras and 0 < step < total
            if quiet and now - last_line.get(event["stage"], -math.inf) < every_s:
                return
            last_line[event["stage"]] = now
            out.write(
                f"[{event['stage']}] {step}/{total}{eta_text} {extras} {message}".rstrip() + "\n"
            )
        out.flush()

    return emit


def null_sink(event: dict[str, Any]) -> None:
    """Drops every event."""


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


@dataclass
class Progress:
    """Turns ``start``/``update`` calls into events with an ETA and hands them to ``sink``."""

    sink: Sink = null_sink
    clock: Callable[[], float] = time.monotonic
    _stage: str = field(default="", init=False)
    _total: int = field(default=0, init=False)
    _started: float = field(default=0.0, init=False)
    _first_step: int = field(default=0, init=False)

    def start(self, stage: str, total: int, message: str = "", first_step: int = 0) -> None:
        """Begin a stage of ``total`` steps (``first_step`` > 0 when resuming)."""
        self._stage, self._total, self._started, self._first_step = (
            stage,
            int(total),
            self.clock(),
            first_step,
        )
        self.sink(
            {
                "stage": stage,
                "step": first_step,
                "total": int(total),
                "message": message,
                "eta_s": None,
            }
        )

    def enter(self, stage: str) -> None:
        """Label the messages that follow with ``stage`` (a stage without counted steps)."""
        self._stage, self._total, self._started, self._first_step = stage, 0, self.clock(), 0

    def update(self, step: int, message: str = "", **metrics: Any) -> None:
        """Report that ``step`` of the current stage's steps are done."""
        elapsed = self.clock() - self._started
        done = step - self._first_step
        eta = elapsed / done * (self._total - step) if done > 0 else None
        event = {"stage": self._stage, "step": int(step), "total": self._total, "message": message}
        event["eta_s"] = None if eta is None else round(eta, 1)
        for key, value in metrics.items():
            value = value.item() if hasattr(value, "item") else value
            event[key] = None if isinstance(value, float) and not math.isfinite(value) else value
        self.sink(event)

    def message(self, text: str, level: str = "info", **fields: Any) -> None:
        """A free-form event (``level`` info, warning or error)."""
        self.sink(
            {
                "stage": self._stage or "rada",
                "step": None,
                "total": None,
                "message": text,
                "level": level,
                **fields,
            }
        )
