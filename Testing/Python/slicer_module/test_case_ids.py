"""The case ids the module gives volumes are ones the engine accepts as folder names."""

from __future__ import annotations


def test_volume_names_become_distinct_plain_case_ids(slicer_session):
    from RADALib.cohort import check_case_ids
    from RADALib.paths import name_problem
    from RADASegmentLib.logic import _safe_id

    used: set[str] = set()
    names = ["-scan", "Scan", "scan", "../x", "a:b", "..", "MR head"]
    ids = [_safe_id(name, used) for name in names]
    assert [name_problem(i) for i in ids] == [None] * len(names)
    check_case_ids(ids, "scene")  # no two differ only in case
    assert ids[:3] == ["scan", "Scan_2", "scan_3"]
