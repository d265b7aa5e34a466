"""Tests of RADALib.training on tiny models (patch 16³, base filters 2-4, a few iterations, CPU)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from test_data import blob_case, propagated_cohort, synthetic_training_case

from RADALib.checkpoint import CHECKPOINT, check_compatible, load_checkpoint
from RADALib.data import TrainingCase, load_training_cases, normalize_intensity
from RADALib.errors import RADAError
from RADALib.events import Progress
from RADALib.networks import VIEWS, NetworkConfig
from RADALib.pseudo_labels import load_case_result
from RADALib.train_config import TrainConfig, preset, presets
from RADALib.training import (
    GuidancePrompt,
    _TrainForward,
    iteration_losses,
    peer_pseudo_labels,
    train,
    train_on_cases,
)

TEXT_DIM, REGION_DIM = 8, 6
REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(**changes) -> TrainConfig:
    """A seconds-long config; it keeps the small preset's schedule steps (lr 0.01 over these short runs)."""
    steps = {
        k: getattr(presets["small"].schedule, k) for k in ("lr_step", "alpha_step", "beta_step")
    }
    base = preset(
        "small",
        patch=(16, 16, 16),
        iterations=4,
        uncertainty_passes=2,
        log_every=1,
        checkpoint_every=2,
        validate_every=0,
        network={
            "base_filters": 2,
            "era_dim": 16,
            "adapter_hidden_dim": 16,
            "text_dim": TEXT_DIM,
            "region_dim": 2 * REGION_DIM,
        },
        schedule=steps,
    )
    return base.replace(**changes)


def embeddings(ids, seed=0):
    rng = np.random.default_rng(seed)
    text = rng.normal(size=TEXT_DIM).astype(np.float32)
    regions = {
        i: {
            p: rng.normal(size=REGION_DIM).astype(np.float32)
            for p in ("sagittal", "coronal", "axial")
        }
        for i in ids
    }
    return text, regions


def memory_cases(n_labeled=2, n_unlabeled=2):
    labeled, unlabeled = [], []
    for i in range(n_labeled + n_unlabeled):
        image, label = blob_case(i)
        image = normalize_intensity(image)
        if i >= n_labeled:
            unlabeled.append(TrainingCase(f"u{i}", image))
            continue
        mask = np.zeros(label.shape, bool)
        mask[16], mask[:, 16], mask[:, :, 16] = True, True, True
        distances = tuple(np.abs(np.arange(32) - 16).astype(np.float32) for _ in range(3))
        labeled.append(
            TrainingCase(f"l{i}", image, (label, label, label), distances, mask, label * mask)
        )
    return labeled, unlabeled


@pytest.fixture(scope="module")
def disk_cohort(tmp_path_factory):
    return propagated_cohort(tmp_path_factory.mktemp("cohort"))


