"""Rebuild the LA2018 layout from ``pack_la.py``'s chunks: ``OUT/<id>/mri_norm2.h5``, ``OUT/train.list``."""

from __future__ import annotations

import argparse
import json
import lzma
from pathlib import Path

import h5py
import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--src", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    src, out = Path(args.src), Path(args.out)
    for header in sorted(src.glob("la*/*.json")):
        case_id = header.name[: -len(".json")]
        meta = json.loads(header.read_text())
        shape = tuple(meta["shape"])
        quantized = np.frombuffer(
            lzma.decompress((header.parent / f"{case_id}.image.xz").read_bytes()), np.uint8
        ).reshape(shape)
        label = np.frombuffer(
            lzma.decompress((header.parent / f"{case_id}.label.xz").read_bytes()), np.uint8
        ).reshape(shape)
        image = (
            meta["low"] + quantized.astype(np.float32) * ((meta["high"] - meta["low"]) / 255)
        ).astype(np.float32)
        (out / case_id).mkdir(parents=True, exist_ok=True)
        with h5py.File(out / case_id / "mri_norm2.h5", "w") as handle:
            handle["image"] = image
            handle["label"] = label
    (out / "train.list").write_text((src / "train.list").read_text())


if __name__ == "__main__":
    main()
