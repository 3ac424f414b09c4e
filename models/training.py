"""Training the audio encoder into CLIP's space: the paper's first stage.

A ResNet audio encoder (the official release's ResNet-18 or the paper's ResNet-50, on the
service's log-mel front end) learns to put each clip next to the frozen CLIP text embedding
of its label's prompt; the prompts' embeddings are computed once (``PromptBank``). Defaults
are the official code's: batch 320, SGD lr 1e-3 momentum 0.9 weight decay 5e-4, CyclicLR from
1e-3 to 0.1 (triangular, momentum cycled 0.8..0.9, rising for 5 epochs), 50 epochs, the mean of
four InfoNCE terms (audio<->text, audio<->SpecAugment view). The official scheduler steps once
per epoch; here it steps every optimiser step with the same 5-epoch half cycle.

Exact resumption: every random choice of a step (which clips, which prompt variant, which
SpecAugment masks) is derived from the seed and the step number, not from a running RNG, so a
run resumed from ``last.pt`` replays the very same steps; the checkpoint carries the weights,
optimiser, scheduler, gradient scaler and RNG states. On the CPU the resumed run's final
weights equal the uninterrupted run's bit for bit.

A run folder holds:

- ``last.pt``: the full training state, written every ``checkpoint_every`` steps and at the
  end (``--resume`` continues from it); ``best.pt``: the same at the best validation loss;
- ``encoder.pt``: a plain state dict of the best (or, without validation, the final) encoder,
  what a profile's audio encoder file can be. At the standard width all three load with
  ``models.audio_encoder.load_audio_encoder`` (the training checkpoints keep the weights under
  ``state_dict``);
- ``metrics.jsonl``: one JSON object per log interval and per validation;
- ``config.json``: the settings of the run; ``prompts.json``: every prompt of every label.

Gradient accumulation splits each batch into micro-batches; the contrastive loss of each then
only sees the other clips of its micro-batch as negatives.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import pickle
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from models.audio_encoder import (
    ARCHITECTURES,
    AudioEncoder,
    AudioEncoderError,
    load_audio_encoder,
)
from models.clip import FrozenClip
from models.contrastive import (
    LOSS_KINDS,
    ContrastiveLoss,
    LossKind,
    same_label_targets,
    spec_augment,
)
from models.datasets import ClipBatch, ClipDataset, ClipRecord, collate_clips, labels_of
from models.evaluation import zero_shot
from models.frozen import freeze
from models.text_embeddings import PromptBank, build_prompt_bank

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "soundedit-audio-encoder-training/1"
LAST = "last.pt"
BEST = "best.pt"
ENCODER = "encoder.pt"
METRICS = "metrics.jsonl"
CONFIG = "config.json"
PROMPTS = "prompts.json"
STANDARD_WIDTH = 64  # ResNet stem / first-stage channels of the real architectures
OFFICIAL_EPOCHS = 50.0
OFFICIAL_HALF_CYCLE_EPOCHS = 5.0  # CyclicLR step_size_up=5 with one scheduler step per epoch
CYCLIC_BASE_MOMENTUM = 0.8  # CyclicLR's default low momentum (at the high learning rate)
MIN_BATCH = 2  # a contrastive step needs a negative
# Streams of the per-step random numbers (mixed with the seed and the step or epoch).
_STREAM_ORDER, _STREAM_PROMPT, _STREAM_MASK, _STREAM_VAL_MASK, _STREAM_INIT = range(5)
# Settings a resumed run must share with the run it continues (the rest may change).
_RESUME_FIXED = (
    "arch", "width", "batch_size", "accum_steps", "lr", "max_lr", "momentum", "weight_decay",
    "schedule", "loss", "self_supervised", "temperature", "learnable_temperature",
    "label_positives", "prompt_variants", "template", "seed",
)  # fmt: skip


class TrainingError(RuntimeError):
    """A run that cannot start or continue; the message says why and what to do."""


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (defaults: the official training code)."""

    arch: str = "resnet18"  # "resnet18" (official release) or "resnet50" (the paper)
    width: int = STANDARD_WIDTH  # ResNet base channels; not 64 -> the service cannot load it
    steps: int | None = None  # optimiser steps in total; None: `epochs` worth
    epochs: float = OFFICIAL_EPOCHS  # used when `steps` is None
    batch_size: int = 320  # clips per optimiser step
    accum_steps: int = 1  # micro-batches per step (GPU memory); 1: none
    lr: float = 1e-3  # SGD learning rate (CyclicLR's lower bound)
    max_lr: float = 0.1  # CyclicLR's upper bound
    momentum: float = 0.9  # SGD momentum (CyclicLR cycles it between 0.8 and this)
    weight_decay: float = 5e-4
    schedule: str = "cyclic"  # "cyclic" (official) or "constant" (lr throughout)
    step_size_up: int | None = None  # steps from lr to max_lr; None: 5 epochs worth
    loss: LossKind = "infonce"  # "infonce" (official code) or "bce" (paper Eq. 1)
    self_supervised: bool = True  # add the audio <-> SpecAugment view terms
    temperature: float = 0.07  # similarity temperature (initial value if learned)
    learnable_temperature: bool = False
    label_positives: bool = False  # clips sharing a label are positives (default: diagonal)
    prompt_variants: int = 8  # prompts per label: plain + WordNet-augmented (1: no WordNet)
    template: str = "{}"  # prompt template around each label
    seed: int = 0  # seeds initialisation, clip order, prompt picks and masks
    amp: bool = True  # float16 autocast + gradient scaling on CUDA (ignored on the CPU)
    deterministic: bool = False  # cuDNN deterministic kernels on CUDA (slower)
    checkpoint_every: int = 1000  # steps between `last.pt` writes (also written at the end)
    val_every: int = 1000  # steps between validations (also one at the end)
    log_every: int = 10  # steps per metrics.jsonl line
    num_workers: int = 0  # data-loader processes decoding audio

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown arch {self.arch!r}; choose one of {sorted(ARCHITECTURES)}")
        if self.loss not in LOSS_KINDS:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {list(LOSS_KINDS)}")
        if self.schedule not in ("cyclic", "constant"):
            raise ValueError(f"unknown schedule {self.schedule!r}; choose cyclic or constant")
        positive = ("width", "batch_size", "accum_steps", "prompt_variants", "checkpoint_every",
                    "val_every", "log_every")  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < MIN_BATCH * self.accum_steps:
            raise ValueError(
                f"batch_size {self.batch_size} leaves micro-batches of fewer than {MIN_BATCH} "
                f"clips with accum_steps {self.accum_steps}"
            )
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.epochs <= 0 or self.lr <= 0 or self.max_lr < self.lr:
            raise ValueError("need epochs > 0 and 0 < lr <= max_lr")


