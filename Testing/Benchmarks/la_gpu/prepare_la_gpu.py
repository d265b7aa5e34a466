"""Prepare, on this CPU machine, everything the LA2018 GPU run needs that the GPU machine cannot make.

The GPU machine has torch, h5py, scipy and safetensors but no ANTs (antspyx), no SimpleITK and no
open_clip, and no network. So this script does here, once:

1. the cohort: the ids of ``train.list``; the first ``--labeled`` (8) are labeled (three orthogonal
   slices simulated from the dense label), the last ``--validation`` (10) are held out for
   validation, the rest are unlabeled;
2. the propagation of the labeled cases (real ANTs, RADA's default ``PropagationConfig``),
   cached by content in ``~/.cache/rada/propagation`` (a rerun takes seconds);
3. the frozen encoders' embeddings Et and Ev (``EncoderConfig`` defaults: ViT-B/16; seeded
   *random* towers unless Alpha-CLIP/CLIP weights sit in ``~/.cache/rada/weights``), for the
   paper preset's region mode (``alpha``: the annotated slice with its mask) and every plane of
   every labeled case (the preset's ``visual_planes`` are ``axial, axial``);

and writes the small bundle the device reads, ``.devcarry/prep/`` (git-ignored)::

    prep/split.json                           ids (labeled, unlabeled, validation), spacing, settings,
                                              SHA-256 of every case's label bytes (checked on the device)
    prep/cohort.json                          a RADA cohort manifest, paths relative to prep/
                                              (../LA2018/<id>/mri_norm2.h5: what unpack_la.py rebuilds)
    prep/embeddings.npz                       CohortEmbeddings.save
    prep/propagation/cases/<id>/propagation.npz (+ case.json)   what training reads

With ``--carry-groups N`` (default 2) it also copies ``pack_la.py``'s chunks (``.devcarry/la*/``)
into N folders ``.devcarry/carry0 .. carry{N-1}`` balanced by size, so the data can travel in N
device calls instead of one per chunk, and prints what each call would send (it must stay under
the tool's 64 MiB, the working tree included).

    python Testing/Benchmarks/la_gpu/pack_la.py --data ../shared/data/LA2018 --out .devcarry --chunks 3
    python Testing/Benchmarks/la_gpu/prepare_la_gpu.py [--data ../shared/data/LA2018] [--out .devcarry/prep]
        [--labeled 8] [--validation 10] [--carry-groups 2] [--workers 0]

Minutes on a CPU without cached propagation, seconds with it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from RADALib.cohort import Case, Cohort, cohort_from_la_folder, save_cohort
from RADALib.events import Progress, terminal_sink
from RADALib.paths import cache_root
from RADALib.propagation import PropagationConfig
from RADALib.volume import LA_SPACING_MM, read_volume

ROOT = Path(__file__).resolve().parents[3]
PREP_FORMAT = "rada-la-gpu-prep/1"
MIB = 1 << 20


def label_digest(label: np.ndarray) -> str:
    """SHA-256 of a label map as uint8 bytes with its shape: what the device checks after decoding."""
    array = np.ascontiguousarray(label, dtype=np.uint8)
    digest = hashlib.sha256(f"{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def folder_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (or of the file itself)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def tree_bytes(root: Path) -> int:
    """Bytes of what always travels to the device: tracked and untracked-not-ignored files."""
    try:
        listing = (
            subprocess.run(
                [
                    "git",
                    "-C",
                    str(root),
                    "ls-files",
                    "-z",
                    "--cached",
                    "--others",
                    "--exclude-standard",
                ],
                check=True,
                capture_output=True,
            )
            .stdout.decode()
            .split("\0")
        )
    except (OSError, subprocess.CalledProcessError):
        return 0
    total = 0
    for name in filter(None, listing):
        file = root / name
        if file.is_file() and not file.is_symlink():
            total += file.stat().st_size
    return total


def regroup_chunks(devcarry: Path, groups: int) -> list[Path]:
    """Copy the files of ``devcarry/la*/`` into ``groups`` folders ``carry<i>`` balanced by bytes.

    A case's three files (``.json``, ``.image.xz``, ``.label.xz``) stay together. Existing
    ``carry*`` folders are replaced. Returns the new folders.
    """
    cases: dict[str, list[Path]] = {}
    for header in sorted(devcarry.glob("la*/*.json")):
        case_id = header.name[: -len(".json")]
        files = [
            header,
            header.with_name(f"{case_id}.image.xz"),
            header.with_name(f"{case_id}.label.xz"),
        ]
        if not all(f.exists() for f in files):
            raise SystemExit(f"{header.parent}: case {case_id} is incomplete; run pack_la.py again")
        cases[case_id] = files
    if not cases:
        raise SystemExit(
            f"no chunk in {devcarry}/la*/: run pack_la.py first (see the module docstring)"
        )
    for old in devcarry.glob("carry*"):
        shutil.rmtree(old)
    folders = [devcarry / f"carry{i}" for i in range(groups)]
    sizes = [0] * groups
    for folder in folders:
        folder.mkdir(parents=True)
    by_size = sorted(cases.items(), key=lambda item: -sum(f.stat().st_size for f in item[1]))
    for _case_id, files in by_size:  # largest first into the lightest group
        target = int(np.argmin(sizes))
        for file in files:
            shutil.copy2(file, folders[target] / file.name)
            sizes[target] += file.stat().st_size
    return folders


def build_cohort(data: Path, labeled: int, validation: int, prep: Path) -> Cohort:
    """The LA cohort with image paths rewritten to ``prep/../LA2018/<id>/mri_norm2.h5``."""
    source = cohort_from_la_folder(data, labeled=labeled, validation=validation)
    target = prep.resolve().parent / "LA2018"
    cases = [
        Case(
            c.id,
            target / c.id / "mri_norm2.h5",
            None,
            target / c.id / "mri_norm2.h5",
            c.simulate_from_dense,
            c.split,
        )
        for c in source.cases
    ]
    return Cohort(source.name, cases, dict(source.classes))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data", default=str(ROOT.parent / "shared" / "data" / "LA2018"), help="LA2018 folder"
    )
    parser.add_argument(
        "--out", default=str(ROOT / ".devcarry" / "prep"), help="the prep bundle folder"
    )
    parser.add_argument(
        "--work",
        default=str(ROOT / ".devcarry" / "work"),
        help="full propagation output (not carried)",
    )
    parser.add_argument("--labeled", type=int, default=8)
    parser.add_argument("--validation", type=int, default=10)
    parser.add_argument(
        "--cache-dir",
        default=str(cache_root()),
        help="RADA cache (propagation/, embeddings/); default $RADA_CACHE_DIR or ~/.cache/rada",
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="ANTs worker processes (0: one per core)"
    )
    parser.add_argument(
        "--arch", default="ViT-B-16", help="encoder architecture (EncoderConfig.arch)"
    )
    parser.add_argument(
        "--carry-groups",
        type=int,
        default=2,
        help="copy .devcarry/la*/ into this many balanced carry folders (0: leave them as they are)",
    )
    return parser


def embed_cohort(real: Cohort, work: Path, cache_dir: Path, arch: str):
    """The cohort's embeddings from the frozen encoders (cached), with a line saying how."""
    from RADALib.embeddings import compute_embeddings
    from RADALib.encoders import EmbeddingCache, EncoderConfig, RegionAwareDualEncoder

    step = time.perf_counter()
    encoder = RegionAwareDualEncoder.from_config(EncoderConfig(arch=arch))
    embeddings = compute_embeddings(
        real, work / "propagation", encoder, EmbeddingCache(cache_dir / "embeddings"), use_mask=True
    )
    embedding_seconds = time.perf_counter() - step
    random = [tower for tower, ok in embeddings.pretrained.items() if not ok]
    print(
        f"embeddings: {embedding_seconds:.1f} s, arch {arch}, text {embeddings.text.shape}, "
        f"regions {len(embeddings.regions)} cases x {sorted(next(iter(embeddings.regions.values())))}; "
        + (f"RANDOM weights: {', '.join(random)}" if random else "pretrained weights")
    )
    return embeddings


