"""Encoder weights: the registry of known checkpoints, where they live, and their download.

* :data:`WEIGHTS`: the known Alpha-CLIP (vision) and CLIP (text) checkpoint files, with their
  URLs and, where known for sure, their SHA256; :data:`DEFAULT_WEIGHTS` names each
  architecture's pair.
* :func:`default_weights_dir`: the ``weights`` folder in the cache root
  (:func:`~RADALib.paths.cache_root`); :func:`weights_folders` the folders searched for a
  bundle's recorded checkpoint.
* :func:`resolve_checkpoint`: a local path is used as is; a known name is looked up in the
  weights folder and downloaded only when allowed (temp file, SHA256 check, rename).
* :func:`random_weights_warning`: what to say when a tower runs on random weights.

Torch-free: nothing here loads a checkpoint (that is :mod:`RADALib.alpha_clip`).
"""

from __future__ import annotations

import logging
import os
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .atomic import replacing, write_text_atomic
from .checksums import sha256_file
from .errors import InputError
from .paths import CACHE_ENV, cache_root

log = logging.getLogger(__name__)

WEIGHTS_FOLDER = "weights"
"""The weights folder's name inside a cache folder."""

RANDOM_WEIGHTS_WARNING = (
    "encoder weights not found: running with RANDOM {which} weights; "
    "results will not match the paper"
)


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightsEntry:
    """A known checkpoint file: where it comes from and how to check it.

    ``sha256`` is None where no checksum is known for sure; the downloader then logs the hash it
    computed and writes it beside the file (``<file>.sha256``). ``manual_url`` is the page a user
    can download it from by hand when automatic download is off or fails.
    """

    name: str
    filename: str
    url: str
    sha256: str | None
    kind: str  # "alpha-clip-visual" or "clip-text"
    arch: str
    manual_url: str = ""
    note: str = ""


WEIGHTS: Mapping[str, WeightsEntry] = {
    e.name: e
    for e in (
        WeightsEntry(
            name="alpha-clip-vit-b16",
            filename="clip_b16_grit1m_fultune_8xe.pth",
            url="https://download.openxlab.org.cn/models/SunzeY/AlphaCLIP/weight/clip_b16_grit1m_fultune_8xe.pth",
            sha256=None,
            kind="alpha-clip-visual",
            arch="ViT-B-16",
            manual_url="https://drive.google.com/file/d/16fHEXZ-7bgzcSBHzEz1wXRIZTjQIXm_2/view",
            note="Alpha-CLIP ViT-B/16 trained on GRIT-1M (official model zoo, Google Drive); "
            "the OpenXLab URL is the mirror other projects download from (not verified here)",
        ),
        WeightsEntry(
            name="alpha-clip-vit-l14",
            filename="clip_l14_grit1m_fultune_8xe.pth",
            url="https://download.openxlab.org.cn/models/SunzeY/AlphaCLIP/weight/clip_l14_grit1m_fultune_8xe.pth",
            sha256=None,
            kind="alpha-clip-visual",
            arch="ViT-L-14",
            manual_url="https://drive.google.com/file/d/1PIhplBnsmSWiJN--TXCCSsiaV6bY9koq/view",
            note="Alpha-CLIP ViT-L/14 trained on GRIT-1M",
        ),
        WeightsEntry(
            name="alpha-clip-vit-l14-336",
            filename="clip_l14_336_grit1m_fultune_8xe.pth",
            url="https://download.openxlab.org.cn/models/SunzeY/AlphaCLIP/weight/clip_l14_336_grit1m_fultune_8xe.pth",
            sha256=None,
            kind="alpha-clip-visual",
            arch="ViT-L-14-336",
            manual_url="https://drive.google.com/file/d/1DeNbUv0lraDxJZItb7shTlvGW6z_Z9Si/view",
            note="Alpha-CLIP ViT-L/14@336px trained on GRIT-1M (model zoo name clip_l14@336_grit1m_fultune_8xe)",
        ),
        WeightsEntry(
            name="clip-vit-b16-text",
            filename="ViT-B-16.pt",
            url="https://openaipublic.azureedge.net/clip/models/"
            "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
            sha256="5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f",
            kind="clip-text",
            arch="ViT-B-16",
            manual_url="https://github.com/openai/CLIP",
            note="OpenAI CLIP ViT-B/16 (TorchScript; text tower used); the SHA256 is the URL's "
            "path segment, which OpenAI's and open_clip's loaders check",
        ),
        WeightsEntry(
            name="clip-vit-l14-text",
            filename="ViT-L-14.pt",
            url="https://openaipublic.azureedge.net/clip/models/"
            "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
            sha256="b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836",
            kind="clip-text",
            arch="ViT-L-14",
            manual_url="https://github.com/openai/CLIP",
            note="OpenAI CLIP ViT-L/14",
        ),
        WeightsEntry(
            name="clip-vit-l14-336-text",
            filename="ViT-L-14-336px.pt",
            url="https://openaipublic.azureedge.net/clip/models/"
            "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt",
            sha256="3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02",
            kind="clip-text",
            arch="ViT-L-14-336",
            manual_url="https://github.com/openai/CLIP",
            note="OpenAI CLIP ViT-L/14@336px",
        ),
    )
}

