"""The training window fitted to the labeled structures and the volumes (RADALib.patch_size)."""

from __future__ import annotations

import numpy as np
import pytest

from RADALib.events import Progress
from RADALib.patch_size import CONTEXT, fitted_patch, structure_extent
from RADALib.train_config import preset
from RADALib.training import with_fitted_patch


def three_slices(shape, box) -> np.ndarray:
    """A sparse label: a box-shaped structure painted on its three central slices."""
    label = np.zeros(shape, np.uint8)
    (x0, x1), (y0, y1), (z0, z1) = box
    cx, cy, cz = (x0 + x1) // 2, (y0 + y1) // 2, (z0 + z1) // 2
    label[cx, y0:y1, z0:z1] = 1
    label[x0:x1, cy, z0:z1] = 1
    label[x0:x1, y0:y1, cz] = 1
    return label


def test_three_annotated_slices_bound_the_structure_on_every_axis():
    small = three_slices((60, 50, 40), ((10, 30), (5, 15), (20, 28)))
    large = three_slices((60, 50, 40), ((0, 12), (0, 40), (0, 4)))
    assert structure_extent([small]) == (20, 10, 8)
    assert structure_extent([small, large]) == (20, 40, 8)  # the largest per axis
    assert structure_extent([np.zeros((4, 4, 4))]) is None


def test_the_window_covers_the_structure_with_context_within_the_volume_and_the_cap():
    # x: 20 * 1.5 = 30 -> 32; y: 40 * 1.5 = 60, but the volume has 50 -> 64 capped at 48;
    # z: 8 * 1.5 = 12 -> 16
    assert CONTEXT == 1.5
    assert fitted_patch((64, 48, 48), (20, 40, 8), (60, 50, 40)) == (32, 48, 16)
    assert fitted_patch((64, 64, 64), (20, 40, 8), (60, 30, 40)) == (32, 32, 16)  # volume bound
    assert fitted_patch((64, 64, 64), None, (33, 17, 5)) == (48, 32, 16)  # no structure known


class _Case:
    def __init__(self, shape, sparse=None):
        self.shape, self.sparse = shape, sparse


def test_training_fits_the_window_only_when_asked_and_says_which(tmp_path):
    labeled = [_Case((60, 50, 40), three_slices((60, 50, 40), ((10, 30), (5, 15), (20, 28))))]
    unlabeled = [_Case((70, 20, 30))]
    events: list[dict] = []
    fitted = with_fitted_patch(
        preset("small", patch=[64, 64, 64], fit_patch=True),
        labeled,
        unlabeled,
        Progress(events.append),
    )
    assert fitted.patch == (32, 16, 16)
    assert "training window (32, 16, 16)" in events[-1]["message"]
    fixed = preset("small", patch=[64, 64, 64])
    assert with_fitted_patch(fixed, labeled, unlabeled) is fixed


def test_the_cpu_preset_fits_its_window():
    assert preset("cpu").fit_patch and not preset("paper").fit_patch


@pytest.mark.parametrize("value", ["batch", "mean"])
def test_the_training_region_prompt_is_a_named_choice(value):
    assert preset("small", training_region=value).training_region == value
    with pytest.raises(ValueError, match="training_region"):
        preset("small", training_region="cohort")


def test_a_preset_can_name_the_stride_its_bundles_predict_with():
    assert preset("cpu").inference_stride == "whole" and preset("paper").inference_stride == "dense"
    assert preset("cpu").inference_mirror and not preset("paper").inference_mirror
    assert preset("small", inference_stride="dense").inference_stride == "dense"
    with pytest.raises(ValueError, match="inference_stride"):
        preset("small", inference_stride="sparse")
