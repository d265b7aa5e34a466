"""The `rada` command: exit codes, one-line errors, JSON events, evaluate outputs."""

from __future__ import annotations

import argparse
import csv
import io
import json

import numpy as np
import pytest

from RADALib.cli import main
from RADALib.events import Progress, json_sink, terminal_sink
from RADALib.volume import volume_from_array, write_like


def test_missing_cohort_file_gives_a_one_line_error_and_exit_code_2(tmp_path, capsys):
    code = main(
        ["propagate", "--cohort", str(tmp_path / "none.json"), "--out", str(tmp_path / "out")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == f"rada: {tmp_path / 'none.json'}: cohort file not found"
    assert not (tmp_path / "out").exists()


def _write_cube_cases(tmp_path, n: int) -> None:
    """``n`` blank 8³ images in ``img/`` and a cube label each in ``lab/``."""
    volume = volume_from_array(np.zeros((8, 8, 8), np.float32))
    label = np.zeros((8, 8, 8), np.uint8)
    label[2:5, 2:5, 2:5] = 1
    for i in range(n):
        write_like(volume, volume.array, tmp_path / "img" / f"c{i}.nrrd")
        write_like(volume, label, tmp_path / "lab" / f"c{i}_label.nrrd")


def test_cohort_command_writes_a_manifest_from_folders(tmp_path, capsys):
    _write_cube_cases(tmp_path, 3)
    code = main(
        [
            "cohort",
            "--images",
            str(tmp_path / "img"),
            "--labels",
            str(tmp_path / "lab"),
            "--labeled",
            "2",
            "--validation",
            "1",
            "--out",
            str(tmp_path / "cohort.json"),
        ]
    )
    assert code == 0
    assert "3 cases, 2 labeled, 0 unlabeled, 1 validation" in capsys.readouterr().out
    data = json.loads((tmp_path / "cohort.json").read_text())
    assert [c["labeled"] for c in data["cases"]] == [True, True, False]


def test_evaluate_prints_a_table_and_writes_json_and_csv(tmp_path, capsys):
    truth = np.zeros((20, 20, 20), np.uint8)
    truth[5:15, 5:15, 5:15] = 1
    pred = np.roll(truth, 2, axis=0)
    volume = volume_from_array(truth, spacing=(0.5, 0.5, 2.0))
    write_like(volume, truth, tmp_path / "truth" / "a.nrrd")
    write_like(volume, pred, tmp_path / "pred" / "a.nrrd")
    write_like(volume, np.zeros_like(truth), tmp_path / "pred" / "b.nrrd")
    write_like(volume, truth, tmp_path / "truth" / "b.nrrd")
    code = main(
        [
            "evaluate",
            "--pred",
            str(tmp_path / "pred"),
            "--truth",
            str(tmp_path / "truth"),
            "--json",
            str(tmp_path / "m.json"),
            "--csv",
            str(tmp_path / "m.csv"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "empty_prediction" in out and "failures 1 of 2" in out
    report = json.loads((tmp_path / "m.json").read_text())
    first = report["cases"][0]
    assert (
        first["id"] == "a"
        and first["dice"] == pytest.approx(0.8)
        and first["hd95_mm"] == pytest.approx(1.0)
    )
    assert (
        report["cases"][1]["hd95_vox"] is None
    )  # an empty prediction is never scored as distance 0
    rows = list(csv.DictReader((tmp_path / "m.csv").open()))
    assert rows[1]["status"] == "empty_prediction" and rows[1]["hd95_mm"] == ""


def test_json_events_are_one_object_per_line_with_an_eta(capsys):
    clock = iter([0.0, 10.0, 20.0])
    progress = Progress(json_sink(), clock=lambda: next(clock))
    progress.start("train", 4)
    progress.update(1, "step", loss=np.float32(0.5))
    progress.update(2, "step", dice=float("nan"))
    lines = capsys.readouterr().out.strip().splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["step"] for e in events] == [0, 1, 2]
    assert events[1]["eta_s"] == 30.0 and events[1]["loss"] == 0.5
    assert events[2]["eta_s"] == 20.0 and events[2]["dice"] is None


def test_a_log_file_gets_silent_steps_at_most_every_few_seconds_but_always_the_last():
    stream, now = io.StringIO(), [0.0]
    sink = terminal_sink(stream, every_s=5.0, clock=lambda: now[0])
    sink({"stage": "inference", "step": 0, "total": 20, "message": "20 windows", "eta_s": None})
    for step in range(1, 21):  # one window every 0.5 s
        now[0] = 0.5 * step
        sink({"stage": "inference", "step": step, "total": 20, "message": "", "eta_s": 1.0})
    sink(
        {"stage": "train", "step": 3, "total": 9, "message": "sup 0.5", "eta_s": 2.0}
    )  # a message: always printed
    lines = stream.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["0/20", "10/20", "20/20", "3/9"]
    assert lines[0] == "[inference] 0/20  20 windows" and lines[-1].endswith("sup 0.5")


def test_messages_carry_the_stage_they_belong_to():
    events = []
    progress = Progress(events.append, clock=lambda: 0.0)
    progress.message("before any stage")
    progress.start("propagate", 2)
    progress.message("a case")
    progress.enter("embed")
    progress.message("computing embeddings", level="warning")
    assert [(e["stage"], e["message"]) for e in events] == [
        ("rada", "before any stage"),
        ("propagate", ""),
        ("propagate", "a case"),
        ("embed", "computing embeddings"),
    ]


def test_propagate_command_emits_json_events_for_each_case(tmp_path, capsys, fake_ants):
    from conftest import disk_stack

    image, label = disk_stack(shape=(30, 30, 16), radius=6, shift_per_slice=(1.0, 0.0))
    volume = volume_from_array(image)
    write_like(volume, image, tmp_path / "img" / "c0.nrrd")
    write_like(volume, label, tmp_path / "lab" / "c0.nrrd")
    _write_cohort(tmp_path)
    capsys.readouterr()
    code = main(
        [
            "propagate",
            "--cohort",
            str(tmp_path / "cohort.json"),
            "--out",
            str(tmp_path / "out"),
            "--no-cache",
            "--events",
            "json",
        ]
    )
    events = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert code == 0
    assert events[0]["stage"] == "propagate" and events[0]["total"] == 1
    assert events[-1]["step"] == 1 and events[-1]["case"] == "c0"
    assert events[-1]["message"].startswith("c0: propagated in ")
    assert (tmp_path / "out" / "cases" / "c0" / "fused.nrrd").exists()
    # again: the finished case is kept, and one line says so (no case step, no second timing)
    assert (
        main(
            [
                "propagate",
                "--cohort",
                str(tmp_path / "cohort.json"),
                "--out",
                str(tmp_path / "out"),
                "--no-cache",
                "--events",
                "json",
            ]
        )
        == 0
    )
    again = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [(e["stage"], e["step"], e["total"]) for e in again] == [("propagate", 0, 0)]
    assert (
        again[0]["message"]
        == "all 1 labeled case(s) already propagated with these inputs and settings (kept)"
    )


def _write_cohort(tmp_path) -> str:
    """``rada cohort`` over tmp_path/img and tmp_path/lab, the first case labeled."""
    args = ["--images", str(tmp_path / "img"), "--labels", str(tmp_path / "lab")]
    out = str(tmp_path / "cohort.json")
    assert main(["cohort", *args, "--labeled", "1", "--out", out]) == 0
    return out


def _tiny_cohort(tmp_path) -> str:
    _write_cube_cases(tmp_path, 2)
    return _write_cohort(tmp_path)


def test_train_set_overrides_settings_and_iterations_scale_the_schedule(
    tmp_path, capsys, monkeypatch
):
    import RADALib.workflow as workflow

    seen = {}

    def fake_train_model(cohort, out, config, *rest, **kw):
        seen["config"] = config
        return workflow.TrainedRun(tmp_path, tmp_path / "model", config.iterations, 0.0, {})

    monkeypatch.setattr(workflow, "train_model", fake_train_model)
    cohort = _tiny_cohort(tmp_path)
    code = main(
        [
            "train",
            "--cohort",
            cohort,
            "--out",
            str(tmp_path / "exp"),
            "--preset",
            "small",
            "--iterations",
            "400",
            "--set",
            "network.base_filters=8",
            "--set",
            "schedule.base_lr=0.02",
            "--set",
            "amp=off",
        ]
    )
    assert code == 0, capsys.readouterr().err
    config = seen["config"]
    assert (
        config.network.base_filters == 8 and config.schedule.base_lr == 0.02 and config.amp == "off"
    )
    assert config.iterations == config.schedule.max_iterations == 400
    assert config.schedule.lr_step == 2 * 83  # the small preset's 83 of 200, scaled with the run


@pytest.mark.parametrize(
    "argument, message",
    [
        (
            ["--set", "network.base_filterz=8"],
            "rada: training settings: unknown network setting 'base_filterz'",
        ),
        (["--set", "patch=[40,40,40]"], "multiples of 16"),
        (
            ["--set", "schedule.alpha_floor=high"],
            "rada: training settings: setting schedule.alpha_floor takes a number, got 'high'",
        ),
        (
            ["--set", "use_text=1"],
            "rada: training settings: setting use_text takes true or false, got 1",
        ),
        (
            ["--set", "network.base_filters=8.5"],
            "setting network.base_filters takes a whole number, got 8.5",
        ),
        (
            ["--patch", "64,x"],
            "rada: --patch takes three positive integers X,Y,Z (e.g. 112,112,80), got '64,x'",
        ),
    ],
)
def test_train_with_a_bad_setting_gives_a_one_line_error(tmp_path, capsys, argument, message):
    cohort = _tiny_cohort(tmp_path)
    capsys.readouterr()
    code = main(
        [
            "train",
            "--cohort",
            cohort,
            "--out",
            str(tmp_path / "exp"),
            "--preset",
            "small",
            *argument,
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "exp").exists()


def test_settings_lists_every_training_setting_in_a_form_set_reads_back(capsys):
    from RADALib.train_config import preset

    assert (
        main(
            [
                "settings",
                "--preset",
                "small",
                "--iterations",
                "400",
                "--set",
                "schedule.alpha_floor=0.5",
                "--set",
                "label_source=fused",
                "--patch",
                "64,64,48",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.split()
    expected = preset(
        "small",
        iterations=400,
        patch=(64, 64, 48),
        label_source="fused",
        **{"schedule.alpha_floor": 0.5, "device": "auto"},
    )
    data = expected.to_dict()
    assert len(lines) == len(data) - 2 + len(data["schedule"]) + len(
        data["network"]
    )  # every setting, once
    assert {
        "schedule.alpha_floor=0.5",
        "label_source=fused",
        "patch=[64,64,48]",
        "schedule.lr_step=166",
    } <= set(lines)
    # each line is a valid --set: feeding them all back gives the same settings
    again = main(["settings", "--preset", "paper", *[a for line in lines for a in ("--set", line)]])
    assert again == 0 and capsys.readouterr().out.split() == lines
    assert main(["settings", "--set", "alphafloor=1"]) == 2
    assert (
        "unknown training setting 'alphafloor' (did you mean schedule.alpha_floor?)"
        in capsys.readouterr().err
    )
    # the cpu preset sizes its run: stderr says so, stdout stays in --set form
    assert main(["settings", "--preset", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "time_budget=1800.0" in captured.out.split()
    assert "sizes iterations and the schedule to this machine" in captured.err
    assert main(["settings", "--preset", "cpu", "--iterations", "900"]) == 0
    captured = capsys.readouterr()
    assert "time_budget=0.0" in captured.out.split() and "sizes" not in captured.err


def test_option_choices_are_the_ones_the_engine_accepts():
    # cli.py spells the choices out so that `rada --help` stays free of torch; they must not drift
    import typing

    from RADALib.cli import build_parser
    from RADALib.propagation import Fusion
    from RADALib.train_config import REGION_MODES

    commands = next(
        a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    ).choices
    choices = {
        (name, opt): tuple(a.choices)
        for name in ("train", "propagate")
        for a in commands[name]._actions
        for opt in a.option_strings
        if a.choices
    }
    assert choices[("train", "--region-mode")] == REGION_MODES
    assert (
        choices[("train", "--fusion")]
        == choices[("propagate", "--fusion")]
        == typing.get_args(Fusion)
    )


def test_sizes_parse_as_three_positive_integers_with_commas_or_x():
    from RADALib.cli import parse_triple

    assert (
        parse_triple("112,112,80")
        == parse_triple("112x112x80")
        == parse_triple(" 112, 112, 80,")
        == (112, 112, 80)
    )
    for bad in ("112,112", "1,2,3,4", "0,16,16", "a,b,c", ""):
        with pytest.raises(
            argparse.ArgumentTypeError,
            match=f"--patch takes three positive integers X,Y,Z .*got {bad!r}",
        ):
            parse_triple(bad, "--patch")


@pytest.mark.parametrize("stride", ["8,8", "densest"])
def test_predict_with_a_bad_stride_gives_a_one_line_error(tmp_path, capsys, stride):
    code = main(
        [
            "predict",
            "--model",
            str(tmp_path / "none"),
            "--image",
            str(tmp_path / "x.nrrd"),
            "--out",
            str(tmp_path / "out"),
            "--stride",
            stride,
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert (
        err
        == f"rada: --stride takes dense, fast, whole or three positive integers X,Y,Z (e.g. 18,18,4), got {stride!r}"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "options, margin", [([], 2), (["--bound-margin", "5"], 5), (["--no-bound"], None)]
)
def test_propagation_options_set_the_bound_margin(options, margin):
    from RADALib.cli import _propagation_config, build_parser
    from RADALib.propagation import PropagationConfig

    args = build_parser().parse_args(["propagate", "--cohort", "c.json", "--out", "o", *options])
    assert _propagation_config(args).bound_margin == margin
    assert PropagationConfig().bound_margin == 2


@pytest.mark.parametrize(("device", "chosen"), [("cpu", "cpu"), ("cuda", "paper")])
def test_train_and_settings_default_to_the_auto_preset_and_say_which_it_picked(
    capsys, device, chosen
):
    from RADALib.train_config import preset

    assert main(["settings", "--device", device]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith(f"preset auto: {chosen} (")
    assert f"iterations={preset(chosen).iterations}" in captured.out.split()


@pytest.mark.parametrize(
    ("flag", "expected"), [([], None), (["--mirror"], True), (["--no-mirror"], False)]
)
def test_predict_passes_the_mirror_choice_on_and_defaults_to_the_bundle(
    tmp_path, monkeypatch, flag, expected
):
    import RADALib.bundle
    import RADALib.inference
    import RADALib.region_prompt

    seen = {}

    def fake_predict_files(bundle, inputs, out, **kwargs):
        seen.update(kwargs)
        return []

    monkeypatch.setattr(RADALib.bundle, "load_bundle", lambda folder: "bundle")
    monkeypatch.setattr(RADALib.inference, "predict_files", fake_predict_files)
    monkeypatch.setattr(
        RADALib.region_prompt, "region_embeddings_for_files", lambda *a, **k: [None]
    )
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "manifest.json").write_text("{}")
    args = [
        "predict",
        "--model",
        str(tmp_path / "model"),
        "--image",
        "x.nrrd",
        "--out",
        str(tmp_path / "out"),
    ]
    assert main(args + flag) == 0
    assert seen["mirror"] is expected  # None: inference follows the bundle's inference.mirror
