"""A new volume's own region prompt Ev, from its sparse slices (docs/method.md, "Era at inference").

A bundle stores the mean region embedding over the training cohort's annotated slices
(``region_embedding_mean``): the prompt used for a volume that comes without annotation. When
the new volume has painted slices of its own, :func:`region_embedding_for` computes its Ev the
way training computed each labeled case's (:func:`RADALib.embeddings.compute_embeddings`): for
each plane of the bundle's ``visual_planes``, in order, the volume's **first** annotated slice of
that plane (the lowest index, the one training used when a plane holds several) with its mask
(any foreground class; all ones for a model trained with ``region_mode="no_mask"``), through the
same frozen Alpha-CLIP tower, concatenated: ``["axial", "axial"]`` uses the axial slice twice.
A model trained without a region prompt (``region_mode="none"``, or no stored mean) gets None:
its stored prompt stays.

The tower is rebuilt from the manifest's ``encoder`` record (:func:`encoder_record`, written at
training) by :func:`encoder_for_bundle`:

- a random tower from its recorded spec and seed, which gives the training tower bit for bit;
- a pretrained tower from the first file whose SHA256 equals the recorded one, among: a file the
  caller names (``--vision-weights``), the path recorded at training (``files``, written since
  this module exists; older bundles have only the file name), and the registry name or the file
  name in the weights folders (``CACHE/weights``, ``CACHE``, ``$RADA_CACHE_DIR/weights``, else
  ``~/.cache/rada/weights``).

Only the vision tower is rebuilt: Ev does not involve the text tower (Et is stored). The rebuilt
encoder reports the recorded identity, so the embedding cache shares entries with training.
Heavy modules (open_clip) are imported only when an encoder is built.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .annotation import PLANES, detect_sparse_annotation
from .bundle import Bundle
from .checksums import sha256_file
from .errors import InputError
from .events import Progress
from .model_store import MANIFEST_FILE
from .train_config import REGION_MODES
from .volume import Oblique, Volume, read_label_for, read_volume
from .weights import checkpoint_candidates, find_by_sha256, weights_folders

if TYPE_CHECKING:
    from .embeddings import CohortEmbeddings
    from .encoders import RegionEncoderLike, VisionRegionEncoder

FROM_VOLUME = "from this volume's sparse slices"
FROM_MEAN = "the training cohort's mean"
NO_PROMPT = "none (the model was trained without one)"
MEAN_HINT = "without --sparse-label the model uses the stored mean prompt of its training cohort"


# ----------------------------------------------------------------------------- the manifest record


def encoder_record(embeddings: CohortEmbeddings | None, region_mode: str) -> dict[str, Any]:
    """The manifest's ``encoder`` field: identity, pretrained, weight files, region mode."""
    return {
        "identity": embeddings.identity if embeddings is not None else None,
        "pretrained": dict(embeddings.pretrained) if embeddings is not None else {},
        "files": dict(getattr(embeddings, "files", {}) or {}) if embeddings is not None else {},
        "region_mode": region_mode,
    }


def _manifest_path(bundle: Bundle) -> Path:
    return Path(bundle.folder) / MANIFEST_FILE


def region_mode_of(bundle: Bundle) -> str:
    """The bundle's region mode: the encoder record's, else the training config's, else inferred."""
    record = bundle.manifest.get("encoder") or {}
    training = (bundle.manifest.get("training") or {}).get("config") or {}
    mode = record.get("region_mode") or training.get("region_mode")
    if mode is None:
        mode = "alpha" if bundle.region_embedding_mean is not None else "none"
    if mode not in REGION_MODES:
        raise InputError(
            _manifest_path(bundle),
            f"unknown region mode {mode!r} (this RADA knows {', '.join(REGION_MODES)})",
        )
    return str(mode)


def uses_region_prompt(bundle: Bundle) -> bool:
    """Whether the model was trained with a region prompt (so a volume's own one can replace the mean)."""
    return region_mode_of(bundle) != "none" and bundle.region_embedding_mean is not None


def prompt_source(bundle: Bundle, embedding: np.ndarray | None) -> str:
    """Where a prediction's region prompt comes from, in words (for events and logs)."""
    if embedding is not None:
        return FROM_VOLUME
    return FROM_MEAN if bundle.region_embedding_mean is not None else NO_PROMPT


# ----------------------------------------------------------------------------- the encoder


def _recorded_identity(bundle: Bundle) -> dict[str, Any]:
    identity = (bundle.manifest.get("encoder") or {}).get("identity")
    vision = identity.get("vision") if isinstance(identity, Mapping) else None
    if not isinstance(vision, Mapping) or not isinstance(vision.get("spec"), Mapping):
        raise InputError(
            _manifest_path(bundle),
            "records no identity of the frozen Alpha-CLIP encoder, so no region prompt can be computed from a "
            f"sparse label; {MEAN_HINT}",
        )
    return dict(identity)  # type: ignore[arg-type]


