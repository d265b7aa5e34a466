"""The panel driven through the real .ui with the REAL logic (fake engine process).

What a user does: select a volume, Add, Annotate, paint three slices, Propagate; the table
follows, the Propagate button turns into Cancel while the job runs, the result appears as a
segmentation node beside the volume.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import fakeslicer
import pytest

from slicer_module.test_logic import FakeProcess, _paint, _volume, fake_propagate


@pytest.fixture
def panel(scene, tmp_path):
    fakeslicer.install_qt()
    from RADASegmentLib.logic import RADASegmentLogic

    started = []

    def factory(args, env):
        started.append(
            FakeProcess(
                args,
                env,
                [{"stage": "propagate", "step": 1, "total": 1, "message": "case"}],
                work=fake_propagate,
            )
        )
        return started[-1]

    logic = RADASegmentLogic(
        processFactory=factory, workFolder=tmp_path / "work", modelsFolder=tmp_path / "models"
    )
    logic.started = started
    widget = importlib.import_module("RADASegmentLib.widget").RADASegmentWidget(logic=logic)
    widget.setup()
    yield widget
    widget.cleanup()
    fakeslicer.uninstall_qt()


def test_select_add_annotate_paint_propagate_shows_the_pseudo_label(panel):
    import slicer

    logic = panel.logic
    volume, truth, _, direction = _volume("patient01")
    panel.ui.volumeSelector.setCurrentNode(volume)
    panel.ui.addVolumeButton.click()
    assert panel.ui.cohortTable.rowTexts(0)[0] == "patient01"

    panel.ui.structureNameLineEdit.setText("kidney")
    panel.ui.annotateButton.click()
    entry = logic.entry(volume)
    assert entry.segmentationNodeID, "Annotate made the segmentation to paint on"
    _paint(logic, volume, truth, direction)
    fakeslicer.process_timers()  # the delayed plane refresh after painting
    assert entry.annotated
    assert all(text.startswith("✓") for text in panel.ui.cohortTable.rowTexts(0)[1:4])

    panel.ui.propagateButton.click()
    assert panel.ui.propagateButton.text == "Cancel"
    assert logic.started, "the engine process was started"
    fakeslicer.process_timers(3)
    assert panel.ui.propagateButton.text == "Propagate" and panel.ui.trainButton.enabled
    assert panel.ui.statusLabel.text == "Propagation: done."
    assert entry.pseudoLabelStatus == "done"
    pseudo = slicer.mrmlScene.GetNodeByID(entry.pseudoLabelNodeID)
    assert pseudo is not None and pseudo.GetName().startswith("patient01")
    assert pseudo.GetSegmentation().GetSegmentIdBySegmentName("kidney")
    assert panel.ui.cohortTable.rowTexts(0)[4:] == ["done", "—"]


def test_module_file_gives_slicer_the_module_widget_logic_and_test_classes(scene):
    fakeslicer.install_qt()
    try:
        module = importlib.import_module("RADASegment")
        parent = type("Parent", (), {})()
        instance = module.RADASegment(parent)
        assert parent.title == "RADA Segment" and parent.categories == ["Segmentation"]
        assert instance.parent is parent
        for name in ("RADASegmentWidget", "RADASegmentLogic", "RADASegmentTest"):
            assert isinstance(getattr(module, name), type), name
    finally:
        fakeslicer.uninstall_qt()


def test_module_loads_before_the_engine_packages_are_installed(tmp_path):
    """Slicer loads the module at start-up, before the first-use install of torch and ANTs."""
    here = Path(__file__).resolve().parent
    script = tmp_path / "load_module.py"
    script.write_text(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'torchvision', 'ants', 'open_clip', 'h5py', 'safetensors'):\n"
        "            raise ImportError('not installed: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"sys.path[:0] = [{str(here)!r}, {str(here.parents[2] / 'RADASegment')!r}]\n"
        "import fakeslicer, slicer_scene\n"
        "fakeslicer.install(); slicer_scene.setup_session(); fakeslicer.install_qt()\n"
        "import RADASegment\n"
        "print('loaded', RADASegment.RADASegmentLogic().listModels())\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RADA_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loaded []" in done.stdout