def states_equal(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Events:
    def __init__(self, stop_at_step=None):
        self.events, self.stop_at_step = [], stop_at_step

    def __call__(self, event):
        self.events.append(event)
        if (
            self.stop_at_step is not None
            and event.get("stage") == "train"
            and event.get("step") == self.stop_at_step
        ):
            raise KeyboardInterrupt


# ----------------------------------------------------------------------------- configuration


def test_config_defaults_round_trip_and_replace():
    cfg = TrainConfig()
    assert (
        cfg.patch == (112, 112, 80)
        and cfg.iterations == 6000
        and (cfg.labeled_batch, cfg.unlabeled_batch) == (2, 2)
    )
    assert (
        cfg.seed == 1337
        and cfg.visual_planes == ("axial", "axial")
        and cfg.schedule.base_lr == 0.01
    )
    assert cfg.network.region_dim == 1024 and cfg.network.text_dim == 512
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    changed = cfg.replace(iterations=100, network={"base_filters": 8}, **{"schedule.base_lr": 0.02})
    assert changed.schedule.max_iterations == 100 and changed.network.base_filters == 8
    assert changed.schedule.base_lr == 0.02 and cfg.network.base_filters == 16  # a copy
    small = presets["small"]
    assert (
        all(p % 16 == 0 for p in small.patch) and small.schedule.max_iterations == small.iterations
    )
    with pytest.raises(
        ValueError, match=r"unknown training setting 'iterationz' \(did you mean iterations\?\)"
    ):
        cfg.replace(iterationz=3)
    with pytest.raises(
        ValueError,
        match=r"unknown training setting 'alpha_floor' \(did you mean schedule.alpha_floor\?\)",
    ):
        cfg.replace(alpha_floor=0.9)  # a nested setting named without its group
    with pytest.raises(
        ValueError,
        match=r"unknown network setting 'basefilters' \(did you mean network.base_filters\?\)",
    ):
        cfg.replace(**{"network.basefilters": 8})
    with pytest.raises(ValueError, match=r"unknown training setting 'bogus'$"):
        cfg.replace(bogus=1)  # nothing close: no guess
    with pytest.raises(ValueError, match="multiples of 16"):
        cfg.replace(patch=(40, 40, 40))
    with pytest.raises(ValueError, match="region_mode"):
        cfg.replace(region_mode="maybe")
    assert (
        cfg.label_source == "views" and cfg.schedule.alpha_floor == 0.0
    )  # the paper's supervision
    with pytest.raises(ValueError, match="label_source must be one of"):
        cfg.replace(label_source="dense")
    with pytest.raises(ValueError, match="'fused' needs the propagated labels"):
        cfg.replace(label_source="fused", use_registration=False)
    with pytest.raises(RADAError, match="unknown training preset"):
        preset("huge")


def test_a_setting_of_the_wrong_kind_is_refused_naming_it_and_lists_may_be_comma_text():
    cfg = TrainConfig()
    for key, value, wanted in (
        ("schedule.alpha_floor", "high", "a number"),
        ("use_text", 1, "true or false"),
        ("network.base_filters", 8.5, "a whole number"),
        ("amp", True, "text"),
        ("seed", True, "a whole number"),
        ("patch", "64,a,48", "a comma-separated list"),
    ):
        with pytest.raises(ValueError, match=f"setting {key} takes {wanted}"):
            cfg.replace(**{key: value})
    with pytest.raises(
        ValueError, match="setting network.base_filters takes a whole number, got 8.5"
    ):
        cfg.replace(
            network={"base_filters": 8.5}
        )  # a group given as a dict is checked the same way
    changed = cfg.replace(
        **{
            "patch": "64,64,48",
            "visual_planes": "axial,sagittal",
            "schedule.alpha_floor": 0,
            "noise_std": 0,
        }
    )  # a whole number for a decimal setting
    assert changed.patch == (64, 64, 48) and changed.visual_planes == ("axial", "sagittal")
    assert changed.schedule.alpha_floor == 0 and changed.noise_std == 0


def test_the_cpu_preset_runs_the_whole_method_on_coarser_voxels():
    cpu = preset("cpu")
    paper = presets["paper"]
    assert cpu.spacing is None and cpu.spacing_factor > 1  # the cohort's median, coarsened
    assert cpu.uncertainty_passes == 2 and cpu.unlabeled_batch == paper.unlabeled_batch
    assert (cpu.use_text, cpu.region_mode, cpu.use_registration, cpu.label_source) == (
        paper.use_text,
        paper.region_mode,
        paper.use_registration,
        paper.label_source,
    )
    assert cpu.iterations < paper.iterations and cpu.schedule.max_iterations == cpu.iterations
    assert cpu.schedule.lr_step / cpu.iterations == pytest.approx(
        paper.schedule.lr_step / paper.iterations, abs=0.01
    )
    assert TrainConfig.from_dict(cpu.to_dict()) == cpu


@pytest.mark.parametrize(("cuda", "expected"), [(True, "paper"), (False, "cpu")])
def test_the_auto_preset_is_paper_with_cuda_and_cpu_without(monkeypatch, cuda, expected):
    from RADALib.train_config import resolve_preset

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert resolve_preset("auto") == expected
    assert preset("auto") == presets[expected]
    assert resolve_preset("auto", "cpu") == "cpu" and resolve_preset("auto", "cuda:1") == "paper"
    assert resolve_preset("small") == "small"


def test_preset_with_other_iterations_scales_its_schedule_steps():
    from RADALib.schedules import learning_rate

    half = preset("paper", iterations=3000)
    assert half.iterations == half.schedule.max_iterations == 3000
    assert (half.schedule.lr_step, half.schedule.alpha_step, half.schedule.beta_step) == (
        1250,
        500,
        75,
    )
    # a 5x longer small run keeps the preset's shape: lr 0.01 for the first 5/12 of it, not 10^-8 at the end
    longer = preset("small", iterations=1000)
    small = presets["small"]
    assert longer.schedule.lr_step == 5 * small.schedule.lr_step
    assert learning_rate(999, longer.schedule) == pytest.approx(learning_rate(199, small.schedule))
    # schedule settings given explicitly win over the scaled ones; the others are still scaled
    explicit = preset("small", iterations=1000, **{"schedule.lr_step": 100})
    assert (
        explicit.schedule.lr_step == 100
        and explicit.schedule.alpha_step == longer.schedule.alpha_step
    )
    assert preset("small").schedule == small.schedule


def test_guidance_prompt_takes_one_plane_per_labeled_sample():
    text, regions = embeddings(["a", "b", "c"])
    cfg = tiny(visual_planes=("sagittal", "axial"))
    prompt = GuidancePrompt.build(cfg, text, regions, ["a", "b", "c"])
    region = prompt.region([2, 0])
    assert tuple(region.shape) == (1, 2 * REGION_DIM)
    assert np.allclose(
        region[0].numpy(), np.concatenate([regions["c"]["sagittal"], regions["a"]["axial"]])
    )
    mean = np.concatenate(
        [np.mean([regions[c][p] for c in "abc"], axis=0) for p in ("sagittal", "axial")]
    )
    assert np.allclose(prompt.inference_region()[0].numpy(), mean, atol=1e-6)
    assert tuple(prompt.text.shape) == (1, TEXT_DIM)
    assert GuidancePrompt.build(cfg.replace(use_text=False), text, regions, ["a"]).text is None
    assert (
        GuidancePrompt.build(cfg.replace(region_mode="none"), text, regions, ["a"]).region([0])
        is None
    )
    assert GuidancePrompt.build(cfg, text, None, ["a"]).region([0]) is None
    with pytest.raises(RADAError, match="no region embedding for d/sagittal"):
        GuidancePrompt.build(cfg, text, regions, ["a", "d"])


# ----------------------------------------------------------------------------- pseudo-labels and losses


def test_peer_pseudo_labels_leave_batchnorm_statistics_and_modes_untouched():
    torch.manual_seed(0)
    model = NetworkConfig(
        base_filters=2, text_dim=TEXT_DIM, region_dim=REGION_DIM, era_dim=16, adapter_hidden_dim=16
    ).build()
    model.train()
    x = torch.randn(2, 1, 16, 16, 16)
    era = model.embed(torch.randn(1, TEXT_DIM), torch.randn(1, REGION_DIM))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = peer_pseudo_labels(model, x, era, passes=3, threshold=0.6)
    assert states_equal(before, model.state_dict())  # running mean/var and num_batches_tracked too
    assert all(net.training for net in model.nets.values())
    for view in VIEWS:
        pseudo, mask = out[view]
        assert pseudo.dtype == torch.int64 and tuple(pseudo.shape) == (2, 16, 16, 16)
        assert mask.dtype == torch.float32 and set(mask.unique().tolist()) <= {0.0, 1.0}
        assert not pseudo.requires_grad and not mask.requires_grad
    assert all(
        float(m.sum()) == 0 for _, m in peer_pseudo_labels(model, x, era, 2, threshold=0.0).values()
    )
    assert all(
        bool(m.all()) for _, m in peer_pseudo_labels(model, x, era, 2, threshold=10.0).values()
    )
    # the check above can see a change: a train-mode forward does move the statistics
    model.nets["axial"](x, era)
    assert not states_equal(before, model.state_dict())


def test_iteration_losses_follow_equation_11():
    torch.manual_seed(0)
    labeled = [synthetic_training_case("l", (16, 16, 16))]
    from RADALib.data import TwoStreamSampler

    batch = (
        TwoStreamSampler(
            labeled, [synthetic_training_case("u", (16, 16, 16), labeled=False)], (16, 16, 16), 1, 1
        )
        .sample(0.9)
        .to("cpu")
    )
    logits = {v: torch.randn(2, 2, 16, 16, 16, requires_grad=True) for v in VIEWS}
    pseudo = {
        v: (torch.randint(0, 2, (1, 16, 16, 16)), (torch.rand(1, 16, 16, 16) > 0.5).float())
        for v in VIEWS
    }
    loss, sup, unsup = iteration_losses(logits, batch, pseudo, 0.25)
    assert torch.allclose(loss, 0.75 * sup + 0.25 * unsup)
    loss.backward()
    assert all(logits[v].grad.abs().sum() > 0 for v in VIEWS)
    loss0, sup0, unsup0 = iteration_losses(logits, batch, None, 0.0)
    assert float(unsup0) == 0.0 and torch.allclose(loss0, sup0)


# ----------------------------------------------------------------------------- training runs


def test_training_learns_an_easy_problem(tmp_path):
    labeled, unlabeled = memory_cases()
    text, regions = embeddings([c.id for c in labeled])
    cfg = tiny(iterations=16, checkpoint_every=0, log_every=1, **{"schedule.base_lr": 0.05})
    result = train_on_cases(cfg, labeled, unlabeled, text, regions, tmp_path)
    sup = [h["loss_sup"] for h in result.history]
    assert len(sup) == 16 and all(np.isfinite(sup))
    assert np.mean(sup[-4:]) < 0.8 * np.mean(sup[:4]), (
        sup
    )  # well below the start on every seed tried
    assert any(h["loss_unsup"] > 0 for h in result.history)  # the cross pseudo-supervision ran
    assert not result.model.training and result.iteration == 16


def test_resume_after_a_stop_or_ctrl_c_equals_a_straight_run(disk_cohort, tmp_path):
    cohort, propagation = disk_cohort
    text, regions = embeddings([c.id for c in cohort.labeled])
    cfg = tiny(iterations=3, checkpoint_every=1, prefetch=2)  # the thread draws batches ahead
    straight = train(cfg, cohort, propagation, text, regions, tmp_path / "a")
    assert json.loads((tmp_path / "a" / "config.json").read_text())["patch"] == [16, 16, 16]
    lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]

    first = train(cfg, cohort, propagation, text, regions, tmp_path / "b", stop_after=1)
    assert first.iteration == 1 and load_checkpoint(tmp_path / "b" / CHECKPOINT)["iteration"] == 1
    resumed = train(cfg, cohort, propagation, text, regions, tmp_path / "b")
    assert resumed.iteration == 3
    assert states_equal(straight.model.state_dict(), resumed.model.state_dict())  # bitwise

    sink = Events(
        stop_at_step=3
    )  # Ctrl-C while iteration 3 is being logged, after the checkpoint at 2
    with pytest.raises(KeyboardInterrupt):
        train(cfg, cohort, propagation, text, regions, tmp_path / "c", progress=Progress(sink))
    assert load_checkpoint(tmp_path / "c" / CHECKPOINT)["iteration"] == 2
    events = Events()
    again = train(
        cfg, cohort, propagation, text, regions, tmp_path / "c", progress=Progress(events)
    )
    assert states_equal(straight.model.state_dict(), again.model.state_dict())
    assert any("resuming" in e.get("message", "") for e in events.events)
    steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2, 3]  # the line of the lost iteration 3 was dropped on resume

    with pytest.raises(RADAError, match="other settings"):
        train(
            cfg.replace(**{"schedule.base_lr": 0.02}),
            cohort,
            propagation,
            text,
            regions,
            tmp_path / "c",
        )
    assert (
        json.loads((tmp_path / "c" / "config.json").read_text())["schedule"]["base_lr"] == 0.01
    )  # untouched


