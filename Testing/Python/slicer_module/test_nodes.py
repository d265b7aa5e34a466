"""RADASegmentLib.nodes against the real slicer-core classes: no geometry drift, any orientation."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from RADALib.annotation import detect_sparse_annotation
from RADALib.errors import InputError
from RADALib.terminology import class_entry
from RADALib.volume import read_volume, write_like

SHAPE_KJI = (16, 24, 20)  # arrays are (K, J, I); the volume is 20 x 24 x 16 voxels


def _matrix(columns, origin) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = np.asarray(columns, float).T  # row c of ``columns`` is IJK axis c in RAS
    matrix[:3, 3] = origin
    return matrix


# I runs towards inferior (axial, reversed), J towards right (sagittal, reversed in LPS),
# K towards anterior (coronal, reversed in LPS); anisotropic; left-handed IJK-to-RAS.
PERMUTED = _matrix([(0, 0, -2.0), (0.7, 0, 0), (0, 1.3, 0)], (10.0, -20.0, 30.0))
# The usual DICOM-like volume: I towards left, J towards posterior, K towards superior (RAS).
LPS_LIKE = _matrix([(-0.8, 0, 0), (0, -0.9, 0), (0, 0, 2.5)], (-5.0, 12.0, -40.0))
GEOMETRIES = {"permuted": PERMUTED, "lps_like": LPS_LIKE}
EXPECTED_PLANE_AXES = {
    "permuted": {"sagittal": 1, "coronal": 2, "axial": 0},
    "lps_like": {"sagittal": 0, "coronal": 1, "axial": 2},
}


@pytest.fixture
def nodes(slicer_session):
    from RADASegmentLib import nodes as module

    return module


def _volume(matrix: np.ndarray, name: str = "CT chest", shape=SHAPE_KJI, seed: int = 0):
    import slicer

    array = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    return slicer.util.addVolumeFromArray(array, matrix, name=name), array


def _segmentation(volume_node, names=("target",)):
    import slicer

    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "user segmentation")
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    ids = [node.GetSegmentation().AddEmptySegment("", name) for name in names]
    return node, ids


def _paint(segmentation_node, segment_id, array_kji, volume_node) -> None:
    import slicer

    slicer.util.updateSegmentBinaryLabelmapFromArray(
        array_kji.astype(np.uint8), segmentation_node, segment_id, volume_node
    )


def _one_slice_per_plane(shape_kji, axes: dict[str, int], indices: dict[str, int]) -> np.ndarray:
    """A mask painted on one whole-ish slice of each plane (IJK axis -> array axis 2 - axis)."""
    mask = np.zeros(shape_kji, np.uint8)
    for plane, axis in axes.items():
        key = [slice(3, -3)] * 3
        key[2 - axis] = indices[plane]
        mask[tuple(key)] = 1
    return mask


def _canonical_index(ijk_index: int, axis_ijk: int, matrix: np.ndarray, size: int) -> int:
    """The engine's index of IJK slice ``ijk_index``: reversed where the axis runs to R or A."""
    lps = np.diag([-1.0, -1.0, 1.0]) @ matrix[:3, axis_ijk]
    return size - 1 - ijk_index if lps[np.argmax(np.abs(lps))] < 0 else ijk_index


def _digest(segmentation_node) -> tuple:
    import slicer

    segmentation = segmentation_node.GetSegmentation()
    parts = [
        segmentation_node.GetMTime(),
        segmentation.GetMTime(),
        segmentation.GetNumberOfSegments(),
        segmentation_node.GetNumberOfDisplayNodes(),
    ]
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        names = []
        segmentation.GetSegment(segment_id).GetContainedRepresentationNames(names)
        array = slicer.util.arrayFromSegmentInternalBinaryLabelmap(segmentation_node, segment_id)
        parts += [
            segment_id,
            tuple(names),
            hashlib.sha256(array.tobytes()).hexdigest(),
            array.shape,
        ]
    return tuple(parts)


# ----------------------------------------------------------------------------- session


