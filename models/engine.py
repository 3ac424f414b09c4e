"""The models of one profile, loaded once, and one edit through them.

The worker and ``soundedit edit`` both run edits through ``EditEngine``; only the weights differ
between profiles (smoke: seeded random weights of the same architectures).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from models.audio import audio_input, decode_audio
from models.audio_encoder import AudioEncoder, load_audio_encoder, random_audio_encoder
from models.clip import FrozenClip, load_clip, random_clip
from models.identity import IdentityLoss, load_identity
from models.invert import InvertStep
from models.optimize import (
    DEFAULT_TRUNCATION,
    EditCanceled,
    EditConfig,
    EditResult,
    LatentOptimizer,
    Precision,
    StepInfo,
    edit_batch,
    start_from_seed,
)
from models.photo import PhotoSource, pil_to_tensor, prepare_photo, tensor_to_uint8
from models.profiles import Profile
from models.stylegan2 import Generator, random_generator
from models.weights import WeightFile, cached_path, file_state, profile_files

logger = logging.getLogger(__name__)

SMOKE_SEED = 0  # seeds of the smoke profile's random weights: fixed, so results are repeatable
SMOKE_CHANNELS = 64  # smoke generator width at every resolution
REAL_CLIP_MODEL = "ViT-B-32"  # the paper's CLIP
CLIP_MODES = ("paper", "upstream")  # how the CLIP loss sees the image (see EditEngine.edit)
PREVIEWS_PER_RUN = 10  # intermediate images an edit offers, evenly spaced

# (phase, steps done, steps in the phase, the current image as (H, W, 3) uint8 on preview
# steps, else None); phases: "aligning", "inverting" (photos only), then "editing".
ProgressCallback = Callable[[str, int, int, np.ndarray | None], None]
CancelCheck = Callable[[], bool]


@dataclass
class EditOutput:
    result: np.ndarray  # (H, W, 3) uint8, the edited image
    source: np.ndarray  # (H, W, 3) uint8, the image the edit started from: G(w_source)
    latent: np.ndarray  # (n_latent, w_dim) float32, the edited W+ latent
    report: dict[str, Any]  # quality report (see models.optimize.edit, plus the photo's)
    photo: PhotoSource | None = None  # for a photo: the aligned input and its reconstruction


@dataclass
class EditRequest:
    """One edit's own inputs: its sound, what it starts from, where its progress goes."""

    audio: bytes  # an encoded clip (WAV, FLAC, MP3, OGG)
    seed: int | None = None  # start: a generated image ...
    latent: np.ndarray | None = None  # ... a (n_latent, w_dim) W+ latent ...
    image: Image.Image | None = None  # ... or a photo, inverted into W+ first
    face_index: int = 0  # which face of a photo, largest first
    inversion_steps: int | None = None  # None: as many as the edit's steps
    text: str | None = None  # a prompt joining the sound
    truncation: float = DEFAULT_TRUNCATION  # of a seed's start
    random_seed: int = 0
    on_step: ProgressCallback | None = None
    should_cancel: CancelCheck | None = None


@dataclass(frozen=True)
class EditOptions:
    """The optimiser's settings; edits that share them can run as one batch."""

    steps: int
    lr: float
    lambda_l2: float
    lambda_id: float
    text_mode: str = "mix"  # how text joins the sound: "mix" or "sum"
    clip_mode: str = "paper"  # see EditEngine.edit


@dataclass
class _Start:
    """An edit prepared for the optimiser."""

    audio_emb: Tensor  # (1, D) unit length
    text_emb: Tensor | None  # (1, D) or None
    w_source: Tensor  # (1, n_latent, w_dim)
    photo: PhotoSource | None
    inversion_steps: int | None  # steps the photo's inversion ran


