"""The RADA Segment panel (RADASegmentLib/widget.py) driven through the real .ui.

The widgets are the fakes of ``fakeslicer.install_qt()`` built from ``RADASegment.ui`` by
Slicer's own ``slicer.util.loadUI``; the scene is the real slicer-core one; the logic is a
fake with the logic's interface that records every call and hands out scripted jobs.
"""

from __future__ import annotations

import importlib
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import fakeslicer
import pytest

ROOT = Path(__file__).resolve().parents[3]
WIDGET_PY = ROOT / "RADASegment" / "RADASegmentLib" / "widget.py"
UI_FILE = ROOT / "RADASegment" / "Resources" / "UI" / "RADASegment.ui"
PLANES = ("sagittal", "coronal", "axial")


# ---------------------------------------------------------------- .ui <-> widget.py names


def ui_widget_names(ui_path: Path) -> set[str]:
    """Names of every <widget> in a .ui file."""
    return {w.get("name") for w in ET.parse(ui_path).getroot().iter("widget") if w.get("name")}


def missing_ui_names(source: str, ui_path: Path) -> set[str]:
    """``self.ui.<name>`` (or ``ui.<name>`` after ``ui = self.ui``) used in ``source`` but absent from the .ui."""
    used = set(re.findall(r"(?:\bself\.ui|(?<![\w.])ui)\.([A-Za-z_]\w*)", source))
    return used - ui_widget_names(ui_path)


def test_every_ui_name_the_widget_uses_exists_in_the_ui_file():
    source = WIDGET_PY.read_text(encoding="utf-8")
    assert re.search(r"self\.ui\.\w+", source), (
        "widget.py uses no self.ui names: the check would be empty"
    )
    assert missing_ui_names(source, UI_FILE) == set()


def test_ui_name_check_reports_a_name_missing_from_the_ui_file():
    source = "self.ui.trainButton.click()\nui = self.ui\nui.noSuchButton.setEnabled(False)\nself.ui.ghostLabel.text\n"
    assert missing_ui_names(source, UI_FILE) == {"noSuchButton", "ghostLabel"}


def test_ui_declares_every_slicer_class_it_uses_as_a_custom_widget():
    root = ET.parse(UI_FILE).getroot()
    used = {w.get("class") for w in root.iter("widget")}
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    assert {c for c in used if not c.startswith("Q")} <= declared
    assert used <= set(fakeslicer.WIDGET_CLASSES), "the fake cannot build some class of the .ui"


def test_ui_has_the_cohort_table_columns_and_the_choice_lists_of_the_settings():
    from RADASegmentLib.parameters import (
        DEVICES,
        FUSIONS,
        LARGEST_COMPONENT,
        PRESETS,
        STRIDES,
        TRAINING_LABELS,
    )

    root = ET.parse(UI_FILE).getroot()
    widgets = {w.get("name"): w for w in root.iter("widget")}

    def items(name):
        return [i.findtext("property/string") for i in widgets[name].findall("item")]

    assert [c.findtext("property/string") for c in widgets["cohortTable"].findall("column")] == [
        "Volume",
        "Sagittal",
        "Coronal",
        "Axial",
        "Pseudo-label",
        "Prediction",
    ]
    assert items("presetComboBox") == list(PRESETS)
    assert items("deviceComboBox") == list(DEVICES)
    assert items("strideComboBox") == list(STRIDES)
    assert items("fusionComboBox") == list(FUSIONS)
    assert items("largestComponentComboBox") == list(LARGEST_COMPONENT)
    assert items("trainingLabelsComboBox") == list(TRAINING_LABELS)


# ---------------------------------------------------------------- a fake logic


@dataclass
class FakeEntry:
    volumeNodeID: str
    segmentationNodeID: str | None = None
    segmentID: str | None = None
    planes: dict = field(default_factory=lambda: {p: [] for p in PLANES})
    pseudoLabelStatus: str = ""
    predictionStatus: str = ""

    @property
    def annotated(self) -> bool:
        return all(self.planes.get(p) for p in PLANES)


@dataclass
class FakeModel:
    name: str
    path: str
    classes: list
    pretrained: bool = False
    created: str = "2026-01-01"
    largestComponent: list | None = None


class FakeJob:
    """A job the test scripts: ``events`` go out on the next poll; ``end(state)`` finishes it there."""

    def __init__(self, kind, onEvent=None, onFinished=None):
        self.kind, self.state, self.message = kind, "running", None
        self.onEvent, self.onFinished = onEvent, onFinished
        self.events: list[dict] = []
        self.polls = self.cancels = 0
        self._ending: tuple | None = None

    def end(self, state, message=None):
        self._ending = (state, message)

    def poll(self):
        self.polls += 1
        if self.state != "running":
            return False
        while self.events:
            self.onEvent(self.events.pop(0))
        if self._ending is None:
            return True
        self.state, self.message = self._ending
        self.onFinished(self)
        return False

    def cancel(self):
        self.cancels += 1
        if self.state == "running":
            self.end("cancelled", "cancelled by the user")
            self.poll()


