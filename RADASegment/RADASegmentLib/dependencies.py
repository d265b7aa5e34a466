"""The engine's Python packages inside Slicer: find what is missing, ask once, install it.

Slicer already ships numpy, SimpleITK, vtk (and scipy); torch and torchvision come through the
PyTorch extension (SlicerPyTorch), which picks a build that suits the computer's GPU driver, or
a CPU build; the rest come from pip. Nothing here runs at import time and nothing imports ``qt``
or ``slicer`` at module level: the Slicer-facing defaults are imported inside the functions that
use them, and every one of them can be replaced by a fake in tests.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import io
import logging
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "DependencyError",
    "ENGINE_PACKAGES",
    "Package",
    "TORCH_PACKAGES",
    "ensure_dependencies",
    "missing_packages",
    "outdated_packages",
]

LOG = logging.getLogger(__name__)

REQUESTER = "RADA"
TORCH_REQUIREMENT = ">=2.1"
TORCHVISION_REQUIREMENT = ">=0.16"
RETRY_HINT = "check the network connection or proxy settings, restart Slicer and try again"


@dataclass(frozen=True)
class Package:
    """One package the engine imports: its pip requirement and the name it is imported by."""

    requirement: str
    module: str


# Installed by SlicerPyTorch (PyTorchUtils), never by plain pip: a plain `pip install torch`
# picks PyPI's default build, which on Linux is a large CUDA build whatever the machine has.
# SlicerPyTorch installs torch and torchvision together, as a matching pair.
TORCH_PACKAGES: tuple[Package, ...] = (
    Package(f"torch{TORCH_REQUIREMENT}", "torch"),
    Package(f"torchvision{TORCHVISION_REQUIREMENT}", "torchvision"),
)

# Installed with pip after torch, so that none of them pulls its own torch. Lower bounds as in
# pyproject.toml; scipy is normally shipped with Slicer and is then found, not installed.
ENGINE_PACKAGES: tuple[Package, ...] = (
    Package("scipy>=1.10", "scipy"),
    Package("h5py>=3.8", "h5py"),
    Package("safetensors>=0.4", "safetensors"),
    Package("pillow>=9", "PIL"),
    Package("antspyx>=0.4.2", "ants"),
    Package("open_clip_torch>=2.24", "open_clip"),
)


class DependencyError(RuntimeError):
    """A one-line, user-facing reason why the engine's packages are not available."""


Importer = Callable[[str], object]
VersionOf = Callable[[str], "str | None"]


