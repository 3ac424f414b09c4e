"""The official pretrained weights of each profile, and a cache that hands out only verified files.

Weights are large, licence-restricted and served by hosts we do not control, so the cache
follows the habits users know from huggingface_hub and dnnlib: one lock per file, download
to ``<name>.incomplete`` and ``os.replace`` onto the final name only once size and SHA-256
match, resume with HTTP Range after a dropped connection, and an offline switch.

Files without a published checksum are hashed on first download and the digest is recorded
in a sidecar (``<name>.meta.json``) beside them: later runs verify against it (trust on first
use), and the sidecar also caches the verification (size + mtime) so ``status`` stays fast.

No torch here: the API process imports this module to answer readiness checks.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import json
import logging
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)

WeightRole = Literal["generator", "clip", "audio_encoder", "identity", "lpips_vgg", "lpips_lin"]
WeightState = Literal["present", "missing", "partial", "corrupt"]

OFFLINE_ENV = "SOUNDEDIT_OFFLINE"  # the setting (app.settings) that forbids downloads
DEFAULT_TIMEOUT_S = 30.0  # per socket operation (connect, each read), not the whole transfer
DEFAULT_RETRIES = 3  # extra attempts after a transient network failure; each one resumes
RETRY_BACKOFF_S = 2.0  # wait before extra attempt n is n times this
CHUNK_BYTES = 1 << 20  # read / write / hash granularity
INCOMPLETE_SUFFIX = ".incomplete"
SIDECAR_SUFFIX = ".meta.json"
LOCK_SUFFIX = ".lock"
USER_AGENT = "soundedit-weights/0.1 (python-urllib)"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)")


class WeightsError(RuntimeError):
    """A weight file cannot be had or cannot be trusted; the message says what to do."""


@dataclass(frozen=True)
class WeightFile:
    """One downloadable weight file and what we know about it."""

    key: str  # stable identifier, e.g. "stylegan2-ffhq-1024"
    filename: str  # name inside the cache directory (flat: profiles share files)
    url: str | None  # direct download URL; None: manual download only (see note)
    sha256: str | None  # pinned digest from a trusted source, lower-case hex; None: unknown
    size: int | None  # pinned size in bytes; None: unknown
    licence: str  # short licence name
    licence_url: str  # where the licence text lives
    role: WeightRole
    required: bool = True  # False: the profile runs without it (e.g. no identity loss)
    non_commercial: bool = False  # the licence forbids commercial use
    note: str = ""  # provenance, manual-download hint

    def __post_init__(self) -> None:
        if self.sha256 is not None and not _SHA256_HEX.fullmatch(self.sha256):
            raise ValueError(f"{self.key}: sha256 must be 64 lower-case hex digits")
        if Path(self.filename).name != self.filename or self.filename in {"", ".", ".."}:
            raise ValueError(f"{self.key}: filename must be a bare file name")
        if self.size is not None and self.size <= 0:
            raise ValueError(f"{self.key}: size must be positive")


# --- The registry --------------------------------------------------------------------------

_PAPER_LICENCE = "CC BY-NC-SA 4.0"
_PAPER_LICENCE_URL = (
    "https://github.com/kuai-lab/sound-guided-semantic-image-manipulation/blob/main/LICENSE"
)

STYLEGAN2_FFHQ_1024 = WeightFile(
    key="stylegan2-ffhq-1024",
    filename="stylegan2-ffhq-1024x1024.pkl",
    url=(
        "https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan2/versions/1/files/"
        "stylegan2-ffhq-1024x1024.pkl"
    ),
    sha256=None,
    size=None,
    licence="NVIDIA Source Code License-NC",
    licence_url="https://github.com/NVlabs/stylegan3/blob/main/LICENSE.txt",
    role="generator",
    non_commercial=True,
    note=(
        "StyleGAN2 config-f, FFHQ 1024 px, NVIDIA pickle as published with StyleGAN3 "
        "(NGC catalog nvidia:research:stylegan2). No checksum is published: the first "
        "download's SHA-256 is recorded and verified from then on."
    ),
)

CLIP_VIT_B32_OPENAI = WeightFile(
    key="clip-vit-b-32-openai",
    filename="ViT-B-32.pt",
    url=(
        "https://openaipublic.azureedge.net/clip/models/"
        "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt"
    ),
    # OpenAI publishes the SHA-256 as the URL's path segment; openai/CLIP and open_clip
    # verify downloads against it.
    sha256="40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
    size=None,
    licence="MIT (OpenAI CLIP; model card: research use)",
    licence_url="https://github.com/openai/CLIP/blob/main/LICENSE",
    role="clip",
    note=(
        "OpenAI's TorchScript archive, the file open_clip fetches for ViT-B-32 'openai' "
        "(QuickGELU)."
    ),
)

AUDIO_ENCODER_RESNET18 = WeightFile(
    key="audio-encoder-resnet18",
    filename="resnet18_57.pth",
    url="https://kr.object.ncloudstorage.com/cvpr2022/resnet18_57.pth",
    sha256=None,
    size=None,
    licence=_PAPER_LICENCE,
    licence_url=_PAPER_LICENCE_URL,
    role="audio_encoder",
    non_commercial=True,
    note="The paper's released audio encoder (Conv2d 1->3 + timm resnet18, 512-d output).",
)

STYLEGAN2_LANDSCAPE_256 = WeightFile(
    key="stylegan2-landscape-256",
    filename="landscape.pt",
    url="https://kr.object.ncloudstorage.com/cvpr2022/landscape.pt",
    sha256=None,
    size=None,
    licence=_PAPER_LICENCE,
    licence_url=_PAPER_LICENCE_URL,
    role="generator",
    non_commercial=True,
    note="The paper's 256 px landscape StyleGAN2 (rosinality format).",
)

IR_SE50 = WeightFile(
    key="ir-se50",
    filename="model_ir_se50.pth",
    url=None,  # Google Drive serves large files behind an HTML confirmation page
    sha256=None,
    size=None,
    licence="MIT code (TreB1eN/InsightFace_Pytorch); trained on MS-Celeb-1M, research use",
    licence_url="https://github.com/TreB1eN/InsightFace_Pytorch/blob/master/LICENSE",
    role="identity",
    required=False,
    non_commercial=True,
    note=(
        "ArcFace IR-SE50 for the identity loss, published by pSp/StyleCLIP on Google Drive: "
        "https://drive.google.com/file/d/1KW7bjndL3QG3sxBbZxreGHigcCCpsDgn/view "
        "- download it in a browser and place it in the cache directory. "
        "Without it the identity loss is off."
    ),
)

# LPIPS-VGG, the perceptual loss of photo inversion (without it a weight-free loss stands in).
LPIPS_VGG16 = WeightFile(
    key="lpips-vgg16",
    filename="vgg16-397923af.pth",
    url="https://download.pytorch.org/models/vgg16-397923af.pth",
    sha256=None,  # torchvision names the file by its digest's first 8 hex digits only
    size=None,
    licence="BSD-3-Clause (torchvision); trained on ImageNet, whose terms restrict use",
    licence_url="https://github.com/pytorch/vision/blob/main/LICENSE",
    role="lpips_vgg",
    required=False,
    note="torchvision's ImageNet VGG16, the backbone LPIPS measures with.",
)

LPIPS_LINEAR = WeightFile(
    key="lpips-vgg-linear",
    filename="lpips-vgg-v0.1.pth",
    url="https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth",
    sha256=None,
    size=None,
    licence="BSD-2-Clause (LPIPS, Zhang et al. 2018)",
    licence_url="https://github.com/richzhang/PerceptualSimilarity/blob/master/LICENSE",
    role="lpips_lin",
    required=False,
    note="LPIPS v0.1 linear layers for VGG16.",
)

PROFILES: dict[str, tuple[WeightFile, ...]] = {
    "ffhq": (
        STYLEGAN2_FFHQ_1024,
        CLIP_VIT_B32_OPENAI,
        AUDIO_ENCODER_RESNET18,
        IR_SE50,
        LPIPS_VGG16,
        LPIPS_LINEAR,
    ),
    "landscape": (
        STYLEGAN2_LANDSCAPE_256,
        CLIP_VIT_B32_OPENAI,
        AUDIO_ENCODER_RESNET18,
        LPIPS_VGG16,
        LPIPS_LINEAR,
    ),
    "smoke": (),  # seeded random weights: nothing to download
}


def _check_registry() -> None:
    """Fail at import if two different entries would share one cache file."""
    by_filename: dict[str, WeightFile] = {}
    for files in PROFILES.values():
        for wf in files:
            other = by_filename.setdefault(wf.filename, wf)
            if other != wf:
                raise AssertionError(f"{wf.key} and {other.key} share {wf.filename}")


_check_registry()


def profile_files(profile: str) -> tuple[WeightFile, ...]:
    """The weight files of ``profile``; the error lists the valid names."""
    try:
        return PROFILES[profile]
    except KeyError:
        choices = ", ".join(PROFILES)
        raise WeightsError(f"unknown profile {profile!r}; choose one of: {choices}") from None


def weight_file(key: str) -> WeightFile:
    """The registered file with this key (loaders look their file up by key)."""
    for files in PROFILES.values():
        for wf in files:
            if wf.key == key:
                return wf
    keys = sorted({wf.key for files in PROFILES.values() for wf in files})
    raise WeightsError(f"unknown weight file {key!r}; known: {', '.join(keys)}")


# --- Cache layout and verification --------------------------------------------------------


def cached_path(wf: WeightFile, cache_dir: Path) -> Path:
    """Where ``wf`` lives once downloaded and verified (it may not exist yet)."""
    return Path(cache_dir) / wf.filename


def _incomplete_path(final: Path) -> Path:
    return final.with_name(final.name + INCOMPLETE_SUFFIX)


def _sidecar_path(final: Path) -> Path:
    return final.with_name(final.name + SIDECAR_SUFFIX)


def _lock_path(final: Path) -> Path:
    return final.with_name(final.name + LOCK_SUFFIX)


def _read_sidecar(final: Path) -> dict[str, Any]:
    """The recorded digest and stat of ``final``; empty when absent or unreadable."""
    try:
        data = json.loads(_sidecar_path(final).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or not _SHA256_HEX.fullmatch(str(data.get("sha256", ""))):
        return {}
    return data


def _write_sidecar(final: Path, wf: WeightFile, digest: str) -> None:
    """Record the trusted digest and the stat it was checked at (atomically)."""
    st = final.stat()
    data = {
        "key": wf.key,
        "url": wf.url,
        "sha256": digest,
        "pinned": wf.sha256 is not None,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
    }
    sidecar = _sidecar_path(final)
    fd, tmp = tempfile.mkstemp(dir=sidecar.parent, prefix=sidecar.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, sidecar)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def _expected_digest(wf: WeightFile, final: Path) -> str | None:
    """The digest a download must have: the pinned one, else the one recorded earlier."""
    if wf.sha256 is not None:
        return wf.sha256
    recorded = _read_sidecar(final).get("sha256")
    return str(recorded) if recorded else None


def _verify(wf: WeightFile, final: Path) -> WeightState:
    """State of the file at ``final``, hashing only when the cached verification is stale."""
    try:
        st = final.stat()
    except FileNotFoundError:
        return "partial" if _incomplete_path(final).exists() else "missing"
    if wf.size is not None and st.st_size != wf.size:
        return "corrupt"
    sidecar = _read_sidecar(final)
    expected = wf.sha256 or sidecar.get("sha256")
    if sidecar.get("size") == st.st_size and sidecar.get("mtime_ns") == st.st_mtime_ns:
        # Unchanged since it was last hashed: the recorded digest is the file's digest.
        return "present" if sidecar["sha256"] == expected else "corrupt"
    digest = _sha256_file(final)
    if expected is None:
        logger.warning(
            "%s has no published checksum and no recorded one; trusting it and recording "
            "sha256 %s in %s",
            final,
            digest,
            _sidecar_path(final),
        )
    elif digest != expected:
        return "corrupt"
    with contextlib.suppress(OSError):  # a read-only cache still verifies, just not cached
        _write_sidecar(final, wf, digest)
    return "present"


def file_state(wf: WeightFile, cache_dir: Path) -> WeightState:
    """State of one file in ``cache_dir``: present (verified), missing, partial or corrupt."""
    return _verify(wf, cached_path(wf, cache_dir))


def status(profile: str, cache_dir: Path) -> list[tuple[WeightFile, WeightState]]:
    """Each file of ``profile`` with its state in ``cache_dir`` (verified, cheaply)."""
    return [(wf, file_state(wf, cache_dir)) for wf in profile_files(profile)]


def profile_available(profile: str, cache_dir: Path) -> bool:
    """Whether every required file of ``profile`` is present and verified."""
    return all(state == "present" for wf, state in status(profile, cache_dir) if wf.required)


# --- Downloading ---------------------------------------------------------------------------


@contextlib.contextmanager
def _file_lock(final: Path) -> Iterator[None]:
    """Exclusive per-file lock so two processes never write the same download."""
    with _lock_path(final).open("a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another process that is downloading %s", final.name)
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class _TransientError(Exception):
    """A network failure worth retrying (the partial file is kept for resuming)."""


class _RestartFromZero(Exception):
    """The server cannot continue our partial file: drop it and fetch everything."""


def _manual_hint(wf: WeightFile, final: Path) -> str:
    """How to put ``wf`` into the cache by hand."""
    if wf.url is None:
        return f"{wf.note} Expected at {final}."
    digest = f" (sha256 {wf.sha256})" if wf.sha256 else ""
    return f"download {wf.url} manually to {final}{digest}"


def _progress_bar(total: int | None, initial: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar on stderr, or a no-op when disabled or tqdm is not installed."""
    try:
        from tqdm import tqdm
    except ImportError:
        enabled = False
    if not enabled:
        return contextlib.nullcontext(_NoBar())
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        leave=True,
    )