class FakeLogic(fakeslicer.ScriptedLoadableModuleLogic):
    """The logic's interface, recording calls; jobs are :class:`FakeJob`."""

    def __init__(self):
        super().__init__()
        self.moduleName = "RADASegment"
        self.cohort: list[FakeEntry] = []
        self.calls: list[tuple] = []
        self.models: list[FakeModel] = []
        self.cuda: bool | None = False
        self.nextPlanes = {p: [] for p in PLANES}
        self.jobs: list[FakeJob] = []
        self.failStart: str | None = None
        self.folderVolumes: list = []

    def _entry(self, node):
        return next((e for e in self.cohort if e.volumeNodeID == node.GetID()), None)

    def addVolume(self, volumeNode):
        self.calls.append(("addVolume", volumeNode.GetID()))
        entry = self._entry(volumeNode)
        if entry is None:
            entry = FakeEntry(volumeNode.GetID())
            self.cohort.append(entry)
        return entry

    def addAllVolumes(self):
        import slicer

        self.calls.append(("addAllVolumes",))
        nodes = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
        return [self.addVolume(n) for n in nodes]

    def addVolumesFromFolder(self, folder):
        self.calls.append(("addVolumesFromFolder", folder))
        return [self.addVolume(n) for n in self.folderVolumes]

    def loadSampleCohort(self):
        from RADASegmentLib.parameters import RADASegmentSettings

        self.calls.append(("loadSampleCohort",))
        volumes = [add_volume(f"RADA sample {i}") for i in (1, 2)]
        for volume in volumes:
            self.addVolume(volume)
        self._entry(volumes[0]).planes = {p: [7] for p in PLANES}
        settings = RADASegmentSettings.from_parameter_node(self.getParameterNode())
        settings.structureName = "organ"
        settings.to_parameter_node(self.getParameterNode())
        return volumes

    def removeVolume(self, volumeNode):
        self.calls.append(("removeVolume", volumeNode.GetID()))
        self.cohort = [e for e in self.cohort if e.volumeNodeID != volumeNode.GetID()]

    def annotate(self, volumeNode, structureName, roiNode=None):
        import slicer

        self.calls.append(("annotate", volumeNode.GetID(), structureName, roiNode))
        entry = self.addVolume(volumeNode)
        segmentation = slicer.mrmlScene.AddNewNodeByClass(
            "vtkMRMLSegmentationNode", f"{volumeNode.GetName()} annotation"
        )
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        entry.segmentationNodeID = segmentation.GetID()
        entry.segmentID = segmentation.GetSegmentation().AddEmptySegment("", structureName)
        return segmentation

    def updatePlanes(self, volumeNode):
        self.calls.append(("updatePlanes", volumeNode.GetID()))
        entry = self._entry(volumeNode)
        entry.planes = {p: list(v) for p, v in self.nextPlanes.items()}
        return entry.planes

    def _job(self, kind, onEvent, onFinished):
        if self.failStart:
            raise ValueError(self.failStart)
        job = FakeJob(kind, onEvent, onFinished)
        self.jobs.append(job)
        return job

    def propagate(
        self,
        volumeNodes=None,
        settings=None,
        wait=False,
        onEvent=None,
        onFinished=None,
        showViews=False,
    ):
        self.calls.append(("propagate", volumeNodes, settings, wait, showViews))
        return self._job("propagate", onEvent, onFinished)

    def train(self, volumeNodes=None, settings=None, wait=False, onEvent=None, onFinished=None):
        self.calls.append(("train", volumeNodes, settings, wait))
        return self._job("train", onEvent, onFinished)

    def segment(
        self, volumeNodes=None, model=None, settings=None, wait=False, onEvent=None, onFinished=None
    ):
        self.calls.append(
            (
                "segment",
                [n.GetID() for n in volumeNodes] if volumeNodes else volumeNodes,
                model,
                settings,
                wait,
            )
        )
        return self._job("segment", onEvent, onFinished)

    def listModels(self):
        self.calls.append(("listModels",))
        return list(self.models)

    def cudaAvailable(self):
        return self.cuda

    def trainingChartNode(self):
        import slicer

        node = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLPlotChartNode")
        return node or slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotChartNode", "RADA training")

    def called(self, name):
        return [c for c in self.calls if c[0] == name]


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def fakes(scene):
    installed = fakeslicer.install_qt()
    yield installed
    fakeslicer.uninstall_qt()


@pytest.fixture
def logic(fakes):
    return FakeLogic()


def make_panel(logic):
    module = importlib.import_module("RADASegmentLib.widget")
    panel = module.RADASegmentWidget(logic=logic)
    panel.setup()
    return panel


@pytest.fixture
def panel(logic):
    widget = make_panel(logic)
    yield widget
    widget.cleanup()