def test_a_checkpoint_accepts_other_runtime_settings_but_not_other_computations(tmp_path):
    saved = tiny().to_dict()
    check_compatible(saved, tiny(threads=1, log_every=3, prefetch=0, device="cpu"), tmp_path)
    with pytest.raises(RADAError, match=r"other settings \(seed\)"):
        check_compatible(saved, tiny(seed=7), tmp_path)


def test_ctrl_c_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    labeled, unlabeled = memory_cases(1, 1)
    text, regions = embeddings([c.id for c in labeled])
    cfg = tiny(iterations=3, checkpoint_every=1, prefetch=0)
    real_save, calls = torch.save, []

    def save(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            path.write(b"half a checkpoint")  # a file object: the checkpoint's temporary file
            raise KeyboardInterrupt
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(KeyboardInterrupt):
        train_on_cases(cfg, labeled, unlabeled, text, regions, tmp_path)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / CHECKPOINT)["iteration"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint.pt",
        "config.json",
        "metrics.jsonl",
    ]


def test_supervised_only_without_unlabeled_cases_and_validation(tmp_path):
    labeled, _ = memory_cases(2, 0)
    text, regions = embeddings([c.id for c in labeled])
    seen = []

    def validate(model, text_input, region_input):
        seen.append((model.training, tuple(text_input.shape), tuple(region_input.shape)))
        return {"dice": 0.5}

    events = Events()
    cfg = tiny(iterations=2, validate_every=2, log_every=5)
    result = train_on_cases(cfg, labeled, [], text, regions, tmp_path, Progress(events), validate)
    [warning] = [
        e["message"]
        for e in events.events
        if e.get("level") == "warning" and "supervised only" in e["message"]
    ]
    assert (
        "--set label_source=fused" in warning
    )  # the paper's α ramp-down leaves only the slices: say what helps
    assert all(h["loss_unsup"] == 0.0 and h["beta"] == 0.0 for h in result.history)
    assert seen == [(False, (1, TEXT_DIM), (1, 2 * REGION_DIM))]
    assert result.history[-1]["dice"] == 0.5
    assert [e["step"] for e in events.events if e.get("stage") == "train" and "dice" in e] == [2]