class _NoBar:
    def update(self, n: int) -> None:
        """Progress is not shown."""


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    response: http.client.HTTPResponse = urllib.request.urlopen(request, timeout=timeout)
    return response


def _fetch_once(wf: WeightFile, url: str, partial: Path, *, progress: bool, timeout: float) -> None:
    """One attempt: append to ``partial`` (resuming from its size) until the body ends.

    Raises _RestartFromZero when the partial cannot be continued, _TransientError when the
    connection failed (the bytes received so far stay in ``partial``), WeightsError otherwise.
    """
    offset = partial.stat().st_size if partial.exists() else 0
    if wf.size is not None and offset > wf.size:
        raise _RestartFromZero(f"partial file larger than {wf.size} bytes")
    if wf.size is not None and offset == wf.size:
        return  # complete already; the caller verifies it
    try:
        response = _open(url, offset, timeout)
    except urllib.error.HTTPError as err:
        if err.code == HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE and offset:
            match = _UNSATISFIED_RANGE.fullmatch(err.headers.get("Content-Range", "").strip())
            if match and int(match.group(1)) == offset:
                return  # the partial already holds the whole file
            raise _RestartFromZero("server refused the resume range") from err
        if err.code >= HTTPStatus.INTERNAL_SERVER_ERROR or err.code in {
            HTTPStatus.REQUEST_TIMEOUT,
            HTTPStatus.TOO_MANY_REQUESTS,
        }:
            raise _TransientError(f"HTTP {err.code} {err.reason}") from err
        raise WeightsError(
            f"could not download {wf.filename} from {url}: HTTP {err.code} {err.reason}"
        ) from err
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", None) or err
        raise _TransientError(str(reason)) from err

    with response:
        content_type = response.headers.get("Content-Type", "")
        if content_type.split(";")[0].strip().lower() == "text/html":
            raise WeightsError(
                f"{url} answered with an HTML page, not {wf.filename} (a login or "
                "confirmation page?)"
            )
        if response.status == HTTPStatus.PARTIAL_CONTENT:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
            if not match or int(match.group(1)) != offset:
                raise _RestartFromZero("server resumed at an unexpected offset")
            total = None if match.group(3) == "*" else int(match.group(3))
            mode = "ab"
        else:
            if offset:
                logger.info("%s: server ignored the resume request; starting over", url)
            offset = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            mode = "wb"
        if wf.size is not None and total is not None and total != wf.size:
            raise WeightsError(
                f"{url} serves {total} bytes but {wf.filename} should have {wf.size}"
            )
        length_header = response.headers.get("Content-Length")
        body_len = int(length_header) if length_header and length_header.isdigit() else None
        received = 0
        bar_ctx = _progress_bar(total, offset, wf.filename, progress)
        with partial.open(mode) as out, bar_ctx as bar:
            try:
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as err:
                raise _TransientError(f"connection lost after {offset + received} bytes") from err
            finally:
                out.flush()
                os.fsync(out.fileno())
        if body_len is not None and received < body_len:
            raise _TransientError(
                f"connection closed after {offset + received} of {offset + body_len} bytes"
            )