def add_volume(name="case01", shape=(6, 8, 10)):
    import numpy as np
    import slicer

    return slicer.util.addVolumeFromArray(np.zeros(shape, dtype=np.int16), name=name)


def stored_settings(logic):
    from RADASegmentLib.parameters import RADASegmentSettings

    return RADASegmentSettings.from_parameter_node(logic.getParameterNode())


ACTION_BUTTONS = (
    "addVolumeButton",
    "addAllVolumesButton",
    "addFolderButton",
    "removeVolumeButton",
    "annotateButton",
    "propagateButton",
    "trainButton",
    "segmentSelectedButton",
    "segmentCohortButton",
    "refreshModelsButton",
)


# ---------------------------------------------------------------- set-up and settings


def test_setup_loads_the_ui_and_gives_the_mrml_widgets_the_scene(panel, scene):
    assert panel.layout.widgets and panel.layout.widgets[0].uiPath.endswith("RADASegment.ui")
    for name in ("volumeSelector", "roiSelector", "plotWidget"):
        assert getattr(panel.ui, name).mrmlScene() is scene
    assert panel.ui.detailsCollapsibleButton.collapsed
    assert panel.ui.logTextEdit.readOnly


def test_setup_creates_the_real_logic_when_none_is_injected(fakes, monkeypatch):
    import RADASegmentLib

    created = []

    class StubLogic(FakeLogic):
        def __init__(self):
            super().__init__()
            created.append(self)

    monkeypatch.setitem(
        __import__("sys").modules,
        "RADASegmentLib.logic",
        SimpleNamespace(RADASegmentLogic=StubLogic),
    )
    monkeypatch.setattr(
        RADASegmentLib, "logic", SimpleNamespace(RADASegmentLogic=StubLogic), raising=False
    )
    module = importlib.import_module("RADASegmentLib.widget")
    widget = module.RADASegmentWidget()
    widget.setup()
    try:
        assert created and widget.logic is created[0]
    finally:
        widget.cleanup()


def test_settings_in_the_parameter_node_are_shown_by_the_widgets(logic):
    from RADASegmentLib.parameters import RADASegmentSettings

    RADASegmentSettings(
        structureName="left atrium",
        preset="small",
        iterations=300,
        device="cpu",
        visionWeights="/w/v.pth",
        allowDownload=True,
        modelName="la-1",
        stride="dense",
        largestComponent="off",
        fusion="majority",
        trainingLabels="fused",
        extraSettings="network.base_filters=8",
    ).to_parameter_node(logic.getParameterNode())
    panel = make_panel(logic)
    try:
        ui = panel.ui
        assert ui.structureNameLineEdit.text == "left atrium"
        assert ui.presetComboBox.currentText == "small"
        assert ui.iterationsSpinBox.value == 300
        assert ui.deviceComboBox.currentText == "cpu"
        assert ui.visionWeightsPathLineEdit.currentPath == "/w/v.pth"
        assert ui.allowDownloadCheckBox.checked
        assert ui.modelNameLineEdit.text == "la-1"
        assert ui.strideComboBox.currentText == "dense"
        assert ui.largestComponentComboBox.currentText == "off"
        assert ui.fusionComboBox.currentText == "majority"
        assert ui.trainingLabelsComboBox.currentText == "fused"
        assert ui.extraSettingsLineEdit.text == "network.base_filters=8"
    finally:
        panel.cleanup()


def test_changing_widgets_writes_the_settings_to_the_parameter_node(panel, logic):
    ui = panel.ui
    logic.getParameterNode().SetParameter("RADASegmentSettings", '{"workers": 3}')
    ui.presetComboBox.chooseText("small")
    ui.iterationsSpinBox.setValue(250)
    ui.deviceComboBox.chooseText("cpu")
    ui.structureNameLineEdit.typeText("liver")
    ui.textWeightsPathLineEdit.setCurrentPath("/w/text.bin")
    ui.allowDownloadCheckBox.click()
    ui.strideComboBox.chooseText("dense")
    ui.largestComponentComboBox.chooseText("on")
    ui.fusionComboBox.chooseText("majority")
    ui.trainingLabelsComboBox.chooseText("fused")
    ui.modelNameLineEdit.typeText("liver-model")
    ui.extraSettingsLineEdit.typeText(" schedule.alpha_floor=0.9   seed=7 ")
    ui.showViewsCheckBox.click()
    settings = stored_settings(logic)
    assert (settings.preset, settings.iterations, settings.device) == ("small", 250, "cpu")
    assert settings.structureName == "liver"
    assert (settings.textWeights, settings.allowDownload) == ("/w/text.bin", True)
    assert (settings.stride, settings.fusion, settings.largestComponent) == (
        "dense",
        "majority",
        "on",
    )
    assert settings.modelName == "liver-model" and settings.trainingLabels == "fused"
    assert settings.extraSettings == "schedule.alpha_floor=0.9 seed=7"
    assert settings.workers == 3, "a setting without a widget is kept"
    assert logic.getParameterNode().GetParameter("RADASegmentShowViews") == "true"


