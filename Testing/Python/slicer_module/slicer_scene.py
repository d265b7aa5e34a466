"""slicer-core set up headless, as the real application would: one scene, its logics, slicer.modules.

:func:`setup_session` is called once per test session (the ``slicer_session`` fixture in
``conftest.py``). It creates a ``vtkMRMLScene``, a ``vtkSlicerApplicationLogic`` on it, and the
module logics the RADASegment code reaches (Colors with the default colour tables, Volumes,
Segmentations, Subject hierarchy, Terminologies, Markups), sets ``slicer.mrmlScene`` and gives
``slicer.modules.<name>.logic()`` like the application does.

Every object lives in module globals for the whole process: a logic that Python lets go of is
deleted while the scene still calls it, which crashes the interpreter.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Any

_SESSION: SlicerSession | None = None


@dataclass
class SlicerSession:
    """What :func:`setup_session` made: the scene, the application logic and the module logics."""

    scene: Any
    app_logic: Any
    logics: dict[str, Any] = field(default_factory=dict)

    def logic(self, name: str) -> Any:
        """The module logic registered as ``name`` (e.g. ``"segmentations"``)."""
        return self.logics[name]


class _ModuleStub:
    """Stands for ``slicer.modules.<name>``: only ``logic()``, as code outside Qt uses."""

    def __init__(self, name: str, logic: Any) -> None:
        self.name = name
        self._logic = logic

    def logic(self) -> Any:
        return self._logic


def _register(session: SlicerSession, name: str, logic: Any, module_name: str) -> Any:
    """Put ``logic`` on the scene and the application logic, and keep it alive."""
    logic.SetMRMLApplicationLogic(session.app_logic)
    logic.SetMRMLScene(session.scene)
    session.app_logic.SetModuleLogic(module_name, logic)
    session.logics[name] = logic
    return logic


def _add_file_color_stand_ins(scene: Any, colors: Any) -> None:
    """Give the default labelmap/editor colour IDs a node (a ``Labels`` table) when missing.

    The real application loads them from ``share/.../ColorFiles/*.txt``, which slicer-core
    lacks; without them every new labelmap display node warns that its colour table is missing.
    Singleton nodes, so they survive ``scene.Clear(0)``.
    """
    import slicer

    prefix = "vtkMRMLColorTableNode"
    for node_id in {colors.GetDefaultLabelMapColorNodeID(), colors.GetDefaultEditorColorNodeID()}:
        if (
            not node_id
            or scene.GetNodeByID(node_id) is not None
            or not node_id.startswith(prefix + "File")
        ):
            continue
        node = slicer.vtkMRMLColorTableNode()
        node.SetTypeToLabels()
        tag = node_id[len(prefix) :]
        node.SetSingletonTag(tag)
        node.SetName(tag[len("File") :].rsplit(".", 1)[0])
        scene.AddNode(node)


def setup_session() -> SlicerSession:
    """Set up slicer-core headless once; later calls return the same session.

    Needs only ``slicer-core`` (no Qt, no ``slicer.app``). Afterwards ``slicer.mrmlScene`` is the
    scene and ``slicer.modules.segmentations.logic()`` / ``volumes`` / ``colors`` /
    ``subjecthierarchy`` / ``terminologies`` / ``markups`` return the registered logics.
    """
    global _SESSION
    if _SESSION is not None:
        return _SESSION

    import slicer

    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    session = SlicerSession(scene=scene, app_logic=app_logic)

    # Colors first: the built-in colour tables (Labels, Grey, ...) that display nodes refer to.
    # Without a home directory the logic logs once that it cannot find the colour *files*
    # (GenericColors, GenericAnatomyColors); stand-ins for those two are added below.
    colors = slicer.vtkSlicerColorLogic()
    _register(session, "colors", colors, "Colors")
    app_logic.SetColorLogic(colors)
    _add_file_color_stand_ins(scene, colors)

    # Subject hierarchy: makes the scene's subject hierarchy node. Unlike the application, where
    # a Qt plugin logic gives every new data node an item, nodes get NO item here by themselves:
    # code (and tests) must create one when GetItemByDataNode returns 0.
    _register(
        session,
        "subjecthierarchy",
        slicer.vtkSlicerSubjectHierarchyModuleLogic(),
        "SubjectHierarchy",
    )
    # Terminologies: its static helpers (SerializeTerminologyEntry, ...) are what the module uses.
    # On a scene it would load the default terminology files, which slicer-core does not ship,
    # and log an error for each; so it gets the application logic but no scene.
    terminologies = slicer.vtkSlicerTerminologiesModuleLogic()
    terminologies.SetMRMLApplicationLogic(app_logic)
    app_logic.SetModuleLogic("Terminologies", terminologies)
    session.logics["terminologies"] = terminologies
    _register(session, "volumes", slicer.vtkSlicerVolumesLogic(), "Volumes")
    _register(session, "segmentations", slicer.vtkSlicerSegmentationsModuleLogic(), "Segmentations")
    _register(session, "markups", slicer.vtkSlicerMarkupsLogic(), "Markups")

    modules = getattr(slicer, "modules", None)
    if modules is None:
        modules = types.SimpleNamespace()
        slicer.modules = modules
    for name, logic in session.logics.items():
        setattr(modules, name, _ModuleStub(name, logic))

    slicer.mrmlScene = scene
    _SESSION = session
    return session
