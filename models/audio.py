"""Audio decoding and the log-mel front end of the paper's released audio encoder.

The released encoder was trained on one exact input layout, so this module reproduces the
official preprocessing step by step (numerically checked against golden outputs of the
official code):

1. mono mix (mean over channels), resample to 44.1 kHz with soxr 'soxr_hq' (what librosa
   >= 0.10 uses by default), length fixed to ``ceil(n * 44100 / rate)`` like librosa;
2. power mel spectrogram: n_fft 2048, hop 512, periodic Hann window, centred frames with zero
   padding, 128 Slaney-normalised Slaney-scale mels from 0 Hz to Nyquist;
3. dB relative to the clip's maximum, floored 80 dB below it, mapped to [0, 1] by ``/80 + 1``;
4. a window of 864 frames (about 10 s): cropped at a deterministic offset, or zero-padded;
5. bilinear resize with half-pixel centres (OpenCV ``INTER_LINEAR``) of the (128, 864) window
   to 512 rows by 128 columns, then a raw row-major reshape (not a transpose) to
   (1, 1, 128, 512).

Crop policy: the official code crops a clip longer than the window at a random frame offset.
Here the offset comes from ``offset_s``: converted to the nearest frame and clamped to
``[0, frames - 864]``, so the same request always gives the same input. Clips shorter than the
window are zero-padded at the end and ``offset_s`` is ignored.
"""

from __future__ import annotations

import io
import math
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
import torch.nn.functional as F
import torchaudio

SAMPLE_RATE = 44100  # Hz, the rate the encoder was trained at
RESAMPLE_QUALITY = "soxr_hq"  # librosa >= 0.10's default resampler
N_FFT = 2048  # STFT size (librosa default)
HOP_LENGTH = 512  # STFT hop (librosa default)
N_MELS = 128  # mel bands
AMIN = 1e-10  # power floor before the logarithm (librosa.power_to_db default)
TOP_DB = 80.0  # dynamic range kept below the clip's maximum, also the [0, 1] scale
N_FRAMES = 864  # frames in one model window, about 10.03 s at 44.1 kHz / hop 512
RESIZED_ROWS = 512  # mel axis stretched to this many rows (cv2 dsize height)
RESIZED_COLS = 128  # time axis squeezed to this many columns (cv2 dsize width)
INPUT_HEIGHT = N_MELS  # height of the model input after the raw reshape
INPUT_WIDTH = RESIZED_ROWS * RESIZED_COLS // INPUT_HEIGHT  # 512
MODEL_INPUT_SHAPE = (1, 1, INPUT_HEIGHT, INPUT_WIDTH)  # what `audio_input` returns


class AudioError(ValueError):
    """The audio cannot be used: undecodable, empty, non-finite or of an invalid shape."""