def pick_device(name: str) -> torch.device:
    """``auto`` takes the first GPU when there is one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class EditEngine:
    """A generator, CLIP, the audio encoder and (for faces) the identity network, on one device."""

    def __init__(
        self,
        profile: Profile,
        generator: Generator,
        clip: FrozenClip,
        audio_encoder: AudioEncoder,
        identity: IdentityLoss | None,
        device: torch.device,
        perceptual: nn.Module | None = None,
        precision: Precision = "fp32",
        compile_mode: str | None = None,
    ) -> None:
        self.profile = profile
        self.precision: Precision = precision  # autocast of the optimiser's forward passes
        self.compile_mode = compile_mode  # torch.compile mode of the generator; None: eager
        self.perceptual = perceptual.to(device) if perceptual is not None else None  # LPIPS
        self.generator = generator.to(device)
        self.clip = clip.to(device)
        self.audio_encoder = audio_encoder.to(device)
        self.identity = identity.to(device) if identity is not None else None
        self.device = device

    @classmethod
    def load(
        cls,
        profile: Profile,
        cache_dir: Path,
        device: str = "auto",
        audio_encoder: Path | None = None,
        precision: Precision = "fp32",
        compile_mode: str | None = None,
    ) -> EditEngine:
        """The profile's models; ``audio_encoder`` replaces its audio encoder with a trained one.

        ``precision`` ("bf16"/"fp16" autocast) and ``compile_mode`` (``torch.compile``) speed up
        the optimiser on a GPU; see ``models.optimize.EditConfig``.
        """
        target = pick_device(device)
        encoder = load_audio_encoder(audio_encoder) if audio_encoder is not None else None
        files: dict[str, WeightFile] = {wf.role: wf for wf in profile_files(profile.name)}
        identity = _load_identity(profile, files, cache_dir)
        if profile.smoke:
            return cls(
                profile,
                random_generator(profile.resolution, SMOKE_CHANNELS, seed=SMOKE_SEED),
                random_clip(SMOKE_SEED),
                encoder or random_audio_encoder(seed=SMOKE_SEED),
                identity,
                target,
                precision=precision,
                compile_mode=compile_mode,
            )
        from models.checkpoints import load_generator

        generator = load_generator(_required(files["generator"], cache_dir))
        if generator.resolution != profile.resolution:
            raise ValueError(
                f"the {profile.name} generator renders {generator.resolution} px; "
                f"the profile expects {profile.resolution} px"
            )
        return cls(
            profile,
            generator,
            load_clip(REAL_CLIP_MODEL, _required(files["clip"], cache_dir)),
            encoder or load_audio_encoder(_required(files["audio_encoder"], cache_dir)),
            identity,
            target,
            perceptual=_load_lpips(files, cache_dir),
            precision=precision,
            compile_mode=compile_mode,
        )

    def describe(self) -> str:
        identity = (
            type(self.identity).__name__ if self.identity is not None else "no identity network"
        )
        return (
            f"{self.profile.name}: {self.generator.resolution} px generator, "
            f"{self.generator.n_latent} W+ layers, {identity}, on {self.device}, "
            f"{self.precision}" + (f", compiled ({self.compile_mode})" if self.compile_mode else "")
        )

    def warm_up(self) -> float:
        """One optimisation step on a seeded start, so that compilation (``compile_mode``) and
        the device's lazy set-up happen before the first edit; returns its seconds."""
        started = time.perf_counter()
        config = self._config(EditOptions(steps=1, lr=0.01, lambda_l2=0.0, lambda_id=0.0))
        target = torch.nn.functional.normalize(
            torch.ones(1, self.clip.embed_dim, device=self.device), dim=-1
        )  # (1, D): any direction does
        w_source = start_from_seed(self.generator, seed=0)
        LatentOptimizer(self.generator, self.clip, target, w_source, config).step()
        return time.perf_counter() - started

    @torch.no_grad()
    def embed_audio(self, audio: bytes, offset_s: float = 0.0) -> Tensor:
        """The sound's embedding in CLIP space: (1, D), unit length."""
        waveform, rate = decode_audio(audio)
        spectrogram = audio_input(waveform, rate, offset_s).to(self.device)  # (1, 1, 128, 512)
        embedding = self.audio_encoder(spectrogram)  # (1, D)
        return torch.nn.functional.normalize(embedding.float(), dim=-1)

    def start_latent(
        self, seed: int | None, latent: np.ndarray | None, truncation: float
    ) -> Tensor:
        """The source W+ latent (1, n_latent, w_dim) from a seed or a given array."""
        g = self.generator
        if latent is not None:
            array = latent[0] if latent.ndim == 3 and latent.shape[0] == 1 else latent
            if array.shape != (g.n_latent, g.w_dim):
                raise ValueError(
                    f"latent has shape {list(latent.shape)}; this generator needs [{g.n_latent}, {g.w_dim}]"
                )
            return torch.from_numpy(np.asarray(array, dtype=np.float32))[None].to(self.device)
        if seed is None:
            raise ValueError("give a seed, a latent or an image")
        return start_from_seed(g, seed, truncation)

    def edit(
        self,
        audio: bytes,
        *,
        seed: int | None = None,
        latent: np.ndarray | None = None,
        image: Image.Image | None = None,
        face_index: int = 0,
        inversion_steps: int | None = None,
        text: str | None = None,
        steps: int,
        lr: float,
        lambda_l2: float,
        lambda_id: float,
        truncation: float,
        random_seed: int = 0,
        text_mode: str = "mix",
        clip_mode: str = "paper",
        on_step: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> EditOutput:
        """Paper Eq. 2 from ``seed``, ``latent`` or a photo (``image``) toward ``audio``.

        A photo is aligned (faces) or centre-cropped, then inverted into W+ first. ``text`` joins
        the sound (``text_mode``). ``clip_mode`` "paper" feeds CLIP an antialiased resize with
        CLIP's normalisation and uses 1 − cos; "upstream" reproduces the official code exactly
        (nearest ×7 upsampling + average pooling, no normalisation, 1 − cos·e^0.07).
        Raises what the edit failed with (``ValueError`` for unusable inputs, ``EditCanceled``).
        """
        request = EditRequest(
            audio=audio,
            seed=seed,
            latent=latent,
            image=image,
            face_index=face_index,
            inversion_steps=inversion_steps,
            text=text,
            truncation=truncation,
            random_seed=random_seed,
            on_step=on_step,
            should_cancel=should_cancel,
        )
        options = EditOptions(steps, lr, lambda_l2, lambda_id, text_mode, clip_mode)
        (outcome,) = self.edit_batch([request], options)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def edit_batch(
        self, requests: Sequence[EditRequest], options: EditOptions
    ) -> list[EditOutput | Exception]:
        """Several edits sharing ``options``, optimised together; one outcome per request.

        Each edit's inputs are prepared alone (a bad clip, a photo without a face or a cancel
        fails that edit only), then the edits with text and those without are each optimised
        as one batch. Every result equals that of the edit run alone, up to float rounding
        (``models.optimize.optimize_latents``). A batch the GPU has no memory for is run again
        one edit at a time. Errors of the batch itself (a time limit) are raised.
        """
        config = self._config(options)
        outcomes: list[EditOutput | Exception | None] = [None] * len(requests)
        starts: dict[int, _Start] = {}
        for i, request in enumerate(requests):
            try:
                starts[i] = self._start(request, options)
            except Exception as exc:  # this edit's inputs, or its cancellation
                outcomes[i] = exc
        with_text = [i for i in starts if requests[i].text]
        for group in ([i for i in starts if not requests[i].text], with_text):
            if group:
                batch = [(requests[i], starts[i]) for i in group]
                for i, outcome in zip(group, self._optimize(batch, options, config), strict=True):
                    outcomes[i] = outcome
        return [outcome for outcome in outcomes if outcome is not None]

    def _config(self, options: EditOptions) -> EditConfig:
        if options.clip_mode not in CLIP_MODES:
            raise ValueError(
                f"clip_mode must be one of {list(CLIP_MODES)}, got {options.clip_mode!r}"
            )
        upstream = options.clip_mode == "upstream"
        return EditConfig(
            steps=options.steps,
            lr=options.lr,
            lambda_l2=options.lambda_l2,
            lambda_id=options.lambda_id if self.identity is not None else 0.0,
            text_mode=options.text_mode,  # type: ignore[arg-type]
            clip_preprocess="upstream" if upstream else "resize",
            clip_loss_mode="upstream" if upstream else "cosine",
            preview_every=max(1, options.steps // PREVIEWS_PER_RUN),
            precision=self.precision,
            compile_mode=self.compile_mode,
        )

    def _start(self, request: EditRequest, options: EditOptions) -> _Start:
        """What one edit starts from: its embeddings and source latent (a photo is inverted)."""
        torch.manual_seed(request.random_seed)
        audio_emb = self.embed_audio(request.audio)  # first: a bad clip fails before any long phase
        photo = None
        if request.image is not None:
            photo = self._invert_photo(
                request.image,
                request.face_index,
                request.inversion_steps or options.steps,
                request.on_step,
                request.should_cancel,
            )
            w_source = photo.latent.to(self.device)
        else:
            w_source = self.start_latent(request.seed, request.latent, request.truncation)
        text_emb = None
        if request.text:
            with torch.no_grad():
                text_emb = self.clip.encode_text([request.text])  # (1, D)
        steps = (request.inversion_steps or options.steps) if photo is not None else None
        return _Start(audio_emb, text_emb, w_source, photo, steps)

    def _optimize(
        self,
        batch: Sequence[tuple[EditRequest, _Start]],
        options: EditOptions,
        config: EditConfig,
    ) -> list[EditOutput | Exception]:
        """One batch through the Eq. 2 optimiser; outcomes in order."""
        texts = [start.text_emb for _, start in batch]
        runs = 2 if texts[0] is not None and config.text_mode == "mix" else 1

        def progress(info: StepInfo) -> None:
            on_step = batch[info.edit_index][0].on_step
            if on_step is not None:
                preview = tensor_to_uint8(info.image) if info.preview else None
                done = info.phase_index * info.steps + info.step + 1
                on_step("editing", done, runs * info.steps, preview)

        def canceled(b: int) -> bool:
            should_cancel = batch[b][0].should_cancel
            return should_cancel is not None and should_cancel()

        try:
            results = edit_batch(
                self.generator,
                self.clip,
                torch.cat([start.audio_emb for _, start in batch]),  # (B, D)
                torch.cat([start.w_source for _, start in batch]),  # (B, n_latent, w_dim)
                config,
                text_embs=None if texts[0] is None else torch.cat(texts),  # type: ignore[arg-type]
                identity=self.identity if config.lambda_id > 0 else None,
                on_step=progress,
                should_cancel=canceled,
            )
            return [
                result
                if isinstance(result, EditCanceled)
                else self._finish(start, result, options, len(batch))
                for (_, start), result in zip(batch, results, strict=True)
            ]
        except torch.OutOfMemoryError:
            if len(batch) == 1:
                raise
            torch.cuda.empty_cache()
            logger.warning(
                "a batch of %d edits ran out of memory; running them one by one", len(batch)
            )
            return [
                outcome for item in batch for outcome in self._optimize([item], options, config)
            ]

    def _finish(
        self, start: _Start, result: EditResult, options: EditOptions, batch_size: int
    ) -> EditOutput:
        """The edit's images, latent and report (identity kept, photo quality, batch size)."""
        photo = start.photo
        report = {
            **result.report,
            "profile": self.profile.name,
            "clip_mode": options.clip_mode,
            "precision": self.precision,
            "batch_size": batch_size,
        }
        if options.lambda_id > 0 and self.identity is None:
            report["identity_loss"] = "off: no identity network in this profile"
        if self.identity is not None:
            # Identity kept from what the user gave: the photo itself, else the source image.
            reference = (
                pil_to_tensor(Image.fromarray(photo.aligned), self.device)
                if photo
                else result.source_image
            )
            with torch.no_grad():
                report["identity_similarity"] = float(
                    self.identity.similarity(reference, result.image)[0]
                )
        if photo is not None:
            report.update(
                reconstruction_psnr=photo.psnr,
                reconstruction_ssim=photo.ssim,
                faces_found=photo.faces_found,
                inversion_steps=start.inversion_steps,
            )
        return EditOutput(
            result=tensor_to_uint8(result.image),
            source=tensor_to_uint8(result.source_image),
            latent=result.w[0].detach().float().cpu().numpy(),
            report=report,
            photo=photo,
        )

    def _invert_photo(
        self,
        image: Image.Image,
        face_index: int,
        steps: int,
        on_step: ProgressCallback | None,
        should_cancel: CancelCheck | None,
    ) -> PhotoSource:
        def phase(name: str) -> None:
            if on_step is None:
                return
            if name == "inverting":  # aligning is over
                on_step("aligning", 1, 1, None)
                on_step("inverting", 0, steps, None)
            else:
                on_step(name, 0, 1, None)

        def inverted(info: InvertStep) -> None:
            if on_step is not None:
                preview = tensor_to_uint8(info.image) if info.preview else None
                on_step("inverting", info.step + 1, info.steps, preview)

        return prepare_photo(
            self.generator,
            image,
            domain=self.profile.domain,
            face_index=face_index,
            steps=steps,
            on_step=inverted,
            should_cancel=should_cancel,
            identity=self.identity,
            perceptual=self.perceptual,
            on_phase=phase,
        )


def _load_identity(
    profile: Profile, files: Mapping[str, WeightFile], cache_dir: Path
) -> IdentityLoss | None:
    """The profile's first identity network that can be had (IR-SE50 needs its weights)."""
    for name in profile.identity:
        if name == "ir_se50" and "identity" in files:
            path = _optional(files["identity"], cache_dir)
            if path is not None:
                return load_identity(path)
        elif name == "sface":
            from models.sface import load_sface_identity

            return load_sface_identity()
    return None


def _load_lpips(files: Mapping[str, WeightFile], cache_dir: Path) -> nn.Module | None:
    """LPIPS-VGG when both its files are cached; None: inversion uses its weight-free loss."""
    if "lpips_vgg" not in files or "lpips_lin" not in files:
        return None
    vgg, linear = _optional(files["lpips_vgg"], cache_dir), _optional(files["lpips_lin"], cache_dir)
    if vgg is None or linear is None:
        return None
    from models.perceptual import load_lpips

    return load_lpips(vgg, linear)


def _required(wf: WeightFile, cache_dir: Path) -> Path:
    """The verified cached file; a clear error when it is not there."""
    state = file_state(wf, cache_dir)
    if state != "present":
        raise FileNotFoundError(
            f"weights {wf.key} are {state} at {cached_path(wf, cache_dir)}: "
            "run `soundedit models pull` for this profile"
        )
    return cached_path(wf, cache_dir)


def _optional(wf: WeightFile, cache_dir: Path) -> Path | None:
    """The verified cached file, or None: the profile runs without it."""
    state = file_state(wf, cache_dir)
    if state != "present":
        logger.info("optional weights %s are %s; running without them", wf.key, state)
        return None
    return cached_path(wf, cache_dir)
