"""Run a Python script as the GPU machine would: with SimpleITK, ants and open_clip unimportable.

The GPU machine has none of those three packages. This harness installs a ``sys.meta_path``
finder that refuses them (``ModuleNotFoundError``, as a missing package gives), runs the script
with its arguments as ``__main__``, and afterwards checks that none of them got into
``sys.modules``. Its exit status is the script's.

    python Testing/Benchmarks/la_gpu/run_blocked.py Testing/Benchmarks/la_gpu/run_la_gpu.py --imports-only
    python Testing/Benchmarks/la_gpu/run_blocked.py Testing/Benchmarks/la_gpu/run_la_gpu.py --device cpu ...
"""

from __future__ import annotations

import argparse
import importlib.abc
import runpy
import sys
from collections.abc import Sequence

BLOCKED = ("SimpleITK", "ants", "antspyx", "open_clip")


class Blocker(importlib.abc.MetaPathFinder):
    """Refuses the top-level packages in ``names`` and everything under them; counts attempts."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self.attempts: list[str] = []

    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001 - importlib's signature
        if fullname.split(".")[0] in self.names:
            self.attempts.append(fullname)
            raise ModuleNotFoundError(
                f"No module named {fullname!r} (blocked: absent on the GPU machine)", name=fullname
            )
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("script")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    options = parser.parse_args()
    already = [n for n in sys.modules if n.split(".")[0] in BLOCKED]
    if already:
        raise SystemExit(f"already imported before the blocker: {already}")
    blocker = Blocker(BLOCKED)
    sys.meta_path.insert(0, blocker)
    sys.argv = [options.script, *options.args]
    status = 0
    try:
        runpy.run_path(options.script, run_name="__main__")
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int) and exc.code is not None:
            print(exc.code, file=sys.stderr)
    loaded = [n for n in sys.modules if n.split(".")[0] in BLOCKED]
    print(
        f"run_blocked: import attempts of blocked packages: {blocker.attempts or 'none'}; "
        f"loaded: {loaded or 'none'}",
        file=sys.__stderr__,
    )
    if loaded:
        status = status or 3
    sys.exit(status)


if __name__ == "__main__":
    main()