def test_setup_session_is_idempotent_and_gives_the_module_logics(slicer_session):
    import slicer
    import slicer_scene

    assert slicer_scene.setup_session() is slicer_session
    assert slicer.mrmlScene is slicer_session.scene
    assert slicer.modules.segmentations.logic() is slicer_session.logic("segmentations")
    assert slicer.modules.volumes.logic() is slicer_session.logic("volumes")
    assert slicer.mrmlScene.GetSubjectHierarchyNode() is not None
    assert slicer.mrmlScene.GetNodeByID("vtkMRMLColorTableNodeFileGenericColors.txt") is not None


# ----------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_export_volume_reads_back_in_canonical_order_at_the_same_physical_positions(
    scene, nodes, tmp_path, geometry
):
    matrix = GEOMETRIES[geometry]
    volume_node, array = _volume(matrix)
    path = nodes.export_volume(volume_node, tmp_path / "image.nrrd")
    assert path == tmp_path / "image.nrrd" and [p.name for p in tmp_path.iterdir()] == [
        "image.nrrd"
    ]

    volume = read_volume(path)
    axes = nodes.plane_axes(volume_node)
    assert axes == EXPECTED_PLANE_AXES[geometry]
    ijk = np.transpose(array, (2, 1, 0))
    expected = np.transpose(ijk, [axes[p] for p in ("sagittal", "coronal", "axial")])
    for c, plane in enumerate(("sagittal", "coronal", "axial")):
        if _canonical_index(0, axes[plane], matrix, 2) == 1:
            expected = np.flip(expected, c)
    np.testing.assert_array_equal(volume.array, expected)

    rng = np.random.default_rng(1)
    to_canonical = np.linalg.inv(np.asarray(volume.direction) * np.asarray(volume.spacing))
    for _ in range(20):
        i, j, k = (int(rng.integers(n)) for n in (20, 24, 16))
        lps = np.diag([-1.0, -1.0, 1.0]) @ np.array(nodes.voxel_center_ras(volume_node, (i, j, k)))
        index = np.round(to_canonical @ (lps - np.asarray(volume.origin))).astype(int)
        assert volume.array[tuple(index)] == array[k, j, i]


def test_oblique_volume_is_refused_with_its_name(scene, nodes, tmp_path):
    angle = np.radians(12)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    volume_node, _ = _volume(
        _matrix((rotation @ np.diag([0.8, 0.8, 2.0])).T, (0, 0, 0)), name="tilted MR"
    )
    assert nodes.volume_obliquity(volume_node) == pytest.approx(np.sin(angle))
    with pytest.raises(InputError) as caught:
        nodes.check_not_oblique(volume_node)
    message = str(caught.value)
    assert "tilted MR" in message and "oblique" in message and "Crop Volume" in message
    assert "\n" not in message

    straight, _ = _volume(PERMUTED, name="straight")
    nodes.check_not_oblique(straight)
    assert nodes.volume_obliquity(straight) == 0.0


def test_suggested_slices_use_the_roi_centre_snapped_to_a_voxel_else_the_middle_voxel(scene, nodes):
    volume_node, _ = _volume(PERMUTED)
    middle = nodes.suggested_slices(volume_node)
    r, a, s = nodes.voxel_center_ras(volume_node, (9, 11, 7))
    assert middle == pytest.approx({"sagittal": r, "coronal": a, "axial": s})

    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    assert nodes.suggested_slices(volume_node, roi) == pytest.approx(middle)  # not placed yet
    target = nodes.voxel_center_ras(volume_node, (4, 20, 2))
    roi.SetCenter(target[0] + 0.2, target[1] - 0.3, target[2] + 0.4)
    roi.SetSize(10, 10, 10)
    suggested = nodes.suggested_slices(volume_node, roi)
    assert suggested == pytest.approx(
        {"sagittal": target[0], "coronal": target[1], "axial": target[2]}
    )


