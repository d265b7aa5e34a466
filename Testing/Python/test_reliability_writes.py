"""Writing outputs (issue 27): nothing lost, nothing silently wrong.

Every write is flushed and checked before it is renamed into place, so a full disk, or a writer
that fails without saying so, leaves nothing under the final name and one line that says so;
every command turns a bad output location (a file in the way, a path under a file, a read-only
place, a full disk) into that one-line error with exit status 2, before it creates anything;
outputs get the user's umask; one training run at a time uses an experiment folder.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import FakeAntsRegistrar, disk_stack
from test_inference import tiny_bundle

import RADALib
from RADALib.atomic import write_npz_atomic, write_text_atomic
from RADALib.bundle import save_bundle
from RADALib.cache import ArrayCache
from RADALib.checkpoint import save_checkpoint
from RADALib.cli import main
from RADALib.errors import InputError
from RADALib.volume import volume_from_array, write_like

pytestmark = pytest.mark.usefixtures("one_torch_thread")
posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes and limits")

SOURCE_ROOT = Path(RADALib.__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Two disk volumes with dense labels, a cohort (first case labeled) and a tiny model."""
    root = tmp_path_factory.mktemp("inputs")
    image, label = disk_stack(shape=(30, 30, 16), radius=6, shift_per_slice=(1.0, 0.0))
    volume = volume_from_array(image)
    for case in ("c0", "c1"):
        write_like(volume, image, root / "img" / f"{case}.nrrd")
        write_like(volume, label, root / "lab" / f"{case}.nrrd")
    folders = ["--images", str(root / "img"), "--labels", str(root / "lab")]
    assert main(["cohort", *folders, "--labeled", "1", "--out", str(root / "cohort.json")]) == 0
    tiny_bundle(root)
    return root


@pytest.fixture
def no_ants(monkeypatch):
    """Registration without ANTs, and training stopped before the (slow) encoders."""
    import RADALib.demo as demo
    import RADALib.registration as registration
    import RADALib.workflow as workflow

    def stop(*args, **kwargs):
        raise AssertionError("training went on past the output checks")

    monkeypatch.setattr(registration, "AntsRegistrar", FakeAntsRegistrar)
    monkeypatch.setattr(demo, "AntsRegistrar", FakeAntsRegistrar)
    monkeypatch.setattr(workflow, "cohort_embeddings", stop)


FILE_OUTPUTS = {"cohort", "evaluate"}  # --out / --json name a file; the others a folder
COMMANDS = ["cohort", "propagate", "train", "predict", "evaluate", "demo"]


def command(name: str, inputs: Path, out: Path, cache: Path) -> list[str]:
    """``rada <name>`` on the test inputs, writing to ``out``."""
    events = ["--events", "json"]
    return {
        "cohort": [
            "cohort",
            *["--images", str(inputs / "img"), "--labels", str(inputs / "lab")],
            *["--labeled", "1", "--out", str(out)],
        ],
        "propagate": [
            "propagate",
            *["--cohort", str(inputs / "cohort.json"), "--out", str(out), "--no-cache"],
            *events,
        ],
        "train": [
            "train",
            *["--cohort", str(inputs / "cohort.json"), "--out", str(out)],
            *["--preset", "small", "--iterations", "2", "--cache-dir", str(cache)],
            *events,
        ],
        "predict": [
            "predict",
            *["--model", str(inputs / "model"), "--image", str(inputs / "img" / "c0.nrrd")],
            *["--out", str(out), "--mean-prompt", "--no-mirror", *events],
        ],
        "evaluate": [
            "evaluate",
            *["--pred", str(inputs / "lab"), "--truth", str(inputs / "lab"), "--json", str(out)],
        ],
        "demo": [
            "demo",
            *["--out", str(out), "--cases", "2", "--labeled", "1", "--no-train", "--workers", "1"],
            *events,
        ],
    }[name]


def one_line_error(code, err: str) -> str:
    """The ``rada: ...`` line of a failed command, checked to be its only error line."""
    assert code == 2, f"exit status {code!r}; stderr:\n{err}"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("rada: ")]
    assert len(lines) == 1 and err.strip().splitlines()[-1] == lines[0], err
    return lines[0]


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


