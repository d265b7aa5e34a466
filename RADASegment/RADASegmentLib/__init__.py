"""The RADASegment module's library: Slicer nodes <-> engine files, the engine process, the panel.

Only :mod:`widget` imports ``qt``; :mod:`logic` and :mod:`nodes` use the MRML scene (``slicer``,
``vtk``) and run the RADALib engine in its own process. No algorithm lives here: segmentation,
propagation and training are RADALib's.
"""