def test_invalid_setting_is_reported_in_one_line_and_not_written(panel, logic):
    ui = panel.ui
    ui.modelNameLineEdit.typeText("good-name")
    ui.modelNameLineEdit.typeText("bad/name")
    status = ui.statusLabel.text
    assert "model name" in status and "\n" not in status
    assert stored_settings(logic).modelName == "good-name"
    ui.modelNameLineEdit.typeText("fixed")
    assert ui.statusLabel.text == "Ready."
    assert stored_settings(logic).modelName == "fixed"


def test_a_malformed_extra_setting_is_reported_and_not_written(panel, logic):
    ui = panel.ui
    ui.extraSettingsLineEdit.typeText("seed=7")
    ui.extraSettingsLineEdit.typeText("seed=7 schedule.alpha_floor")
    assert "extra setting 'schedule.alpha_floor' is not KEY=VALUE" in ui.statusLabel.text
    assert stored_settings(logic).extraSettings == "seed=7"
    panel.ui.trainButton.click()
    assert logic.called("train") == []


def test_invalid_settings_keep_a_job_from_starting(panel, logic):
    panel.ui.structureNameLineEdit.typeText("   ")
    panel.ui.trainButton.click()
    assert logic.called("train") == []
    assert "structure name is empty" in panel.ui.statusLabel.text


def test_settings_changed_from_the_console_show_in_the_panel(panel, logic):
    from RADASegmentLib.parameters import RADASegmentSettings

    RADASegmentSettings(preset="small", modelName="from-console").to_parameter_node(
        logic.getParameterNode()
    )
    assert panel.ui.presetComboBox.currentText == "small"
    assert panel.ui.modelNameLineEdit.text == "from-console"


def test_without_cuda_the_device_line_says_cpu_and_that_the_time_left_comes_with_training(
    panel, logic
):
    label = panel.ui.deviceWarningLabel
    assert "training runs on the CPU" in label.text and "time left" in label.text
    assert "auto preset trains with the cpu preset" in label.text
    assert "as many iterations as fit half an hour" in label.text  # the cpu preset sizes its run
    panel.ui.iterationsSpinBox.setValue(500)  # ... unless the count is given
    assert "half an hour" not in label.text and "cpu preset" in label.text
    panel.ui.presetComboBox.chooseText("cpu")
    assert "half an hour" not in label.text
    panel.ui.iterationsSpinBox.setValue(0)
    assert "cpu preset trains as many iterations as fit half an hour" in label.text
    panel.ui.presetComboBox.chooseText("paper")
    assert "paper preset is a GPU job" in label.text
    panel.ui.presetComboBox.chooseText("small")
    assert "training runs on the CPU" in label.text and "paper preset" not in label.text
    panel.ui.deviceComboBox.chooseText("cuda")
    assert "No CUDA GPU" in label.text


@pytest.mark.parametrize("preset", ["auto", "cpu", "paper", "small"])
@pytest.mark.parametrize("iterations", [0, 50, 6000])
def test_the_cpu_device_line_holds_no_fixed_duration(logic, preset, iterations):
    logic.cuda = None if iterations == 50 else False
    panel = make_panel(logic)
    try:
        panel.ui.deviceComboBox.chooseText("cpu")
        panel.ui.presetComboBox.chooseText(preset)
        panel.ui.iterationsSpinBox.setValue(iterations)
        text = panel.ui.deviceWarningLabel.text
        assert "training runs on the CPU" in text
        assert not re.search(r"\d", text), text
    finally:
        panel.cleanup()


def test_with_cuda_the_device_label_says_training_runs_on_the_gpu(logic):
    logic.cuda = True
    panel = make_panel(logic)
    try:
        assert "CUDA GPU found" in panel.ui.deviceWarningLabel.text
        panel.ui.deviceComboBox.chooseText("cpu")
        assert "CPU chosen: training runs on the CPU" in panel.ui.deviceWarningLabel.text
    finally:
        panel.cleanup()


# ---------------------------------------------------------------- cohort


def test_add_button_adds_the_selected_volume_and_the_table_shows_it(panel, logic):
    volume = add_volume("case01")
    panel.ui.volumeSelector.setCurrentNode(volume)
    panel.ui.addVolumeButton.click()
    assert logic.called("addVolume") == [("addVolume", volume.GetID())]
    table = panel.ui.cohortTable
    assert table.rowCount == 1
    assert table.rowTexts(0) == ["case01", "—", "—", "—", "—", "—"]
    assert table.currentRow() == 0


def test_add_all_and_add_folder_fill_the_table(panel, logic, fakes):
    add_volume("a"), add_volume("b")
    panel.ui.addAllVolumesButton.click()
    assert panel.ui.cohortTable.rowCount == 2
    c = add_volume("c")
    logic.folderVolumes = [c]
    fakes.qt.QFileDialog.answers = ["/data/cohort"]
    panel.ui.addFolderButton.click()
    assert logic.called("addVolumesFromFolder") == [("addVolumesFromFolder", "/data/cohort")]
    assert [panel.ui.cohortTable.rowTexts(r)[0] for r in range(3)] == ["a", "b", "c"]
    panel.ui.addFolderButton.click()  # the user cancels the dialog
    assert len(logic.called("addVolumesFromFolder")) == 1


