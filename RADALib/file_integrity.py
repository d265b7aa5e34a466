"""Whole files only: a volume file cut short or damaged is refused before it is read.

SimpleITK's NIfTI reader fills the voxels a cut-off file lacks with zeros, and its MetaImage
reader returns whatever a damaged compressed stream decodes to, without an error: the volume
read is then not the one that was saved. :func:`check_complete` reads the header itself and
checks that the file (or the data file a header names) holds every byte of voxel data the
header announces, and that a compressed stream runs to its end marker with a matching checksum
(zlib checks a gzip stream's CRC-32 and length, a zlib stream's Adler-32).

Formats: NIfTI-1 and -2 (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``; data attached or in
a data file, raw or gzip), MetaImage (``.mha``, ``.mhd``; data local or in a data file, raw or
zlib) and HDF5 (the end-of-file address its superblock records). Compressed data is decoded in
pieces and counted, never held whole in memory. What the check cannot interpret (an unusual
header, ASCII or bzip2 data, data split over several files) is left to the reader, which
reports its own errors.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

from .errors import InputError

_CHUNK = 1 << 20
"""Bytes read, or decoded, at a time."""

_HEADER_LIMIT = 1 << 20
"""A text header (NRRD, MetaImage) longer than this is left to the reader."""

_GZIP_MAGIC = b"\x1f\x8b"
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

_NRRD_TYPE_BYTES = {
    **dict.fromkeys(
        ("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"), 1
    ),
    **dict.fromkeys(
        (
            "short",
            "short int",
            "signed short",
            "signed short int",
            "int16",
            "int16_t",
            "ushort",
            "unsigned short",
            "unsigned short int",
            "uint16",
            "uint16_t",
        ),
        2,
    ),
    **dict.fromkeys(
        (
            "int",
            "signed int",
            "int32",
            "int32_t",
            "uint",
            "unsigned int",
            "uint32",
            "uint32_t",
            "float",
        ),
        4,
    ),
    **dict.fromkeys(
        (
            "longlong",
            "long long",
            "long long int",
            "signed long long",
            "signed long long int",
            "int64",
            "int64_t",
            "ulonglong",
            "unsigned long long",
            "unsigned long long int",
            "uint64",
            "uint64_t",
            "double",
        ),
        8,
    ),
}

_NIFTI_TYPE_BYTES = {
    2: 1,  # uint8
    4: 2,  # int16
    8: 4,  # int32
    16: 4,  # float32
    32: 8,  # complex64
    64: 8,  # float64
    128: 3,  # rgb24
    256: 1,  # int8
    512: 2,  # uint16
    768: 4,  # uint32
    1024: 8,  # int64
    1280: 8,  # uint64
    1536: 16,  # float128
    1792: 16,  # complex128
    2048: 32,  # complex256
    2304: 4,  # rgba32
}
"""Bytes per voxel by NIfTI datatype code (the reader goes by the code, not by bitpix)."""

_META_TYPE_BYTES = {
    "MET_CHAR": 1,
    "MET_UCHAR": 1,
    "MET_SHORT": 2,
    "MET_USHORT": 2,
    "MET_INT": 4,
    "MET_UINT": 4,
    "MET_LONG_LONG": 8,
    "MET_ULONG_LONG": 8,
    "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
}


def check_complete(path: str | os.PathLike[str]) -> None:
    """Raise :class:`InputError` naming ``path`` when its voxel data is cut short, its data file
    is missing or short, or its compressed data fails its checksum; else return quietly.

    Only the header is parsed and the data counted (compressed data decoded piece by piece);
    files of other formats, and headers this check cannot interpret, pass unchecked.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".nii.gz") or name.endswith(".nii"):
        _check_nifti(path)
    elif name.endswith((".nrrd", ".nhdr")):
        _check_nrrd(path)
    elif name.endswith((".mha", ".mhd")):
        _check_metaimage(path)
    elif name.endswith((".h5", ".hdf5")):
        _check_hdf5(path)


# ----------------------------------------------------------------------------- data checks


def _check_raw(source: Path, data: Path, offset: int, expected: int) -> None:
    """``data`` holds ``expected`` bytes from ``offset`` (-1: at its end), else InputError."""
    have = max(0, data.stat().st_size - max(offset, 0))
    if have < expected:
        raise InputError(source, _truncated(source, data, have, expected))