def decode_audio(
    data: bytes | str | Path, *, max_seconds: float | None = None
) -> tuple[torch.Tensor, int]:
    """Decode WAV/FLAC/OGG/MP3 (whatever libsndfile reads) from bytes or a file path.

    Returns ``(waveform, sample_rate)`` with ``waveform`` float32 of shape (channels, samples)
    in [-1, 1] for integer formats. ``max_seconds`` rejects long clips from the header alone,
    before any sample is decoded, so untrusted uploads cannot exhaust memory.
    Raises ``AudioError`` for undecodable, empty or non-finite audio and ``FileNotFoundError``
    for a missing path.
    """
    if isinstance(data, bytes | bytearray | memoryview):
        if len(data) == 0:
            raise AudioError("audio is empty (0 bytes)")
        source: io.BytesIO | str = io.BytesIO(bytes(data))
        label = "audio data"
    else:
        source = os.fspath(data)
        label = f"audio file {source!r}"
        if not Path(source).is_file():
            raise FileNotFoundError(f"no such audio file: {source}")
    try:
        with sf.SoundFile(source) as f:
            rate = int(f.samplerate)
            frames = int(f.frames)
            if max_seconds is not None and rate > 0 and frames / rate > max_seconds:
                raise AudioError(
                    f"{label} lasts {frames / rate:.1f} s, more than the {max_seconds:g} s allowed"
                )
            samples = f.read(dtype="float32", always_2d=True)  # (samples, channels)
    except AudioError:
        raise
    except (sf.SoundFileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioError(f"cannot decode {label}: {exc}") from exc
    if samples.shape[0] == 0:
        raise AudioError(f"{label} holds no samples")
    if not np.isfinite(samples).all():
        raise AudioError(f"{label} holds non-finite samples (NaN or infinity)")
    waveform = torch.from_numpy(np.ascontiguousarray(samples.T))  # (channels, samples)
    return waveform, rate


def to_mono(waveform: torch.Tensor) -> torch.Tensor:
    """Mean over channels in float32, as librosa mixes down: (C, N) or (N,) -> (N,)."""
    if waveform.dim() not in (1, 2):
        raise AudioError(
            f"waveform must be (samples,) or (channels, samples), got {tuple(waveform.shape)}"
        )
    if not waveform.is_floating_point():
        raise AudioError(f"waveform must be floating point, got {waveform.dtype}")
    if waveform.shape[-1] == 0 or waveform.numel() == 0:
        raise AudioError("waveform holds no samples")
    waveform = waveform.detach().to(device="cpu", dtype=torch.float32)
    if not torch.isfinite(waveform).all():
        raise AudioError("waveform holds non-finite samples (NaN or infinity)")
    return waveform.mean(dim=0) if waveform.dim() == 2 else waveform


def resample_to_model_rate(mono: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Resample a mono (N,) float32 signal to SAMPLE_RATE exactly as librosa.load does.

    soxr 'soxr_hq' then the length forced to ``ceil(N * ratio)`` (zero-padded or trimmed);
    the goldens of the 48 kHz clips only match with this resampler.
    """
    if sample_rate <= 0:
        raise AudioError(f"sample rate must be positive, got {sample_rate}")
    if sample_rate == SAMPLE_RATE:
        return mono
    ratio = float(SAMPLE_RATE) / sample_rate
    n_out = int(math.ceil(mono.shape[-1] * ratio))  # float ratio: the same rounding as librosa
    resampled = soxr.resample(
        np.ascontiguousarray(mono.numpy()), sample_rate, SAMPLE_RATE, quality=RESAMPLE_QUALITY
    )
    out = torch.from_numpy(np.ascontiguousarray(resampled, dtype=np.float32))
    if out.shape[0] >= n_out:
        return out[:n_out]
    return F.pad(out, (0, n_out - out.shape[0]))


@lru_cache(maxsize=1)
def _mel_transform() -> torchaudio.transforms.MelSpectrogram:
    """The filterbank is built once; the transform has no state that forward changes."""
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=SAMPLE_RATE,
        n_fft=N_FFT,
        hop_length=HOP_LENGTH,
        n_mels=N_MELS,
        power=2.0,
        norm="slaney",
        mel_scale="slaney",
        center=True,
        pad_mode="constant",
    )


def log_mel_spectrogram(mono: torch.Tensor) -> torch.Tensor:
    """Scaled log-mel of a mono 44.1 kHz signal: (N,) -> (N_MELS, 1 + N // HOP_LENGTH) in [0, 1].

    dB relative to the clip's own maximum, floored at -TOP_DB, then ``/TOP_DB + 1``: the
    loudest bin maps to 1 and anything TOP_DB or more below it to 0. Digital silence maps to 1
    everywhere (the reference is the floor itself), as in the official code.
    """
    with torch.no_grad():
        power = _mel_transform()(mono.to(torch.float32))  # (N_MELS, T)
        db = 10.0 * torch.log10(power.clamp(min=AMIN))
        db = db - 10.0 * torch.log10(power.max().clamp(min=AMIN))
        db = torch.maximum(db, db.max() - TOP_DB)
    return db / TOP_DB + 1.0


def frame_offset(n_frames: int, offset_s: float) -> int:
    """First frame of the model window for a clip of ``n_frames`` frames.

    ``offset_s`` rounded to the nearest frame and clamped to ``[0, n_frames - N_FRAMES]``
    (0 when the clip is shorter than the window).
    """
    if not math.isfinite(offset_s):
        raise AudioError(f"offset must be a finite number of seconds, got {offset_s}")
    latest = max(n_frames - N_FRAMES, 0)
    wanted = math.floor(offset_s * SAMPLE_RATE / HOP_LENGTH + 0.5)
    return min(max(wanted, 0), latest)


def crop_or_pad(mel: torch.Tensor, offset_s: float = 0.0) -> torch.Tensor:
    """(N_MELS, T) -> (N_MELS, N_FRAMES): a window at ``frame_offset``, or zero-padded at the end."""
    n_frames = mel.shape[-1]
    if n_frames >= N_FRAMES:
        start = frame_offset(n_frames, offset_s)
        return mel[:, start : start + N_FRAMES]
    return F.pad(mel, (0, N_FRAMES - n_frames))


def resize_to_model_input(window: torch.Tensor) -> torch.Tensor:
    """(N_MELS, N_FRAMES) -> MODEL_INPUT_SHAPE, as ``cv2.resize(w, (128, 512))`` + reshape.

    OpenCV's INTER_LINEAR is plain bilinear with half-pixel centres and no antialiasing, in
    both directions (here rows are stretched 4x and columns squeezed 6.75x), hence
    ``align_corners=False, antialias=False``. The final reshape is the raw row-major one the
    released encoder was trained on, not a transpose.
    """
    resized = F.interpolate(
        window[None, None].to(torch.float32),
        size=(RESIZED_ROWS, RESIZED_COLS),
        mode="bilinear",
        align_corners=False,
        antialias=False,
    )  # (1, 1, RESIZED_ROWS, RESIZED_COLS)
    return resized.reshape(MODEL_INPUT_SHAPE).contiguous()


def audio_input(waveform: torch.Tensor, sample_rate: int, offset_s: float = 0.0) -> torch.Tensor:
    """Official encoder input of a waveform: (C, N) or (N,) at ``sample_rate`` -> (1, 1, 128, 512).

    Float32 on the CPU, values in [0, 1], deterministic. ``offset_s`` chooses the ~10 s window
    of a longer clip (see the module docstring for the clamping policy).
    """
    mono = resample_to_model_rate(to_mono(waveform), int(sample_rate))
    mel = log_mel_spectrogram(mono)  # (N_MELS, T)
    return resize_to_model_input(crop_or_pad(mel, offset_s))