DEFAULT_WEIGHTS: Mapping[str, tuple[str, str]] = {
    "ViT-B-16": ("alpha-clip-vit-b16", "clip-vit-b16-text"),
    "ViT-L-14": ("alpha-clip-vit-l14", "clip-vit-l14-text"),
    "ViT-L-14-336": ("alpha-clip-vit-l14-336", "clip-vit-l14-336-text"),
}
"""Registry names used when a config gives no checkpoint for an architecture."""


# --------------------------------------------------------------------------------------------
# Folders and lookup
# --------------------------------------------------------------------------------------------


def default_weights_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The weights folder: ``$RADA_CACHE_DIR/weights`` if set, else ``~/.cache/rada/weights``
    (read when called; ``weights`` in the cache root, :func:`~RADALib.paths.cache_root`)."""
    return cache_root(environ) / WEIGHTS_FOLDER


def weights_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cache_dir`` (``~`` expanded) if given, else :func:`default_weights_dir`."""
    return Path(cache_dir).expanduser() if cache_dir else default_weights_dir()


def weights_folders(cache_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Where a bundle's recorded checkpoint is looked for: ``cache_dir/weights``, ``cache_dir``,
    then :func:`default_weights_dir` (each once)."""
    folders: list[Path] = []
    if cache_dir is not None:
        root = Path(cache_dir).expanduser()
        folders += [root / WEIGHTS_FOLDER, root]
    folders.append(default_weights_dir())
    return list(dict.fromkeys(folders))


def checkpoint_candidates(
    folders: Iterable[Path], registry_name: str | None, filename: str | None
) -> list[Path]:
    """The files a checkpoint recorded by registry name and/or file name may be, folder by folder."""
    candidates: list[Path] = []
    for folder in folders:
        if registry_name in WEIGHTS:
            candidates.append(folder / WEIGHTS[registry_name].filename)
        if filename:
            candidates.append(folder / str(filename))
    return candidates


def find_by_sha256(candidates: Iterable[Path], wanted: str) -> tuple[Path | None, list[Path]]:
    """The first existing file of ``candidates`` whose SHA256 is ``wanted`` (None if none), and
    the existing files passed over before it because they hold other bytes."""
    other: list[Path] = []
    for path in dict.fromkeys(candidates):
        if path.is_file():
            if sha256_file(path) == wanted:
                return path, other
            other.append(path)
    return None, other


def random_weights_warning(
    random: Mapping[str, bool], arch: str, cache_dir: str | Path | None = None
) -> str:
    """The warning for the towers flagged in ``random`` ("vision", "text": True when random),
    naming the checkpoint files of ``arch`` that would replace them and the folder they go in."""
    towers = [
        (name, i)
        for i, (key, name) in enumerate((("vision", "Alpha-CLIP"), ("text", "CLIP")))
        if random.get(key)
    ]
    message = RANDOM_WEIGHTS_WARNING.format(which="/".join(name for name, _ in towers))
    defaults = DEFAULT_WEIGHTS.get(arch)
    if defaults:
        folder = weights_dir(cache_dir)
        message += f" (put {', '.join(WEIGHTS[defaults[i]].filename for _, i in towers)} in {folder} to use them)"
    return message


# --------------------------------------------------------------------------------------------
# Download and resolution
# --------------------------------------------------------------------------------------------


Downloader = Callable[[str, Path], None]
"""``downloader(url, destination)`` writes the bytes at ``url`` into ``destination``."""


def urllib_download(url: str, destination: Path, timeout: float = 60.0) -> None:
    """Stream ``url`` into ``destination`` with urllib (http(s) and file:// URLs)."""
    request = urllib.request.Request(url, headers={"User-Agent": "RADA"})
    with (
        urllib.request.urlopen(request, timeout=timeout) as response,
        open(destination, "wb") as out,
    ):
        while block := response.read(1 << 20):
            out.write(block)


def _looks_like_html(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(512).lstrip().lower()
    return head.startswith(b"<!doctype html") or head.startswith(b"<html")


def _where_to_put(entry: WeightsEntry, target: Path) -> str:
    source = entry.manual_url or entry.url
    return f"download {entry.filename} from {source} and put it at {target}"


def _download(entry: WeightsEntry, target: Path, downloader: Downloader) -> str:
    """Download ``entry`` to ``target`` via a temp file; returns the file's SHA256."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with replacing(target) as tmp:  # renamed into place only once it has been checked
        log.info("downloading %s from %s", entry.name, entry.url)
        try:
            downloader(entry.url, tmp)
        except InputError:
            raise
        except Exception as exc:
            raise InputError(
                entry.name,
                f"download from {entry.url} failed ({type(exc).__name__}: {exc}); {_where_to_put(entry, target)}",
            ) from exc
        if tmp.stat().st_size == 0 or _looks_like_html(tmp):
            raise InputError(
                entry.name,
                f"download from {entry.url} did not return a checkpoint file; {_where_to_put(entry, target)}",
            )
        digest = sha256_file(tmp)
        if entry.sha256 and digest != entry.sha256.lower():
            raise InputError(
                entry.name,
                f"downloaded file has SHA256 {digest}, expected {entry.sha256}; it was deleted. "
                f"{_where_to_put(entry, target)}",
            )
    if not entry.sha256:
        sidecar = target.with_name(target.name + ".sha256")
        write_text_atomic(sidecar, f"{digest}  {target.name}\n")
        log.warning(
            "downloaded %s with no known checksum; its SHA256 is %s (recorded in %s)",
            entry.name,
            digest,
            sidecar,
        )
    return digest


def resolve_weights(
    name_or_path: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None,
    allow_download: bool,
    downloader: Downloader | None,
    registry: Mapping[str, WeightsEntry],
) -> tuple[Path, WeightsEntry | None, str | None]:
    """As :func:`resolve_checkpoint`: (file, its registry entry or None for a path, its SHA256
    when it was computed here, i.e. for a checked or downloaded file, else None)."""
    text = os.fspath(name_or_path)
    entry = registry.get(text)
    if entry is None:
        path = Path(text).expanduser()
        if path.is_file():
            return path, None, None
        looks_like_path = (
            os.sep in text or "/" in text or path.suffix in {".pt", ".pth", ".bin", ".ckpt"}
        )
        if looks_like_path:
            raise InputError(path, "checkpoint file not found")
        raise InputError(
            text,
            f"neither a checkpoint file nor a known weights name (known: {', '.join(sorted(registry))})",
        )
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_weights_dir()
    target = folder / entry.filename
    if target.is_file():
        digest = None
        if entry.sha256:
            digest = sha256_file(target)
            if digest != entry.sha256.lower():
                raise InputError(
                    target,
                    f"SHA256 {digest} does not match the expected {entry.sha256} for {entry.name}; "
                    "delete the file and download it again",
                )
        return target, entry, digest
    if not allow_download:
        raise InputError(
            entry.name,
            f"weights file not found in {folder}; {_where_to_put(entry, target)} "
            f"(or allow downloads, or set {CACHE_ENV} to a folder whose weights/ holds it)",
        )
    digest = _download(entry, target, downloader or urllib_download)
    return target, entry, digest


def resolve_checkpoint(
    name_or_path: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
    allow_download: bool = False,
    downloader: Downloader | None = None,
    registry: Mapping[str, WeightsEntry] | None = None,
) -> Path:
    """The local file of a checkpoint given by path or by registry name.

    A path to an existing file is returned as is. A known name (see :data:`WEIGHTS`) is looked
    for as ``cache_dir / filename`` (``cache_dir`` None: :func:`default_weights_dir`); a cached
    file with a known SHA256 is checked. A missing file is downloaded only when
    ``allow_download`` (to a temp name, SHA256-checked when known, then renamed); otherwise an
    :class:`InputError` says where to put it.
    """
    path, _, _ = resolve_weights(
        name_or_path,
        cache_dir,
        allow_download,
        downloader,
        WEIGHTS if registry is None else registry,
    )
    return path


__all__ = [
    "DEFAULT_WEIGHTS",
    "RANDOM_WEIGHTS_WARNING",
    "WEIGHTS",
    "WEIGHTS_FOLDER",
    "Downloader",
    "WeightsEntry",
    "checkpoint_candidates",
    "default_weights_dir",
    "find_by_sha256",
    "random_weights_warning",
    "resolve_checkpoint",
    "resolve_weights",
    "urllib_download",
    "weights_dir",
    "weights_folders",
]