def _installed_version(distribution: str) -> str | None:
    """The installed version of a distribution (``importlib.metadata``), None when unknown."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _release(version: str) -> tuple[int, ...]:
    """The leading release numbers of a version string: ``"2.1.0+cu121"`` -> ``(2, 1, 0)``."""
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", version)
    return tuple(int(part) for part in match.group(1).split(".")) if match else ()


def _split(requirement: str) -> tuple[str, str]:
    """``"torch>=2.1"`` -> ``("torch", "2.1")`` (every requirement here is a lower bound)."""
    name, _, minimum = requirement.partition(">=")
    return name.strip(), minimum.strip()


def _older(installed: str, minimum: str) -> bool:
    have, need = _release(installed), _release(minimum)
    width = max(len(have), len(need))
    return have + (0,) * (width - len(have)) < need + (0,) * (width - len(need))


def outdated_packages(
    importer: Importer = importlib.util.find_spec, version_of: VersionOf = _installed_version
) -> dict[str, str]:
    """``{requirement: installed version}`` of every importable engine package that is too old.

    Versions come from the installed distributions' metadata; a package whose version is not
    known is taken as new enough.
    """
    outdated = {}
    for package in TORCH_PACKAGES + ENGINE_PACKAGES:
        try:
            found = importer(package.module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            continue
        name, minimum = _split(package.requirement)
        installed = version_of(name)
        if installed and minimum and _older(installed, minimum):
            outdated[package.requirement] = installed
    return outdated


def missing_packages(
    importer: Importer = importlib.util.find_spec, version_of: VersionOf = _installed_version
) -> list[str]:
    """The pip requirements of every engine package that cannot be imported or is too old, torch first."""
    outdated = outdated_packages(importer, version_of)
    missing = []
    for package in TORCH_PACKAGES + ENGINE_PACKAGES:
        try:
            found = importer(package.module) is not None
        except (ImportError, ValueError):
            found = False
        if not found or package.requirement in outdated:
            missing.append(package.requirement)
    return missing


def ensure_dependencies(
    confirm: Callable[[str], bool] | None = None,
    install_torch: Callable[[], bool] | None = None,
    pip_install: Callable[[list[str]], None] | None = None,
    importer: Importer | None = None,
    version_of: VersionOf | None = None,
) -> None:
    """Make every engine package importable, asking the user once before installing anything.

    ``confirm(message) -> bool`` asks the question; ``install_torch() -> bool`` installs torch
    and torchvision through the PyTorch extension; ``pip_install(requirements)`` installs with
    pip and raises on failure. Defaults use Slicer's dialogs, PyTorchUtils and
    ``slicer.packaging.pip_ensure`` (Slicer >= 5.12) or ``slicer.util.pip_install``.
    Raises :class:`DependencyError` (one line) when the user says no or an install fails.
    """
    importer = importer or importlib.util.find_spec
    version_of = version_of or _installed_version
    outdated = outdated_packages(importer, version_of)
    missing = missing_packages(importer, version_of)
    if not missing:
        return
    old_torch = [req for req in outdated if _is_torch(req)]
    if old_torch:
        # SlicerPyTorch keeps an installed torch; replacing it is the user's choice.
        raise DependencyError(
            f"{_too_old(old_torch, outdated)}: update torch with the PyTorch Utils module "
            "(uninstall, restart Slicer, install), then try again"
        )
    confirm = confirm or _confirm_with_dialog
    if not confirm(_question(missing, outdated)):
        raise DependencyError(_refusal(missing, outdated))

    if any(_is_torch(req) for req in missing):
        install_torch = install_torch or _install_torch_with_pytorch_utils
        try:
            installed = install_torch()
        except DependencyError:
            raise
        except Exception as error:  # noqa: BLE001 - any installer failure becomes one line
            raise DependencyError(_failure("torch", error)) from error
        if not installed:
            raise DependencyError(
                "PyTorch was not installed: install it from the PyTorch Utils module "
                "(PyTorch extension), restart Slicer and try again"
            )
    pip_install = pip_install or _pip_install_with_slicer
    for requirement in (req for req in missing if not _is_torch(req)):
        try:
            pip_install([requirement])
        except Exception as error:  # noqa: BLE001 - any installer failure becomes one line
            raise DependencyError(_failure(requirement, error)) from error

    importlib.invalidate_caches()
    _check_installed(importer, version_of)


def _check_installed(importer: Importer, version_of: VersionOf) -> None:
    """Raise (one line) when a package is still missing or too old after installing."""
    still_outdated = outdated_packages(importer, version_of)
    still_missing = [r for r in missing_packages(importer, version_of) if r not in still_outdated]
    if still_missing:
        raise DependencyError(
            f"Still cannot import {', '.join(still_missing)} after installing: restart Slicer and try again"
        )
    if still_outdated:
        raise DependencyError(
            f"{_too_old(list(still_outdated), still_outdated)} after installing: "
            "restart Slicer and try again"
        )


def _too_old(requirements: list[str], outdated: dict[str, str]) -> str:
    """``"torch 1.13.1 is too old (RADA needs torch>=2.1)"``, for each requirement."""
    return "; ".join(
        f"{_split(req)[0]} {outdated[req]} is too old (RADA needs {req})" for req in requirements
    )


def _question(missing: list[str], outdated: dict[str, str] | None = None) -> str:
    """The one confirmation message: every missing or too old package, and where torch comes from."""
    outdated = outdated or {}
    lines = [
        f"RADA needs {len(missing)} Python package(s) that are not installed yet or too old:",
        "",
    ]
    lines += [
        f"  - {requirement}"
        + (f" (installed: {outdated[requirement]}, too old)" if requirement in outdated else "")
        for requirement in missing
    ]
    lines.append("")
    if any(_is_torch(req) for req in missing):
        lines.append(
            "torch and torchvision are installed by the PyTorch extension, which picks the "
            "build that suits this computer (GPU or CPU)."
        )
    lines.append(
        "The download can take several minutes and changes Slicer's Python environment. Install now?"
    )
    return "\n".join(lines)


def _refusal(missing: list[str], outdated: dict[str, str] | None = None) -> str:
    """One line: what is needed (and what is too old), and how to install it by hand."""
    outdated = outdated or {}
    torch = [req for req in missing if _is_torch(req)]
    others = [req for req in missing if not _is_torch(req)]
    parts = [f"RADA needs {', '.join(missing)}"]
    if outdated:
        parts[0] += f" ({_too_old([r for r in missing if r in outdated], outdated)})"
    parts[0] += ":"
    if torch:
        parts.append("install torch with the PyTorch Utils module (PyTorch extension)")
    if others:
        joined = " ".join(others)
        parts.append(
            f"{'then ' if torch else ''}run slicer.util.pip_install('{joined}') in the Python console"
        )
    return " ".join(parts)


def _failure(package: str, error: BaseException) -> str:
    """One line naming the package, the installer's last message line, and what to try."""
    return f"Could not install {package}: {_last_line(error)} ({RETRY_HINT})"