def _fetch(
    wf: WeightFile, url: str, partial: Path, *, progress: bool, timeout: float, retries: int
) -> None:
    """Fetch into ``partial``, resuming after transient failures up to ``retries`` times."""
    attempt = 0
    restarted = False
    while True:
        try:
            _fetch_once(wf, url, partial, progress=progress, timeout=timeout)
            return
        except _RestartFromZero as err:
            partial.unlink(missing_ok=True)
            if restarted:
                raise WeightsError(f"could not download {wf.filename} from {url}: {err}") from err
            logger.info("%s: %s; downloading from the start", wf.filename, err)
            restarted = True  # not a failed attempt: the next one starts clean
        except _TransientError as err:
            if attempt >= retries:
                raise WeightsError(
                    f"could not download {wf.filename} from {url}: {err}. The partial download "
                    f"is kept in {partial}: run again to resume, or "
                    f"{_manual_hint(wf, partial.with_name(wf.filename))}"
                ) from err
            attempt += 1
            logger.warning("%s: %s; retrying (%d/%d)", wf.filename, err, attempt, retries)
            time.sleep(RETRY_BACKOFF_S * attempt)


def download(
    wf: WeightFile,
    cache_dir: Path,
    *,
    progress: bool = True,
    offline: bool = False,
    timeout: float = DEFAULT_TIMEOUT_S,
    retries: int = DEFAULT_RETRIES,
) -> Path:
    """The verified local path of ``wf``, downloading it first if needed.

    Nothing reaches the final path unless its size and SHA-256 check out; a partial download
    is kept as ``<name>.incomplete`` and resumed next time. With ``offline`` (or when the file
    has no direct URL) a missing file is an error that says where to put it.
    """
    cache_dir = Path(cache_dir)
    final = cached_path(wf, cache_dir)
    # Fast path without the lock, so a verified file in a read-only cache is still served.
    state = _verify(wf, final)
    if state == "present":
        return final
    url = _download_url(wf, final, state, offline=offline)
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = _incomplete_path(final)
    with _file_lock(final):
        state = _verify(wf, final)  # another process may have finished it meanwhile
        if state == "present":
            return final
        if state == "corrupt":
            logger.warning("%s fails verification; removing it and downloading again", final)
            final.unlink()
        logger.info("downloading %s from %s", wf.filename, wf.url)
        _fetch(wf, url, partial, progress=progress, timeout=timeout, retries=retries)
        _accept(wf, final, partial)
    return final


