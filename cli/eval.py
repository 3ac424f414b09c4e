"""``soundedit eval``: zero-shot and linear-probe accuracy of an audio encoder on a manifest."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from app.settings import get_settings
from cli.train import PROFILE_CHOICES, resolve_device, resolve_profile_name

EXIT_OK = 0
EXIT_FAILED = 1


def register(commands: Any) -> None:
    """Add ``eval`` to the ``soundedit`` parser."""
    parser = commands.add_parser(
        "eval",
        help="measure an audio encoder: zero-shot and linear-probe accuracy on a manifest",
        description="Embed every clip of MANIFEST with the audio encoder in --checkpoint and report "
        "the paper's measures: zero-shot accuracy (nearest CLIP text embedding of each class "
        "prompt), linear-probe accuracy (logistic regression on the frozen embeddings; "
        "leave-one-fold-out when the manifest has folds, as ESC-50 and UrbanSound8K prescribe, "
        "else a seeded 80/20 split of each class) and each class's audio-text cosine similarity. "
        "Prints a table shaped like the paper's.",
    )
    parser.add_argument("--manifest", type=Path, required=True, metavar="CSV",
                        help="clip manifest: CSV with path,label[,fold][,start]")  # fmt: skip
    parser.add_argument("--checkpoint", type=Path, required=True, metavar="FILE",
                        help="encoder weights: the official resnet18_57.pth, an encoder.pt, or a "
                        "training checkpoint (last.pt / best.pt)")  # fmt: skip
    parser.add_argument("--profile", choices=PROFILE_CHOICES,
                        help="whose CLIP embeds the class prompts: smoke (tiny random CLIP, offline), "
                        "ffhq/landscape (ViT-B/32 from the weight cache), auto (default: "
                        "SOUNDEDIT_PROFILE); use the one the encoder was trained with")  # fmt: skip
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the full report as JSON here")  # fmt: skip
    parser.add_argument("--template", default="{}",
                        help="class prompt template, e.g. 'the sound of {}' (default '{}': the label)")  # fmt: skip
    parser.add_argument("--probe-test-fold", metavar="FOLD",
                        help="hold out only this fold in the linear probe (e.g. test), instead of each fold in turn")  # fmt: skip
    parser.add_argument("--probe-l2", type=float, default=1e-3, metavar="L2",
                        help="L2 penalty of the linear probe on standardised embeddings (default 1e-3)")  # fmt: skip
    parser.add_argument("--name", help="the model's name in the table (default: the checkpoint's file name)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=32, metavar="B", help="clips per forward (default 32)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=0, metavar="N",
                        help="data-loader processes decoding audio (default 0)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the probe's split without folds (default 0)")  # fmt: skip
    parser.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: SOUNDEDIT_DEVICE)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from models.audio_encoder import AudioEncoderError
    from models.datasets import ClipDataset, ManifestError, labels_of, read_manifest
    from models.evaluation import embed_clips, evaluate
    from models.prompts import label_prompt
    from models.text_embeddings import encode_prompts, profile_clip
    from models.training import load_trained_encoder

    try:
        records = read_manifest(args.manifest)
        classes = labels_of(records)
        device = resolve_device(args.device)
        profile = resolve_profile_name(args.profile)
        encoder = load_trained_encoder(args.checkpoint, device)
        clip = profile_clip(profile, get_settings().model_cache, device)
        class_text = encode_prompts(clip, [label_prompt(c, args.template) for c in classes])
        embedded = embed_clips(
            encoder, ClipDataset(records), classes, device=device, batch_size=args.batch_size,
            num_workers=args.workers, progress=not args.no_progress,
        )  # fmt: skip
        report = evaluate(
            embedded,
            class_text,
            classes,
            model=args.name or args.checkpoint.name,
            dataset=args.manifest.stem,
            test_fold=args.probe_test_fold,
            l2=args.probe_l2,
            seed=args.seed,
            settings={
                "checkpoint": str(args.checkpoint),
                "manifest": str(args.manifest),
                "profile": profile,
                "template": args.template,
                "probe_l2": args.probe_l2,
            },
        )
    except (ManifestError, AudioEncoderError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(report.summary())
    print()
    print(report.table())
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json}")
    return EXIT_OK