def test_sample_cohort_button_fills_the_table_and_says_what_to_do_next(panel, logic):
    import slicer

    composite = slicer.mrmlScene.AddNewNodeByClass(
        "vtkMRMLSliceCompositeNode"
    )  # a slice view's layers
    panel.ui.loadSampleCohortButton.click()
    assert logic.called("loadSampleCohort") == [("loadSampleCohort",)]
    assert [panel.ui.cohortTable.rowTexts(r)[0] for r in range(2)] == [
        "RADA sample 1",
        "RADA sample 2",
    ]
    assert (
        panel.ui.cohortTable.rowTexts(0)[1:4] == ["✓ 7"] * 3
        and panel.ui.cohortTable.rowTexts(1)[1] != "✓ 7"
    )
    assert panel.ui.structureNameLineEdit.text == "organ"  # the sample's structure, shown
    assert (
        "Added 2 sample volumes, 1 painted in three planes: press Propagate"
        in panel.ui.statusLabel.text
    )
    assert (
        composite.GetBackgroundVolumeID() == slicer.util.getNode("RADA sample 1").GetID()
    )  # shown


def test_remove_button_removes_the_selected_volume(panel, logic):
    add_volume("a")
    b = add_volume("b")
    panel.ui.addAllVolumesButton.click()
    panel.ui.cohortTable.clickCell(1, 0)
    assert panel.ui.volumeSelector.currentNode() is b
    panel.ui.removeVolumeButton.click()
    assert logic.called("removeVolume") == [("removeVolume", b.GetID())]
    assert panel.ui.cohortTable.rowCount == 1 and panel.ui.cohortTable.rowTexts(0)[0] == "a"


def test_cohort_table_shows_the_plane_status_of_each_volume(panel, logic):
    add_volume("a"), add_volume("b")
    panel.ui.addAllVolumesButton.click()
    logic.cohort[0].planes = {"sagittal": [5], "coronal": [], "axial": [2, 3]}
    logic.cohort[1].planes = {"sagittal": [1], "coronal": [4], "axial": [2]}
    logic.cohort[1].pseudoLabelStatus, logic.cohort[1].predictionStatus = "done", "running"
    panel.refreshCohortTable()
    table = panel.ui.cohortTable
    assert table.rowTexts(0) == ["a", "✓ 5", "—", "✓ 2, 3", "—", "—"]
    assert table.rowTexts(1) == ["b", "✓ 1", "✓ 4", "✓ 2", "done", "running"]
    assert "not fully annotated" in table.item(0, 0).toolTip()
    table.clickCell(0, 0)
    assert "still to mark: coronal" in panel.ui.planeStatusLabel.text
    table.clickCell(1, 0)
    assert "all three planes marked" in panel.ui.planeStatusLabel.text


def test_a_failing_add_is_shown_as_an_error_in_one_line(panel, logic, fakes):
    def broken():
        raise RuntimeError("volume is oblique: resample it first")

    logic.addAllVolumes = broken
    panel.ui.addAllVolumesButton.click()
    assert fakes.errors == [
        "Adding the loaded volumes failed: volume is oblique: resample it first"
    ]
    assert panel.ui.statusLabel.text == fakes.errors[0]


# ---------------------------------------------------------------- annotation


def test_annotate_calls_the_logic_and_opens_the_segment_editor_on_the_segmentation(
    panel, logic, fakes, monkeypatch
):
    import slicer

    editor = SimpleNamespace(calls=[])
    editor.setSegmentationNode = lambda n: editor.calls.append(("segmentation", n.GetID()))
    editor.setSourceVolumeNode = lambda n: editor.calls.append(("source", n.GetID()))
    editor.setCurrentSegmentID = lambda s: editor.calls.append(("segment", s))
    monkeypatch.setattr(
        slicer.modules, "SegmentEditorWidget", SimpleNamespace(editor=editor), raising=False
    )
    volume = add_volume("case01")
    panel.ui.volumeSelector.setCurrentNode(volume)
    panel.ui.structureNameLineEdit.typeText("left atrium")
    panel.ui.annotateButton.click()
    (call,) = logic.called("annotate")
    assert call == ("annotate", volume.GetID(), "left atrium", None)
    entry = logic.cohort[0]
    assert fakes.selected_modules == ["SegmentEditor"]
    assert editor.calls == [
        ("segmentation", entry.segmentationNodeID),
        ("source", volume.GetID()),
        ("segment", entry.segmentID),
    ]
    assert "Segment Editor" in panel.ui.statusLabel.text


