"""The ``rada`` command: demo, cohort, propagate, train, predict, evaluate.

Every command prints one-line errors (``rada: <file>: <problem>``) and exits non-zero on bad
input; ``--events json`` turns progress into one JSON object per line on standard output.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .cancel_channel import cancel_on_stdin_requested, watch_for_cancel
from .errors import InputError, RADAError
from .paths import cache_root

EXIT_INPUT = 2
EXIT_INTERRUPTED = 130


def _cache_dir(args: argparse.Namespace) -> Path:
    """``--cache-dir`` if given, else the cache root (:func:`~RADALib.paths.cache_root`)."""
    return Path(args.cache_dir) if args.cache_dir else cache_root()


def _progress(args: argparse.Namespace):
    from .events import Progress, json_sink, terminal_sink

    return Progress(json_sink() if args.events == "json" else terminal_sink())


def _add_events(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--events",
        choices=("text", "json"),
        default="text",
        help="progress as text/bar on stderr (default) or one JSON object per line on stdout",
    )


def _add_train_settings(parser: argparse.ArgumentParser) -> None:
    """The options that choose the training settings (``rada train``, ``rada settings``)."""
    parser.add_argument(
        "--preset",
        default="auto",
        help="auto (default: paper with CUDA, else cpu), paper (LA recipe, a GPU job), "
        "cpu (the whole method sized for a CPU) or small (tests)",
    )
    parser.add_argument(
        "--iterations",
        type=int,
        help="override the preset's iteration count (its lr, α and β steps scale with it)",
    )
    parser.add_argument("--patch", help="patch size x,y,z (multiples of 16)")
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    parser.add_argument(
        "--visual-planes",
        help="planes feeding the region encoder, e.g. axial,axial (LA) or sagittal,axial",
    )
    parser.add_argument("--no-text", action="store_true", help="ablation: no text prompt")
    parser.add_argument(
        "--region-mode",
        choices=("alpha", "no_mask", "none"),
        help="ablation: region prompt with mask (default), CLIP vision without mask, none",
    )
    parser.add_argument(
        "--no-registration",
        action="store_true",
        help="ablation: supervise the annotated slices only",
    )
    parser.add_argument(
        "--set",
        dest="set",
        type=parse_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any training setting, dotted for nested ones, e.g. network.base_filters=8 or "
        "schedule.base_lr=0.02 (repeatable; applied last; `rada settings` lists them)",
    )


def _add_propagation(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("propagation")
    group.add_argument(
        "--transform",
        default=None,
        help="ANTs transform per slice pair (default SyNOnly; the paper used SyNRA)",
    )
    group.add_argument(
        "--slice-step",
        type=int,
        default=None,
        help="register slices this far apart, interpolate between (default 3)",
    )
    group.add_argument(
        "--crop-margin",
        type=int,
        default=None,
        help="pixels kept around the label each registration carries (default 10)",
    )
    group.add_argument(
        "--no-stop",
        action="store_true",
        help="propagate to the volume edge even after the label vanished",
    )
    bound = group.add_mutually_exclusive_group()
    bound.add_argument(
        "--bound-margin",
        type=int,
        default=None,
        help="slices kept beyond the extent the other planes' annotated slices show along each "
        "view's axis; the pseudo-label is background past it (default 2)",
    )
    bound.add_argument(
        "--no-bound",
        action="store_true",
        help="no bound: each view's chains go on while their label lasts",
    )
    group.add_argument(
        "--workers", type=int, default=0, help="registration processes (default: one per CPU core)"
    )
    group.add_argument(
        "--fusion",
        choices=("weighted", "majority"),
        default=None,
        help="three-view vote for fused.nrrd",
    )


def _propagation_config(args: argparse.Namespace):
    from dataclasses import replace

    from .propagation import PropagationConfig

    config = PropagationConfig()
    registration = config.registration
    if args.transform:
        registration = replace(registration, transform=args.transform)
    changes = {"registration": registration}
    if args.slice_step is not None:
        changes["slice_step"] = args.slice_step
    if args.crop_margin is not None:
        changes["crop_margin"] = args.crop_margin
    if args.no_stop:
        changes["stop_when_empty"] = False
    if args.bound_margin is not None:
        changes["bound_margin"] = args.bound_margin
    if args.no_bound:
        changes["bound_margin"] = None
    if args.fusion:
        changes["fusion"] = args.fusion
    return replace(config, **changes)


# ----------------------------------------------------------------------------- commands


def cmd_demo(args: argparse.Namespace) -> int:
    """``rada demo``: a synthetic cohort, its propagation and (unless ``--no-train``) a model."""
    from .demo import run_demo

    run_demo(
        Path(args.out),
        n_cases=args.cases,
        n_labeled=args.labeled,
        seed=args.seed,
        workers=args.workers,
        progress=_progress(args),
        train=not args.no_train,
        iterations=args.iterations,
    )
    return 0


def cmd_cohort(args: argparse.Namespace) -> int:
    """``rada cohort``: write a cohort manifest from image/label folders, an LA2018 folder or a
    Decathlon task folder."""
    from .atomic import check_output_file
    from .cohort import cohort_from_folders, cohort_from_la_folder, save_cohort
    from .decathlon import cohort_from_decathlon

    check_output_file(args.out)  # before reading the folders
    sources = [
        option
        for option, value in (
            ("--images", args.images),
            ("--la", args.la),
            ("--decathlon", args.decathlon),
        )
        if value
    ]
    if len(sources) > 1:
        raise RADAError(f"rada cohort: {' and '.join(sources)} exclude each other; give one")
    if args.decathlon:
        cohort = cohort_from_decathlon(args.decathlon, args.labeled, args.validation)
    elif args.la:
        cohort = cohort_from_la_folder(
            args.la,
            labeled=args.labeled if args.labeled is not None else 8,
            validation=args.validation,
            list_file=args.list_file,
        )
    elif args.images:
        classes = {1: args.class_name} if args.class_name else None
        cohort = cohort_from_folders(
            args.images,
            args.labels,
            args.sparse_labels,
            args.labeled,
            args.validation,
            args.name,
            classes,
        )
    else:
        raise RADAError(
            "rada cohort: give --images DIR (with --labels/--sparse-labels), --la DIR "
            "or --decathlon DIR"
        )
    if args.name:
        cohort.name = args.name
    path = save_cohort(cohort, args.out)
    print(
        f"wrote {path}: {len(cohort.cases)} cases, {len(cohort.labeled)} labeled, "
        f"{len(cohort.unlabeled)} unlabeled, {len(cohort.validation)} validation"
    )
    return 0


def cmd_propagate(args: argparse.Namespace) -> int:
    """``rada propagate``: pseudo-labels of the cohort's labeled cases from their sparse slices."""
    from .cache import ArrayCache
    from .cohort import load_cohort
    from .pseudo_labels import propagate_cohort
    from .registration import AntsRegistrar

    cohort = load_cohort(args.cohort)
    if args.cases:
        cohort = cohort.select(args.cases.split(","))
    config = _propagation_config(args)
    cache = None if args.no_cache else ArrayCache(_cache_dir(args) / "propagation")
    with AntsRegistrar(config.registration, workers=args.workers) as registrar:
        reports = propagate_cohort(
            cohort,
            args.out,
            registrar,
            config,
            cache,
            args.allow_multiple_slices,
            args.oblique,
            _progress(args),
        )
    total = sum(r.seconds for r in reports)
    print(
        f"{len(reports)} case(s) in {args.out}: "
        + ", ".join(f"{r.id} {r.status} {r.seconds:.1f}s" for r in reports)
        + f" (total {total:.1f} s)",
        file=sys.stderr if args.events == "json" else sys.stdout,
    )
    return 0


