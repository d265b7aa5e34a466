"""The engine's Python packages inside Slicer: find what is missing, ask once, install it.

Slicer already ships numpy, SimpleITK, vtk (and scipy); torch and torchvision come through the
PyTorch extension (SlicerPyTorch), which picks a build that suits the computer's GPU driver, or
a CPU build; the rest come from pip. Nothing here runs at import time and nothing imports ``qt``
or ``slicer`` at module level: the Slicer-facing defaults are imported inside the functions that
use them, and every one of them can be replaced by a fake in tests.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "DependencyError",
    "ENGINE_PACKAGES",
    "Package",
    "TORCH_PACKAGES",
    "ensure_dependencies",
    "missing_packages",
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


def missing_packages(importer: Importer = importlib.util.find_spec) -> list[str]:
    """The pip requirements of every engine package that cannot be imported, torch first."""
    missing = []
    for package in TORCH_PACKAGES + ENGINE_PACKAGES:
        try:
            found = importer(package.module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(package.requirement)
    return missing


def ensure_dependencies(
    confirm: Callable[[str], bool] | None = None,
    install_torch: Callable[[], bool] | None = None,
    pip_install: Callable[[list[str]], None] | None = None,
    importer: Importer | None = None,
) -> None:
    """Make every engine package importable, asking the user once before installing anything.

    ``confirm(message) -> bool`` asks the question; ``install_torch() -> bool`` installs torch
    and torchvision through the PyTorch extension; ``pip_install(requirements)`` installs with
    pip and raises on failure. Defaults use Slicer's dialogs, PyTorchUtils and
    ``slicer.packaging.pip_ensure`` (Slicer >= 5.12) or ``slicer.util.pip_install``.
    Raises :class:`DependencyError` (one line) when the user says no or an install fails.
    """
    importer = importer or importlib.util.find_spec
    missing = missing_packages(importer)
    if not missing:
        return
    confirm = confirm or _confirm_with_dialog
    if not confirm(_question(missing)):
        raise DependencyError(_refusal(missing))

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
    still_missing = missing_packages(importer)
    if still_missing:
        raise DependencyError(
            f"Still cannot import {', '.join(still_missing)} after installing: restart Slicer and try again"
        )


def _question(missing: list[str]) -> str:
    """The one confirmation message: every missing package, and where torch comes from."""
    lines = [f"RADA needs {len(missing)} Python package(s) that are not installed yet:", ""]
    lines += [f"  - {requirement}" for requirement in missing]
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


def _refusal(missing: list[str]) -> str:
    """One line: what is needed, and how to install it by hand."""
    torch = [req for req in missing if _is_torch(req)]
    others = [req for req in missing if not _is_torch(req)]
    parts = [f"RADA needs {', '.join(missing)}:"]
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
    """The last non-empty line of pip's output when the error carries it, else of the error text."""
    for attribute in ("stderr", "output"):
        text = getattr(error, attribute, None)
        if isinstance(text, bytes):
            text = text.decode(errors="replace")
        if isinstance(text, str) and text.strip():
            return text.strip().splitlines()[-1].strip()
    text = str(error).strip()
    return text.splitlines()[-1].strip() if text else type(error).__name__


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
    if pip_ensure is not None:
        # The user has already agreed to the whole list: no second question.
        pip_ensure(requirements, prompt_install=False, requester=REQUESTER)
    else:
        # A space-separated string is the form every Slicer 5.x slicer.util.pip_install accepts.
        slicer.util.pip_install(" ".join(requirements))