def test_annotate_passes_the_chosen_roi(panel, logic, scene):
    volume = add_volume("case01")
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    panel.ui.volumeSelector.setCurrentNode(volume)
    panel.ui.roiSelector.setCurrentNode(roi)
    panel.ui.annotateButton.click()
    assert logic.called("annotate")[0][3] is roi


def test_annotate_works_where_the_segment_editor_cannot_be_reached(panel, logic, fakes):
    volume = add_volume("case01")
    panel.ui.volumeSelector.setCurrentNode(volume)
    panel.ui.annotateButton.click()  # slicer.modules has no SegmentEditorWidget here
    assert (
        logic.called("annotate")
        and fakes.selected_modules == ["SegmentEditor"]
        and fakes.errors == []
    )


def test_painting_the_segment_refreshes_the_plane_status(panel, logic):
    """Painted as the Segment Editor does (editor_paint.py); every stroke is seen, erasing too."""
    import numpy as np
    import slicer
    from editor_paint import editor_paint

    volume = add_volume("case01", shape=(6, 8, 10))
    panel.ui.volumeSelector.setCurrentNode(volume)
    panel.ui.annotateButton.click()
    entry = logic.cohort[0]
    segmentation = slicer.mrmlScene.GetNodeByID(entry.segmentationNodeID)
    logic.nextPlanes = {"sagittal": [4], "coronal": [3], "axial": [2]}
    painted = np.zeros((6, 8, 10), dtype=np.uint8)
    painted[1:5, 1:7, 1:9] = 1
    editor_paint(segmentation, entry.segmentID, volume, painted)
    assert logic.called("updatePlanes") == [], (
        "planes are read after a short delay, not on every change"
    )
    fakeslicer.process_timers()
    assert logic.called("updatePlanes") == [("updatePlanes", volume.GetID())]
    assert panel.ui.cohortTable.rowTexts(0)[1:4] == ["✓ 4", "✓ 3", "✓ 2"]
    assert "all three planes marked" in panel.ui.planeStatusLabel.text

    # a later stroke inside the painted extent and an erase fire SourceRepresentationModified only
    logic.nextPlanes = {"sagittal": [4], "coronal": [], "axial": [2]}
    erased = np.zeros_like(painted)
    erased[:, 3, :] = 1
    editor_paint(segmentation, entry.segmentID, volume, erased, erase=True)
    fakeslicer.process_timers()
    assert len(logic.called("updatePlanes")) == 2, "the erase was not seen"
    assert panel.ui.cohortTable.rowTexts(0)[2] != "✓ 3"
    editor_paint(segmentation, entry.segmentID, volume, erased)
    fakeslicer.process_timers()
    assert len(logic.called("updatePlanes")) == 3, "the second stroke was not seen"


def test_entering_the_module_reads_the_painted_planes_again(panel, logic):
    """Painting while the panel was not shown (or unobserved) is read when the module is entered."""
    import slicer

    volume = add_volume("case01", shape=(6, 8, 10))
    panel.ui.volumeSelector.setCurrentNode(volume)
    panel.ui.annotateButton.click()
    assert slicer.mrmlScene.GetNodeByID(logic.cohort[0].segmentationNodeID) is not None
    before = len(logic.called("updatePlanes"))
    logic.nextPlanes = {"sagittal": [1], "coronal": [2], "axial": [3]}
    panel.exit()
    panel.enter()
    assert len(logic.called("updatePlanes")) == before + 1
    assert panel.ui.cohortTable.rowTexts(0)[1:4] == ["✓ 1", "✓ 2", "✓ 3"]


# ---------------------------------------------------------------- jobs


def test_propagate_starts_a_job_with_the_settings_and_becomes_cancel(panel, logic):
    panel.ui.fusionComboBox.chooseText("majority")
    panel.ui.showViewsCheckBox.click()
    panel.ui.propagateButton.click()
    (call,) = logic.called("propagate")
    _, volumes, settings, wait, showViews = call
    assert volumes is None and wait is False and showViews is True and settings.fusion == "majority"
    assert panel.ui.propagateButton.text == "Cancel" and panel.ui.propagateButton.enabled
    for name in ACTION_BUTTONS:
        if name != "propagateButton":
            assert not getattr(panel.ui, name).enabled, name


def test_pressing_cancel_cancels_the_job_and_restores_the_buttons(panel, logic):
    panel.ui.trainButton.click()
    job = logic.jobs[0]
    panel.ui.propagateButton.click()  # disabled while training: nothing happens
    assert logic.called("propagate") == []
    panel.ui.trainButton.click()
    assert job.cancels == 1
    assert panel.ui.trainButton.text == "Train"
    assert "cancelled" in panel.ui.statusLabel.text
    assert panel.ui.propagateButton.enabled and panel.ui.trainButton.enabled
    assert not panel._pollTimer.isActive()