def parse_setting(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of ``--set``: a training setting (dotted for nested ones), VALUE as JSON or text."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(
            f"--set takes KEY=VALUE, e.g. network.base_filters=8; got {text!r}"
        )
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def parse_triple(text: str, option: str | None = None) -> tuple[int, int, int]:
    """``"112,112,80"`` or ``"112x112x80"`` -> ``(112, 112, 80)``: a patch, stride or crop size.

    Raises ``argparse.ArgumentTypeError`` (usable as an option's ``type``) naming ``option``.
    """
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"{option + ' ' if option else ''}takes three positive integers X,Y,Z (e.g. 112,112,80), got {text!r}"
        )
    return values  # type: ignore[return-value]


def _encoder_config(args: argparse.Namespace):
    from .encoders import EncoderConfig
    from .weights import WEIGHTS_FOLDER

    return EncoderConfig(
        arch=args.encoder_arch,
        vision_checkpoint=args.vision_weights,
        text_checkpoint=args.text_weights,
        cache_dir=str(_cache_dir(args) / WEIGHTS_FOLDER),
        allow_download=args.allow_download,
    )


def _train_config(args: argparse.Namespace):
    """The :class:`TrainConfig` that ``rada train`` / ``rada settings`` options name;
    ``--preset auto`` says on stderr which preset it picked."""
    from .train_config import AUTO_PRESET, preset, resolve_preset

    changes: dict = {"device": args.device}
    if args.iterations:
        changes["iterations"] = args.iterations
    if args.patch:
        try:
            changes["patch"] = parse_triple(args.patch, "--patch")
        except argparse.ArgumentTypeError as exc:
            raise RADAError(str(exc)) from None
    if args.visual_planes:
        changes["visual_planes"] = tuple(args.visual_planes.split(","))
    if args.no_text:
        changes["use_text"] = False
    if args.region_mode:
        changes["region_mode"] = args.region_mode
    if args.no_registration:
        changes["use_registration"] = False
    changes.update(args.set)
    if args.preset == AUTO_PRESET:
        chosen = resolve_preset(args.preset, str(changes["device"]))
        why = "a CUDA device" if chosen == "paper" else "no CUDA device"
        print(f"preset auto: {chosen} ({why})", file=sys.stderr)
    try:
        return preset(args.preset, **changes)
    except (TypeError, ValueError) as exc:
        raise RADAError(f"training settings: {exc}") from None