@dataclass
class StepMetrics:
    """What one optimiser step reports (to ``on_step`` callbacks and the log)."""

    step: int  # steps done, 1-based
    total: int  # steps in the run
    loss: float  # nan when the step had too few readable clips
    terms: dict[str, float]
    lr: float
    clips: int  # clips in the step
    skipped: int  # distinct clips found unreadable so far


@dataclass
class TrainResult:
    out_dir: Path
    steps: int  # steps done
    encoder_path: Path  # plain state dict for the service
    best_step: int | None  # step of the best validation loss (None: no validation)
    best_val_loss: float | None
    skipped: list[str]  # files that could not be read


# --- Encoders ---------------------------------------------------------------------------------


def build_encoder(
    arch: str, embed_dim: int, *, width: int = STANDARD_WIDTH, seed: int = 0
) -> AudioEncoder:
    """A freshly initialised (seeded) encoder of the official layout.

    ``width`` other than 64 narrows every stage (64 -> width, 128 -> 2 width, ...) while keeping
    the architecture: fast enough for tests and smoke runs on a CPU, but such weights only load
    through ``load_trained_encoder``, not the service's ``load_audio_encoder``.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_mix(seed, _STREAM_INIT, 0))
        encoder = AudioEncoder(arch, embed_dim)
        if width != STANDARD_WIDTH:
            encoder.feature_extractor = timm.create_model(
                arch,
                pretrained=False,
                num_classes=embed_dim,
                stem_width=width,
                channels=tuple(width * 2**i for i in range(4)),
            )
    return encoder


def load_trained_encoder(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> AudioEncoder:
    """Any encoder file: the official layout through ``load_audio_encoder``, or a training
    checkpoint of a narrowed encoder (rebuilt from the width its config records)."""
    try:
        return load_audio_encoder(path, map_location)
    except AudioEncoderError as exc:
        refusal = exc
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError):
        raise refusal from None
    config = obj.get("config") if isinstance(obj, dict) else None
    if not isinstance(config, dict) or config.get("width", STANDARD_WIDTH) == STANDARD_WIDTH:
        raise refusal
    state = obj["state_dict"]
    embed_dim = int(state["feature_extractor.fc.weight"].shape[0])
    encoder = build_encoder(config["arch"], embed_dim, width=config["width"])
    encoder.load_state_dict(state)
    logger.info("loaded a width-%d %s encoder from %s", config["width"], config["arch"], path)
    return freeze(encoder.to(map_location))


# --- Deterministic per-step randomness ----------------------------------------------------------


def _mix(seed: int, stream: int, value: int) -> int:
    """A 63-bit seed from (seed, stream, value): independent streams without shared state."""
    digest = hashlib.sha256(f"{seed}:{stream}:{value}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _generator(seed: int, stream: int, value: int) -> torch.Generator:
    return torch.Generator().manual_seed(_mix(seed, stream, value))


@lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """(n,) the clip order of one epoch."""
    return torch.randperm(n, generator=_generator(seed, _STREAM_ORDER, epoch))


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Record indices of step ``step`` (0-based): the clips walk through a fresh permutation
    every epoch, a batch that crosses an epoch's end continues into the next one."""
    out = []
    for k in range(step * batch_size, (step + 1) * batch_size):
        epoch, position = divmod(k, n)
        out.append(int(_epoch_order(n, seed, epoch)[position]))
    return out