def _download_url(wf: WeightFile, final: Path, state: WeightState, *, offline: bool) -> str:
    """The URL to fetch ``wf`` from, or the helpful error when it may not or cannot be fetched."""
    problem = "fails verification" if state == "corrupt" else "is not in the cache"
    if wf.url is None:
        raise WeightsError(
            f"{wf.filename} ({wf.key}) {problem} and has no direct download: "
            f"{_manual_hint(wf, final)}"
        )
    if offline:
        raise WeightsError(
            f"{wf.filename} ({wf.key}) {problem} at {final} and offline mode is on "
            f"(--offline or {OFFLINE_ENV}): allow downloads, or {_manual_hint(wf, final)}"
        )
    return wf.url


def _accept(wf: WeightFile, final: Path, partial: Path) -> None:
    """Verify the finished partial file and move it into place, or delete it and raise."""
    size = partial.stat().st_size
    if wf.size is not None and size != wf.size:
        partial.unlink()
        raise WeightsError(
            f"downloaded {wf.filename} from {wf.url} has {size} bytes, expected {wf.size}; "
            "the download was deleted, run again to retry"
        )
    digest = _sha256_file(partial)
    expected = _expected_digest(wf, final)
    if expected is not None and digest != expected:
        partial.unlink()
        origin = "pinned" if wf.sha256 else f"recorded in {_sidecar_path(final)}"
        hint = (
            "the download was deleted; retry later or report the mismatch"
            if wf.sha256
            else "the download was deleted; if the file changed upstream on purpose, delete "
            "the sidecar to accept the new one"
        )
        raise WeightsError(
            f"checksum mismatch for {wf.filename} from {wf.url}: expected sha256 {expected} "
            f"({origin}), got {digest}; {hint}"
        )
    os.replace(partial, final)
    _write_sidecar(final, wf, digest)
    if expected is None:
        logger.warning(
            "%s has no published checksum: recorded sha256 %s in %s; later runs verify against it",
            wf.filename,
            digest,
            _sidecar_path(final),
        )