def test_poll_events_move_the_progress_bar_and_the_status_line(panel, logic):
    panel.ui.trainButton.click()
    job = logic.jobs[0]
    assert panel._pollTimer.isActive() and panel._pollTimer.interval == 200
    job.events = [
        {
            "stage": "train",
            "step": 120,
            "total": 6000,
            "loss": 0.41,
            "dice": 0.8,
            "eta_s": 80,
            "message": "iteration 120",
        }
    ]
    fakeslicer.process_timers()
    assert job.polls == 1
    bar = panel.ui.progressBar
    assert (bar.minimum, bar.maximum, bar.value) == (0, 6000, 120)
    assert panel.ui.statusLabel.text == "train: 120/6000, loss 0.41, dice 0.8, ETA 1m20s"
    assert "iteration 120" in panel.ui.logTextEdit.plainText
    job.events = [{"stage": "train", "step": 3000, "total": 6000}]
    fakeslicer.process_timers()
    assert bar.value == 3000


def test_a_failed_job_shows_its_message_in_an_error_box(panel, logic, fakes):
    panel.ui.propagateButton.click()
    job = logic.jobs[0]
    job.end("failed", "propagate: CUDA out of memory; try device 'cpu'")
    fakeslicer.process_timers()
    assert fakes.errors == ["propagate: CUDA out of memory; try device 'cpu'"]
    assert (
        "failed" in panel.ui.statusLabel.text and "CUDA out of memory" in panel.ui.statusLabel.text
    )
    assert panel.ui.propagateButton.text == "Propagate" and panel.job is None


def test_a_succeeded_training_refreshes_the_models_and_selects_the_new_one(panel, logic):
    panel.ui.modelNameLineEdit.typeText("la-model")
    panel.ui.trainButton.click()
    assert panel.ui.plotWidget.mrmlPlotViewNode() is not None
    assert (
        panel.ui.plotWidget.mrmlPlotViewNode().GetPlotChartNodeID()
        == logic.trainingChartNode().GetID()
    )
    logic.models = [
        FakeModel("old", "/m/old", ["liver"]),
        FakeModel("la-model", "/m/la-model", ["left atrium"]),
    ]
    logic.jobs[0].end("succeeded")
    fakeslicer.process_timers()
    assert panel.ui.statusLabel.text == "Training: done."
    assert panel.ui.modelComboBox.itemTexts() == ["old (liver)", "la-model (left atrium)"]
    assert panel.selectedModelPath() == "/m/la-model"
    assert panel.ui.segmentSelectedButton.enabled and panel.ui.segmentCohortButton.enabled
    assert (panel.ui.progressBar.value, panel.ui.progressBar.maximum) == (100, 100)


def test_segment_buttons_need_a_model(panel):
    assert panel.ui.modelComboBox.itemTexts() == ["(no model yet: train one)"]
    assert not panel.ui.segmentSelectedButton.enabled and not panel.ui.segmentCohortButton.enabled


def test_segment_buttons_pass_the_volume_and_the_chosen_model_path(logic):
    logic.models = [
        FakeModel("a", "/m/a", ["liver"]),
        FakeModel("b", "/m/b", ["spleen"], pretrained=True),
    ]
    panel = make_panel(logic)
    try:
        volume = add_volume("case07")
        assert panel.ui.modelComboBox.itemToolTip(0).startswith("/m/a\ncreated 2026-01-01\n")
        panel.ui.volumeSelector.setCurrentNode(volume)
        panel.ui.modelComboBox.chooseText("b (spleen) [pretrained encoders]")
        panel.ui.strideComboBox.chooseText("dense")
        panel.ui.segmentSelectedButton.click()
        _, volumes, model, settings, wait = logic.called("segment")[0]
        assert (volumes, model, settings.stride, wait) == ([volume.GetID()], "/m/b", "dense", False)
        assert panel.ui.segmentSelectedButton.text == "Cancel"
        logic.jobs[0].end("succeeded")
        fakeslicer.process_timers()
        panel.ui.segmentCohortButton.click()
        assert logic.called("segment")[1][1:3] == (None, "/m/b")
    finally:
        panel.cleanup()


def test_a_job_that_cannot_start_is_reported_and_leaves_the_buttons_alone(panel, logic, fakes):
    logic.failStart = "a model named 'rada-model' already exists: choose another model name"
    panel.ui.trainButton.click()
    assert fakes.errors == ["Training could not start: " + logic.failStart]
    assert panel.ui.trainButton.text == "Train" and panel.job is None
    assert all(
        getattr(panel.ui, n).enabled for n in ("propagateButton", "trainButton", "addVolumeButton")
    )


def test_a_job_that_ends_before_start_returns_is_finished_at_once(panel, logic):
    original = logic._job

    def finished_job(kind, onEvent, onFinished):
        job = original(kind, onEvent, onFinished)
        job.state = "succeeded"
        onFinished(job)  # e.g. nothing to do: the logic ends the job before returning it
        return job

    logic._job = finished_job
    panel.ui.propagateButton.click()
    assert panel.job is None and panel.ui.propagateButton.text == "Propagate"
    assert panel.ui.statusLabel.text == "Propagation: done."
    assert not panel._pollTimer.isActive()