class StepBatches(Sampler[list[int]]):
    """The batches of steps ``start .. end - 1``, for a DataLoader's ``batch_sampler``."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, end: int) -> None:
        self.n, self.batch_size, self.seed, self.start, self.end = n, batch_size, seed, start, end

    def __len__(self) -> int:
        return max(self.end - self.start, 0)

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.end):
            yield batch_indices(self.n, self.batch_size, self.seed, step)


# --- RNG and checkpoint state -----------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    """Global RNG states in types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [
            str(kind),
            torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ],  # fmt: skip
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def _fingerprint(records: Sequence[ClipRecord]) -> str:
    """Identity of the training set (file names, labels, offsets, order), not its location."""
    h = hashlib.sha256()
    for r in records:
        h.update(f"{r.path.name}\t{r.label}\t{r.start}\t{r.fold}\n".encode())
    return h.hexdigest()


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_write_text(text: str, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# --- The trainer ------------------------------------------------------------------------------


class Trainer:
    """One run: models, optimiser and data, stepped by ``run``. Use ``train()``."""

    def __init__(
        self,
        config: TrainConfig,
        clip: FrozenClip,
        train_set: ClipDataset,
        out_dir: Path,
        *,
        val_set: ClipDataset | None,
        device: torch.device,
    ) -> None:
        if len(train_set) == 0:
            raise TrainingError("the training set is empty")
        self.config = config
        self.out_dir = out_dir
        self.device = device
        self.train_set = train_set
        self.val_set = val_set if val_set is not None and len(val_set) else None
        records = train_set.records + (self.val_set.records if self.val_set else [])
        self.labels = labels_of(records)
        index = {label: i for i, label in enumerate(self.labels)}
        self.train_labels = torch.tensor([index[r.label] for r in train_set.records])  # (N,)
        self.val_labels = (
            torch.tensor([index[r.label] for r in self.val_set.records]) if self.val_set else None
        )
        n = len(train_set)
        if config.batch_size > n:
            logger.warning(
                "batch_size %d exceeds the %d training clips: batches repeat clips, which then "
                "count as each other's negatives",
                config.batch_size,
                n,
            )
        self.total_steps = config.steps or max(1, math.ceil(config.epochs * n / config.batch_size))
        self.step_size_up = config.step_size_up or max(
            1, round(OFFICIAL_HALF_CYCLE_EPOCHS * n / config.batch_size)
        )
        self.use_amp = config.amp and device.type == "cuda"
        if config.amp and device.type != "cuda":
            logger.info("mixed precision is for CUDA; training in float32 on %s", device)
        if config.deterministic and device.type == "cuda":
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False

        self.bank: PromptBank = build_prompt_bank(
            self.labels, clip, variants=config.prompt_variants, seed=config.seed,
            template=config.template,
        )  # fmt: skip
        self.encoder = build_encoder(
            config.arch, int(self.bank.embeddings.shape[1]), width=config.width, seed=config.seed
        ).to(device)
        self.loss_fn = ContrastiveLoss(
            config.loss,
            temperature=config.temperature,
            learnable_temperature=config.learnable_temperature,
        ).to(device)
        groups: list[dict[str, Any]] = [{"params": list(self.encoder.parameters())}]
        if config.learnable_temperature:
            groups.append({"params": [self.loss_fn.log_scale], "weight_decay": 0.0})
        self.optimizer = torch.optim.SGD(
            groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
        self.scheduler: torch.optim.lr_scheduler.LRScheduler
        if config.schedule == "cyclic":
            self.scheduler = torch.optim.lr_scheduler.CyclicLR(
                self.optimizer,
                base_lr=config.lr,
                max_lr=config.max_lr,
                step_size_up=self.step_size_up,
                mode="triangular",
                base_momentum=min(CYCLIC_BASE_MOMENTUM, config.momentum),
                max_momentum=config.momentum,
            )
        else:
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda _: 1.0)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.use_amp)
        self.step = 0
        self.best_step: int | None = None
        self.best_val_loss: float | None = None
        self.bad: set[int] = set()  # training record indices found unreadable

    # -- state --

    def resolved_config(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self.config),
            "steps": self.total_steps,
            "step_size_up": self.step_size_up,
        }

    def state(self) -> dict[str, Any]:
        """The whole training state (no top-level tensors: the loader reads ``state_dict``)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "state_dict": {k: v.detach().cpu() for k, v in self.encoder.state_dict().items()},
            "loss_state": {k: v.detach().cpu() for k, v in self.loss_fn.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "config": self.resolved_config(),
            "data": {
                "train_clips": len(self.train_set),
                "fingerprint": _fingerprint(self.train_set.records),
                "labels": self.labels,
            },
            "best": {"step": self.best_step, "val_loss": self.best_val_loss},
            "bad_records": sorted(self.bad),
            "rng": _rng_state(),
        }

    def load_state(self, checkpoint: dict[str, Any]) -> None:
        """Continue from ``checkpoint``, refusing one from an incompatible run."""
        if checkpoint.get("format") != CHECKPOINT_FORMAT:
            raise TrainingError(f"not a training checkpoint of this format ({CHECKPOINT_FORMAT})")
        data = checkpoint["data"]
        if (
            data["fingerprint"] != _fingerprint(self.train_set.records)
            or data["labels"] != self.labels
        ):
            raise TrainingError(
                "cannot resume: the training clips or labels differ from the run's "
                f"({data['train_clips']} clips then, {len(self.train_set)} now)"
            )
        saved = checkpoint["config"]
        current = self.resolved_config()
        changed = [k for k in (*_RESUME_FIXED, "step_size_up") if saved.get(k) != current[k]]
        if changed:
            detail = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed)
            raise TrainingError(f"cannot resume with changed settings ({detail})")
        self.encoder.load_state_dict(checkpoint["state_dict"])
        self.loss_fn.load_state_dict(checkpoint["loss_state"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if checkpoint["scaler"]:
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.step = int(checkpoint["step"])
        self.best_step = checkpoint["best"]["step"]
        self.best_val_loss = checkpoint["best"]["val_loss"]
        self.bad = set(checkpoint["bad_records"])
        _set_rng_state(checkpoint["rng"])
        if self.step >= self.total_steps:
            logger.info("the run already has %d of %d steps", self.step, self.total_steps)

    def adopt_saved_best(self) -> None:
        """A ``best.pt`` written after the checkpoint (before a crash) stays the best if it is
        better: it holds validated weights the replayed steps may or may not reach again."""
        path = self.out_dir / BEST
        if not path.is_file():
            return
        saved = torch.load(path, map_location="cpu", weights_only=True)["best"]
        if saved["val_loss"] is not None and (
            self.best_val_loss is None or saved["val_loss"] < self.best_val_loss
        ):
            self.best_step, self.best_val_loss = saved["step"], saved["val_loss"]

    def save(self, name: str) -> Path:
        path = self.out_dir / name
        _atomic_save(self.state(), path)
        return path

    # -- steps --

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.use_amp:
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def train_step(self, batch: ClipBatch) -> tuple[float, dict[str, float]]:
        """One optimiser step on ``batch``; (loss, terms). Too few clips: no update, nan."""
        cfg = self.config
        n = batch.inputs.shape[0]
        if n < MIN_BATCH * cfg.accum_steps:
            logger.warning("step %d: only %d readable clips; no update", self.step + 1, n)
            return math.nan, {}
        labels = self.train_labels[batch.indices]  # (B,)
        text = self.bank.sample(labels, _generator(cfg.seed, _STREAM_PROMPT, self.step))  # (B, D)
        view = (
            spec_augment(batch.inputs, seed=_mix(cfg.seed, _STREAM_MASK, self.step))
            if cfg.self_supervised
            else None
        )  # (B, 1, 128, 512)
        targets = same_label_targets(labels) if cfg.label_positives else None  # (B, B)
        self.encoder.train()
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        terms: dict[str, float] = {}
        for part in torch.tensor_split(torch.arange(n), cfg.accum_steps):
            weight = part.numel() / n
            with self._autocast():
                audio = self.encoder(batch.inputs[part].to(self.device, non_blocking=True))
                seen = self.encoder(view[part].to(self.device)) if view is not None else None
            out = self.loss_fn(
                audio.float(),
                text[part].to(self.device),
                None if seen is None else seen.float(),
                None if targets is None else targets[part][:, part].to(self.device),
            )
            self.scaler.scale(out.total * weight).backward()
            total += float(out.total.detach()) * weight
            for key, value in out.terms.items():
                terms[key] = terms.get(key, 0.0) + float(value) * weight
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return total, terms

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Loss (plain prompts, seeded views) and zero-shot accuracy on the validation set."""
        assert self.val_set is not None and self.val_labels is not None
        cfg = self.config
        self.encoder.eval()
        loader = DataLoader(
            self.val_set, batch_size=cfg.batch_size, collate_fn=collate_clips,
            num_workers=cfg.num_workers,
        )  # fmt: skip
        loss_sum, clips, skipped = 0.0, 0, 0
        embeddings: list[Tensor] = []
        labels: list[Tensor] = []
        for i, batch in enumerate(loader):
            skipped += len(batch.skipped)
            if batch.inputs.shape[0] == 0:
                continue
            y = self.val_labels[batch.indices]  # (B,)
            with self._autocast():
                audio = self.encoder(batch.inputs.to(self.device)).float()  # (B, D)
                view = None
                if cfg.self_supervised:
                    masked = spec_augment(batch.inputs, seed=_mix(cfg.seed, _STREAM_VAL_MASK, i))
                    view = self.encoder(masked.to(self.device)).float()
            targets = same_label_targets(y).to(self.device) if cfg.label_positives else None
            text = self.bank.plain[y].to(self.device)
            out = self.loss_fn(audio, text, view, targets)
            loss_sum += float(out.total) * y.shape[0]
            clips += y.shape[0]
            embeddings.append(audio.cpu())
            labels.append(y)
        self.encoder.train()
        if clips == 0:
            logger.warning("no validation clip could be read")
            return {}
        accuracy = zero_shot(torch.cat(embeddings), torch.cat(labels), self.bank.plain, self.labels)
        return {
            "val_loss": loss_sum / clips,
            "val_zero_shot": accuracy.top1,
            "val_clips": clips,
            "val_skipped": skipped,
        }

    def _loader(self) -> DataLoader[Any]:
        cfg = self.config
        sampler = StepBatches(
            len(self.train_set), cfg.batch_size, cfg.seed, self.step, self.total_steps
        )
        return DataLoader(
            self.train_set,
            batch_sampler=sampler,
            collate_fn=collate_clips,
            num_workers=cfg.num_workers,
            pin_memory=self.device.type == "cuda",
        )

    def run(self, *, progress: bool, on_step: Callable[[StepMetrics], None] | None) -> None:
        cfg = self.config
        log = MetricsLog(self.out_dir / METRICS)
        log.truncate_after(self.step)
        window_loss: list[float] = []
        window_terms: dict[str, list[float]] = {}
        window_clips = 0
        window_start = time.perf_counter()
        bar = tqdm(
            total=self.total_steps, initial=self.step, unit="step", desc="training",
            disable=not progress, dynamic_ncols=True,
        )  # fmt: skip
        with bar:
            for batch in self._loader():
                lr = float(self.optimizer.param_groups[0]["lr"])
                self.bad.update(batch.skipped)
                loss, terms = self.train_step(batch)
                self.step += 1
                clips = int(batch.inputs.shape[0])
                window_clips += clips
                if math.isfinite(loss):
                    window_loss.append(loss)
                    for key, value in terms.items():
                        window_terms.setdefault(key, []).append(value)
                elapsed = time.perf_counter() - window_start
                rate = window_clips / elapsed if elapsed > 0 else 0.0
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", clips_s=f"{rate:.1f}", skipped=len(self.bad))
                last = self.step == self.total_steps
                if self.step % cfg.log_every == 0 or last:
                    entry: dict[str, Any] = {
                        "step": self.step,
                        "loss": _mean(window_loss),
                        **{k: _mean(v) for k, v in window_terms.items()},
                        "lr": lr,
                        "logit_scale": float(self.loss_fn.logit_scale.detach()),
                        "clips_per_s": rate,
                        "skipped": len(self.bad),
                    }
                    log.write(entry)
                    if not progress:
                        logger.info(
                            "step %d/%d loss %.4f lr %.4g %.1f clips/s",
                            self.step, self.total_steps, entry["loss"], lr, rate,
                        )  # fmt: skip
                    window_loss, window_terms, window_clips = [], {}, 0
                    window_start = time.perf_counter()
                if self.val_set is not None and (self.step % cfg.val_every == 0 or last):
                    self._validate_and_keep_best(log)
                if self.step % cfg.checkpoint_every == 0 or last:
                    self.save(LAST)
                if on_step is not None:
                    on_step(
                        StepMetrics(
                            self.step, self.total_steps, loss, terms, lr, clips, len(self.bad)
                        )
                    )

    def _validate_and_keep_best(self, log: MetricsLog) -> None:
        result = self.validate()
        if not result:
            return
        log.write({"step": self.step, **result})
        logger.info(
            "step %d validation: loss %.4f, zero-shot %.1f %%",
            self.step, result["val_loss"], result["val_zero_shot"] * 100,
        )  # fmt: skip
        if self.best_val_loss is None or result["val_loss"] < self.best_val_loss:
            self.best_step, self.best_val_loss = self.step, result["val_loss"]
            self.save(BEST)

    def export_encoder(self) -> Path:
        """``encoder.pt``: the best validated weights, else the current ones, as a plain state
        dict (float32) in the official key layout."""
        best = self.out_dir / BEST
        if self.best_step is not None and best.is_file():
            state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        else:
            state = {k: v.detach().cpu() for k, v in self.encoder.state_dict().items()}
        path = self.out_dir / ENCODER
        _atomic_save(state, path)
        return path


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