def _last_line(error: BaseException) -> str:
    """pip's last ``ERROR:`` line (else its last line) when the error carries text, else the error's.

    Only text counts: ``slicer.util.logProcessOutput`` raises ``CalledProcessError`` with
    ``output=proc.stdout``, a pipe it has already read to the end, and ``stderr=None``.
    """
    for attribute in ("stderr", "output"):
        text = getattr(error, attribute, None)
        if isinstance(text, bytes):
            text = text.decode(errors="replace")
        if isinstance(text, str) and text.strip():
            lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
            errors = [line for line in lines if line.startswith("ERROR:")]
            return (errors or lines)[-1]
    text = str(error).strip()
    return text.splitlines()[-1].strip() if text else type(error).__name__


class _Tee(io.TextIOBase):
    """Writes through to a stream and keeps what was written (pip's lines, printed by Slicer)."""

    def __init__(self, stream: object) -> None:
        self.stream = stream
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.parts.append(text)
        write = getattr(self.stream, "write", None)
        if write is not None:
            write(text)
        return len(text)

    def flush(self) -> None:
        flush = getattr(self.stream, "flush", None)
        if flush is not None:
            flush()

    def text(self) -> str:
        return "".join(self.parts)


def _is_torch(requirement: str) -> bool:
    return requirement in {package.requirement for package in TORCH_PACKAGES}


# --- Slicer defaults (imported lazily: only inside the running application) -----------------


def _confirm_with_dialog(message: str) -> bool:
    """Ask with Slicer's OK/Cancel dialog."""
    import slicer

    return bool(
        slicer.util.confirmOkCancelDisplay(
            message, windowTitle=f"{REQUESTER} - Install Python packages"
        )
    )


def _install_torch_with_pytorch_utils() -> bool:
    """Install torch + torchvision through SlicerPyTorch; True when torch can then be imported."""
    try:
        import PyTorchUtils
    except ImportError as error:
        raise DependencyError(
            "PyTorch is needed: install the PyTorch extension from the Extensions Manager, "
            "restart Slicer and try again"
        ) from error
    logic = PyTorchUtils.PyTorchUtilsLogic()
    kwargs = {"askConfirmation": False, "torchVersionRequirement": TORCH_REQUIREMENT}
    # torchvisionVersionRequirement exists only in newer SlicerPyTorch versions; older ones
    # install a torchvision that matches torch without a pin.
    if "torchvisionVersionRequirement" in inspect.signature(logic.installTorch).parameters:
        kwargs["torchvisionVersionRequirement"] = TORCHVISION_REQUIREMENT
    # No forceComputationBackend: light-the-torch chooses CUDA only where the driver supports it.
    return logic.installTorch(**kwargs) is not None


def _pip_install_with_slicer(requirements: list[str]) -> None:
    """pip-install with ``slicer.packaging.pip_ensure`` (Slicer >= 5.12) or ``slicer.util.pip_install``."""
    import slicer

    try:
        import slicer.packaging as packaging
    except ImportError:
        packaging = None
    pip_ensure = getattr(packaging, "pip_ensure", None) if packaging is not None else None
    # Slicer prints pip's output line by line (slicer.util.logProcessOutput) and raises with
    # output=<the exhausted pipe>: keep the printed lines so that the error can quote pip.
    tee = _Tee(sys.stdout)
    try:
        with contextlib.redirect_stdout(tee):
            if pip_ensure is not None:
                # The user has already agreed to the whole list: no second question.
                pip_ensure(requirements, prompt_install=False, requester=REQUESTER)
            else:
                # A space-separated string is the form every Slicer 5.x slicer.util.pip_install accepts.
                slicer.util.pip_install(" ".join(requirements))
    except subprocess.CalledProcessError as error:
        if isinstance(error.output, (str, bytes)) and error.output:
            raise
        raise subprocess.CalledProcessError(
            error.returncode, error.cmd, output=tee.text(), stderr=None
        ) from error