def test_a_poll_that_raises_ends_the_job_as_failed(panel, logic, fakes):
    panel.ui.propagateButton.click()
    job = logic.jobs[0]

    def broken():
        raise OSError("engine pipe closed")

    job.poll = broken
    fakeslicer.process_timers()
    assert panel.job is None and job.cancels == 1
    assert fakes.errors == ["Propagation stopped: engine pipe closed"]


def test_cleanup_cancels_a_running_job_and_stops_the_timers(logic):
    panel = make_panel(logic)
    panel.ui.trainButton.click()
    job = logic.jobs[0]
    panel.cleanup()
    assert job.cancels == 1
    assert not panel._pollTimer.isActive()
    assert panel.Observations == []


def test_closing_the_scene_reloads_the_settings(panel, logic, scene):
    panel.ui.presetComboBox.chooseText("small")
    scene.Clear(0)
    assert panel.ui.presetComboBox.currentText == "auto"


# ---------------------------------------------------------------- text helpers


def test_durations_and_events_read_as_one_short_line(fakes):
    widget = importlib.import_module("RADASegmentLib.widget")
    assert [widget.formatDuration(s) for s in (0, 42, 80, 3700, None)] == [
        "0s",
        "42s",
        "1m20s",
        "1h01m",
        "",
    ]
    assert widget.formatEvent({"stage": "propagate", "step": 2, "total": 5}) == "propagate: 2/5"
    assert widget.formatEvent({"message": "loading model"}, "segment") == "segment: loading model"
    assert widget.planeText([]) == "—" and widget.planeText([7]) == "✓ 7"


def test_the_status_line_shows_the_time_left_from_the_first_logged_iteration(panel, logic):
    from RADALib.events import Progress

    clock = SimpleNamespace(now=0.0)
    panel.ui.trainButton.click()
    job = logic.jobs[0]
    progress = Progress(sink=job.events.append, clock=lambda: clock.now)
    progress.start("train", 200, "3 labeled + 3 unlabeled volume(s)")
    fakeslicer.process_timers()
    assert panel.ui.statusLabel.text == "train: 0/200"
    clock.now = 2.0
    progress.update(1, "sup 0.5", loss=0.9)
    fakeslicer.process_timers()
    assert panel.ui.statusLabel.text == "train: 1/200, loss 0.9, ETA 6m38s"
    clock.now = 10.0
    progress.update(5, "sup 0.4", loss=0.8)
    fakeslicer.process_timers()
    assert panel.ui.statusLabel.text.endswith("ETA 6m30s")


def test_the_fake_rejects_a_signal_the_widget_class_does_not_have(fakes):
    button = fakes.qt.QPushButton()
    with pytest.raises(AttributeError, match="no signal"):
        button.connect("clicked(int)", lambda: None)


@pytest.mark.parametrize(
    "kept, note",
    [
        (None, "every region kept (this model predates the recommendation)"),
        ([], "every region kept (the structure was not one region in its pseudo-labels)"),
        (["left atrium"], "only the largest region of left atrium kept"),
    ],
)
def test_the_model_list_tooltip_says_what_largest_component_auto_does_with_the_model(
    logic, kept, note
):
    logic.models = [FakeModel("la", "/m/la", ["left atrium"], largestComponent=kept)]
    panel = make_panel(logic)
    try:
        assert panel.ui.modelComboBox.itemToolTip(0).endswith(f"Largest component 'auto': {note}")
    finally:
        panel.cleanup()


def test_close_scene_cancels_the_running_job_and_restores_the_buttons(panel, logic, scene):
    panel.ui.propagateButton.click()
    (job,) = logic.jobs
    assert panel.ui.propagateButton.text == "Cancel"
    scene.Clear(0)  # File > Close Scene (qSlicerMainWindow.cxx: mrmlScene()->Clear(false))
    assert job.cancels == 1 and job.state == "cancelled"
    assert panel.ui.propagateButton.text != "Cancel"
    assert panel._job is None


def test_picking_a_cohort_volume_again_after_one_outside_it_selects_its_row(panel, logic):
    """QAbstractItemView::clearSelection keeps the current index (Qt), so the row stayed unselected."""
    first = add_volume("case01")
    second = add_volume("case02")
    outside = add_volume("elsewhere")
    logic.addVolume(first)
    logic.addVolume(second)
    panel.refreshCohortTable()
    table = panel.ui.cohortTable
    panel.ui.volumeSelector.setCurrentNode(first)
    assert {item.row() for item in table.selectedItems()} == {0}
    panel.ui.volumeSelector.setCurrentNode(outside)
    assert table.selectedItems() == [] and table.currentRow() == 0  # Qt keeps the current index
    panel.ui.volumeSelector.setCurrentNode(first)
    assert {item.row() for item in table.selectedItems()} == {0}, "the row was left unselected"