def _check_compressed(source: Path, data: Path, offset: int, expected: int | None) -> None:
    """The gzip or zlib stream of ``data`` from ``offset`` runs to its end marker, its
    checksum matches, and it decodes to at least ``expected`` bytes (None: unknown)."""
    with data.open("rb") as handle:
        handle.seek(offset)
        total, _, problem = _inflate(handle, 0)
    _judge_stream(source, data, total, expected, problem)


def _judge_stream(
    source: Path, data: Path, total: int, expected: int | None, problem: str | None
) -> None:
    """Raise the InputError that a decoded stream's ``problem`` or short ``total`` calls for."""
    if problem == "ends":
        if expected is not None and total < expected:
            raise InputError(source, _truncated(source, data, total, expected))
        where = "" if data == source else f"its data file {data} is cut off: "
        raise InputError(
            source,
            f"truncated: {where}the compressed data stops before its end marker and checksum "
            "(the last bytes of the file are missing; an interrupted copy or download?)",
        )
    if problem is not None:
        where = "" if data == source else f"its data file {data}: "
        raise InputError(
            source,
            f"damaged: {where}the compressed data does not decode or does not match its checksum "
            f"({problem}); a corrupted copy?",
        )
    if expected is not None and total < expected:
        raise InputError(source, _truncated(source, data, total, expected))


def _truncated(source: Path, data: Path, have: int, expected: int) -> str:
    where = "the file" if data == source else f"its data file {data}"
    return (
        f"truncated: {where} holds {have} of the {expected} bytes of voxel data its header "
        f"announces ({expected - have} missing; an interrupted copy or download?)"
    )


def _inflate(handle: BinaryIO, keep: int) -> tuple[int, bytes, str | None]:
    """Decode the zlib or gzip stream from ``handle``'s position (gzip: every member) to its end.

    Returns (bytes decoded, the first ``keep`` of them, problem): problem is None for a whole
    stream, ``"ends"`` when the data stops before the end marker, else what is wrong."""
    decoder = zlib.decompressobj(32 + zlib.MAX_WBITS)  # zlib or gzip header, detected
    total, head, pending = 0, bytearray(), b""
    while True:
        data = decoder.unconsumed_tail or pending or handle.read(_CHUNK)
        pending = b""
        try:
            piece = decoder.decompress(data, _CHUNK)  # b"" in: what is still pending comes out
        except zlib.error as exc:
            return total, bytes(head), str(exc)
        total += len(piece)
        if len(head) < keep:
            head += piece[: keep - len(head)]
        if decoder.eof:
            rest = decoder.unused_data
            if len(rest) < len(_GZIP_MAGIC):
                rest += handle.read(_CHUNK)
            if not rest.startswith(_GZIP_MAGIC):
                return total, bytes(head), None
            decoder, pending = zlib.decompressobj(16 + zlib.MAX_WBITS), rest  # next member
        elif not data and not piece:
            return total, bytes(head), "ends"


# ----------------------------------------------------------------------------- NIfTI


def _check_nifti(path: Path) -> None:
    """A ``.nii`` (or ``.nii.gz``, gzip or not) holds its header's vox_offset plus every voxel."""
    with path.open("rb") as handle:
        compressed = handle.read(2) == _GZIP_MAGIC
        handle.seek(0)
        if compressed:
            total, head, problem = _inflate(handle, 544)
        else:
            head, total, problem = handle.read(544), path.stat().st_size, None
    if problem not in (None, "ends"):
        _judge_stream(path, path, total, None, problem)  # damaged: said before all else
    layout = _nifti_layout(path, head)
    if layout is None:
        if problem is not None:
            _judge_stream(path, path, total, None, problem)
        return
    offset, size = layout
    _judge_stream(path, path, max(0, total - offset), size, problem)


