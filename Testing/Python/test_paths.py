"""The cache root, the folders derived from it, and the torch-free modules the Slicer module reads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from RADALib.checksums import sha256_file
from RADALib.model_store import default_models_dir
from RADALib.paths import CACHE_ENV, cache_root
from RADALib.weights import default_weights_dir, weights_folders


def test_cache_root_is_the_environment_variable_with_home_expanded(tmp_path):
    assert cache_root({CACHE_ENV: str(tmp_path)}) == tmp_path
    assert cache_root({CACHE_ENV: "~/elsewhere"}) == Path.home() / "elsewhere"


def test_cache_root_defaults_to_dot_cache_rada_when_unset_or_empty():
    default = Path.home() / ".cache" / "rada"
    assert cache_root({}) == default
    assert cache_root({CACHE_ENV: ""}) == default
    assert cache_root({CACHE_ENV: "  "}) == default


def test_cache_root_reads_the_environment_when_called(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "one"))
    assert cache_root() == tmp_path / "one"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "two"))
    assert cache_root() == tmp_path / "two"


def test_models_and_weights_folders_are_named_folders_in_the_cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, "~/rada-cache")
    root = Path.home() / "rada-cache"
    assert default_models_dir() == root / "models"
    assert default_weights_dir() == root / "weights"
    assert weights_folders() == [root / "weights"]
    assert weights_folders(tmp_path) == [tmp_path / "weights", tmp_path, root / "weights"]
    environ = {CACHE_ENV: str(tmp_path)}
    assert default_models_dir(environ) == tmp_path / "models"
    assert default_weights_dir(environ) == tmp_path / "weights"


def test_sha256_file_is_the_digest_of_the_whole_file(tmp_path):
    import hashlib

    data = bytes(range(256)) * 5000  # several chunks of the small chunk size below
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path, chunk=4096) == hashlib.sha256(data).hexdigest()
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_modules_the_slicer_module_reads_import_without_torch():
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
        "import RADALib.checksums, RADALib.model_store, RADALib.paths, RADALib.weights\n"
        "from RADALib.paths import LABEL_SUFFIX, PROBABILITY_SUFFIX\n"
        "print(LABEL_SUFFIX, PROBABILITY_SUFFIX)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["_rada", "_rada_probabilities"]
