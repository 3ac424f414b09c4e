"""``soundedit train``: train the audio encoder into CLIP's space (the paper's first stage)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from app.settings import get_settings

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130  # the shell's convention for SIGINT
PROFILE_CHOICES = ("auto", "smoke", "ffhq", "landscape")


def register(commands: Any) -> None:
    """Add ``train`` to the ``soundedit`` parser."""
    parser = commands.add_parser(
        "train",
        help="train the audio encoder on a clip manifest (paper stage 1)",
        description="Train an audio encoder so each clip's embedding lands next to the frozen "
        "CLIP text embedding of its label (contrastive, with WordNet prompt augmentation and "
        "SpecAugment views). Defaults follow the official training code: ResNet-18, batch 320, "
        "SGD + CyclicLR 1e-3..0.1, 50 epochs, mean of four InfoNCE terms. Writes last.pt "
        "(resumable), best.pt, encoder.pt (a state dict the service loads), metrics.jsonl, "
        "config.json and prompts.json to --out.",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--manifest", type=Path, required=True, metavar="CSV", action="append",
                      help="clip manifest: CSV with path,label[,fold][,start] (see `soundedit "
                      "manifest`); repeat to train on several, e.g. VGGSound and AudioSet")  # fmt: skip
    data.add_argument("--out", type=Path, required=True, metavar="DIR",
                      help="run folder for checkpoints and logs")  # fmt: skip
    split = data.add_mutually_exclusive_group()
    split.add_argument("--val-fold", metavar="FOLD",
                       help="validate on the rows of this fold, train on the others")  # fmt: skip
    split.add_argument("--val-fraction", type=float, default=0.0, metavar="X",
                       help="validate on this share of rows, picked by a hash of the path "
                       "(default 0: no validation, encoder.pt is the final weights)")  # fmt: skip
    data.add_argument("--cache-inputs", action="store_true",
                      help="keep decoded spectrograms in memory (small sets only: 256 KiB a clip)")  # fmt: skip
    data.add_argument("--workers", type=int, default=0, metavar="N",
                      help="data-loader processes decoding audio (default 0: in the main process)")  # fmt: skip

    model = parser.add_argument_group("model")
    model.add_argument("--profile", choices=PROFILE_CHOICES,
                       help="whose CLIP gives the text targets: smoke (tiny random CLIP, offline), "
                       "ffhq/landscape (ViT-B/32 from the weight cache), auto (default: "
                       "SOUNDEDIT_PROFILE)")  # fmt: skip
    model.add_argument("--arch", choices=("resnet18", "resnet50"), default="resnet18",
                       help="encoder backbone: resnet18 (official release, default) or resnet50 (paper)")  # fmt: skip

    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--steps", type=int, metavar="N",
                     help="optimiser steps in total (default: --epochs worth); may grow on --resume")  # fmt: skip
    opt.add_argument("--epochs", type=float, default=50.0, metavar="E",
                     help="epochs when --steps is not given (default 50)")  # fmt: skip
    opt.add_argument("--batch-size", type=int, default=320, metavar="B", help="clips per step (default 320)")  # fmt: skip
    opt.add_argument("--accum-steps", type=int, default=1, metavar="K",
                     help="split each batch into K micro-batches to save GPU memory; each micro-batch "
                     "is its own contrastive problem (default 1)")  # fmt: skip
    opt.add_argument("--lr", type=float, default=1e-3, help="SGD learning rate, CyclicLR's low end (default 1e-3)")  # fmt: skip
    opt.add_argument("--max-lr", type=float, default=0.1, help="CyclicLR's high end (default 0.1)")  # fmt: skip
    opt.add_argument("--momentum", type=float, default=0.9,
                     help="SGD momentum; CyclicLR cycles it from this down to 0.8 (default 0.9)")  # fmt: skip
    opt.add_argument("--weight-decay", type=float, default=5e-4, help="SGD weight decay (default 5e-4)")  # fmt: skip
    opt.add_argument("--schedule", choices=("cyclic", "constant"), default="cyclic",
                     help="cyclic: triangular CyclicLR (official, default); constant: --lr throughout")  # fmt: skip
    opt.add_argument("--step-size-up", type=int, metavar="N",
                     help="steps from --lr up to --max-lr (default: 5 epochs, as the official code)")  # fmt: skip
    opt.add_argument("--seed", type=int, default=0,
                     help="seeds initialisation, clip order, prompt picks and masks (default 0)")  # fmt: skip
    opt.add_argument("--no-amp", action="store_true", help="train in float32 on CUDA too (default: float16 autocast on CUDA)")  # fmt: skip
    opt.add_argument("--deterministic", action="store_true", help="deterministic cuDNN kernels (slower)")  # fmt: skip
    opt.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: SOUNDEDIT_DEVICE)")

    loss = parser.add_argument_group("loss and prompts")
    loss.add_argument("--loss", choices=("infonce", "bce"), default="infonce",
                      help="infonce: symmetric InfoNCE (official code, default); bce: pairwise "
                      "binary cross-entropy (paper Eq. 1)")  # fmt: skip
    loss.add_argument("--no-self-supervised", action="store_true",
                      help="drop the audio <-> SpecAugment view terms (the paper's ablation)")  # fmt: skip
    loss.add_argument("--temperature", type=float, default=0.07,
                      help="similarity temperature (default 0.07; the official code's exp(0.07) "
                      "scale equals 0.932)")  # fmt: skip
    loss.add_argument("--learnable-temperature", action="store_true", help="learn the temperature too")  # fmt: skip
    loss.add_argument("--label-positives", action="store_true",
                      help="clips sharing a label are positives of each other (default: only each "
                      "clip's own prompt)")  # fmt: skip
    loss.add_argument("--prompt-variants", type=int, default=8, metavar="N",
                      help="prompts per label: the plain one plus WordNet augmentations (synonym "
                      "replacement, permutation, synonym insertion); 1 needs no WordNet (default 8)")  # fmt: skip
    loss.add_argument("--template", default="{}",
                      help="prompt template around each label, e.g. 'the sound of {}' (default '{}')")  # fmt: skip

    run = parser.add_argument_group("run")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")  # fmt: skip
    run.add_argument("--checkpoint-every", type=int, default=1000, metavar="N",
                     help="steps between last.pt writes (default 1000; always at the end)")  # fmt: skip
    run.add_argument("--val-every", type=int, default=1000, metavar="N",
                     help="steps between validations (default 1000; always at the end)")  # fmt: skip
    run.add_argument("--log-every", type=int, default=10, metavar="N",
                     help="steps per metrics.jsonl line (default 10)")  # fmt: skip
    run.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")  # fmt: skip
    parser.set_defaults(func=run_train)


def resolve_device(name: str | None) -> str:
    """``auto`` (or nothing) takes the first GPU when there is one."""
    import torch

    name = name or get_settings().device
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def resolve_profile_name(name: str | None) -> str:
    from models.profiles import resolve_profile

    settings = get_settings()
    return resolve_profile(name or settings.profile, settings.model_cache).name


def run_train(args: argparse.Namespace) -> int:
    from models.datasets import ClipDataset, ManifestError, read_manifest, split_records
    from models.prompts import WordNetUnavailable
    from models.text_embeddings import profile_clip
    from models.training import TrainConfig, TrainingError, train

    try:
        config = TrainConfig(
            arch=args.arch, steps=args.steps, epochs=args.epochs, batch_size=args.batch_size,
            accum_steps=args.accum_steps, lr=args.lr, max_lr=args.max_lr, momentum=args.momentum,
            weight_decay=args.weight_decay, schedule=args.schedule, step_size_up=args.step_size_up,
            loss=args.loss, self_supervised=not args.no_self_supervised,
            temperature=args.temperature, learnable_temperature=args.learnable_temperature,
            label_positives=args.label_positives, prompt_variants=args.prompt_variants,
            template=args.template, seed=args.seed, amp=not args.no_amp,
            deterministic=args.deterministic, checkpoint_every=args.checkpoint_every,
            val_every=args.val_every, log_every=args.log_every, num_workers=args.workers,
        )  # fmt: skip
        records = [r for manifest in args.manifest for r in read_manifest(manifest)]
        train_records, val_records = split_records(
            records, val_fold=args.val_fold, val_fraction=args.val_fraction, seed=args.seed
        )
        device = resolve_device(args.device)
        profile = resolve_profile_name(args.profile)
        print(f"profile {profile}, device {device}: {len(train_records)} training clips, "
              f"{len(val_records)} validation clips")  # fmt: skip
        clip = profile_clip(profile, get_settings().model_cache, device)
        result = train(
            config,
            clip,
            ClipDataset(train_records, cache=args.cache_inputs),
            args.out,
            val_set=ClipDataset(val_records, cache=args.cache_inputs) if val_records else None,
            resume=args.resume,
            device=device,
            progress=not args.no_progress,
        )
    except (ManifestError, TrainingError, WordNetUnavailable, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"interrupted; continue with the same command and --resume (from {args.out}/last.pt)",
              file=sys.stderr)  # fmt: skip
        return EXIT_INTERRUPTED
    print(f"trained {result.steps} steps; encoder weights: {result.encoder_path}")
    if result.best_step is not None:
        print(f"best validation loss {result.best_val_loss:.4f} at step {result.best_step}")
    if result.skipped:
        print(
            f"{len(result.skipped)} clips could not be read and were skipped, e.g. {result.skipped[0]}"
        )
    return EXIT_OK
