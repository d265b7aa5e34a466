"""Write-then-rename, so a crash or Ctrl-C never leaves a half-written file under the real name."""

from __future__ import annotations

import os
from pathlib import Path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to a hidden temporary sibling of ``path``, then rename it into place."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.part")
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path
