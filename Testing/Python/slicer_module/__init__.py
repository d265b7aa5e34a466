"""Tests of the Slicer module (RADASegment) against slicer-core and fakes of the Qt parts."""
