"""Errors the engine raises for problems a user can fix.

Every message is one line that names the file (or setting) and the problem, so the command line
and the Slicer module can show it as it is.
"""

from __future__ import annotations

from os import PathLike


class RADAError(Exception):
    """A problem with the user's input or settings; the message is meant for the user."""


class InputError(RADAError):
    """A file or value the user gave cannot be used.

    ``InputError(path, problem)`` reads ``"<path>: <problem>"``.
    """

    def __init__(self, source: str | PathLike[str], problem: str) -> None:
        self.source = str(source)
        self.problem = " ".join(str(problem).split())
        super().__init__(f"{self.source}: {self.problem}")
