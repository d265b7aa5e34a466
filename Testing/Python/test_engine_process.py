"""EngineProcess: live events, final states, one-line failures, cancelling the whole tree."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from RADALib.cancel_channel import watch_for_cancel
from RADALib.engine_process import (
    EngineProcess,
    engine_command,
    engine_environment,
    start_options,
)
from RADALib.errors import RADAError

posix_only = pytest.mark.skipif(os.name == "nt", reason="POSIX process groups and signals")


def script(tmp_path: Path, source: str, name: str = "child.py") -> list[str]:
    """A command line that runs ``source`` (dedented) as a Python script."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return [sys.executable, str(path)]


def until(condition, timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Poll ``condition`` until it is true or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (a zombie waiting for its reaper counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def read_pid(path: Path) -> int:
    assert until(lambda: path.exists() and path.read_text().strip() != ""), (
        f"{path} was not written"
    )
    return int(path.read_text())


def test_events_arrive_while_the_process_is_still_running(tmp_path):
    go = tmp_path / "go"
    proc = EngineProcess(
        script(
            tmp_path,
            f"""
        import json, os, time
        print(json.dumps({{"stage": "train", "step": 1, "total": 2, "message": "", "eta_s": None}}), flush=True)
        while not os.path.exists({str(go)!r}):
            time.sleep(0.02)
        print(json.dumps({{"stage": "train", "step": 2, "total": 2, "message": "", "eta_s": 0.0}}), flush=True)
    """,
        )
    ).start()
    seen = []
    assert until(lambda: seen.extend(proc.poll()) or seen), "no event before the process exits"
    assert seen[0]["step"] == 1
    assert proc.running and proc.returncode is None and proc.state == "running"
    go.touch()
    rest = []
    assert proc.wait(timeout=10, on_event=rest.append) == "succeeded"
    assert [e["step"] for e in rest] == [2]
    assert not proc.running and proc.returncode == 0


def test_successful_run_keeps_events_in_order_with_log_lines_and_stderr_tail(tmp_path):
    proc = EngineProcess(
        script(
            tmp_path,
            """
        import json, sys
        for step in range(1, 51):
            print(json.dumps({"stage": "train", "step": step, "total": 50, "message": "", "loss": 1.0 / step}))
        print("plain text line")
        print("[1, 2]")
        print(json.dumps({"stage": "propagate", "step": None, "total": None, "message": "hm", "level": "warning"}))
        print("a warning on stderr", file=sys.stderr)
    """,
        ),
        env={"PYTHONUNBUFFERED": "1"},
    ).start()
    events = []
    assert proc.wait(timeout=15, on_event=events.append) == "succeeded"
    events += proc.poll()
    stdout_events = [e for e in events if e.get("level") != "stderr"]
    assert [e["step"] for e in stdout_events[:50]] == list(range(1, 51))
    assert stdout_events[50] == {"stage": "log", "message": "plain text line", "level": "info"}
    assert stdout_events[51] == {"stage": "log", "message": "[1, 2]", "level": "info"}
    assert stdout_events[52]["level"] == "warning" and stdout_events[52]["message"] == "hm"
    assert {"stage": "log", "message": "a warning on stderr", "level": "stderr"} in events
    assert proc.stderr_tail == ["a warning on stderr"]
    assert proc.failure_message() is None


def test_environment_and_working_folder_reach_the_process(tmp_path):
    proc = EngineProcess(
        script(
            tmp_path,
            """
        import json, os
        print(json.dumps({"stage": "env", "value": os.environ["RADA_TEST_VALUE"], "cwd": os.getcwd()}))
    """,
        ),
        env={"RADA_TEST_VALUE": "42"},
        cwd=str(tmp_path),
    ).start()
    events = []
    assert proc.wait(timeout=10, on_event=events.append) == "succeeded"
    assert events[0]["value"] == "42"
    assert Path(events[0]["cwd"]).resolve() == tmp_path.resolve()


def test_stderr_tail_is_bounded(tmp_path):
    proc = EngineProcess(
        script(
            tmp_path,
            """
        import sys
        for i in range(500):
            print(f"line {i}", file=sys.stderr)
    """,
        )
    ).start()
    assert proc.wait(timeout=10) == "succeeded"
    assert len(proc.stderr_tail) == 200 and proc.stderr_tail[-1] == "line 499"


def test_input_error_exit_2_fails_with_the_engines_own_line(tmp_path):
    proc = EngineProcess(
        script(
            tmp_path,
            """
        import sys
        print("some earlier noise", file=sys.stderr)
        print("rada: foo.nrrd: cannot be read", file=sys.stderr)
        sys.exit(2)
    """,
        )
    ).start()
    assert proc.wait(timeout=10) == "failed"
    assert proc.returncode == 2
    assert proc.failure_message() == "rada: foo.nrrd: cannot be read"


def test_other_exit_status_names_the_traceback_error(tmp_path):
    proc = EngineProcess(
        script(
            tmp_path,
            """
        def inner():
            raise ValueError("the volume has no voxels")
        inner()
    """,
        )
    ).start()
    assert proc.wait(timeout=10) == "failed"
    message = proc.failure_message()
    assert message == "the engine exited with status 1: ValueError: the volume has no voxels"
    assert "\n" not in message


def test_exit_status_without_stderr_is_reported_plainly(tmp_path):
    proc = EngineProcess([sys.executable, "-c", "import sys; sys.exit(3)"]).start()
    assert proc.wait(timeout=10) == "failed"
    assert proc.failure_message() == "the engine exited with status 3"


@posix_only
def test_a_run_killed_by_sigkill_names_the_signal(tmp_path):
    proc = EngineProcess(
        script(
            tmp_path,
            """
        import os, signal
        os.kill(os.getpid(), signal.SIGKILL)
    """,
        )
    ).start()
    assert proc.wait(timeout=10) == "failed"
    assert proc.returncode == -signal.SIGKILL
    assert (
        proc.failure_message()
        == "the engine process was killed by signal 9 (SIGKILL): out of memory?"
    )


@posix_only
def test_cancel_kills_the_whole_tree_even_when_sigint_is_ignored(tmp_path):
    child_pid, grandchild_pid = tmp_path / "child.pid", tmp_path / "grandchild.pid"
    grandchild = script(
        tmp_path,
        f"""
        import os, signal, time
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        open({str(grandchild_pid)!r}, "w").write(str(os.getpid()))
        time.sleep(60)
    """,
        name="grandchild.py",
    )
    proc = EngineProcess(
        script(
            tmp_path,
            f"""
        import os, signal, subprocess, time
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        worker = subprocess.Popen({grandchild!r})
        open({str(child_pid)!r}, "w").write(str(os.getpid()))
        print('{{"stage": "train", "step": 0, "total": 10}}', flush=True)
        time.sleep(60)
    """,
        )
    ).start()
    child, grand = read_pid(child_pid), read_pid(grandchild_pid)
    started = time.monotonic()
    proc.cancel(grace_s=0.5)
    assert time.monotonic() - started < 10
    assert proc.state == "cancelled" and not proc.running
    assert proc.returncode == -signal.SIGKILL
    assert until(lambda: gone(child) and gone(grand), timeout=5)
    assert proc.failure_message() == "cancelled by the user"
    proc.cancel()  # a second call is harmless
    assert proc.state == "cancelled"


@posix_only
def test_cancel_ends_multiprocessing_spawn_workers(tmp_path):
    worker_pid = tmp_path / "worker.pid"
    proc = EngineProcess(
        script(
            tmp_path,
            f"""
        import multiprocessing as mp, os, time

        def work(path):
            open(path, "w").write(str(os.getpid()))
            time.sleep(60)

        if __name__ == "__main__":
            with mp.get_context("spawn").Pool(1) as pool:
                pool.apply(work, ({str(worker_pid)!r},))
    """,
        )
    ).start()
    worker = read_pid(worker_pid)
    proc.cancel(grace_s=3)
    assert proc.state == "cancelled"
    assert until(lambda: gone(proc.pid) and gone(worker), timeout=5)


@posix_only
def test_sigint_handling_child_exiting_130_in_the_grace_period_is_cancelled(tmp_path):
    ready = tmp_path / "ready"
    proc = EngineProcess(
        script(
            tmp_path,
            f"""
        import sys, time
        try:
            open({str(ready)!r}, "w").write("1")
            time.sleep(60)
        except KeyboardInterrupt:
            print("rada: interrupted; finished cases are kept, rerun the same command to resume", file=sys.stderr)
            sys.exit(130)
    """,
        )
    ).start()
    assert until(ready.exists)
    started = time.monotonic()
    proc.cancel(grace_s=20)
    assert time.monotonic() - started < 10, "the grace period was not cut short by the exit"
    assert proc.returncode == 130
    assert proc.state == "cancelled"
    assert proc.failure_message() == "cancelled by the user"
    assert any(line.startswith("rada: interrupted") for line in proc.stderr_tail)


def test_cancel_after_success_keeps_the_success(tmp_path):
    proc = EngineProcess([sys.executable, "-c", "pass"]).start()
    assert proc.wait(timeout=10) == "succeeded"
    proc.cancel()
    assert proc.state == "succeeded" and proc.failure_message() is None


def test_cancel_before_start_marks_it_cancelled():
    proc = EngineProcess([sys.executable, "-c", "pass"])
    proc.cancel()
    assert proc.state == "cancelled"


def test_wait_raises_timeout_error_and_the_process_can_still_be_cancelled(tmp_path):
    proc = EngineProcess([sys.executable, "-c", "import time; time.sleep(60)"]).start()
    with pytest.raises(TimeoutError, match="did not finish within 0.3 s"):
        proc.wait(timeout=0.3)
    assert proc.running
    proc.cancel(grace_s=2)
    assert proc.state == "cancelled"


def test_missing_executable_gives_a_one_line_error(tmp_path):
    missing = str(tmp_path / "no-such-python")
    proc = EngineProcess([missing, "-m", "RADALib.cli", "--version"])
    with pytest.raises(RADAError) as info:
        proc.start()
    assert str(info.value) == f"cannot start the engine: {missing} was not found"
    assert proc.state == "failed"
    assert proc.failure_message() == str(info.value)


def test_missing_working_folder_gives_a_one_line_error(tmp_path):
    folder = str(tmp_path / "nowhere")
    with pytest.raises(RADAError, match="working folder .* does not exist"):
        EngineProcess([sys.executable, "-c", "pass"], cwd=folder).start()


def test_engine_command_and_environment():
    assert engine_command("train", "--out", "x") == [
        sys.executable,
        "-m",
        "RADALib.cli",
        "train",
        "--out",
        "x",
    ]
    assert engine_command("demo", python="py") == ["py", "-m", "RADALib.cli", "demo"]
    env = engine_environment()
    parent = Path(__file__).resolve().parents[2]
    assert Path(env["PYTHONPATH"].split(os.pathsep)[0]) == parent
    assert env["PYTHONUNBUFFERED"] == "1"
    assert engine_environment("/some/where")["PYTHONPATH"].split(os.pathsep)[0] == "/some/where"


def test_the_real_engine_reports_its_version(tmp_path):
    proc = EngineProcess(
        engine_command("--version"), env=engine_environment(), cwd=str(tmp_path)
    ).start()
    events = []
    assert proc.wait(timeout=20, on_event=events.append) == "succeeded"
    assert events and events[0]["message"].startswith("rada ")


def test_the_real_engine_reports_a_missing_input_as_its_own_line(tmp_path):
    proc = EngineProcess(
        engine_command("evaluate", "--pred", "missing.nrrd", "--truth", "missing2.nrrd"),
        env=engine_environment(),
        cwd=str(tmp_path),
    ).start()
    assert proc.wait(timeout=30) == "failed"
    assert proc.returncode == 2
    message = proc.failure_message()
    assert message.startswith("rada: ") and "missing.nrrd" in message


@posix_only
def test_workers_left_holding_the_pipes_after_the_engine_exits_are_ended(tmp_path, monkeypatch):
    import RADALib.engine_process as engine_process

    monkeypatch.setattr(engine_process, "PIPE_CLOSE_GRACE_S", 0.5)
    worker_pid = tmp_path / "worker.pid"
    worker = script(
        tmp_path,
        f"""
        import os, time
        open({str(worker_pid)!r}, "w").write(str(os.getpid()))
        time.sleep(60)
    """,
        name="worker.py",
    )
    proc = EngineProcess(
        script(
            tmp_path,
            f"""
        import os, subprocess, time
        subprocess.Popen({worker!r})
        while not os.path.exists({str(worker_pid)!r}):
            time.sleep(0.02)
    """,
        )
    ).start()
    assert proc.wait(timeout=15) == "succeeded"
    assert until(lambda: gone(read_pid(worker_pid)), timeout=5)


class _StartupInfo:
    """Stand-in for Windows' ``subprocess.STARTUPINFO`` (the real one exists only there)."""

    def __init__(self) -> None:
        self.dwFlags = 0
        self.wShowWindow = 1  # SW_SHOWNORMAL, what a console program gets by default


def test_windows_start_options_hide_the_console_and_start_a_new_group(monkeypatch):
    import subprocess

    monkeypatch.setattr(subprocess, "STARTUPINFO", _StartupInfo, raising=False)
    options = start_options(windows=True)
    info = options["startupinfo"]
    assert info.dwFlags & 0x1, "STARTF_USESHOWWINDOW not set: the console window would show"
    assert info.wShowWindow == 0  # SW_HIDE, as slicer.util.launchConsoleProcess
    assert options["creationflags"] & 0x200  # CREATE_NEW_PROCESS_GROUP
    assert start_options(windows=False) == {"start_new_session": True}


def test_windows_cancels_through_stdin_by_default(monkeypatch):
    import RADALib.engine_process as engine_process

    monkeypatch.setattr(engine_process, "IS_WINDOWS", True)
    assert EngineProcess(["x"]).cancel_via == "stdin"
    monkeypatch.setattr(engine_process, "IS_WINDOWS", False)
    assert EngineProcess(["x"]).cancel_via == "signal"


def test_cancel_watch_interrupts_on_the_cancel_line_and_not_before():
    import io
    import threading

    interrupted = threading.Event()
    read, write = os.pipe()
    with os.fdopen(read, "r") as stream, os.fdopen(write, "w") as sink:
        thread = watch_for_cancel(stream, interrupted.set)
        sink.write("progress please\n")
        sink.flush()
        assert not interrupted.wait(0.3), "a line other than 'cancel' interrupted the engine"
        sink.write("cancel\n")
        sink.flush()
        assert interrupted.wait(5)
        thread.join(5)
    ended = threading.Event()
    watch_for_cancel(io.StringIO(""), ended.set).join(5)
    assert ended.is_set(), "a closed stdin (the parent died) must stop the engine too"


def test_the_engine_watches_stdin_only_when_asked(monkeypatch):
    from RADALib import cli

    calls = []
    monkeypatch.setattr(cli, "watch_for_cancel", lambda stream: calls.append(stream))
    monkeypatch.delenv("RADA_CANCEL_ON_STDIN", raising=False)
    assert cli.main(["settings"]) == 0
    assert calls == []
    monkeypatch.setenv("RADA_CANCEL_ON_STDIN", "1")
    assert cli.main(["settings"]) == 0
    assert calls == [sys.stdin]


@posix_only
def test_cancel_through_stdin_stops_the_engine_cleanly_without_any_signal(tmp_path):
    ready = tmp_path / "ready"
    checkpoint = tmp_path / "checkpoint.txt"
    proc = EngineProcess(
        script(
            tmp_path,
            f"""
        import signal, sys, time
        from RADALib.cancel_channel import cancel_on_stdin_requested, watch_for_cancel
        signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGINT}})  # no real signal gets in
        if cancel_on_stdin_requested():
            watch_for_cancel(sys.stdin)
        try:
            for step in range(600):
                open({str(checkpoint)!r}, "w").write(str(step))
                open({str(ready)!r}, "w").write("1")
                time.sleep(0.1)
        except KeyboardInterrupt:
            print("rada: interrupted; finished cases are kept, rerun the same command to resume", file=sys.stderr)
            sys.exit(130)
    """,
        ),
        env=engine_environment(),
        cancel_via="stdin",
    ).start()
    assert until(ready.exists)
    started = time.monotonic()
    proc.cancel(grace_s=20)
    assert time.monotonic() - started < 10, "the engine did not stop on the cancel line"
    assert proc.returncode == 130, "the engine was killed instead of stopping cleanly"
    assert proc.state == "cancelled"
    assert checkpoint.read_text().isdigit()
    assert any(line.startswith("rada: interrupted") for line in proc.stderr_tail)


def test_an_unknown_cancel_channel_is_refused():
    with pytest.raises(ValueError, match="cancel_via"):
        EngineProcess([sys.executable, "-c", "pass"], cancel_via="carrier pigeon").start()
