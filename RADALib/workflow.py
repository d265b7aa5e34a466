"""The steps of a RADA run chained on a cohort: propagate, embed, train, bundle, predict.

Shared by the ``rada`` command, the demo and the Slicer module, so each of them stays a thin
caller. An experiment folder holds everything one training run made::

    EXPERIMENT/
      propagation/     pseudo-labels of the labeled cases (when not given elsewhere)
      embeddings.npz   Et and Ev of the cohort (frozen encoders, computed once)
      config.json, metrics.jsonl, checkpoint.pt     training (resumable)
      model/           the model bundle (weights + manifest), what `rada predict` loads
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .atomic import ensure_writable_folder
from .cache import ArrayCache
from .cohort import Case, Cohort, check_case_ids
from .embeddings import CohortEmbeddings, compute_embeddings
from .errors import InputError
from .events import Progress
from .locking import folder_lock
from .propagation import PropagationConfig
from .pseudo_labels import propagate_cohort

if TYPE_CHECKING:
    from .train_config import TrainConfig
    from .training import TrainResult

log = logging.getLogger(__name__)

MODEL_FOLDER = "model"
EMBEDDINGS_FILE = "embeddings.npz"


@dataclass
class TrainedRun:
    """Where a training run put its model, and what it measured."""

    experiment: Path
    model: Path
    iterations: int
    seconds: float
    pretrained: dict


def ensure_propagation(
    cohort: Cohort,
    propagation_dir: Path,
    config: PropagationConfig,
    cache_dir: Path | None,
    workers: int = 0,
    progress: Progress | None = None,
) -> None:
    """Propagate the labeled cases that have no result yet (finished ones are kept)."""
    from .registration import AntsRegistrar

    with AntsRegistrar(config.registration, workers=workers) as registrar:
        cache = ArrayCache(cache_dir / "propagation") if cache_dir else None
        propagate_cohort(cohort, propagation_dir, registrar, config, cache, progress=progress)


def cohort_embeddings(
    cohort: Cohort,
    propagation_dir: Path,
    experiment: Path,
    encoder_config=None,
    cache_dir: Path | None = None,
    use_mask: bool = True,
) -> CohortEmbeddings:
    """Et and Ev for the cohort with the frozen encoders (cached), saved in the experiment.

    Random encoder weights are not logged here: ``embeddings.pretrained`` says so, and
    :func:`train_model` reports it once through its progress (with a cache hit as well).
    """
    from .encoders import EmbeddingCache, EncoderConfig, RegionAwareDualEncoder

    encoder = RegionAwareDualEncoder.from_config(encoder_config or EncoderConfig(), warn=False)
    cache = EmbeddingCache(cache_dir / "embeddings") if cache_dir else None
    embeddings = compute_embeddings(cohort, propagation_dir, encoder, cache, use_mask=use_mask)
    embeddings.save(experiment / EMBEDDINGS_FILE)
    return embeddings


def train_model(
    cohort: Cohort,
    experiment: str | os.PathLike[str],
    train_config,
    propagation_dir: str | os.PathLike[str] | None = None,
    propagation_config: PropagationConfig | None = None,
    encoder_config=None,
    cache_dir: Path | None = None,
    workers: int = 0,
    progress: Progress | None = None,
    validation: Sequence[Case] | None = None,
) -> TrainedRun:
    """Propagate (where needed), embed, train and write the model bundle into ``experiment``.

    Training resumes from the experiment's checkpoint when there is one. One run at a time
    uses an experiment folder: a second one gets an ``InputError`` naming it.
    """
    check_case_ids((c.id for c in cohort.cases), cohort.path or cohort.name)
    experiment = Path(experiment)
    progress = progress or Progress()
    if not cohort.labeled:
        raise InputError(
            cohort.path or cohort.name,
            "no labeled case: training needs at least one annotated volume",
        )
    with one_run_at_a_time(experiment):
        return _train_model(
            cohort,
            experiment,
            train_config,
            propagation_dir,
            propagation_config,
            encoder_config,
            cache_dir,
            workers,
            progress,
            validation,
        )


@contextmanager
def one_run_at_a_time(experiment: Path) -> Iterator[None]:
    """Create ``experiment`` and hold its lock (:func:`~RADALib.locking.folder_lock`) for the block.

    Under ``torchrun`` only rank 0 takes it (the other ranks are the same run). A run that fails
    before writing anything removes the folder it created, so a refused input leaves none.
    """
    created = not experiment.exists()
    ensure_writable_folder(experiment)
    if int(os.environ.get("RANK", "0") or 0) != 0:
        yield
        return
    with folder_lock(experiment) as lock:
        try:
            yield
        except BaseException:
            if created and [p.name for p in experiment.iterdir()] == [lock.name]:
                with suppress(OSError):
                    lock.unlink()
                    experiment.rmdir()
            raise


def _train_model(
    cohort: Cohort,
    experiment: Path,
    train_config,
    propagation_dir: str | os.PathLike[str] | None,
    propagation_config: PropagationConfig | None,
    encoder_config,
    cache_dir: Path | None,
    workers: int,
    progress: Progress,
    validation: Sequence[Case] | None,
) -> TrainedRun:
    """:func:`train_model` in its experiment folder, once that is locked."""
    from .bundle import save_bundle
    from .training import train, with_cohort_classes, with_training_spacing

    propagation = Path(propagation_dir) if propagation_dir else experiment / "propagation"
    propagation_config = propagation_config or PropagationConfig()
    if train_config.use_registration:
        ensure_propagation(cohort, propagation, propagation_config, cache_dir, workers, progress)
    elif not propagation_dir:
        propagation = None  # type: ignore[assignment]
    # after propagation: a fitted spacing reads the annotations it found
    train_config = with_training_spacing(train_config, cohort, progress, propagation)
    train_config = with_cohort_classes(train_config, cohort, progress)
    embeddings = _embed_for_training(
        cohort, propagation, experiment, train_config, encoder_config, cache_dir, progress
    )
    validate = _validator(validation, train_config) if validation else None
    result = train(
        train_config,
        cohort,
        propagation,
        embeddings.text if embeddings else None,
        embeddings.regions if embeddings else None,
        experiment,
        progress=progress,
        validate=validate,
        fusion=(propagation_config.fusion, propagation_config.fusion_alpha),
        cache=ArrayCache(cache_dir / "resampled") if cache_dir else None,
    )
    components = largest_component_record(cohort, propagation, propagation_config)
    _say_largest_component(cohort, components, progress)
    fields = bundle_fields(cohort, result.config or train_config, embeddings, components, result)
    model_folder = save_bundle(experiment / MODEL_FOLDER, result.model.cpu(), fields)
    return TrainedRun(
        experiment,
        model_folder,
        result.iteration,
        result.seconds,
        embeddings.pretrained if embeddings else {},
    )


def _embed_for_training(
    cohort: Cohort,
    propagation: Path | None,
    experiment: Path,
    train_config: TrainConfig,
    encoder_config,
    cache_dir: Path | None,
    progress: Progress,
) -> CohortEmbeddings | None:
    """The cohort's embeddings (``None`` without propagation results: the ablation without
    registration), with a warning when an encoder runs on random weights."""
    from .encoders import EncoderConfig
    from .weights import random_weights_warning

    progress.enter("embed")
    progress.message("computing the frozen encoders' embeddings (once per cohort)")
    embeddings = (
        cohort_embeddings(
            cohort,
            propagation or experiment / "propagation",
            experiment,
            encoder_config,
            cache_dir,
            use_mask=train_config.region_mode != "no_mask",
        )
        if propagation is not None
        else None
    )
    random = {name: not ok for name, ok in (embeddings.pretrained if embeddings else {}).items()}
    if any(random.values()):
        encoders = encoder_config or EncoderConfig()
        progress.message(
            random_weights_warning(random, encoders.arch, encoders.cache_dir), level="warning"
        )
    return embeddings


def _say_largest_component(cohort: Cohort, components: dict, progress: Progress) -> None:
    """Tell that predictions keep only the largest region of the classes the record names."""
    if components["classes"]:
        parts = [
            f"{cohort.classes.get(c, c)} ({100 * components['fractions'][str(c)]:.2f} % of its pseudo-label "
            "voxels in one connected region)"
            for c in components["classes"]
        ]
        progress.message(
            f"{'; '.join(parts)}: predictions keep only the largest region by default "
            "(rada predict --no-largest-component keeps every region)"
        )


def bundle_fields(
    cohort: Cohort,
    train_config: TrainConfig,
    embeddings: CohortEmbeddings | None,
    components: dict,
    result: TrainResult,
) -> dict:
    """The manifest fields of the model bundle a training run on ``cohort`` writes: classes,
    prompt and embeddings the model was trained with, inference settings and a training record."""
    from .region_prompt import encoder_record

    planes = list(train_config.visual_planes)
    return {
        "classes": dict(cohort.classes),
        "prompt": embeddings.prompts[0] if embeddings and embeddings.prompts else None,
        "visual_planes": planes,
        # use_text=False trained on zeros in place of Et: store those zeros, so inference matches
        "text_embedding": (
            embeddings.text if train_config.use_text else np.zeros_like(embeddings.text)
        )
        if embeddings
        else None,
        "region_embedding_mean": embeddings.region_mean(planes)
        if embeddings and train_config.region_mode != "none"
        else None,
        # what rebuilds the same frozen encoder for a volume's own region prompt (region_prompt.py)
        "encoder": encoder_record(embeddings, train_config.region_mode),
        "inference": {
            "patch": list(train_config.patch),
            "largest_component": components,
            "spacing": list(train_config.spacing) if train_config.spacing else None,
            **({"stride": train_config.inference_stride} if train_config.inference_stride else {}),
            "mirror": bool(train_config.inference_mirror and train_config.augment),
        },
        "training": {
            "iterations": result.iteration,
            "seconds": round(result.seconds, 1),
            "config": train_config.to_dict(),
            "history_tail": result.history[-5:],
            "cohort": str(cohort.path) if cohort.path else cohort.name,
        },
    }


def largest_component_record(
    cohort: Cohort, propagation: Path | None, config: PropagationConfig
) -> dict:
    """The bundle's post-processing record, from the labeled cases' fused pseudo-labels.

    See :func:`~RADALib.postprocessing.recommend_largest_component`; without propagation
    results (the ablation without registration) nothing is recommended.
    """
    from .postprocessing import recommend_largest_component
    from .pseudo_labels import load_case_result

    folders = (
        [propagation / "cases" / case.id for case in cohort.labeled]
        if propagation is not None
        else []
    )
    labels = (
        load_case_result(f).fused(config.fusion, config.fusion_alpha)
        for f in folders
        if (f / "propagation.npz").exists()
    )
    return recommend_largest_component(labels, sorted(cohort.classes))


def _validator(cases: Sequence[Case], train_config):
    """Dice on the validation cases (sliding window, fast stride, at the training spacing and
    back on each case's grid) for the training events."""
    import torch

    from .data import normalize_intensity
    from .inference import ensemble_probabilities, probabilities_on_grid, sliding_window_inference
    from .metrics import dice
    from .volume import read_volume

    loaded = []
    for case in cases:
        if case.dense_label is None:
            continue
        image = read_volume(case.image, "image")
        truth = read_volume(case.dense_label, "label").array
        loaded.append((normalize_intensity(image.array), image.spacing, truth))
    if not loaded:
        return None
    patch = tuple(train_config.patch)
    stride = tuple(max(1, p // 2) for p in patch)

    def validate(model, text, region) -> dict:
        device = next(model.parameters()).device
        era = model.embed(text, region) if (text is not None or region is not None) else None

        def network(image: np.ndarray):
            x = torch.as_tensor(image, device=device)[None, None]
            return sliding_window_inference(  # padded as in training and predict_volume
                x,
                lambda p: ensemble_probabilities(model, p, era),
                patch,
                stride,
                pad_value=float(image.min()),
            )

        scores = []
        for image, spacing, truth in loaded:
            probabilities = probabilities_on_grid(network, image, spacing, train_config.spacing)
            scores.append(dice(probabilities.argmax(0).cpu().numpy(), truth))
        return {"val_dice": float(np.mean(scores))}

    return validate


def model_folder(path: str | os.PathLike[str]) -> Path:
    """A bundle folder, or an experiment folder holding one in ``model/``."""
    path = Path(path)
    if (path / MODEL_FOLDER / "manifest.json").exists():
        return path / MODEL_FOLDER
    return path