def test_fused_labels_with_unlabeled_cases_warn_that_cross_supervision_loses_its_diversity(
    tmp_path,
):
    labeled, unlabeled = memory_cases(2, 1)
    text, regions = embeddings([c.id for c in labeled])
    said = {}
    for source in ("views", "fused"):
        events = Events()
        train_on_cases(
            tiny(iterations=1, label_source=source),
            labeled,
            unlabeled,
            text,
            regions,
            tmp_path / source,
            Progress(events),
        )
        said[source] = [e["message"] for e in events.events if e.get("level") == "warning"]
    assert not any("label_source=fused" in m for m in said["views"])
    [warning] = [m for m in said["fused"] if "label_source=fused with unlabeled cases" in m]
    assert "view diversity" in warning and "label_source=views" in warning


def test_ablations_run_without_text_region_or_registration(disk_cohort, tmp_path):
    cohort, _ = disk_cohort
    text, _ = embeddings([])
    cfg = tiny(iterations=1, use_text=False, use_registration=False, region_mode="none")
    seen = []
    result = train(
        cfg.replace(validate_every=1),
        cohort,
        None,
        text,
        None,
        tmp_path,  # no propagation needed
        validate=lambda model, t, r: seen.append((t, r)) or {},
    )
    assert result.iteration == 1 and np.isfinite(result.history[-1]["loss"])
    assert (
        float(seen[0][0].abs().sum()) == 0.0 and seen[0][1] is None
    )  # Et = zeros, no region: as trained
    events = Events()
    train(
        cfg.replace(use_text=True),
        cohort,
        None,
        None,
        None,
        tmp_path / "b",
        progress=Progress(events),
    )
    assert any(
        e.get("level") == "warning" and "no text embedding" in e["message"] for e in events.events
    )


