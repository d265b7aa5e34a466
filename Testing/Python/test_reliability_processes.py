"""Worker processes never outlive the process that started them, however it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from RADALib.engine_process import EngineProcess, engine_environment
from RADALib.registration import scratch_prefix

REPOSITORY = Path(__file__).resolve().parents[2]

needs_proc = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="reads the process table from /proc"
)

# A stand-in for `rada propagate`: the registrar's real pool (ANTs loaded in each worker), one
# worker in the middle of a long pair (its ANTs scratch file written), the other idle.
PARENT = """
import time
from RADALib.registration import AntsRegistrar, scratch_prefix

def long_pair():
    open(scratch_prefix() + "0Warp.nii.gz", "w").close()
    print("ready", flush=True)
    time.sleep(120)

if __name__ == "__main__":
    registrar = AntsRegistrar(workers=2)
    registrar.start()
    registrar._executor().submit(long_pair)
    time.sleep(120)
"""


def _status(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of ``pid`` from /proc, None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def _children(pid: int) -> list[int]:
    """The live processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            status = _status(int(entry.name))
            if status is not None and status[1] == pid and status[0] not in "ZX":
                found.append(int(entry.name))
    return found


def _running(pids: list[int]) -> list[int]:
    """Those of ``pids`` still running (a zombie waiting for its reaper has ended)."""
    return [pid for pid in pids if (s := _status(pid)) is not None and s[0] not in "ZX"]


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while _running(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _running(pids)


def _kill_left(pids: list[int]) -> None:
    for pid in _running(pids):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


@needs_proc
@pytest.mark.parametrize("launcher", ["subprocess", "slicer_engine_process"])
def test_registration_workers_end_when_their_parent_is_killed(tmp_path, launcher):
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(PARENT))
    command = [sys.executable, str(script)]
    if launcher == "subprocess":
        env = dict(os.environ, PYTHONPATH=str(REPOSITORY), OMP_NUM_THREADS="1")
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "ready"
        pid = process.pid
    else:  # the Slicer module runs the engine through EngineProcess (its own process group)
        engine = EngineProcess(
            command, env={**engine_environment(str(REPOSITORY)), "OMP_NUM_THREADS": "1"}
        ).start()
        deadline = time.monotonic() + 60
        events: list[dict] = []
        while not any(e.get("message") == "ready" for e in events):
            assert time.monotonic() < deadline and engine.running, engine.stderr_tail
            events += engine.poll()
            time.sleep(0.05)
        pid = engine.pid
    workers = _children(pid)
    assert len(workers) >= 2  # the two registration workers (and multiprocessing's tracker)
    try:
        os.kill(pid, signal.SIGKILL)  # the parent only: no chance to stop its pool
        left = _wait_gone(workers, timeout=5.0)
        assert not left, f"workers still running 5 s after their parent was killed: {left}"
        scratch = [p for w in workers for p in Path(scratch_prefix()).parent.glob(f"rada_{w}_*")]
        assert not scratch, f"scratch files left by the workers: {scratch}"
    finally:
        _kill_left(workers)
        for worker in workers:
            for path in Path(scratch_prefix()).parent.glob(f"rada_{worker}_*"):
                path.unlink()
        if launcher == "subprocess":
            process.wait()
        else:
            engine.cancel(grace_s=0)