def _nifti_layout(path: Path, head: bytes) -> tuple[int, int] | None:
    """(byte offset of the voxels, bytes of voxel data) from a single-file NIfTI-1 or NIfTI-2
    header; None when ``head`` is not one (left to the reader)."""
    for order in "<>":
        if len(head) < 4:
            return None
        (size,) = struct.unpack(order + "i", head[:4])
        if size not in (348, 540):
            continue
        if len(head) < size:
            raise InputError(
                path,
                f"truncated: the file stops inside its {size}-byte NIfTI header "
                "(an interrupted copy or download?)",
            )
        if size == 348:
            if head[344:347] != b"n+1":  # a header-only .hdr/.img pair, or Analyze
                return None
            (datatype,) = struct.unpack(order + "h", head[70:72])
            dims = struct.unpack(order + "8h", head[40:56])
            (vox_offset,) = struct.unpack(order + "f", head[108:112])
        else:
            if head[4:7] != b"n+2":
                return None
            (datatype,) = struct.unpack(order + "h", head[12:14])
            dims = struct.unpack(order + "8q", head[16:80])
            (vox_offset,) = struct.unpack(order + "q", head[168:176])
        rank, voxel_bytes = dims[0], _NIFTI_TYPE_BYTES.get(datatype)
        if not 1 <= rank <= 7 or voxel_bytes is None or not math.isfinite(vox_offset):
            return None
        extent = dims[1 : rank + 1]
        if any(n < 1 for n in extent):
            return None
        return max(int(vox_offset), size), math.prod(extent) * voxel_bytes
    return None


# ----------------------------------------------------------------------------- NRRD


def _nrrd_header(path: Path) -> tuple[dict[str, str], int | None] | None:
    """A NRRD header's fields (names in lower case) and the byte offset after the blank line
    that ends it (None when the file ends first); None when not a NRRD or longer than the limit."""
    fields: dict[str, str] = {}
    with path.open("rb") as handle:
        if handle.readline(_HEADER_LIMIT)[:4] != b"NRRD":
            return None
        while True:
            raw = handle.readline(_HEADER_LIMIT)
            if handle.tell() > _HEADER_LIMIT:
                return None
            line = raw.decode("latin-1").rstrip("\r\n")
            if not raw or not line.strip():
                return fields, handle.tell() if raw else None
            if not line.startswith("#") and ":=" not in line and ": " in line:
                key, value = line.split(": ", 1)
                fields[" ".join(key.lower().split())] = value.strip()


def _check_nrrd(path: Path) -> None:
    """A NRRD's attached data, or its data file, holds every voxel its header announces."""
    header = _nrrd_header(path)
    if header is None:
        return
    fields, data_offset = header
    name = fields.get("data file", fields.get("datafile"))
    if name is None and data_offset is None:
        raise InputError(
            path,
            "truncated: the file stops inside its NRRD header, before the voxel data "
            "(an interrupted copy or download?)",
        )
    data = path if name is None else _data_file(path, name)
    skips = fields.get("byte skip", "0"), fields.get("line skip", "0")
    if data is None or not all(s.lstrip("-").isdigit() for s in skips) or int(skips[1]):
        return  # several data files, or lines of unknown length first: the reader checks
    start = data_offset if name is None else 0
    expected = _nrrd_data_bytes(fields)
    encoding = fields.get("encoding", "").lower()
    if encoding == "raw" and expected is not None:
        byte_skip = int(skips[0])
        _check_raw(path, data, start + byte_skip if byte_skip >= 0 else -1, expected)
    elif encoding in ("gzip", "gz"):
        _check_compressed(path, data, start, expected)


def _data_file(path: Path, name: str) -> Path | None:
    """The data file ``name`` that the header ``path`` names (relative to its folder); None for
    data spread over several files (a list or a numbered pattern). Refuses a missing file."""
    if name.split()[0].upper() == "LIST" or "%" in name:
        return None
    data = Path(name)
    data = data if data.is_absolute() else path.parent / data
    if not data.is_file():
        raise InputError(path, f"its data file {data} is not found")
    return data


def _nrrd_data_bytes(fields: dict[str, str]) -> int | None:
    """Bytes of voxel data a NRRD header announces (None when it cannot say)."""
    kind = " ".join(fields.get("type", "").lower().split())
    if kind == "block":
        element = fields.get("block size", fields.get("blocksize"))
        element_bytes = int(element) if element and element.isdigit() else None
    else:
        element_bytes = _NRRD_TYPE_BYTES.get(kind)
    try:
        sizes = [int(n) for n in fields.get("sizes", "").split()]
    except ValueError:
        return None
    if element_bytes is None or not sizes or any(n < 1 for n in sizes):
        return None
    return math.prod(sizes) * element_bytes