def cmd_train(args: argparse.Namespace) -> int:
    """``rada train``: propagation (if needed), embeddings and training; writes a model bundle."""
    from .cohort import load_cohort
    from .workflow import train_model

    cohort = load_cohort(args.cohort)
    config = _train_config(args)
    run = train_model(
        cohort,
        args.out,
        config,
        args.propagation,
        _propagation_config(args),
        _encoder_config(args),
        _cache_dir(args),
        args.workers,
        _progress(args),
        cohort.validation,
    )
    print(
        f"model written to {run.model} ({run.iterations} iterations, {run.seconds:.0f} s)",
        file=sys.stderr if args.events == "json" else sys.stdout,
    )
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    """Print every training setting the options resolve to, one ``KEY=VALUE`` per line (``--set`` form)."""

    def text(value: Any) -> str:
        return value if isinstance(value, str) else json.dumps(value).replace(" ", "")

    from .train_config import SETTING_GROUPS

    data = _train_config(args).to_dict()
    for key in sorted(data):
        if key in SETTING_GROUPS:
            for name in sorted(data[key]):
                print(f"{key}.{name}={text(data[key][name])}")
        else:
            print(f"{key}={text(data[key])}")
    if data["time_budget"]:
        print(
            f"note: time_budget={text(data['time_budget'])}: training sizes iterations and the "
            "schedule to this machine when it starts; --iterations N fixes them",
            file=sys.stderr,
        )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """``rada predict``: segment images with a model bundle, one label map per image."""
    from .atomic import check_output_folder
    from .bundle import load_bundle
    from .cohort import load_cohort
    from .inference import INFERENCE_MODES, predict_files
    from .region_prompt import region_embeddings_for_files
    from .workflow import model_folder

    inputs: list[Path] = [Path(p) for p in args.image or []]
    sparse: list[Path | None] = [None if p == "-" else Path(p) for p in args.sparse_label or []]
    if sparse and args.mean_prompt:
        raise RADAError("rada predict: --sparse-label and --mean-prompt exclude each other")
    if sparse and len(sparse) != len(inputs):
        raise RADAError(
            f"rada predict: {len(inputs)} --image but {len(sparse)} --sparse-label; "
            "give one --sparse-label per --image, in the same order"
        )
    sparse = sparse or [None] * len(inputs)
    case_ids: list[str | None] = [None] * len(inputs)  # --image outputs: named for the file
    if args.cohort:
        cohort = load_cohort(args.cohort)
        _check_model_classes(
            model_folder(args.model), Path(args.cohort), cohort.classes, args.allow_other_classes
        )
        cases = (
            cohort.cases
            if args.split == "all"
            else [c for c in cohort.cases if c.split == args.split]
        )
        inputs += [c.image for c in cases]
        sparse += [c.sparse_label for c in cases]
        case_ids += [c.id for c in cases]
    if not inputs:
        raise RADAError("rada predict: give --image FILE (repeatable) or --cohort FILE")
    if args.mean_prompt:
        sparse = [None] * len(inputs)
    stride = args.stride
    if stride and stride not in INFERENCE_MODES:
        try:
            stride = parse_triple(stride)
        except argparse.ArgumentTypeError:
            raise RADAError(
                f"--stride takes {', '.join(INFERENCE_MODES)} or three positive integers X,Y,Z "
                f"(e.g. 18,18,4), got {args.stride!r}"
            ) from None
    check_output_folder(args.out)  # before loading the model and encoding prompts
    progress = _progress(args)
    bundle = load_bundle(model_folder(args.model))
    regions = region_embeddings_for_files(
        bundle,
        inputs,
        sparse,
        _cache_dir(args),
        args.vision_weights,
        args.device,
        args.oblique,
        progress,
    )
    outputs = predict_files(
        bundle,
        inputs,
        Path(args.out),
        stride=stride,
        device=args.device,
        region_embedding=regions,
        write_probabilities=args.probabilities,
        progress=progress,
        oblique=args.oblique,
        largest_component=args.largest_component,
        mirror=args.mirror,
        case_ids=case_ids,
    )
    print(
        f"{len(outputs)} label map(s) written to {args.out}",
        file=sys.stderr if args.events == "json" else sys.stdout,
    )
    return 0