def test_train_reads_the_fused_pseudo_labels_when_label_source_is_fused(
    disk_cohort, tmp_path, monkeypatch
):
    import RADALib.training as training

    cohort, propagation = disk_cohort
    loaded = []

    def spy(*args, **kwargs):
        labeled, unlabeled = load_training_cases(*args, **kwargs)
        loaded.append(labeled)
        return labeled, unlabeled

    monkeypatch.setattr(training, "load_training_cases", spy)
    text, regions = embeddings([c.id for c in cohort.cases])
    result = train(
        tiny(iterations=1, label_source="fused"), cohort, propagation, text, regions, tmp_path
    )
    assert result.iteration == 1 and np.isfinite(result.history[-1]["loss"])
    [labeled] = loaded
    fused = load_case_result(propagation / "cases" / labeled[0].id).fused()
    assert all(np.array_equal(label, fused) for label in labeled[0].labels)
    assert all(not d.any() for d in labeled[0].distances)  # α^0 = 1: no decay


def test_patch_larger_than_the_volumes_is_padded_and_said(tmp_path):
    labeled = [synthetic_training_case("l", (12, 20, 16))]
    text, regions = embeddings(["l"])
    events = Events()
    train_on_cases(
        tiny(iterations=1, unlabeled_batch=0),
        labeled,
        [],
        text,
        regions,
        tmp_path,
        Progress(events),
    )
    assert sum("padded" in e.get("message", "") for e in events.events) == 1


