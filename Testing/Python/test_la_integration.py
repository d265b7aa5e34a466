"""Integration on two real LA2018 cases (skipped when ../shared/data/LA2018 is absent)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import la_folder

from RADALib.cohort import cohort_from_la_folder
from RADALib.metrics import dice
from RADALib.propagation import PropagationConfig
from RADALib.pseudo_labels import load_case_result, propagate_cohort
from RADALib.registration import AntsRegistrar, RegistrationConfig
from RADALib.volume import read_volume

LA = la_folder()
pytestmark = pytest.mark.skipif(
    LA is None,
    reason="LA2018 data not found beside the checkout (../shared/data/LA2018); set RADA_LA_DIR",
)


def test_two_real_la_cases_propagate_to_good_pseudo_labels(tmp_path):
    cohort = cohort_from_la_folder(LA, labeled=2)
    cohort = cohort.select([c.id for c in cohort.cases[:2]])
    # lighter than the defaults to keep the suite fast; the benchmark runs the real settings
    config = PropagationConfig(slice_step=6, registration=RegistrationConfig(shrink=2))
    with AntsRegistrar(config.registration, workers=2) as registrar:
        reports = propagate_cohort(cohort, tmp_path / "out", registrar, config)
    for case, report in zip(cohort.cases, reports):
        truth = read_volume(case.dense_label, "label")
        assert truth.spacing == (0.625, 0.625, 0.625) and truth.shape[2] == 88
        result = load_case_result(report.folder)
        fused = result.fused()
        assert dice(fused, truth.array) > 0.8, case.id
        # the annotated slices are the largest-foreground ones, and mixing keeps them exact
        axial = result.annotation.slices[2][0]
        assert axial == int(np.argmax((truth.array != 0).sum(axis=(0, 1))))
        np.testing.assert_array_equal(fused[:, :, axial], truth.array[:, :, axial])