# ----------------------------------------------------------------------------- MetaImage


def _metaimage_header(path: Path) -> tuple[dict[str, str], int] | None:
    """A MetaImage header's fields (names in lower case) up to ElementDataFile and the byte
    offset after that line; None when the file is no MetaImage or its header is too long."""
    fields: dict[str, str] = {}
    with path.open("rb") as handle:
        while "elementdatafile" not in fields:
            raw = handle.readline(_HEADER_LIMIT)
            if handle.tell() > _HEADER_LIMIT:
                return None
            if not raw:
                if "objecttype" in fields or "ndims" in fields:
                    raise InputError(
                        path,
                        "truncated: the file stops inside its MetaImage header, before "
                        "ElementDataFile (an interrupted copy or download?)",
                    )
                return None
            key, equals, value = raw.decode("latin-1").partition("=")
            if equals:
                fields[key.strip().lower()] = value.strip()
        return fields, handle.tell()


def _check_metaimage(path: Path) -> None:
    """A MetaImage's local data, or its data file, holds every voxel its header announces."""
    header = _metaimage_header(path)
    if header is None:
        return
    fields, data_offset = header
    name = fields["elementdatafile"]
    local = name.upper() == "LOCAL"
    data = path if local else _data_file(path, name)
    skip = fields.get("headersize", "0")
    binary = fields.get("binarydata", "true").lower() != "false"
    if data is None or not binary or not skip.lstrip("-").isdigit():
        return  # several data files, or text data: the reader checks them
    start = data_offset if local else int(skip)
    expected = _metaimage_data_bytes(fields)
    if fields.get("compresseddata", "false").lower() == "true":
        _check_compressed(path, data, max(start, 0), expected)
    elif expected is not None:
        _check_raw(path, data, start, expected)


def _metaimage_data_bytes(fields: dict[str, str]) -> int | None:
    """Bytes of voxel data a MetaImage header announces (None when it cannot say)."""
    element = _META_TYPE_BYTES.get(fields.get("elementtype", "").upper())
    try:
        sizes = [int(n) for n in fields.get("dimsize", "").split()]
        channels = int(fields.get("elementnumberofchannels", "1"))
    except ValueError:
        return None
    if element is None or not sizes or any(n < 1 for n in sizes) or channels < 1:
        return None
    return math.prod(sizes) * channels * element


# ----------------------------------------------------------------------------- HDF5


def _check_hdf5(path: Path) -> None:
    """An HDF5 file is as long as the end-of-file address its superblock records."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        start = 0
        while start + 64 <= size:  # the superblock sits at 0, 512, 1024, 2048, ...
            handle.seek(start)
            block = handle.read(64)
            if block[:8] == _HDF5_SIGNATURE:
                break
            start = 512 if start == 0 else start * 2
        else:
            return  # no superblock found: the reader says what is wrong
    version = block[8]
    if version in (0, 1):
        width, fields_at = block[13], 24 + (4 if version == 1 else 0)
    elif version in (2, 3):
        width, fields_at = block[9], 12
    else:
        return
    if width not in (2, 4, 8) or fields_at + 4 * width > len(block):
        return

    def address(index: int) -> int | None:
        """Superblock address field ``index`` (0 base, 2 end of file, 3 driver block)."""
        raw = block[fields_at + index * width : fields_at + (index + 1) * width]
        value = int.from_bytes(raw, "little")
        return None if value == (1 << (8 * width)) - 1 else value  # all ones: undefined

    if version in (0, 1) and address(3) is not None:
        return  # a driver (multi-file) block: the end address spans several files
    needed = address(2)  # as HDF5 itself compares it: with any user block before the superblock
    if needed is not None and size < needed:
        raise InputError(
            path,
            f"truncated: the file has {size} of the {needed} bytes its HDF5 superblock records "
            f"({needed - size} missing; an interrupted copy or download?)",
        )
