"""RADASegmentLib.dependencies: ask once, install torch through SlicerPyTorch, the rest with pip.

Everything Slicer-facing is replaced by fakes: nothing is installed and no dialog is shown.
"""

from __future__ import annotations

import re
import subprocess
import sys
import types

import pytest

from RADASegmentLib import dependencies as deps
from RADASegmentLib.dependencies import DependencyError, ensure_dependencies, missing_packages

ALL_MODULES = [p.module for p in deps.TORCH_PACKAGES + deps.ENGINE_PACKAGES]


class FakeEnvironment:
    """Which modules import, plus fakes of the question, the torch installer and pip."""

    def __init__(self, absent: list[str], answer: bool = True) -> None:
        self.absent = set(absent)
        self.answer = answer
        self.questions: list[str] = []
        self.torch_installs = 0
        self.pip_calls: list[list[str]] = []
        self.pip_error: BaseException | None = None
        self.torch_result = True

    def importer(self, module: str) -> object | None:
        return None if module in self.absent else types.SimpleNamespace(name=module)

    def confirm(self, message: str) -> bool:
        self.questions.append(message)
        return self.answer

    def install_torch(self) -> bool:
        self.torch_installs += 1
        if self.torch_result:
            self.absent -= {"torch", "torchvision"}
        return self.torch_result

    def pip_install(self, requirements: list[str]) -> None:
        self.pip_calls.append(list(requirements))
        if self.pip_error is not None:
            raise self.pip_error
        modules = {p.requirement: p.module for p in deps.ENGINE_PACKAGES}
        self.absent -= {modules[req] for req in requirements}

    def ensure(self, version_of=None) -> None:
        ensure_dependencies(
            self.confirm,
            install_torch=self.install_torch,
            pip_install=self.pip_install,
            importer=self.importer,
            version_of=version_of,
        )


def test_importing_the_module_pulls_in_neither_qt_nor_slicer_application_modules():
    assert "qt" not in vars(deps)
    source = open(deps.__file__, encoding="utf-8").read()
    top_level = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert not any(
        "qt" in line.split() or "slicer" in line or "PyTorchUtils" in line for line in top_level
    )


def test_engine_packages_leave_out_what_slicer_ships_and_torch_goes_through_slicer_pytorch():
    pip_names = {p.requirement.split(">")[0].split("=")[0].lower() for p in deps.ENGINE_PACKAGES}
    assert not pip_names & {"numpy", "simpleitk", "vtk", "torch", "torchvision"}
    assert {"antspyx", "open_clip_torch", "h5py", "safetensors"} <= pip_names
    assert [p.module for p in deps.TORCH_PACKAGES] == ["torch", "torchvision"]


def test_missing_packages_lists_requirements_of_modules_that_cannot_be_imported_torch_first():
    env = FakeEnvironment(absent=["open_clip", "torch", "ants"])
    assert missing_packages(env.importer) == [
        "torch>=2.1",
        "antspyx>=0.4.2",
        "open_clip_torch>=2.24",
    ]


def test_missing_packages_counts_a_module_whose_lookup_fails_as_missing():
    def importer(module: str):
        if module == "h5py":
            raise ValueError("h5py.__spec__ is None")
        return object()

    assert missing_packages(importer) == ["h5py>=3.8"]


def test_missing_packages_finds_nothing_missing_in_this_test_environment_for_torch():
    # The engine's own test environment has torch: the real importer must find it.
    assert not any(req.startswith("torch>") for req in missing_packages())


def test_nothing_missing_asks_nothing_and_installs_nothing():
    env = FakeEnvironment(absent=[])
    env.ensure()
    assert env.questions == [] and env.torch_installs == 0 and env.pip_calls == []


def test_missing_packages_are_all_listed_in_one_single_question():
    env = FakeEnvironment(absent=ALL_MODULES)
    env.ensure()
    assert len(env.questions) == 1
    question = env.questions[0]
    for package in deps.TORCH_PACKAGES + deps.ENGINE_PACKAGES:
        assert package.requirement in question
    assert "PyTorch extension" in question


def test_refusal_raises_a_one_line_error_naming_the_packages_and_how_to_install_them():
    env = FakeEnvironment(absent=["torch", "torchvision", "ants"], answer=False)
    with pytest.raises(DependencyError) as caught:
        env.ensure()
    message = str(caught.value)
    assert "\n" not in message
    assert "torch>=2.1" in message and "antspyx>=0.4.2" in message
    assert "PyTorch" in message and "slicer.util.pip_install('antspyx>=0.4.2')" in message
    assert env.torch_installs == 0 and env.pip_calls == []


def test_torch_is_installed_by_the_injected_torch_installer_before_pip_and_never_by_pip():
    order: list[str] = []
    env = FakeEnvironment(absent=["torch", "torchvision", "open_clip"])
    install_torch, pip_install = env.install_torch, env.pip_install
    env.install_torch = lambda: order.append("torch") or install_torch()
    env.pip_install = lambda reqs: order.append("pip") or pip_install(reqs)
    env.ensure()
    assert order == ["torch", "pip"]
    assert env.torch_installs == 1
    assert env.pip_calls == [["open_clip_torch>=2.24"]]
    assert not any(
        req.startswith(("torch", "torchvision")) for call in env.pip_calls for req in call
    )


