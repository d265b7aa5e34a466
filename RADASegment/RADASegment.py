"""RADA Segment: segment a structure in a cohort of 3D scans from three painted slices per volume.

The module file is a thin shim: Slicer finds the module, widget, logic and test classes here;
they live in RADASegmentLib (panel, console logic, self-test) and the engine in RADALib.
"""

from slicer.ScriptedLoadableModule import ScriptedLoadableModule

from RADASegmentLib.logic import RADASegmentLogic  # noqa: F401  (Slicer looks these names up here)
from RADASegmentLib.selftest import RADASegmentTest  # noqa: F401
from RADASegmentLib.widget import RADASegmentWidget  # noqa: F401


class RADASegment(ScriptedLoadableModule):
    """Module description shown in Slicer's module panel and help."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "RADA Segment"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["RADA for 3D Slicer developers"]
        self.parent.helpText = (
            "Mark one sagittal, one coronal and one axial slice of a structure in a few volumes of a cohort; "
            "RADA propagates them by registration into pseudo-labels, trains three view-specific 3D networks "
            "guided by Alpha-CLIP and a text prompt, and segments every volume. See the "
            "<a href='https://github.com/rada-slicer/SlicerRADA/blob/main/docs/slicer.md'>module "
            "guide</a> for a tutorial."
        )
        self.parent.acknowledgementText = (
            "Implements RADA (Region-Aware Dual-encoder Auxiliary learning) "
            "for sparse-annotation 3D segmentation."
        )
