"""Behaviour of the real Slicer that the fake once got wrong (issue: "the module has never run in Slicer").

Each test names the Slicer source that shows what the application really does; the fake in
``fakeslicer.py`` was made to do the same, so that these tests fail on the old code.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from test_logic import make_logic  # noqa: F401  (fixture)

MODULE_LIB = Path(__file__).resolve().parents[3] / "RADASegment" / "RADASegmentLib"

# Methods the module must not call: absent from the oldest Slicer this module supports or (for
# vtkSegment's terminology accessors) from releases where the tag form works instead.
# vtkSegment.SetTerminology/GetTerminology/HasTerminology: Libs/vtkSegmentationCore/vtkSegment.h
# has them from v5.10.0 on; v5.6.2 and v5.8.1 have only GetTerminologyEntryTagName + SetTag.
VERSION_BOUND_CALLS = {"SetTerminology", "GetTerminology", "HasTerminology"}


def _called_attributes(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }


@pytest.mark.parametrize("path", sorted(MODULE_LIB.glob("*.py")), ids=lambda p: p.name)
def test_module_calls_no_segment_terminology_accessor_that_older_slicer_lacks(path):
    used = _called_attributes(path) & VERSION_BOUND_CALLS
    assert not used, f"{path.name} calls {sorted(used)}; use the TerminologyEntry tag instead"


def test_result_terminology_is_stored_in_the_tag_every_slicer_version_reads(scene, tmp_path):
    import numpy as np
    import slicer
    import vtk

    from RADALib.terminology import class_entry
    from RADALib.volume import read_volume, write_like
    from RADASegmentLib.nodes import (
        export_volume,
        load_label_map_as_segmentation,
        volume_node_from_canonical,
    )

    image = np.zeros((6, 5, 4), np.float32)
    node = volume_node_from_canonical(image, (1.0, 1.0, 1.0), np.eye(3), "v")
    export_volume(node, tmp_path / "v.nrrd")
    written = read_volume(tmp_path / "v.nrrd", "image")
    label = np.zeros((6, 5, 4), np.uint8)
    label[2:4, 2:4, 1:3] = 1
    write_like(written, label, tmp_path / "r.nrrd")
    classes = {1: class_entry("left atrium")}
    seg = load_label_map_as_segmentation(tmp_path / "r.nrrd", node, classes, "result")
    segmentation = seg.GetSegmentation()
    segment = segmentation.GetSegment(segmentation.GetNthSegmentID(0))
    value = vtk.reference("")
    assert segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), value)
    assert "SCT^82471001^Left atrium" in str(value)


def test_training_chart_columns_are_numeric_as_the_plot_view_requires(make_logic):  # noqa: F811
    """qMRMLPlotView.cxx refuses VTK_STRING X/Y columns; AddColumn() alone makes a vtkStringArray."""
    logic = make_logic()
    chart = logic.trainingChartNode()
    assert chart.GetNumberOfPlotSeriesNodes() == 2
    table = logic._table
    for name in ("iteration", "loss", "dice"):
        column = table.GetTable().GetColumnByName(name)
        assert column is not None and column.IsA("vtkDataArray") and column.GetDataType() != 13, (
            f"{name}: {column.GetClassName()}"
        )
    logic._recordTrainingEvent({"stage": "train", "step": 3, "loss": 0.5, "dice": None})
    assert table.GetTable().GetColumnByName("loss").GetValue(0) == 0.5