def _comparable(identity: Mapping[str, Any]) -> dict[str, Any]:
    """What decides Ev: architecture, vision tower (spec, weights hash or seed), preprocessing."""
    plain = json.loads(json.dumps(identity, default=str))
    vision = {
        k: v
        for k, v in (plain.get("vision") or {}).items()
        if k not in ("checkpoint", "registry_name")
    }
    return {"arch": plain.get("arch"), "vision": vision, "preprocess": plain.get("preprocess")}


def check_encoder(bundle: Bundle, encoder: RegionEncoderLike) -> None:
    """``InputError`` unless ``encoder`` computes Ev as the encoder the bundle was trained with."""
    want, have = _comparable(_recorded_identity(bundle)), _comparable(encoder.identity())
    if want == have:
        return
    differ = []
    for key in want:
        if isinstance(want[key], Mapping) and isinstance(have.get(key), Mapping):
            differ += [
                f"{key}.{k}"
                for k in sorted(set(want[key]) | set(have[key]))
                if want[key].get(k) != have[key].get(k)
            ]
        elif want[key] != have.get(key):
            differ.append(key)
    raise InputError(
        "encoder",
        f"is not the encoder this model was trained with (differs in {', '.join(differ)})",
    )


def _given_vision_weights(path: Path, wanted: str, label: str) -> Path:
    """``path`` if it holds the Alpha-CLIP weights of SHA256 ``wanted``, else ``InputError``."""
    if not path.is_file():
        raise InputError(path, "Alpha-CLIP checkpoint not found")
    digest = sha256_file(path)
    if digest != wanted:
        raise InputError(
            path,
            f"has SHA256 {digest[:12]}..., but this model was trained with {label} "
            f"(SHA256 {wanted[:12]}...); give that file",
        )
    return path


