"""RADALib: the RADA engine (Region-Aware Dual-encoder Auxiliary learning).

Pure Python + numpy/SimpleITK/ANTs/torch; it never imports ``slicer`` or ``qt``.
Arrays are in (x, y, z) = (sagittal, coronal, axial) index order; geometry travels beside them
in :class:`RADALib.volume.Volume`.
"""

__version__ = "0.1.0"