def test_torch_installer_is_not_called_when_only_pip_packages_are_missing():
    env = FakeEnvironment(absent=["h5py", "ants"])
    env.ensure()
    assert env.torch_installs == 0
    assert env.pip_calls == [["h5py>=3.8"], ["antspyx>=0.4.2"]]


def test_torch_installer_that_installs_nothing_is_a_clear_error():
    env = FakeEnvironment(absent=["torch"])
    env.torch_result = False
    with pytest.raises(DependencyError, match="PyTorch was not installed") as caught:
        env.ensure()
    assert "\n" not in str(caught.value)
    assert env.pip_calls == []


def test_torch_installer_failure_is_a_one_line_error_naming_torch():
    env = FakeEnvironment(absent=["torch", "torchvision"])

    def failing() -> bool:
        raise subprocess.CalledProcessError(
            1,
            ["ltt", "install"],
            output="...\nERROR: Could not find a version that satisfies torch>=2.1\n",
        )

    env.install_torch = failing
    with pytest.raises(DependencyError) as caught:
        env.ensure()
    message = str(caught.value)
    assert message.startswith("Could not install torch: ERROR: Could not find a version")
    assert "\n" not in message and "restart Slicer" in message


def test_pip_failure_names_the_package_and_the_last_line_of_pip_output():
    env = FakeEnvironment(absent=["ants"])
    env.pip_error = subprocess.CalledProcessError(
        1,
        ["pip", "install"],
        output="Collecting antspyx\nERROR: No matching distribution found for antspyx>=0.4.2\n"
        "[notice] A new release of pip is available\n",
    )
    with pytest.raises(DependencyError) as caught:
        env.ensure()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(
        "Could not install antspyx>=0.4.2: ERROR: No matching distribution found"
    )
    assert "network" in message and "restart Slicer" in message


def test_pip_failure_without_output_still_gives_a_one_line_error():
    env = FakeEnvironment(absent=["h5py"])
    env.pip_error = RuntimeError("pip exited with code 2\nsee the log")
    with pytest.raises(DependencyError) as caught:
        env.ensure()
    assert str(caught.value).startswith("Could not install h5py>=3.8: see the log (")
    assert "\n" not in str(caught.value)


def test_packages_still_missing_after_installing_give_a_restart_hint():
    env = FakeEnvironment(absent=["h5py"])
    env.pip_install = lambda reqs: (
        None
    )  # "succeeds" but nothing appears (e.g. skipped in testing mode)
    with pytest.raises(DependencyError, match="restart Slicer"):
        env.ensure()


def test_default_torch_installer_explains_how_to_get_the_pytorch_extension(monkeypatch):
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # makes `import PyTorchUtils` fail
    env = FakeEnvironment(absent=["torch"])
    with pytest.raises(
        DependencyError, match="install the PyTorch extension from the Extensions Manager"
    ):
        ensure_dependencies(env.confirm, pip_install=env.pip_install, importer=env.importer)


def test_default_torch_installer_asks_slicer_pytorch_for_a_torch_build_without_forcing_cuda(
    monkeypatch,
):
    calls: list[dict] = []

    class FakeLogic:
        def installTorch(  # noqa: N802 - SlicerPyTorch's name
            self,
            askConfirmation=False,  # noqa: N803
            forceComputationBackend=None,  # noqa: N803
            torchVersionRequirement=None,  # noqa: N803
            torchvisionVersionRequirement=None,  # noqa: N803
        ):
            calls.append(
                dict(
                    askConfirmation=askConfirmation,
                    forceComputationBackend=forceComputationBackend,
                    torchVersionRequirement=torchVersionRequirement,
                    torchvisionVersionRequirement=torchvisionVersionRequirement,
                )
            )
            return types.SimpleNamespace(__version__="2.14.1")

    monkeypatch.setitem(
        sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=FakeLogic)
    )
    assert deps._install_torch_with_pytorch_utils() is True
    assert calls == [
        dict(
            askConfirmation=False,
            forceComputationBackend=None,
            torchVersionRequirement=">=2.1",
            torchvisionVersionRequirement=">=0.16",
        )
    ]


def test_default_torch_installer_works_with_older_slicer_pytorch_without_a_torchvision_pin(
    monkeypatch,
):
    calls: list[dict] = []

    class OldLogic:
        def installTorch(
            self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None
        ):  # noqa: N802,N803
            calls.append(
                dict(
                    askConfirmation=askConfirmation, torchVersionRequirement=torchVersionRequirement
                )
            )
            return None  # e.g. nothing installed

    monkeypatch.setitem(
        sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=OldLogic)
    )
    assert deps._install_torch_with_pytorch_utils() is False
    assert calls == [dict(askConfirmation=False, torchVersionRequirement=">=2.1")]