def find_vision_weights(
    bundle: Bundle,
    vision_weights: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """The Alpha-CLIP checkpoint the bundle was trained with (SHA256-checked), else ``InputError``.

    ``vision_weights``, if given, must be that file; else the path recorded at training, then
    the registry name and the file name in :func:`~RADALib.weights.weights_folders`.
    """
    record = _recorded_identity(bundle)["vision"]
    wanted = str(record.get("sha256") or "").lower()
    label = record.get("registry_name") or record.get("checkpoint") or "Alpha-CLIP weights"
    if not wanted:
        raise InputError(
            _manifest_path(bundle),
            f"records no SHA256 of the Alpha-CLIP weights {label}; {MEAN_HINT}",
        )
    if vision_weights is not None:
        return _given_vision_weights(Path(vision_weights).expanduser(), wanted, label)
    folders = weights_folders(cache_dir)
    recorded = ((bundle.manifest.get("encoder") or {}).get("files") or {}).get("vision")
    candidates = [Path(recorded)] if recorded else []
    candidates += checkpoint_candidates(
        folders, record.get("registry_name"), record.get("checkpoint")
    )
    found, other = find_by_sha256(candidates, wanted)
    if found is not None:
        return found
    differs = f"; {', '.join(str(p) for p in other)} holds other weights" if other else ""
    raise InputError(
        label,
        f"the Alpha-CLIP weights this model was trained with (SHA256 {wanted[:12]}...) were not found "
        f"(looked in {', '.join(str(f) for f in folders)}{differs}); a region prompt from a sparse label needs "
        f"them: put the file in {folders[0]} or give --vision-weights FILE; {MEAN_HINT}",
    )


def encoder_for_bundle(
    bundle: Bundle,
    cache_dir: str | os.PathLike[str] | None = None,
    vision_weights: str | os.PathLike[str] | None = None,
    device: str = "cpu",
) -> VisionRegionEncoder:
    """The frozen Alpha-CLIP tower the bundle was trained with, rebuilt from its manifest."""
    from .alpha_clip import VisionSpec, build_vision_tower, load_alpha_clip_visual
    from .encoders import PREPROCESS_VERSION, VisionRegionEncoder

    identity = _recorded_identity(bundle)
    record = identity["vision"]
    manifest = _manifest_path(bundle)
    try:
        spec = VisionSpec(**record["spec"])
    except TypeError as exc:
        raise InputError(
            manifest, f"its encoder identity has an unreadable vision spec ({exc}); {MEAN_HINT}"
        ) from None
    preprocess = identity.get("preprocess") or {}
    if preprocess.get("version") != PREPROCESS_VERSION:
        raise InputError(
            manifest,
            f"its encoder preprocessing {preprocess.get('version')!r} is not this RADA's "
            f"({PREPROCESS_VERSION!r}), so its region prompts cannot be reproduced; {MEAN_HINT}",
        )
    if record.get("pretrained"):
        path = find_vision_weights(bundle, vision_weights, cache_dir)
        vision = load_alpha_clip_visual(path)
        if vision.spec != spec:
            raise InputError(path, f"builds a tower {vision.spec}, but the manifest records {spec}")
    else:
        if record.get("seed") is None:
            raise InputError(
                manifest, f"records random Alpha-CLIP weights without their seed; {MEAN_HINT}"
            )
        vision = build_vision_tower(spec, seed=int(record["seed"]))
    return VisionRegionEncoder(
        vision, identity, transpose=bool(preprocess.get("transpose", True)), device=device
    )


# ----------------------------------------------------------------------------- the region prompt


def region_embedding_for(
    bundle: Bundle,
    image_volume: Volume,
    sparse_label_volume: Volume,
    encoder: RegionEncoderLike | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    vision_weights: str | os.PathLike[str] | None = None,
) -> np.ndarray | None:
    """Ev of a new volume from its sparse label (``region_dim`` float32), or None (see the module).

    ``encoder``: an encoder already built (:func:`encoder_for_bundle`, or a
    ``RegionAwareDualEncoder``, checked against the manifest); by default one is rebuilt from the
    manifest. ``cache_dir``: the RADA cache folder (as ``rada train --cache-dir``): weights are
    looked for in ``cache_dir/weights`` and embeddings cached in ``cache_dir/embeddings``.
    Several annotated slices in a plane are accepted; the first one is used. Raises
    ``InputError`` naming the label file when a plane the model needs has no annotated slice.
    """
    if not uses_region_prompt(bundle):
        return None
    planes = bundle.visual_planes
    unknown = [p for p in planes if p not in PLANES]
    if not planes or unknown:
        raise InputError(
            _manifest_path(bundle),
            f"field 'visual_planes' {planes} must name planes among {PLANES}",
        )
    source = sparse_label_volume.source
    problem = image_volume.same_grid(sparse_label_volume)
    if problem:
        raise InputError(
            source, f"{problem} ({image_volume.source}); resample the label onto the image first"
        )
    annotation = detect_sparse_annotation(
        sparse_label_volume.array, source, required_planes=(), allow_multiple=True
    )
    axes = sorted({PLANES.index(p) for p in planes})
    for axis in axes:
        if not annotation.slices.get(axis):
            found = (
                ", ".join(
                    f"{PLANES[a]} {','.join(map(str, s))}"
                    for a, s in sorted(annotation.slices.items())
                )
                or "none"
            )
            raise InputError(
                source,
                f"no annotated {PLANES[axis]} slice (found {found}); this model's region prompt uses the "
                f"{', '.join(planes)} plane(s): paint the target on one {PLANES[axis]} slice, or {MEAN_HINT}",
            )
    if encoder is None:
        encoder = encoder_for_bundle(bundle, cache_dir, vision_weights)
    else:
        check_encoder(bundle, encoder)
    use_mask = region_mode_of(bundle) != "no_mask"
    slices, masks = [], []
    for axis in axes:
        index = annotation.slices[axis][0]
        slices.append(np.take(image_volume.array, index, axis=axis))
        mask = np.take(annotation.label, index, axis=axis) != 0
        masks.append(mask if use_mask else np.ones_like(mask))
    if cache_dir is not None:
        from .encoders import EmbeddingCache

        vectors = EmbeddingCache(Path(cache_dir) / "embeddings").regions(encoder, slices, masks)
    else:
        vectors = encoder.encode_regions(slices, masks)
    by_plane = {PLANES[axis]: np.asarray(v, np.float32).ravel() for axis, v in zip(axes, vectors)}
    embedding = np.concatenate([by_plane[p] for p in planes]).astype(np.float32)
    if embedding.size != bundle.config.region_dim:
        raise InputError(
            _manifest_path(bundle),
            f"the encoder gives {embedding.size} region values for planes "
            f"{planes}; the network expects {bundle.config.region_dim}",
        )
    return embedding


def region_embeddings_for_files(
    bundle: Bundle,
    images: Sequence[str | os.PathLike[str]],
    sparse_labels: Sequence[str | os.PathLike[str] | None],
    cache_dir: str | os.PathLike[str] | None = None,
    vision_weights: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    oblique: Oblique = "refuse",
    progress: Progress | None = None,
) -> list[np.ndarray | None]:
    """One region prompt per image: its own (from its sparse label) or None (the stored mean).

    The encoder is built once, only when some image has a sparse label and the model uses a
    region prompt; every label is checked before any prediction starts.
    """
    if len(images) != len(sparse_labels):
        raise InputError(
            "sparse labels", f"{len(sparse_labels)} sparse labels for {len(images)} images"
        )
    out: list[np.ndarray | None] = [None] * len(images)
    if not any(label is not None for label in sparse_labels):
        return out
    if progress is not None:
        progress.enter("prompt")
    if not uses_region_prompt(bundle):
        if progress is not None:
            progress.message(
                "this model was trained without a region prompt: the sparse labels are not used",
                level="warning",
            )
        return out
    encoder = None
    for i, (image, label) in enumerate(zip(images, sparse_labels)):
        if label is None:
            continue
        volume = read_volume(image, "image", oblique=oblique)
        sparse = read_label_for(volume, label, oblique, bundle.class_names)
        if encoder is None:
            if progress is not None:
                pretrained = _recorded_identity(bundle)["vision"].get("pretrained")
                progress.message(
                    "rebuilding the frozen Alpha-CLIP tower the model was trained with"
                    + ("" if pretrained else " (random seeded weights, as in training)")
                )
            encoder = encoder_for_bundle(bundle, cache_dir, vision_weights, device)
        out[i] = region_embedding_for(bundle, volume, sparse, encoder, cache_dir)
    return out