class ReadOnly:
    """Python's file functions, with ``root`` behaving like a read-only file system (root
    ignores a folder's mode, and a test cannot mount one): creating, opening for writing or
    renaming anything under it fails with EROFS, and ``os.access`` says it is not writable."""

    def __init__(self, root: Path) -> None:
        self.top = os.path.abspath(root)
        self.real = {name: getattr(os, name) for name in ("mkdir", "open", "access", "replace")}
        self.real_open = builtins.open

    def inside(self, path) -> bool:
        if isinstance(path, int):
            return False
        path = os.path.abspath(os.fsdecode(path))
        return path == self.top or path.startswith(self.top + os.sep)

    def refuse(self, path):
        raise OSError(errno.EROFS, "Read-only file system", os.fsdecode(path))

    def mkdir(self, path, *args, **kwargs):
        if self.inside(path):
            if os.path.exists(path):
                raise FileExistsError(errno.EEXIST, "File exists", os.fsdecode(path))
            self.refuse(path)
        return self.real["mkdir"](path, *args, **kwargs)

    def os_open(self, path, flags, *args, **kwargs):
        if self.inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            self.refuse(path)
        return self.real["open"](path, flags, *args, **kwargs)

    def open(self, file, mode="r", *args, **kwargs):
        if self.inside(file) and any(c in mode for c in "wax+"):
            self.refuse(file)
        return self.real_open(file, mode, *args, **kwargs)

    def access(self, path, mode, *args, **kwargs):
        if self.inside(path) and mode & os.W_OK:
            return False
        return self.real["access"](path, mode, *args, **kwargs)

    def replace(self, source, target, *args, **kwargs):
        if self.inside(source) or self.inside(target):
            self.refuse(target)
        return self.real["replace"](source, target, *args, **kwargs)


def read_only(monkeypatch, root: Path) -> None:
    """Make ``root`` read-only for this test (see :class:`ReadOnly`)."""
    fake = ReadOnly(root)
    monkeypatch.setattr(os, "mkdir", fake.mkdir)
    monkeypatch.setattr(os, "open", fake.os_open)
    monkeypatch.setattr(builtins, "open", fake.open)
    monkeypatch.setattr(io, "open", fake.open)
    monkeypatch.setattr(os, "access", fake.access)
    monkeypatch.setattr(os, "replace", fake.replace)
    monkeypatch.setattr(os, "rename", fake.replace)


# ----------------------------------------------------------------------------- output locations


@pytest.mark.parametrize("name", COMMANDS)
@pytest.mark.parametrize("place", ["in the way", "under a file", "read-only"])
def test_every_command_refuses_a_bad_output_location_in_one_line_and_changes_nothing(
    inputs, tmp_path, capsys, monkeypatch, no_ants, name, place
):
    file_output = name in FILE_OUTPUTS
    leaf = "out.json" if file_output else "out"
    if place == "in the way":  # a file where a folder goes, or a folder where a file goes
        out = tmp_path / "taken"
        if file_output:
            out.mkdir()
            (out / "keep.txt").write_text("precious")
        else:
            out.write_text("precious")
        expected = "is a folder" if file_output else "exists and is not a folder"
    elif place == "under a file":
        (tmp_path / "blocker").write_text("precious")
        out = tmp_path / "blocker" / leaf
        expected = f"{tmp_path / 'blocker'} is a file"
    else:
        (tmp_path / "locked").mkdir()
        out = tmp_path / "locked" / leaf
        read_only(monkeypatch, tmp_path / "locked")
        expected = "not writable"  # "(read-only file system)" on a real one
    before = {p: p.read_bytes() for p in files_under(tmp_path)}
    capsys.readouterr()
    code = main(command(name, inputs, out, tmp_path / "cache"))
    monkeypatch.undo()
    line = one_line_error(code, capsys.readouterr().err)
    assert expected in line and str(out.parent) in line
    after = {p: p.read_bytes() for p in files_under(tmp_path) if "cache" not in p.parts}
    assert after == before
    if place != "in the way":
        assert not out.exists()


def test_a_write_error_no_step_words_itself_still_ends_in_one_line(
    inputs, tmp_path, capsys, monkeypatch
):
    import RADALib.evaluation as evaluation

    target = tmp_path / "m.json"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(evaluation, "write_outputs", full)
    capsys.readouterr()
    code = main(command("evaluate", inputs, target, tmp_path / "cache"))
    assert (
        one_line_error(code, capsys.readouterr().err) == f"rada: {target}: no space left on device"
    )


