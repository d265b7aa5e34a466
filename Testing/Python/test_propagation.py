"""Propagation: chains of slice registrations carry the annotation through the volume."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import disk_stack

from RADALib.annotation import SparseAnnotation, simulate_sparse_annotation
from RADALib.metrics import dice
from RADALib.propagation import (
    PropagationConfig,
    interpolate_shapes,
    propagate,
    vote,
    voxel_weights,
)
from RADALib.registration import AntsRegistrar, PairResult, RegistrationConfig, identity_coordinates


def axial_only(label, index):
    sparse = np.zeros_like(label)
    sparse[:, :, index] = label[:, :, index]
    return SparseAnnotation(sparse, {2: (index,)})


@pytest.mark.parametrize("step", [1, 3])
def test_a_label_moved_by_a_known_shift_comes_back(translation_registrar, step):
    image, label = disk_stack(shift_per_slice=(1.0, 0.0))
    result = propagate(
        image,
        axial_only(label, 15),
        (1, 1, 1),
        translation_registrar,
        PropagationConfig(slice_step=step, crop_margin=40),
    )
    propagated = result.labels[2]
    for z in range(label.shape[2]):
        assert dice(propagated[:, :, z], label[:, :, z]) > 0.95, z
    np.testing.assert_array_equal(result.distances[2], np.abs(np.arange(30) - 15))


def test_a_larger_slice_step_registers_fewer_pairs(translation_registrar):
    image, label = disk_stack(shift_per_slice=(1.0, 0.0))
    config = PropagationConfig(slice_step=1, crop_margin=40)
    propagate(image, axial_only(label, 15), (1, 1, 1), translation_registrar, config)
    every_slice = translation_registrar.calls
    translation_registrar.calls = 0
    propagate(
        image,
        axial_only(label, 15),
        (1, 1, 1),
        translation_registrar,
        PropagationConfig(slice_step=3, crop_margin=40),
    )
    assert every_slice == 29 and translation_registrar.calls == 10


class BlankMapsOutside:
    """Identity between textured slices; a blank fixed slice maps outside the moving one."""

    def __init__(self) -> None:
        self.calls = 0

    def register(self, pairs, spacing):
        self.calls += len(pairs)
        results = []
        for fixed, _ in pairs:
            coordinates = identity_coordinates(fixed.shape)
            if fixed.max() == fixed.min():
                coordinates[:] = -10.0
            results.append(PairResult(coordinates, "fake"))
        return results


def test_chains_stop_where_the_label_vanishes():
    image, label = disk_stack(shape=(48, 40, 40), shift_per_slice=(0.0, 0.0))
    label[:, :, :12] = 0
    label[:, :, 28:] = 0
    image[:, :, :12] = 0
    image[:, :, 28:] = 0
    stopping, exhaustive = BlankMapsOutside(), BlankMapsOutside()
    annotation = axial_only(label, 20)
    stopped = propagate(image, annotation, (1, 1, 1), stopping, PropagationConfig(slice_step=1))
    propagate(
        image,
        annotation,
        (1, 1, 1),
        exhaustive,
        PropagationConfig(slice_step=1, stop_when_empty=False),
    )
    assert stopping.calls < exhaustive.calls == 39
    assert stopped.labels[2][:, :, 12:28].any(axis=(0, 1)).all()
    assert not stopped.labels[2][:, :, :12].any() and not stopped.labels[2][:, :, 28:].any()


def test_chains_go_on_past_the_annotated_box_while_the_label_lasts(translation_registrar):
    image, label = disk_stack(shape=(48, 40, 40), shift_per_slice=(0.0, 0.0))
    sparse = np.zeros_like(label)
    sparse[:, :, 20] = label[:, :, 20]
    annotation = SparseAnnotation(sparse, {2: (20,)})  # the box says one slice; the label goes on
    result = propagate(
        image, annotation, (1, 1, 1), translation_registrar, PropagationConfig(slice_step=1)
    )
    assert result.labels[2].any(axis=(0, 1)).all()


def test_registrations_are_cropped_to_the_annotated_box(translation_registrar):
    image, label = disk_stack(shape=(80, 70, 20), radius=6, shift_per_slice=(0.0, 0.0))
    seen = []
    original = translation_registrar.register

    def spy(pairs, spacing):
        seen.extend(fixed.shape for fixed, _ in pairs)
        return original(pairs, spacing)

    translation_registrar.register = spy
    propagate(
        image,
        axial_only(label, 10),
        (1, 1, 1),
        translation_registrar,
        PropagationConfig(crop_margin=5),
    )
    assert seen and all(shape == (23, 23) for shape in seen)


def test_two_sources_in_one_plane_meet_half_way(translation_registrar):
    image, label = disk_stack(shift_per_slice=(1.0, 0.0))
    sparse = np.zeros_like(label)
    sparse[:, :, [5, 25]] = label[:, :, [5, 25]]
    result = propagate(
        image,
        SparseAnnotation(sparse, {2: (5, 25)}),
        (1, 1, 1),
        translation_registrar,
        PropagationConfig(crop_margin=40),
    )
    np.testing.assert_array_equal(
        result.distances[2][[0, 5, 10, 15, 16, 25, 29]], [5, 0, 5, 10, 9, 0, 4]
    )
    assert all(dice(result.labels[2][:, :, z], label[:, :, z]) > 0.95 for z in range(30))


def test_weights_are_one_on_annotated_voxels_and_alpha_to_the_distance_elsewhere():
    label = np.zeros((6, 6, 6), np.uint8)
    label[2:4, 2:4, 2:4] = 1
    annotation = simulate_sparse_annotation(label, slices={0: [2], 1: [3], 2: [2]})
    distance = np.abs(np.arange(6) - 2)
    weights = voxel_weights(distance, 2, annotation, alpha=0.5)
    assert (
        weights[0, 0, 2] == 1.0 and weights[2, 5, 5] == 1.0 and weights[5, 3, 0] == 1.0
    )  # on annotated slices
    assert weights[5, 5, 5] == pytest.approx(0.5**3) and weights[0, 0, 4] == pytest.approx(0.25)


def test_mixed_label_takes_the_truth_on_annotated_slices(translation_registrar):
    image, label = disk_stack(shift_per_slice=(1.0, 0.0))
    annotation = simulate_sparse_annotation(label)
    result = propagate(image, annotation, (1, 1, 1), translation_registrar, PropagationConfig())
    result.labels[0][:] = 0  # a view that found nothing
    mixed = result.mixed_label(0)
    mask = annotation.annotated_mask()
    np.testing.assert_array_equal(mixed[mask], label[mask])
    assert not mixed[~mask].any()


def test_vote_follows_the_majority_and_the_weights():
    a, b, c = (np.array([[[v]]], np.uint8) for v in (1, 1, 0))
    assert vote([a, b, c], [np.ones(1)] * 3)[0, 0, 0] == 1
    assert vote([a, b, c], [np.full(1, 0.1), np.full(1, 0.1), np.full(1, 1.0)])[0, 0, 0] == 0


def test_shape_interpolation_halfway_between_two_disks_is_the_middle_disk():
    x, y = np.mgrid[:40, :40]
    first = ((x - 17) ** 2 + (y - 20) ** 2 <= 64).astype(np.uint8) * 2
    last = ((x - 23) ** 2 + (y - 20) ** 2 <= 64).astype(np.uint8) * 2
    middle = ((x - 20) ** 2 + (y - 20) ** 2 <= 64).astype(np.uint8) * 2
    halfway = interpolate_shapes(first, last, 0.5)
    assert set(np.unique(halfway)) == {0, 2}
    assert dice(halfway, middle) > 0.9  # averaging distances shrinks a shifted shape a little
    small = ((x - 20) ** 2 + (y - 20) ** 2 <= 36).astype(np.uint8)
    large = ((x - 20) ** 2 + (y - 20) ** 2 <= 100).astype(np.uint8)
    between = ((x - 20) ** 2 + (y - 20) ** 2 <= 64).astype(np.uint8)
    assert dice(interpolate_shapes(small, large, 0.5), between) > 0.97
    assert dice(interpolate_shapes(first, last, 0.0), first) == 1.0


def test_ants_propagation_follows_a_sub_pixel_drift():
    image, label = disk_stack(shape=(40, 36, 16), radius=7, shift_per_slice=(0.6, 0.3))
    with AntsRegistrar(RegistrationConfig(), workers=1) as registrar:
        result = propagate(
            image, axial_only(label, 8), (1.0, 1.0, 1.0), registrar, PropagationConfig(slice_step=2)
        )
    assert result.methods.get("SyNOnly", 0) == result.registrations > 0
    assert dice(result.labels[2], label) > 0.9
    assert (
        dice(result.labels[2][:, :, 0], label[:, :, 0]) > 0.8
    )  # 8 slices (4.8 px) from the source


def test_ants_pool_of_two_processes_gives_the_same_labels_as_one():
    image, label = disk_stack(shape=(32, 32, 10), radius=6, shift_per_slice=(0.5, 0.0))
    config = PropagationConfig(slice_step=1)
    with AntsRegistrar(config.registration, workers=1) as serial:
        one = propagate(image, axial_only(label, 5), (1, 1, 1), serial, config)
    with AntsRegistrar(config.registration, workers=2) as pool:
        two = propagate(image, axial_only(label, 5), (1, 1, 1), pool, config)
    np.testing.assert_array_equal(one.labels[2], two.labels[2])


def test_line_agreement_scores_a_view_against_the_crossing_annotated_lines():
    from RADALib.propagation import line_agreement

    label = np.zeros((10, 10, 10), np.uint8)
    label[2:8, 2:8, 2:8] = 1
    annotation = simulate_sparse_annotation(label, slices={0: [5], 1: [5], 2: [5]})
    assert np.allclose(line_agreement(label, annotation, 2)[2:8], 1.0)
    shifted = np.roll(label, 3, axis=0)  # a view that drifted by 3 voxels along x
    agreement = line_agreement(shifted, annotation, 2)
    assert np.all(agreement[2:8] < 0.8) and agreement[0] == 0.5  # slice 0: no label on its lines


def test_weighted_fusion_trusts_the_view_that_agrees_with_the_annotation(translation_registrar):
    image, label = disk_stack(shift_per_slice=(1.0, 0.0))
    annotation = simulate_sparse_annotation(label)
    result = propagate(
        image, annotation, (1, 1, 1), translation_registrar, PropagationConfig(crop_margin=40)
    )
    result.labels[0] = np.roll(label, 6, axis=1)  # two views drift the same wrong way
    result.labels[1] = np.roll(label, 6, axis=1)
    assert dice(result.fused("majority"), label) < dice(result.fused("weighted"), label)


def _whole_slice_interpolation(first, last, fraction):
    """The plain definition: signed distances over the whole slice, per class."""
    from scipy import ndimage

    def signed(mask):
        if not mask.any():
            return np.full(mask.shape, float(sum(mask.shape)))
        return np.where(
            mask,
            0.5 - ndimage.distance_transform_edt(mask),
            ndimage.distance_transform_edt(~mask) - 0.5,
        )

    out, best = np.zeros_like(first), np.full(first.shape, np.inf)
    for value in np.union1d(np.unique(first), np.unique(last)):
        if value:
            blend = (1 - fraction) * signed(first == value) + fraction * signed(last == value)
            take = (blend < 0) & (blend < best)
            out[take], best = value, np.where(take, blend, best)
    return out


def test_interpolation_on_the_labels_box_equals_the_whole_slice_definition():
    from RADALib.propagation import interpolate_shapes_at

    rng = np.random.default_rng(1)
    for _ in range(60):  # discs of two classes, touching the edges or not, some slices empty
        h, w = rng.integers(8, 50, 2)
        y, x = np.ogrid[:h, :w]
        pair = []
        for _ in range(2):
            label = np.zeros((h, w), np.uint8)
            for _ in range(rng.integers(0, 3)):
                r, c, radius = rng.integers(0, h), rng.integers(0, w), rng.integers(1, 10)
                label[(y - r) ** 2 + (x - c) ** 2 <= radius**2] = rng.integers(1, 3)
            pair.append(label)
        fractions = [1 / 3, 2 / 3]
        for fraction, fast in zip(fractions, interpolate_shapes_at(*pair, fractions)):
            np.testing.assert_array_equal(fast, _whole_slice_interpolation(*pair, fraction))


def cone_stack(shape=(60, 60, 24)):
    """Axial slices holding a disk whose radius shrinks from 14 (z = 0) by 0.5 per slice."""
    x, y = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    rng = np.random.default_rng(1)
    label = np.zeros(shape, np.uint8)
    for z in range(shape[2]):
        label[:, :, z] = (x - 30) ** 2 + (y - 30) ** 2 <= (14 - 0.5 * z) ** 2
    image = label.astype(np.float32) + rng.normal(0, 0.05, shape).astype(np.float32)
    return image, label


def test_each_pair_is_cropped_to_the_label_it_carries():
    image, label = cone_stack()
    seen = []

    class Spy(AntsRegistrar):
        def submit(self, fixed, moving, spacing):
            seen.append(fixed.shape)
            return super().submit(fixed, moving, spacing)

    with Spy(RegistrationConfig(), workers=1) as registrar:
        result = propagate(
            image,
            axial_only(label, 0),
            (1, 1, 1),
            registrar,
            PropagationConfig(slice_step=1, crop_margin=3),
        )
    assert seen[0] == (29 + 6, 29 + 6)  # the source disk's box (29 pixels) plus the margin
    assert seen[-1][0] < seen[0][0] - 10  # the crops shrink with the disk
    assert all(later[0] <= earlier[0] + 2 for earlier, later in zip(seen, seen[1:]))
    assert dice(result.labels[2], label) > 0.85


class ShuffledPool:
    """A registrar whose pairs finish in a random order (threads with random delays)."""

    workers = 3

    def __init__(self, inner) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.inner = inner
        self.pool = ThreadPoolExecutor(3)
        self.rng = np.random.default_rng(0)

    def register(self, pairs, spacing):
        return self.inner.register(pairs, spacing)

    def submit(self, fixed, moving, spacing):
        import time

        delay = float(self.rng.uniform(0, 0.01))

        def job():
            time.sleep(delay)
            return self.inner.register([(fixed, moving)], spacing)[0]

        return self.pool.submit(job)


def test_the_labels_do_not_depend_on_the_order_registrations_finish(translation_registrar):
    image, label = disk_stack(shift_per_slice=(0.8, 0.4))
    annotation = simulate_sparse_annotation(label)
    config = PropagationConfig(crop_margin=6)
    in_order = propagate(image, annotation, (1, 1, 1), translation_registrar, config)
    pool = ShuffledPool(translation_registrar)
    shuffled = propagate(image, annotation, (1, 1, 1), pool, config)
    pool.pool.shutdown()
    assert shuffled.registrations == in_order.registrations > 0
    for axis in range(3):
        np.testing.assert_array_equal(shuffled.labels[axis], in_order.labels[axis])


def test_settings_of_older_manifests_are_ignored():
    old = PropagationConfig().to_dict() | {"extent_margin": 6, "crop_margin": 12}
    assert PropagationConfig.from_dict(old) == PropagationConfig(crop_margin=12)