def copy_propagation(source: Path, target: Path) -> None:
    """A case's propagation result, its label maps stored as uint8 (lossless: class values 0..255)."""
    from RADALib.atomic import write_npz_atomic

    target.mkdir(parents=True)
    with np.load(source / "propagation.npz", allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    for name, array in arrays.items():
        if name.startswith("label_") or name == "sparse":
            if array.min() < 0 or array.max() > 255:
                raise SystemExit(f"{source}: {name} holds values outside 0..255")
            arrays[name] = array.astype(np.uint8)
    write_npz_atomic(target / "propagation.npz", arrays, compress=True)
    shutil.copy2(source / "case.json", target / "case.json")


def split_manifest(
    real: Cohort,
    data: Path,
    config: PropagationConfig,
    propagation_seconds: float,
    arch: str,
    embeddings,
) -> dict:
    """``split.json``: the split, each label's shape and digest, and how the prep was made."""
    digests, shapes = {}, {}
    for case in real.cases:
        label = read_volume(case.dense_label, "label").array
        digests[case.id] = label_digest(label)
        shapes[case.id] = list(label.shape)
    return {
        "format": PREP_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": str(data.resolve()),
        "classes": {str(k): v for k, v in real.classes.items()},
        "spacing_mm": [LA_SPACING_MM] * 3,
        "labeled": [c.id for c in real.labeled],
        "unlabeled": [c.id for c in real.unlabeled],
        "validation": [c.id for c in real.validation],
        "shapes": shapes,
        "label_sha256": digests,
        "propagation_config": config.to_dict(),
        "propagation_seconds": round(propagation_seconds, 1),
        "encoder": {
            "arch": arch,
            "pretrained": embeddings.pretrained,
            "region_mode": "alpha",
            "prompts": embeddings.prompts,
        },
    }


def report_sizes(prep: Path, devcarry: Path, carry_groups: int) -> None:
    """The prep bundle's files, the working tree's size, and each device call's carried bytes."""
    print("\nprep bundle:")
    for file in sorted(p for p in prep.rglob("*") if p.is_file()):
        print(f"  {file.relative_to(prep)}: {file.stat().st_size / 1024:.1f} KiB")
    prep_bytes = folder_bytes(prep)
    print(f"  total {prep_bytes / MIB:.2f} MiB")

    tree = tree_bytes(ROOT)
    print(
        f"\nworking tree that travels with every device call (tracked + untracked, not ignored): {tree / MIB:.2f} MiB"
    )
    if carry_groups > 0:
        folders = regroup_chunks(devcarry, carry_groups)
        print("carry groups (copies of .devcarry/la*/, balanced):")
        for number, folder in enumerate(folders):
            size = folder_bytes(folder)
            extra = prep_bytes if number == 0 else 0
            total = tree + size + extra
            what = f".devcarry/{folder.name}" + (" + .devcarry/prep" if number == 0 else "")
            flag = "OK" if total < 64 * MIB else "OVER the 64 MiB limit"
            print(
                f"  call {number + 1}: {what}: {(size + extra) / MIB:.2f} MiB carried, "
                f"{total / MIB:.2f} MiB with the tree ({flag}); {len(list(folder.glob('*.json')))} cases"
            )
    for chunk in sorted(devcarry.glob("la[0-9]*")):
        print(f"  (3-call plan) .devcarry/{chunk.name}: {folder_bytes(chunk) / MIB:.2f} MiB")


def main() -> None:
    args = build_parser().parse_args()

    started = time.perf_counter()
    data, prep, work = Path(args.data), Path(args.out), Path(args.work)
    cache_dir = Path(args.cache_dir).expanduser()
    devcarry = ROOT / ".devcarry"
    progress = Progress(terminal_sink(sys.stdout))

    # 1. cohort: propagation and embeddings read the real files; the saved manifest points at
    #    the layout the device may rebuild next to prep/
    real = cohort_from_la_folder(data, labeled=args.labeled, validation=args.validation)
    print(
        f"cohort: {len(real.cases)} cases, {len(real.labeled)} labeled, {len(real.unlabeled)} unlabeled, "
        f"{len(real.validation)} validation (the last {args.validation} ids of train.list)"
    )

    # 2. propagation of the labeled cases (cached by content)
    from RADALib.workflow import ensure_propagation

    config = PropagationConfig()
    step = time.perf_counter()
    ensure_propagation(
        real, work / "propagation", config, cache_dir, workers=args.workers, progress=progress
    )
    propagation_seconds = time.perf_counter() - step
    print(f"propagation: {propagation_seconds:.1f} s (cache {cache_dir / 'propagation'})")

    # 3. embeddings (frozen encoders, cached)
    embeddings = embed_cohort(real, work, cache_dir, args.arch)

    # 4. the prep bundle
    if prep.exists():
        shutil.rmtree(prep)
    (prep / "propagation" / "cases").mkdir(parents=True)
    for case in real.labeled:
        copy_propagation(
            work / "propagation" / "cases" / case.id, prep / "propagation" / "cases" / case.id
        )
    embeddings.save(prep / "embeddings.npz")
    save_cohort(build_cohort(data, args.labeled, args.validation, prep), prep / "cohort.json")
    split = split_manifest(real, data, config, propagation_seconds, args.arch, embeddings)
    (prep / "split.json").write_text(json.dumps(split, indent=1) + "\n")

    # 5. sizes
    report_sizes(prep, devcarry, args.carry_groups)
    print(f"\ndone in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
