"""The module's own self-test, run against slicer-core with real engine processes.

The same test Slicer runs ("Reload and Test"): synthetic volumes of three orientations ->
painted slices -> propagate (ANTs) -> train (small preset, a few iterations) -> segment.
"""

from __future__ import annotations


def test_module_self_test_runs_the_whole_workflow_with_the_real_engine(scene):
    from RADASegmentLib.selftest import RADASegmentTest

    test = RADASegmentTest()
    test.setUp()
    try:
        test.test_RADASegment_cohort_to_segmentation()
    finally:
        test.tearDown()