# ----------------------------------------------------------------------------- user segmentation -> engine


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_annotated_slices_reports_each_plane_and_the_engine_finds_the_same_planes(
    scene, nodes, tmp_path, geometry
):
    matrix = GEOMETRIES[geometry]
    volume_node, _ = _volume(matrix)
    segmentation_node, (segment_id,) = _segmentation(volume_node)
    axes = nodes.plane_axes(volume_node)
    painted = {"sagittal": 5, "coronal": 9, "axial": 12}
    _paint(
        segmentation_node, segment_id, _one_slice_per_plane(SHAPE_KJI, axes, painted), volume_node
    )

    assert nodes.annotated_slices(segmentation_node, segment_id, volume_node) == {
        p: [i] for p, i in painted.items()
    }

    path = nodes.export_label_map(
        segmentation_node, {1: segment_id}, volume_node, tmp_path / "label.nrrd"
    )
    image = read_volume(nodes.export_volume(volume_node, tmp_path / "image.nrrd"))
    label = read_volume(path, kind="label")
    assert label.same_grid(image) is None and label.array.dtype == np.uint8
    sizes = {0: 20, 1: 24, 2: 16}
    expected = {
        p: (_canonical_index(i, axes[p], matrix, sizes[axes[p]]),) for p, i in painted.items()
    }
    assert detect_sparse_annotation(label.array, source=str(path)).planes() == expected


def test_annotated_slices_never_raises_for_incomplete_annotation(scene, nodes):
    volume_node, _ = _volume(PERMUTED)
    segmentation_node, (segment_id,) = _segmentation(volume_node)
    assert nodes.annotated_slices(segmentation_node, segment_id, volume_node) == {
        "sagittal": [],
        "coronal": [],
        "axial": [],
    }

    mask = np.zeros(SHAPE_KJI, np.uint8)
    mask[2:14, 4:20, 6] = 1  # I = 6: one axial slice
    mask[2:14, 4:20, 7] = 1  # and the next one (a 3D stroke): reported, not judged
    _paint(segmentation_node, segment_id, mask, volume_node)
    assert nodes.annotated_slices(segmentation_node, segment_id, volume_node) == {
        "sagittal": [],
        "coronal": [],
        "axial": [6, 7],
    }


def test_segmentation_painted_on_a_finer_grid_is_resampled_onto_the_volume(scene, nodes):
    import slicer

    volume_node, _ = _volume(LPS_LIKE)
    fine_matrix = LPS_LIKE.copy()
    fine_matrix[:3, :3] /= 2.0  # half the spacing, same first voxel centre
    fine = slicer.util.addVolumeFromArray(
        np.zeros((32, 48, 40), np.uint8),
        fine_matrix,
        name="fine",
        nodeClassName="vtkMRMLLabelMapVolumeNode",
    )
    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "painted finer")
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(fine)
    segment_id = segmentation_node.GetSegmentation().AddEmptySegment("", "target")
    mask = np.zeros((32, 48, 40), np.uint8)
    mask[10:30, 8:40, 22] = 1  # fine I = 22 is coarse I = 11
    _paint(segmentation_node, segment_id, mask, fine)

    label = nodes.segment_label_array(segmentation_node, {3: segment_id}, volume_node)
    assert label.shape == SHAPE_KJI and label.dtype == np.uint8
    assert set(np.unique(label)) == {0, 3}
    assert np.array_equal(np.nonzero(label)[2], np.full(np.count_nonzero(label), 11))
    assert nodes.annotated_slices(segmentation_node, segment_id, volume_node)["sagittal"] == [11]


def test_overlapping_segments_take_the_higher_class(scene, nodes):
    volume_node, _ = _volume(PERMUTED)
    segmentation_node, (low, high) = _segmentation(volume_node, ("low", "high"))
    a = np.zeros(SHAPE_KJI, np.uint8)
    b = np.zeros(SHAPE_KJI, np.uint8)
    a[4:10, 4:10, 4:10] = 1
    b[8:12, 8:12, 8:12] = 1
    _paint(segmentation_node, low, a, volume_node)
    _paint(segmentation_node, high, b, volume_node)
    label = nodes.segment_label_array(segmentation_node, {2: high, 1: low}, volume_node)
    expected = np.where(b > 0, 2, np.where(a > 0, 1, 0))
    np.testing.assert_array_equal(label, expected)
    assert nodes.segment_label_array(segmentation_node, {300: high}, volume_node).dtype == np.uint16


