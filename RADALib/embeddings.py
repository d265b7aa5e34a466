"""The frozen encoders' outputs for a cohort, computed once (eq. 1-2) and reused by training.

Et (eq. 1) is the CLIP text embedding of the prompt "An image containing the [CLS], with the
rest being background" (one prompt per class, averaged over the foreground classes). Ev (eq. 2)
is the Alpha-CLIP embedding of each labeled case's annotated slice (image as RGB) with its mask
(any foreground class) as the alpha channel, per plane. With ``use_mask=False`` the alpha is all
ones, which makes Alpha-CLIP behave as the plain CLIP vision encoder (the paper's "CLIP vision
encoder" ablation).

Because both encoders are frozen, the embeddings are computed here once per cohort and cached
by content (``encoders.EmbeddingCache``), so training never runs CLIP.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .annotation import PLANES
from .atomic import write_npz_atomic
from .cohort import Cohort
from .errors import InputError
from .pseudo_labels import load_case_result

if TYPE_CHECKING:
    from .encoders import EmbeddingCache, RegionAwareDualEncoder


@dataclass
class CohortEmbeddings:
    """Et, and Ev per labeled case and plane, plus the encoders' identity.

    ``files``: the weight files the towers were loaded from (``{"vision": path or None, "text":
    ...}``), so that inference can rebuild the same encoder (:mod:`RADALib.region_prompt`).
    """

    text: np.ndarray
    regions: dict[str, dict[str, np.ndarray]]
    identity: dict = field(default_factory=dict)
    pretrained: dict = field(default_factory=dict)
    prompts: list[str] = field(default_factory=list)
    files: dict = field(default_factory=dict)

    def region_input(self, case_ids: Sequence[str], planes: Sequence[str]) -> np.ndarray:
        """Ev of ``case_ids[i]``'s ``planes[i]`` slice, concatenated (the batch's region prompt)."""
        return np.concatenate([self.regions[c][p] for c, p in zip(case_ids, planes)]).astype(
            np.float32
        )

    def region_mean(self, planes: Sequence[str]) -> np.ndarray:
        """The mean Ev over the cohort for each plane, concatenated (the prompt at inference)."""
        return np.concatenate(
            [np.mean([r[p] for r in self.regions.values()], axis=0) for p in planes]
        ).astype(np.float32)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write all arrays and the identity to one ``.npz`` (atomically); returns its path."""
        path = Path(path)
        arrays = {"text": self.text}
        for case_id, planes in self.regions.items():
            for plane, vector in planes.items():
                arrays[f"region::{case_id}::{plane}"] = vector
        meta = {
            "identity": self.identity,
            "pretrained": self.pretrained,
            "prompts": self.prompts,
            "files": self.files,
        }
        arrays["meta"] = np.frombuffer(json.dumps(meta, default=str).encode(), dtype=np.uint8)
        return write_npz_atomic(path, arrays, compress=False)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CohortEmbeddings:
        """Read what :meth:`save` wrote; ``InputError`` when the file is missing."""
        path = Path(path)
        if not path.exists():
            raise InputError(path, "embeddings not found")
        with np.load(path, allow_pickle=False) as data:
            regions: dict[str, dict[str, np.ndarray]] = {}
            for name in data.files:
                if name.startswith("region::"):
                    _, case_id, plane = name.split("::")
                    regions.setdefault(case_id, {})[plane] = data[name]
            meta = json.loads(bytes(data["meta"]).decode())
            return cls(
                data["text"],
                regions,
                meta["identity"],
                meta["pretrained"],
                meta["prompts"],
                meta.get("files", {}),
            )


def compute_embeddings(
    cohort: Cohort,
    propagation_dir: str | os.PathLike[str],
    encoder: RegionAwareDualEncoder,
    cache: EmbeddingCache | None = None,
    use_mask: bool = True,
) -> CohortEmbeddings:
    """Et for the cohort's classes and Ev for every labeled case's annotated slices.

    ``encoder`` is a ``RegionAwareDualEncoder`` (or anything with ``encode_text``,
    ``encode_regions``, ``identity``, ``prompt``, ``pretrained``); ``cache`` an
    ``EmbeddingCache`` or None. Images are read from the cohort, the annotated slices from the
    propagation results (``rada propagate`` first).
    """
    from .volume import read_volume

    prompts = [encoder.prompt(name) for value, name in sorted(cohort.classes.items()) if value != 0]
    texts = cache.texts(encoder, prompts) if cache is not None else encoder.encode_text(prompts)
    regions: dict[str, dict[str, np.ndarray]] = {}
    if not cohort.labeled:
        raise InputError(cohort.path or cohort.name, "no labeled case to take region prompts from")
    for case in cohort.labeled:
        result = load_case_result(Path(propagation_dir) / "cases" / case.id)
        image = read_volume(case.image, "image").array
        slices, masks, planes = [], [], []
        for axis, indices in sorted(result.annotation.slices.items()):
            index = indices[0]
            slices.append(np.take(image, index, axis=axis))
            mask = np.take(result.annotation.label, index, axis=axis) != 0
            masks.append(mask if use_mask else np.ones_like(mask))
            planes.append(PLANES[axis])
        vectors = (
            cache.regions(encoder, slices, masks)
            if cache is not None
            else encoder.encode_regions(slices, masks)
        )
        regions[case.id] = {plane: np.asarray(v, np.float32) for plane, v in zip(planes, vectors)}
    return CohortEmbeddings(
        np.asarray(texts, np.float32).mean(axis=0),
        regions,
        encoder.identity(),
        dict(encoder.pretrained),
        prompts,
        weight_files(encoder),
    )


def weight_files(encoder: object) -> dict[str, str | None]:
    """The files the encoder's towers were loaded from (None for a random tower or unknown)."""
    out: dict[str, str | None] = {}
    for tower in ("vision", "text"):
        info = getattr(encoder, f"{tower}_info", None)
        file = getattr(info, "file", None)
        out[tower] = str(Path(file).resolve()) if file else None
    return out