@pytest.fixture(scope="module")
def full_disk_runs(inputs, tmp_path_factory) -> tuple[Path, dict]:
    """Every command run in a subprocess in which no file may grow past 200 bytes, as on a
    full disk (writes past the limit fail with EFBIG); ``{name: [exit status, stderr]}``."""
    resource = pytest.importorskip("resource")
    assert resource  # POSIX only
    root = tmp_path_factory.mktemp("full")
    argv = {
        name: command(
            name,
            inputs,
            root / name / ("out.json" if name in FILE_OUTPUTS else "out"),
            root / name / "cache",
        )
        for name in COMMANDS
    }
    for name in COMMANDS:
        (root / name).mkdir()
    driver = f"""
import contextlib, io, json, resource, signal, sys
sys.path.insert(0, {str(TESTS)!r})
from conftest import FakeAntsRegistrar
import RADALib.demo, RADALib.registration, RADALib.workflow
RADALib.registration.AntsRegistrar = RADALib.demo.AntsRegistrar = FakeAntsRegistrar
def stop(*args, **kwargs):
    raise AssertionError("training went on past a failed write")
RADALib.workflow.cohort_embeddings = stop
from RADALib.cli import main
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
results = {{}}
for name, argv in json.loads(sys.argv[1]).items():
    err = io.StringIO()
    resource.setrlimit(resource.RLIMIT_FSIZE, (200, hard))
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
    except BaseException as exc:
        code = f"{{type(exc).__name__}}: {{exc}}"
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    results[name] = [code, err.getvalue()]
print(json.dumps(results))
"""
    environment = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(SOURCE_ROOT), str(TESTS)]),
        PYTHONDONTWRITEBYTECODE="1",
        OMP_NUM_THREADS="1",
    )
    done = subprocess.run(
        [sys.executable, "-c", driver, json.dumps(argv)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return root, json.loads(done.stdout.strip().splitlines()[-1])


@posix_only
@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_on_a_full_disk_says_so_in_one_line_and_leaves_no_empty_file(
    full_disk_runs, name
):
    root, results = full_disk_runs
    code, err = results[name]
    assert "no space left on device" in one_line_error(code, err)
    written = files_under(root / name)
    assert not [p for p in written if p.stat().st_size == 0 or ".part" in p.name]
    out = root / name / ("out.json" if name in FILE_OUTPUTS else "out")
    finals = {"c0_rada.nrrd", "fused.nrrd", "pseudo_axial.nrrd", "propagation.npz", "c0.nrrd"}
    assert not out.is_file() and not [p for p in written if p.name in finals]


# ----------------------------------------------------------------------------- silent writers


def write_nothing(image, name, *args, **kwargs):
    """An image writer that "succeeds" and leaves an empty file (ITK on a full disk)."""
    open(name, "wb").close()


def write_half(image, name, *args, **kwargs):
    """An image writer that "succeeds" and leaves a truncated file."""
    real_write(image, name, *args, **kwargs)
    with open(name, "r+b") as handle:
        handle.truncate(os.path.getsize(name) * 2 // 3)


real_write = sitk.WriteImage


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz"])
@pytest.mark.parametrize("writer", [write_nothing, write_half])
def test_an_image_writer_failing_silently_is_caught_and_the_old_file_kept(
    tmp_path, monkeypatch, writer, suffix
):
    rng = np.random.default_rng(0)
    old = volume_from_array(rng.normal(size=(20, 18, 12)).astype(np.float32))
    target = write_like(old, old.array, tmp_path / f"image{suffix}")
    before = target.read_bytes()
    monkeypatch.setattr(sitk, "WriteImage", writer)
    with pytest.raises(InputError, match=r"image.*: could not be written: .*no space left"):
        write_like(old, old.array + 1, target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


@pytest.mark.parametrize("name", ["predict", "propagate"])
def test_a_command_whose_image_writer_writes_nothing_fails_and_leaves_no_empty_file(
    inputs, tmp_path, capsys, monkeypatch, no_ants, name
):
    monkeypatch.setattr(sitk, "WriteImage", write_nothing)
    capsys.readouterr()
    code = main(command(name, inputs, tmp_path / "out", tmp_path / "cache"))
    assert "no space left on device" in one_line_error(code, capsys.readouterr().err)
    written = files_under(tmp_path)
    assert not [p for p in written if p.suffix == ".nrrd" or p.stat().st_size == 0]


def _old_and_new(tmp_path: Path):
    """(write(path, version), path) per writer: a text, an npz, a cache entry, a checkpoint,
    an image and a model bundle."""
    from test_bundle import fields, tiny_model

    volume = volume_from_array(np.zeros((6, 6, 6), np.uint8))
    return {
        "text": (lambda p, v: write_text_atomic(p, f"version {v}\n"), tmp_path / "a.json"),
        "npz": (lambda p, v: write_npz_atomic(p, {"v": np.full(50, v)}), tmp_path / "a.npz"),
        "cache": (
            lambda p, v: ArrayCache(p.parent).put("k", {"v": np.full(50, v)}),
            tmp_path / "k.npz",
        ),
        "checkpoint": (lambda p, v: save_checkpoint(p, {"v": v}), tmp_path / "checkpoint.pt"),
        "image": (lambda p, v: write_like(volume, volume.array + v, p), tmp_path / "a.nrrd"),
        "bundle": (lambda p, v: save_bundle(p, tiny_model(v), fields()), tmp_path / "model"),
    }


WRITERS = ["text", "npz", "cache", "checkpoint", "image", "bundle"]


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in files_under(folder)}


@pytest.mark.parametrize("kind", WRITERS)
def test_a_write_the_disk_refuses_at_the_flush_keeps_the_old_file_and_says_so(
    tmp_path, monkeypatch, kind
):
    write, path = _old_and_new(tmp_path)[kind]
    write(path, 1)
    before = snapshot(tmp_path)

    def full(handle):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)  # a disk that says no when the data must land
    with pytest.raises(InputError) as failure:
        write(path, 2)
    assert str(failure.value) == f"{path}: could not be written: no space left on device"
    monkeypatch.undo()
    assert snapshot(tmp_path) == before  # the old file whole, no temporary left


# ----------------------------------------------------------------------------- modes


@posix_only
@pytest.mark.parametrize("kind", WRITERS)
def test_outputs_get_the_mode_of_the_users_umask(tmp_path, kind):
    write, path = _old_and_new(tmp_path)[kind]
    mask = os.umask(0o027)
    try:
        write(path, 1)
    finally:
        os.umask(mask)
    for item in [path, *path.rglob("*")]:
        expected = 0o750 if item.is_dir() else 0o640
        assert oct(item.stat().st_mode & 0o777) == oct(expected), item


@posix_only
def test_a_replaced_file_keeps_its_mode(tmp_path):
    volume = volume_from_array(np.zeros((6, 6, 6), np.uint8))
    target = write_like(volume, volume.array, tmp_path / "a.nrrd")
    target.chmod(0o604)
    write_like(volume, volume.array + 1, target)
    write_text_atomic(tmp_path / "b.txt", "1")
    (tmp_path / "b.txt").chmod(0o604)
    write_text_atomic(tmp_path / "b.txt", "2")
    assert [oct(p.stat().st_mode & 0o777) for p in (target, tmp_path / "b.txt")] == ["0o604"] * 2


# ----------------------------------------------------------------------------- inputs first


@pytest.mark.parametrize("name", ["propagate", "train"])
def test_a_refused_input_leaves_no_output_folder(
    inputs, tmp_path, capsys, monkeypatch, no_ants, name
):
    cohort = json.loads((inputs / "cohort.json").read_text())
    for case in cohort["cases"]:
        for key in ("image", "dense_label", "sparse_label"):
            if case[key]:
                case[key] = str((inputs / case[key]).resolve())
    (tmp_path / "broken.nrrd").write_text("not an image")
    cohort["cases"][0]["image"] = str(tmp_path / "broken.nrrd")
    (tmp_path / "cohort.json").write_text(json.dumps(cohort))
    argv = command(name, inputs, tmp_path / "out", tmp_path / "cache")
    argv[argv.index("--cohort") + 1] = str(tmp_path / "cohort.json")
    capsys.readouterr()
    line = one_line_error(main(argv), capsys.readouterr().err)
    assert "broken.nrrd" in line
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- one run per folder


def test_a_second_training_run_into_the_same_folder_is_refused_naming_it(
    inputs, tmp_path, capsys, monkeypatch, no_ants
):
    import RADALib.workflow as workflow
    from RADALib.errors import RADAError

    inside, leave, calls = threading.Event(), threading.Event(), []

    def propagation(*args, **kwargs):  # the first step of a run in its folder
        calls.append(threading.current_thread().name)
        if len(calls) > 1:
            raise RADAError("a run got into the folder")
        inside.set()
        assert leave.wait(60)
        raise RADAError("first run stopped")

    monkeypatch.setattr(workflow, "ensure_propagation", propagation)
    experiment = tmp_path / "experiment"
    argv = command("train", inputs, experiment, tmp_path / "cache")
    first: dict = {}
    runner = threading.Thread(target=lambda: first.update(code=main(argv)), name="first")
    runner.start()
    try:
        assert inside.wait(60)
        capsys.readouterr()
        line = one_line_error(main(argv), capsys.readouterr().err)
    finally:
        leave.set()
        runner.join(60)
    assert line.startswith(f"rada: {experiment}: another rada train is using this folder")
    assert calls == ["first"] and first["code"] == 2
    # the lock went with the first run: the next one gets in
    assert main(argv) == 2 and calls == ["first", "MainThread"]


@posix_only
def test_the_lock_of_a_killed_run_is_released(tmp_path):
    from RADALib.locking import folder_lock

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from RADALib.locking import folder_lock\n"
            f"with folder_lock({str(tmp_path)!r}):\n"
            "    print('locked', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(SOURCE_ROOT)),
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(InputError, match=rf"process {holder.pid}\); wait for it"):
            with folder_lock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait(30)
    with folder_lock(tmp_path):  # no stale lock after a kill -9
        pass