def test_the_users_segmentation_is_unchanged_by_export(scene, nodes, tmp_path):
    volume_node, _ = _volume(PERMUTED)
    segmentation_node, ids = _segmentation(volume_node, ("one", "two"))
    _paint(
        segmentation_node,
        ids[0],
        _one_slice_per_plane(
            SHAPE_KJI, nodes.plane_axes(volume_node), {"sagittal": 3, "coronal": 4, "axial": 5}
        ),
        volume_node,
    )
    before = _digest(segmentation_node)
    node_count = scene.GetNumberOfNodes()
    nodes.annotated_slices(segmentation_node, ids[0], volume_node)
    nodes.export_label_map(
        segmentation_node, {1: ids[0], 2: ids[1]}, volume_node, tmp_path / "label.nrrd"
    )
    assert _digest(segmentation_node) == before
    assert scene.GetNumberOfNodes() == node_count


def test_closed_surface_segment_is_converted_on_a_copy_not_on_the_users_node(scene, nodes):
    import slicer
    import vtk

    volume_node, _ = _volume(LPS_LIKE)
    centre = nodes.voxel_center_ras(volume_node, (10, 12, 8))
    sphere = vtk.vtkSphereSource()
    sphere.SetCenter(*centre)
    sphere.SetRadius(5.0)
    sphere.Update()
    model = scene.AddNewNodeByClass("vtkMRMLModelNode", "ball")
    model.SetAndObservePolyData(sphere.GetOutput())
    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "surfaces")
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    segmentation_node.GetSegmentation().SetSourceRepresentationName("Closed surface")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportModelToSegmentationNode(
        model, segmentation_node, ""
    )
    segment_id = segmentation_node.GetSegmentation().GetNthSegmentID(0)
    before = (segmentation_node.GetMTime(), scene.GetNumberOfNodes())

    label = nodes.segment_label_array(segmentation_node, {1: segment_id}, volume_node)
    assert np.count_nonzero(label) > 100
    np.testing.assert_allclose(np.argwhere(label).mean(axis=0), (8, 12, 10), atol=0.5)  # (K, J, I)
    names: list[str] = []
    segmentation_node.GetSegmentation().GetSegment(segment_id).GetContainedRepresentationNames(
        names
    )
    assert names == ["Closed surface"]
    assert (segmentation_node.GetMTime(), scene.GetNumberOfNodes()) == before


def test_missing_segment_is_reported_by_segmentation_name(scene, nodes):
    volume_node, _ = _volume(PERMUTED)
    segmentation_node, _ = _segmentation(volume_node)
    with pytest.raises(InputError, match="user segmentation.*'gone'"):
        nodes.segment_label_array(segmentation_node, {1: "gone"}, volume_node)