def recorded_digest(wf: WeightFile, cache_dir: Path) -> str | None:
    """The SHA-256 recorded for ``wf`` in the cache's sidecar, if any."""
    digest = _read_sidecar(cached_path(wf, cache_dir)).get("sha256")
    return str(digest) if digest else None


def describe_licence(wf: WeightFile) -> str:
    """One line naming the licence of ``wf`` (shown before a download)."""
    nc = " - non-commercial use only" if wf.non_commercial else ""
    return f"{wf.filename}: {wf.licence}{nc} <{wf.licence_url}>"


def pull(
    profile: str,
    cache_dir: Path,
    *,
    progress: bool = True,
    offline: bool = False,
    report: Callable[[str], None] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    retries: int = DEFAULT_RETRIES,
) -> list[Path]:
    """Download every file of ``profile``; returns the paths of the files now in the cache.

    Each file's licence goes to ``report`` (default: the logger) before it is fetched. An
    optional file that cannot be had is reported and skipped; if a required one fails, the
    others are still tried and then WeightsError names the failures.
    """
    say: Callable[[str], None] = report or logger.info
    paths: list[Path] = []
    failed: list[str] = []
    for wf in profile_files(profile):
        say(f"licence: {describe_licence(wf)}")
        try:
            path = download(
                wf, cache_dir, progress=progress, offline=offline, timeout=timeout, retries=retries
            )
        except WeightsError as err:
            if wf.required:
                failed.append(wf.filename)
                say(f"error: {err}")
            else:
                say(f"skipped optional {wf.filename}: {err}")
            continue
        paths.append(path)
        if wf.sha256:
            say(f"ok: {path} (sha256 verified)")
        else:
            digest = recorded_digest(wf, cache_dir)
            say(f"ok: {path} (no published checksum; sha256 {digest} recorded and verified)")
    if failed:
        raise WeightsError(f"profile {profile!r} is incomplete: could not get {', '.join(failed)}")
    return paths