def test_gpu_out_of_memory_becomes_a_one_line_radaerror(tmp_path, monkeypatch):
    labeled, unlabeled = memory_cases(1, 1)
    text, regions = embeddings([c.id for c in labeled])

    def oom(self, *args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(_TrainForward, "forward", oom)
    with pytest.raises(
        RADAError, match=r"ran out of memory .*--preset cpu.*--device cpu"
    ) as caught:
        train_on_cases(tiny(iterations=1), labeled, unlabeled, text, regions, tmp_path)
    assert "\n" not in str(caught.value)


# ----------------------------------------------------------------------------- distributed


def _ddp_rank(rank: int, port: int, out: str, errors) -> None:
    """One process of a 2-process run, with the environment ``torchrun`` would give it."""
    try:
        os.environ.update(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            GLOO_SOCKET_IFNAME="lo",
        )
        torch.set_num_threads(1)
        labeled, unlabeled = memory_cases(3, 3)
        text, regions = embeddings([c.id for c in labeled])
        result = train_on_cases(
            tiny(iterations=3, checkpoint_every=3, prefetch=1),
            labeled,
            unlabeled,
            text,
            regions,
            out,
        )
        torch.save(result.model.state_dict(), os.path.join(out, f"rank{rank}.pt"))
        errors.put((rank, None))
    except BaseException as error:  # reported to the test
        errors.put((rank, f"{type(error).__name__}: {error}"))


@pytest.mark.skipif(
    "fork" not in __import__("multiprocessing").get_all_start_methods(), reason="needs fork"
)
def test_two_gloo_processes_stay_in_step(tmp_path):
    import multiprocessing
    import socket

    import torch._dynamo  # noqa: F401 - imported once here rather than in both children (slow)

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "run"
    # forked children share the already imported torch (a fresh interpreter takes ~10 s here);
    # the environment is the one torchrun sets, so train() opens (and closes) the gloo group itself
    context = multiprocessing.get_context("fork")
    errors = context.Queue()
    processes = [
        context.Process(target=_ddp_rank, args=(r, port, str(out), errors)) for r in range(2)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=180)
    reports = dict(errors.get(timeout=5) for _ in processes)
    assert reports == {0: None, 1: None} and [p.exitcode for p in processes] == [0, 0], reports
    rank0, rank1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert states_equal(rank0, rank1)  # parameters and batch-norm buffers
    torch.manual_seed(tiny().seed)
    fresh = tiny().network.build().state_dict()  # the initial weights of the run
    assert not torch.equal(
        fresh["nets.axial.vnet.out_conv.weight"], rank0["nets.axial.vnet.out_conv.weight"]
    )
    saved = load_checkpoint(out / CHECKPOINT)
    assert saved["world_size"] == 2 and saved["iteration"] == 3
    assert (
        saved["ranks"][0]["sampler"] != saved["ranks"][1]["sampler"]
    )  # each rank draws its own batches
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("rank")) == [
        "checkpoint.pt",
        "config.json",
        "metrics.jsonl",
    ]  # rank 0 alone writes


@pytest.mark.parametrize("training_region", ["batch", "mean"])
def test_training_region_mean_guides_every_batch_by_the_inference_prompt(
    tmp_path, monkeypatch, training_region
):
    labeled, unlabeled = memory_cases()
    text, regions = embeddings([c.id for c in labeled])
    seen: list[torch.Tensor] = []
    forward = _TrainForward.forward

    def spy(self, x, text_input, region):
        seen.append(region.detach().clone())
        return forward(self, x, text_input, region)

    monkeypatch.setattr(_TrainForward, "forward", spy)
    config = tiny(iterations=3, training_region=training_region)
    train_on_cases(config, labeled, unlabeled, text, regions, tmp_path)
    prompt = GuidancePrompt.build(config, text, regions, [c.id for c in labeled])
    mean = prompt.inference_region()
    same = [torch.allclose(r, mean) for r in seen]
    assert len(seen) == 3
    assert all(same) if training_region == "mean" else not any(same)


def test_a_checkpoint_from_before_the_new_settings_resumes_only_with_their_defaults(tmp_path):
    saved = tiny().to_dict()
    for key in (
        "spacing_factor",
        "fit_patch",
        "training_region",
        "inference_stride",
        "inference_mirror",
    ):
        saved.pop(key)
    check_compatible(saved, tiny(inference_stride="whole"), tmp_path)  # bundle-only settings
    check_compatible(saved, tiny(inference_mirror=True), tmp_path)
    with pytest.raises(RADAError, match="training_region"):
        check_compatible(saved, tiny(training_region="mean"), tmp_path)
    with pytest.raises(RADAError, match="fit_patch"):
        check_compatible(saved, tiny(fit_patch=True), tmp_path)
