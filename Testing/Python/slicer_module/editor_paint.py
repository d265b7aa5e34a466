"""Paint a segment the way Slicer's Segment Editor effects do (Paint, Draw, Erase, ...).

``vtkSlicerSegmentEditorLogic::ModifySegmentByLabelmap`` (Modules/Loadable/Segmentations/Logic/
vtkSlicerSegmentEditorLogic.cxx; qSlicerSegmentEditorAbstractEffect.cxx before 5.10) calls
``vtkSlicerSegmentationsModuleLogic::SetBinaryLabelmapToSegment``, which goes through
``vtkSegmentationModifier::ModifyBinaryLabelmap`` and fires ``SourceRepresentationModified``;
then, only while the segment's status is "not started", sets it to "in progress", which fires
``SegmentModified`` once. ``slicer.util.updateSegmentBinaryLabelmapFromArray`` imports a
labelmap instead and fires other events, so tests of the panel's reaction paint through here.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def editor_paint(
    segmentationNode: Any, segmentID: str, volumeNode: Any, kji: np.ndarray, erase: bool = False
) -> None:
    """Add (or with ``erase`` remove) the non-zero voxels of ``kji`` (volume's grid) to the segment."""
    import slicer
    import vtk
    import vtk.util.numpy_support as nps

    logic = slicer.vtkSlicerSegmentationsModuleLogic
    mask = (np.asarray(kji) > 0).astype(np.uint8)
    if erase:  # ModificationModeRemove: the inverted modifier merged by minimum
        mask, mode = (1 - mask).astype(np.uint8), logic.MODE_MERGE_MIN
    else:  # ModificationModeAdd
        mode = logic.MODE_MERGE_MASK
    modifier = logic.CreateOrientedImageDataFromVolumeNode(volumeNode)
    modifier.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    modifier.GetPointData().SetScalars(
        nps.numpy_to_vtk(mask.ravel(order="C"), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR)
    )
    segment = segmentationNode.GetSegmentation().GetSegment(segmentID)
    if not logic.SetBinaryLabelmapToSegment(
        modifier, segmentationNode, segmentID, mode, modifier.GetExtent()
    ):
        raise RuntimeError("SetBinaryLabelmapToSegment failed")
    if logic.GetSegmentStatus(segment) == logic.NotStarted:
        logic.SetSegmentStatus(segment, logic.InProgress)