# ----------------------------------------------------------------------------- engine result -> segmentation


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_result_loads_back_voxel_exactly_with_names_colours_terminology_and_folder(
    scene, nodes, tmp_path, geometry
):
    import slicer

    volume_node, _ = _volume(GEOMETRIES[geometry])
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    folder = sh.CreateFolderItem(sh.GetSceneItemID(), "Patient 7")
    sh.CreateItem(folder, volume_node)

    image = read_volume(nodes.export_volume(volume_node, tmp_path / "image.nrrd"))
    result = np.zeros(image.shape, np.uint8)
    result[3:9, 2:6, 4:10] = 1
    result[12:15, 10:14, 1:3] = 3
    write_like(image, result, tmp_path / "result.nrrd")
    classes = {
        1: class_entry("left atrium", 1),
        2: class_entry("kidney tumor", 2),
        3: class_entry("scar", 3),
    }
    name = nodes.node_name_for(volume_node, "RADA")
    node = nodes.load_label_map_as_segmentation(
        tmp_path / "result.nrrd", volume_node, classes, name
    )

    assert node.GetName() == "CT chest RADA"
    segmentation = node.GetSegmentation()
    assert [
        segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())
    ] == ["left atrium", "kidney tumor", "scar"]
    written_kji = np.transpose(
        _file_order(tmp_path / "result.nrrd"), (2, 1, 0)
    )  # the volume's IJK order
    for value, entry in classes.items():
        segment_id = segmentation.GetSegmentIdBySegmentName(entry["name"])
        segment = segmentation.GetSegment(segment_id)
        assert segment.GetColor() == pytest.approx(tuple(entry["color"]))
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(node, segment_id, volume_node)
        np.testing.assert_array_equal(mask, (written_kji == value).astype(mask.dtype))
    tumour = segmentation.GetSegment(
        segmentation.GetSegmentIdBySegmentName("kidney tumor")
    ).GetTerminology()
    assert tumour == (
        "Segmentation category and type - DICOM master list~SCT^49755003^Morphologically Altered Structure"
        "~SCT^4147007^Mass~^^~Anatomic codes - DICOM master list~SCT^64033007^Kidney~^^"
    )
    atrium = segmentation.GetSegment(
        segmentation.GetSegmentIdBySegmentName("left atrium")
    ).GetTerminology()
    assert "SCT^82471001^Left atrium" in atrium
    assert (
        segmentation.GetSegment(
            segmentation.GetSegmentIdBySegmentName("kidney tumor")
        ).GetLabelValue()
        == 2
    )

    assert (
        node.GetNodeReference(
            slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
        )
        is volume_node
    )
    assert sh.GetItemParent(sh.GetItemByDataNode(node)) == folder
    assert scene.GetNodesByClass("vtkMRMLLabelMapVolumeNode").GetNumberOfItems() == 0
    assert nodes.node_name_for(volume_node, "RADA") == "CT chest RADA_1"


def _file_order(path) -> np.ndarray:
    """The label as stored in the file, (I, J, K) order, read without reorientation."""
    import SimpleITK as sitk

    return np.transpose(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), (2, 1, 0))


def test_result_loads_under_the_volumes_transform(scene, nodes, tmp_path):
    volume_node, _ = _volume(LPS_LIKE)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    import vtk

    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 25.0)
    transform.SetMatrixTransformToParent(matrix)
    volume_node.SetAndObserveTransformNodeID(transform.GetID())

    image = read_volume(nodes.export_volume(volume_node, tmp_path / "image.nrrd"))
    result = np.zeros(image.shape, np.uint8)
    result[5:8, 5:8, 5:8] = 1
    write_like(image, result, tmp_path / "result.nrrd")
    node = nodes.load_label_map_as_segmentation(
        tmp_path / "result.nrrd", volume_node, {1: class_entry("liver")}, "r"
    )
    assert node.GetTransformNodeID() == transform.GetID()
    assert nodes.voxel_center_ras(volume_node, (0, 0, 0))[0] == pytest.approx(LPS_LIKE[0, 3] + 25.0)


def test_result_on_another_grid_is_refused_naming_the_file(scene, nodes, tmp_path):
    volume_node, _ = _volume(LPS_LIKE)
    other, _ = _volume(PERMUTED, name="other")
    image = read_volume(nodes.export_volume(other, tmp_path / "other.nrrd"))
    write_like(image, np.zeros(image.shape, np.uint8), tmp_path / "result.nrrd")
    before = scene.GetNumberOfNodes()
    with pytest.raises(InputError, match=r"result\.nrrd: does not lie on volume 'CT chest'"):
        nodes.load_label_map_as_segmentation(
            tmp_path / "result.nrrd", volume_node, {1: class_entry("liver")}, "r"
        )
    assert scene.GetNumberOfNodes() == before


def test_unknown_label_values_in_a_result_still_get_a_segment(scene, nodes, tmp_path):
    volume_node, _ = _volume(LPS_LIKE)
    image = read_volume(nodes.export_volume(volume_node, tmp_path / "image.nrrd"))
    result = np.zeros(image.shape, np.uint8)
    result[1:3, 1:3, 1:3] = 7
    write_like(image, result, tmp_path / "result.nrrd")
    node = nodes.load_label_map_as_segmentation(
        tmp_path / "result.nrrd", volume_node, {1: class_entry("liver")}, "r"
    )
    segmentation = node.GetSegmentation()
    assert [
        segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())
    ] == ["liver", "label 7"]