def _fake_slicer(monkeypatch, with_packaging: bool) -> list[tuple]:
    """Put a fake ``slicer`` (and maybe ``slicer.packaging``) in sys.modules; return the call log."""
    calls: list[tuple] = []
    util = types.SimpleNamespace(pip_install=lambda reqs: calls.append(("util.pip_install", reqs)))
    slicer = types.ModuleType("slicer")
    slicer.util = util
    monkeypatch.setitem(sys.modules, "slicer", slicer)
    if with_packaging:
        packaging = types.ModuleType("slicer.packaging")
        packaging.pip_ensure = lambda reqs, **kwargs: calls.append(
            ("packaging.pip_ensure", reqs, kwargs)
        )
        slicer.packaging = packaging
        monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    else:
        monkeypatch.setitem(sys.modules, "slicer.packaging", None)
    return calls


def test_default_pip_installer_uses_pip_ensure_without_a_second_question_where_slicer_has_it(
    monkeypatch,
):
    calls = _fake_slicer(monkeypatch, with_packaging=True)
    deps._pip_install_with_slicer(["h5py>=3.8"])
    assert calls == [
        ("packaging.pip_ensure", ["h5py>=3.8"], {"prompt_install": False, "requester": "RADA"})
    ]


def test_default_pip_installer_falls_back_to_slicer_util_pip_install_on_older_slicer(monkeypatch):
    calls = _fake_slicer(monkeypatch, with_packaging=False)
    deps._pip_install_with_slicer(["h5py>=3.8"])
    assert calls == [("util.pip_install", "h5py>=3.8")]


def test_every_engine_dependency_in_pyproject_is_shipped_by_slicer_or_installed_on_first_use():
    from pathlib import Path

    import tomllib

    def name(requirement: str) -> str:
        return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")

    pyproject = Path(deps.__file__).resolve().parents[2] / "pyproject.toml"
    needed = {
        name(r)
        for r in tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]
    }
    shipped_by_slicer = {"numpy", "simpleitk", "vtk"}
    installed_on_first_use = {
        name(p.requirement) for p in deps.TORCH_PACKAGES + deps.ENGINE_PACKAGES
    }
    assert sorted(needed - shipped_by_slicer - installed_on_first_use) == []


# ---------------------------------------------------------------- versions (importlib.metadata)


def test_a_package_that_imports_but_is_too_old_is_named_with_its_version():
    env = FakeEnvironment(absent=[], answer=False)
    versions = {"h5py": "3.1.0", "torch": "2.14.1", "scipy": "1.10.0"}
    with pytest.raises(DependencyError) as caught:
        env.ensure(version_of=versions.get)
    (question,) = env.questions
    assert "h5py>=3.8 (installed: 3.1.0, too old)" in question and "scipy" not in question
    assert "h5py 3.1.0 is too old (RADA needs h5py>=3.8)" in str(caught.value)


def test_an_old_torch_is_refused_naming_it_and_how_to_update_it():
    env = FakeEnvironment(absent=[])
    versions = {"torch": "1.13.1+cu117", "torchvision": "0.14.1"}
    with pytest.raises(DependencyError) as caught:
        env.ensure(version_of=versions.get)
    message = str(caught.value)
    assert "torch 1.13.1+cu117 is too old (RADA needs torch>=2.1)" in message
    assert "PyTorch Utils" in message and env.torch_installs == 0 and env.questions == []


def test_versions_compare_by_release_numbers():
    assert deps._older("2.0.1", "2.1") and not deps._older("2.1", "2.1")
    assert not deps._older("2.10.0+cpu", "2.1") and deps._older("0.9", "0.16")
    assert deps.outdated_packages(version_of=lambda name: None) == {}


def test_installed_versions_here_meet_the_requirements():
    """The real metadata of this environment: nothing that imports is too old."""
    assert deps.outdated_packages() == {}


# ---------------------------------------------------------------- pip's text through Slicer's helper


def test_pip_failure_through_slicers_process_helper_quotes_pips_error(monkeypatch):
    """slicer.util.logProcessOutput prints each line and raises CalledProcessError with
    output=proc.stdout (a pipe read to the end) and stderr=None (Base/Python/slicer/util.py)."""
    real_util = pytest.importorskip("slicer.util")
    script = (
        "import sys; print('Collecting nosuchpackage'); "
        "print('ERROR: No matching distribution found for nosuchpackage'); sys.exit(1)"
    )

    def pip_install(requirements: str) -> None:
        proc = real_util.launchConsoleProcess(
            [sys.executable, "-c", script], useStartupEnvironment=False
        )
        real_util.logProcessOutput(proc)

    calls = _fake_slicer(monkeypatch, with_packaging=False)
    sys.modules["slicer"].util.pip_install = pip_install
    with pytest.raises(subprocess.CalledProcessError) as raised:
        deps._pip_install_with_slicer(["h5py>=3.8"])
    assert calls == []
    assert (
        deps._last_line(raised.value) == "ERROR: No matching distribution found for nosuchpackage"
    )
    message = deps._failure("h5py>=3.8", raised.value)
    assert "No matching distribution found for nosuchpackage" in message