def _check_model_classes(model: Path, cohort: Path, classes: dict[int, str], allow: bool) -> None:
    """Refuse (with ``allow``: warn about) a model whose classes are not ``classes``, those of the
    manifest ``cohort``, by number and name (:func:`~RADALib.cohort.classes_not_in_model`), before
    anything is loaded."""
    from .cohort import classes_not_in_model, describe_classes
    from .model_store import read_manifest

    entries = read_manifest(model).get("classes")
    if not isinstance(entries, dict):
        return  # a bundle without classes: load_bundle refuses it
    named = {k: v.get("name") for k, v in entries.items() if isinstance(v, dict)}
    model_classes = {int(k): str(v) for k, v in named.items() if str(k).isdigit() and v}
    if not classes_not_in_model(classes, model_classes):
        return
    problem = (
        f"this model was trained for {describe_classes(model_classes)}; the cohort {cohort} "
        f"names {describe_classes(classes)}"
    )
    if not allow:
        raise InputError(
            model,
            f"{problem}; use a model trained for these structures, or --allow-other-classes",
        )
    print(
        f"rada: warning: {model}: {problem} (--allow-other-classes: segmenting anyway)",
        file=sys.stderr,
    )


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``rada evaluate``: score predictions against ground truth (a table; JSON, CSV on request)."""
    from .atomic import check_output_file
    from .evaluation import evaluate_files, match_files, write_outputs

    for output in (args.json, args.csv):
        if output:
            check_output_file(output)  # before the work, not after it
    pairing = match_files(args.pred, args.truth)  # a Decathlon task folder: its labelsTr/
    if pairing.no_prediction:
        n_truths = len(pairing.pairs) + len(pairing.no_prediction)
        print(
            f"rada: warning: {args.pred}: no prediction for {len(pairing.no_prediction)} of "
            f"{n_truths} truth case(s): {', '.join(pairing.no_prediction)} (scored: the "
            f"{len(pairing.pairs)} case(s) with both)",
            file=sys.stderr,
        )
    if pairing.no_truth:
        print(
            f"rada: warning: {args.truth}: no truth for {len(pairing.no_truth)} prediction(s): "
            f"{', '.join(pairing.no_truth)} (not scored)",
            file=sys.stderr,
        )
    classes = [int(c) for c in args.classes.split(",")] if args.classes else None
    evaluation = evaluate_files(pairing.pairs, classes)
    evaluation.no_prediction, evaluation.no_truth = pairing.no_prediction, pairing.no_truth
    print(evaluation.table())
    write_outputs(
        evaluation, Path(args.json) if args.json else None, Path(args.csv) if args.csv else None
    )
    return 0


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The ``rada`` argument parser with all its sub-commands."""
    parser = argparse.ArgumentParser(
        prog="rada", description="RADA: segment 3D scans from three annotated slices per volume."
    )
    parser.add_argument("--version", action="version", version=f"rada {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="run the pipeline on a built-in synthetic cohort")
    demo.add_argument("--out", default="rada-demo", help="output folder (default ./rada-demo)")
    demo.add_argument("--cases", type=int, default=6, help="synthetic volumes (default 6)")
    demo.add_argument("--labeled", type=int, default=3, help="of which annotated (default 3)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--workers", type=int, default=0, help="registration processes (default: one per core)"
    )
    demo.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="training iterations (default: as many as fit three minutes on this machine)",
    )
    demo.add_argument("--no-train", action="store_true", help="stop after propagation")
    _add_events(demo)
    demo.set_defaults(run=cmd_demo)

    cohort = commands.add_parser(
        "cohort",
        help="write a cohort manifest from folders, an LA-style folder or a Decathlon task",
    )
    cohort.add_argument("--images", help="folder of images (NRRD/NIfTI/MHA/h5)")
    cohort.add_argument(
        "--labels", help="folder of dense labels (evaluation, or simulation with --labeled)"
    )
    cohort.add_argument("--sparse-labels", help="folder of sparse label maps (painted slices)")
    cohort.add_argument("--la", help="LA2018-style folder: <id>/mri_norm2.h5 and a list file")
    cohort.add_argument(
        "--list-file", default="train.list", help="list file inside --la (default train.list)"
    )
    cohort.add_argument(
        "--decathlon",
        help="Medical Segmentation Decathlon task folder: dataset.json (classes, training "
        "list), imagesTr/, labelsTr/",
    )
    cohort.add_argument(
        "--labeled",
        type=int,
        default=None,
        help="first N cases labeled by simulation from dense labels (LA default 8, else none)",
    )
    cohort.add_argument(
        "--validation", type=int, default=0, help="last N cases held out for validation"
    )
    cohort.add_argument("--name", help="cohort name")
    cohort.add_argument("--class-name", help="name of label 1 (default 'foreground')")
    cohort.add_argument("--out", required=True, help="manifest to write (JSON)")
    cohort.set_defaults(run=cmd_cohort)

    propagate = commands.add_parser(
        "propagate", help="propagate the sparse annotations of every labeled case"
    )
    propagate.add_argument("--cohort", required=True, help="cohort manifest (rada cohort)")
    propagate.add_argument(
        "--out", required=True, help="output folder (finished cases are kept: rerun to resume)"
    )
    propagate.add_argument("--cases", help="comma-separated case ids (default: every labeled case)")
    propagate.add_argument(
        "--cache-dir", help="result cache (default $RADA_CACHE_DIR or ~/.cache/rada)"
    )
    propagate.add_argument(
        "--no-cache", action="store_true", help="do not read or write the result cache"
    )
    propagate.add_argument(
        "--allow-multiple-slices",
        action="store_true",
        help="accept several annotated slices per plane",
    )
    propagate.add_argument(
        "--oblique",
        choices=("refuse", "resample"),
        default="refuse",
        help="what to do with oblique volumes",
    )
    _add_propagation(propagate)
    _add_events(propagate)
    propagate.set_defaults(run=cmd_propagate)

    train = commands.add_parser(
        "train", help="train the triple-view model on a cohort (propagates first where needed)"
    )
    train.add_argument("--cohort", required=True, help="cohort manifest (rada cohort)")
    train.add_argument(
        "--out",
        required=True,
        help="experiment folder (resumes from its checkpoint); the model goes to OUT/model",
    )
    _add_train_settings(train)
    train.add_argument(
        "--propagation", help="folder of `rada propagate` results (default OUT/propagation)"
    )
    train.add_argument(
        "--cache-dir",
        help="result, embedding and weight cache (default $RADA_CACHE_DIR or ~/.cache/rada)",
    )
    train.add_argument("--encoder-arch", default="ViT-B-16", help="ViT-B-16 (default) or ViT-L-14")
    train.add_argument(
        "--vision-weights", help="Alpha-CLIP visual checkpoint: a file, or a known name"
    )
    train.add_argument(
        "--text-weights", help="CLIP checkpoint for the text tower: a file, or a known name"
    )
    train.add_argument(
        "--allow-download",
        action="store_true",
        help="download known encoder weights to the cache (SHA256-checked)",
    )
    _add_propagation(train)
    _add_events(train)
    train.set_defaults(run=cmd_train)

    settings = commands.add_parser(
        "settings", help="print every training setting a preset and --set resolve to (KEY=VALUE)"
    )
    _add_train_settings(settings)
    settings.set_defaults(run=cmd_settings)

    predict = commands.add_parser(
        "predict",
        help="segment volumes with a trained model",
        description="Segment volumes with a trained model. The region prompt (Ev) is the training cohort's mean, "
        "stored in the model, unless a volume comes with its own sparse label: then its first annotated slice of "
        "each of the model's visual planes (e.g. axial) and its mask go through the same frozen Alpha-CLIP encoder "
        "the model was trained with (rebuilt from the model's manifest: the same seed for random weights, the same "
        "checkpoint, found by SHA256, for pretrained ones). Cohort cases use their sparse_label when they have one.",
    )
    predict.add_argument(
        "--model",
        required=True,
        help="model bundle folder (or an experiment folder holding model/)",
    )
    predict.add_argument("--image", action="append", help="image file (repeatable)")
    predict.add_argument(
        "--sparse-label",
        action="append",
        metavar="FILE",
        help="the painted slices of the i-th --image (repeatable, one per --image, same order; "
        "'-' for an image without): its region prompt comes from them instead of the training "
        "cohort's mean",
    )
    predict.add_argument(
        "--mean-prompt",
        action="store_true",
        help="ignore sparse labels (a cohort's too): use the training cohort's mean region prompt",
    )
    predict.add_argument(
        "--vision-weights",
        metavar="FILE",
        help="the Alpha-CLIP checkpoint the model was trained with, when it is not in the cache "
        "(needed only with sparse labels, for a model trained with pretrained weights)",
    )
    predict.add_argument(
        "--cache-dir", help="weight and embedding cache (default $RADA_CACHE_DIR or ~/.cache/rada)"
    )
    predict.add_argument("--cohort", help="segment the cases of a cohort manifest")
    predict.add_argument(
        "--split",
        choices=("all", "train", "validation"),
        default="all",
        help="which cohort cases (default all)",
    )
    predict.add_argument(
        "--out",
        required=True,
        help="output folder: <case>_rada.nrrd per input, with the input's header",
    )
    predict.add_argument(
        "--stride",
        default=None,
        help="sliding-window stride x,y,z, a preset (dense, fast), or whole (one pass over the volume)",
    )
    predict.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    predict.add_argument(
        "--probabilities", action="store_true", help="also write the foreground probability map"
    )
    predict.add_argument(
        "--largest-component",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep only the largest connected component of each structure (removes look-alike "
        "islands elsewhere; wrong for structures in several parts). Default: as the model "
        "recommends (structures that were one region in its training pseudo-labels)",
    )
    predict.add_argument(
        "--mirror",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average over the volume's mirror images in the x-y plane (four passes; smoother, "
        "slower). Default: as the model's bundle says (the cpu preset's: on)",
    )
    predict.add_argument("--oblique", choices=("refuse", "resample"), default="refuse")
    predict.add_argument(
        "--allow-other-classes",
        action="store_true",
        help="segment a --cohort whose classes (numbers and names) are not the model's, with a "
        "warning, instead of refusing",
    )
    _add_events(predict)
    predict.set_defaults(run=cmd_predict)

    evaluate = commands.add_parser(
        "evaluate", help="Dice, Jaccard, HD95, ASD of predictions against truth"
    )
    evaluate.add_argument("--pred", required=True, help="prediction file or folder")
    evaluate.add_argument(
        "--truth",
        required=True,
        help="truth file or folder (matched by case id), or a Decathlon task folder (its labelsTr/)",
    )
    evaluate.add_argument("--classes", help="comma-separated class values (default: all present)")
    evaluate.add_argument("--json", help="write the metrics as JSON here")
    evaluate.add_argument("--csv", help="write the metrics as CSV here")
    evaluate.set_defaults(run=cmd_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rada`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s"
    )
    if cancel_on_stdin_requested():
        watch_for_cancel(sys.stdin)
    try:
        return int(args.run(args) or 0)
    except RADAError as exc:
        print(f"rada: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except OSError as exc:  # a write no engine step turned into its own message: still one line
        from .atomic import WRITE_ERRNOS, write_problem

        if exc.errno not in WRITE_ERRNOS:
            raise
        print(f"rada: {exc.filename or 'output'}: {write_problem(exc)}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print(
            "rada: interrupted; finished cases are kept, rerun the same command to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
