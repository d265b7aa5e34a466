"""The module's own self-test, run against slicer-core with real engine processes.

The same test Slicer runs ("Reload and Test"): synthetic volumes of three orientations ->
painted slices -> propagate (ANTs) -> train (small preset, a few iterations) -> segment.
"""

from __future__ import annotations

import os
import sys
import time

import pytest


def test_module_self_test_runs_the_whole_workflow_with_the_real_engine(scene):
    from RADASegmentLib.selftest import RADASegmentTest

    test = RADASegmentTest()
    test.setUp()
    try:
        test.test_RADASegment_cohort_to_segmentation()
    finally:
        test.tearDown()


def test_the_self_test_skips_with_a_message_where_the_engine_packages_are_missing(
    scene, monkeypatch
):
    import RADASegmentLib.selftest as selftest

    monkeypatch.setattr(selftest, "missing_packages", lambda: ["torch>=2.1", "antspyx>=0.4.2"])
    test = selftest.RADASegmentTest()
    said: list[str] = []
    monkeypatch.setattr(test, "delayDisplay", lambda message, msec=0: said.append(message))

    def workflow():
        raise AssertionError("the workflow must not start without the engine's packages")

    monkeypatch.setattr(test, "test_RADASegment_cohort_to_segmentation", workflow)
    test.runTest()  # passes: Slicer's runner must not install several GB in testing mode
    assert said == [
        "RADA self-test skipped: the engine's packages are not installed (torch>=2.1, "
        "antspyx>=0.4.2); the first Propagate, Train or Segment in the RADA Segment panel asks "
        "before installing them; then run the test again"
    ]
    monkeypatch.setattr(selftest, "missing_packages", lambda: [])
    with pytest.raises(AssertionError, match="must not start"):
        test.runTest()  # with the packages, the whole workflow runs


@pytest.mark.skipif(sys.platform == "win32", reason="checks the process with POSIX signals")
def test_cancelling_a_real_propagation_ends_the_engine_and_adds_no_node(scene, tmp_path):
    import slicer

    from RADASegmentLib.logic import RADASegmentLogic
    from slicer_module.test_logic import _paint, _volume

    logic = RADASegmentLogic(
        workFolder=tmp_path / "work",
        modelsFolder=tmp_path / "models",
        cacheFolder=tmp_path / "cache",
    )
    node, truth, _, direction = _volume("to-cancel")
    segmentation = _paint(logic, node, truth, direction)
    before = slicer.mrmlScene.GetNumberOfNodes()
    job = logic.propagate()
    deadline = time.monotonic() + 60
    while job.poll() and not job.events and time.monotonic() < deadline:
        time.sleep(0.05)  # wait until the engine is really running (its first event)
    assert job.state == "running", job.message
    pid = job.process.pid
    job.cancel()
    assert job.state == "cancelled" and job.message == "cancelled by the user"
    assert logic.entry(node).pseudoLabelStatus == "cancelled"
    assert slicer.mrmlScene.GetNumberOfNodes() == before
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 1
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return
    stat = f"/proc/{pid}/stat"
    assert os.path.exists(stat) and open(stat).read().split()[2] == "Z", (
        "the engine still runs after cancel"
    )