class MetricsLog:
    """Append-only JSONL of metrics; a resumed run drops the lines past its checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def truncate_after(self, step: int) -> None:
        if not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:  # a line cut short when the run stopped
                continue
            if isinstance(entry, dict) and entry.get("step", 0) <= step:
                kept.append(line)
        _atomic_write_text("".join(line + "\n" for line in kept), self.path)

    def write(self, entry: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({**entry, "time": time.time()}) + "\n")


def train(
    config: TrainConfig,
    clip: FrozenClip,
    train_set: ClipDataset,
    out_dir: str | Path,
    *,
    val_set: ClipDataset | None = None,
    resume: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = False,
    on_step: Callable[[StepMetrics], None] | None = None,
) -> TrainResult:
    """Train (or, with ``resume``, continue) a run in ``out_dir``; see the module docstring.

    A folder that already holds a run is only continued with ``resume``; a changed setting
    that shapes the run (batch, schedule, loss, seed...) or a changed training set is refused.
    ``steps`` may grow on resumption. ``on_step`` is called after every step.
    """
    out = Path(out_dir)
    last = out / LAST
    if resume and not last.is_file():
        raise TrainingError(f"nothing to resume: {last} does not exist")
    if not resume and last.exists():
        raise TrainingError(
            f"{out} already holds a run ({LAST}); continue it with resume or choose another folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(config, clip, train_set, out, val_set=val_set, device=torch.device(device))
    if resume:
        trainer.load_state(torch.load(last, map_location="cpu", weights_only=True))
        trainer.adopt_saved_best()
        logger.info("resuming %s at step %d of %d", out, trainer.step, trainer.total_steps)
    _atomic_write_text(json.dumps(trainer.resolved_config(), indent=2) + "\n", out / CONFIG)
    prompts = {
        label: trainer.bank.prompts[int(o) : int(o) + int(c)]
        for label, o, c in zip(
            trainer.labels, trainer.bank.offsets, trainer.bank.counts, strict=True
        )
    }
    _atomic_write_text(json.dumps(prompts, indent=2) + "\n", out / PROMPTS)
    if trainer.step < trainer.total_steps:
        trainer.run(progress=progress, on_step=on_step)
    encoder_path = trainer.export_encoder()
    bad = [str(train_set.records[i].path) for i in sorted(trainer.bad)]
    if bad:
        logger.warning("%d training clips could not be read, e.g. %s", len(bad), bad[:3])
    return TrainResult(
        out_dir=out,
        steps=trainer.step,
        encoder_path=encoder_path,
        best_step=trainer.best_step,
        best_val_loss=trainer.best_val_loss,
        skipped=bad,
    )
