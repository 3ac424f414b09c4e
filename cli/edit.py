"""``soundedit edit``: one sound-guided edit on this machine, without the service."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from app.jobs import MAX_TEXT_CHARS
from app.settings import get_settings


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "edit",
        help="edit one image by sound, locally (the worker runs the same code)",
        description="Optimise a StyleGAN2 latent so the image matches AUDIO (paper Eq. 2) and "
        "write result.png, source.png, latent.npy and report.json to --out (with --image, also "
        "aligned.png and reconstruction.png). Defaults for the optimiser come from the model "
        "profile.",
    )
    parser.add_argument("audio", type=Path, help="the guiding sound (WAV, FLAC, OGG or MP3)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--seed", type=int, help="start from the image the generator makes from this seed"
    )
    source.add_argument(
        "--latent", type=Path, help="start from this W+ latent (.npy, [n_latent, 512])"
    )
    source.add_argument(
        "--image", type=Path,
        help="start from a photo: faces are aligned (other scenes centre-cropped) and inverted",
    )  # fmt: skip
    parser.add_argument(
        "--face-index",
        type=int,
        default=0,
        help="with --image: which face, 0 = largest (default 0)",
    )
    parser.add_argument(
        "--inversion-steps", type=int, help="with --image: inversion steps (profile default)"
    )
    parser.add_argument("--text", help=f"optional text guidance (≤ {MAX_TEXT_CHARS} characters)")
    parser.add_argument(
        "--text-mode", choices=("mix", "sum"), default="mix",
        help="mix: W+ layers from sound (coarse) and text (fine); sum: one summed loss (default mix)",
    )  # fmt: skip
    parser.add_argument(
        "--clip-mode", choices=("paper", "upstream"), default="paper",
        help="paper: antialiased resize + CLIP normalisation, 1 - cos (default); upstream: the "
        "official code's exact loss (x7 upsample + average pool, no normalisation, 1 - cos·e^0.07)",
    )  # fmt: skip
    parser.add_argument("--steps", type=int, help="optimisation steps (profile default)")
    parser.add_argument("--lr", type=float, help="Adam learning rate (profile default)")
    parser.add_argument("--lambda-l2", type=float, help="weight of the latent distance (λ_L2)")
    parser.add_argument("--lambda-id", type=float, help="weight of the identity loss (λ_ID)")
    parser.add_argument(
        "--truncation", type=float, help="truncation ψ for --seed (profile default)"
    )
    parser.add_argument(
        "--random-seed", type=int, default=0, help="seed for any randomness (default 0)"
    )
    parser.add_argument(
        "--profile", help="model profile: auto, smoke, ffhq, landscape (default: SOUNDEDIT_PROFILE)"
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: SOUNDEDIT_DEVICE)")
    parser.add_argument(
        "--precision", choices=("fp32", "bf16", "fp16"),
        help="autocast of the optimiser's forward passes, for GPUs (default: SOUNDEDIT_PRECISION)",
    )  # fmt: skip
    parser.add_argument(
        "--compile-mode", choices=("none", "default", "reduce-overhead", "max-autotune"),
        help="torch.compile the generator (default: SOUNDEDIT_COMPILE_MODE)",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=Path("edit-out"), help="output folder (default edit-out)"
    )
    parser.set_defaults(func=run_edit)


def run_edit(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from app.storage import npy_bytes
    from models.engine import EditEngine
    from models.images import load_image
    from models.profiles import resolve_profile
    from worker.jobs import png_bytes

    settings = get_settings()
    profile = resolve_profile(args.profile or settings.profile, settings.model_cache)
    compile_mode = args.compile_mode or settings.compile_mode
    engine = EditEngine.load(
        profile,
        cache_dir=settings.model_cache,
        device=args.device or settings.device,
        audio_encoder=settings.audio_encoder,
        precision=args.precision or settings.precision,
        compile_mode=None if compile_mode == "none" else compile_mode,
    )
    print(f"profile {profile.name}: {engine.describe()}")
    defaults = profile.defaults

    def pick(value: Any, default: Any) -> Any:
        return default if value is None else value

    latent = np.load(args.latent, allow_pickle=False) if args.latent else None
    image = load_image(args.image.read_bytes(), settings.max_image_pixels) if args.image else None
    bars: dict[str, tqdm] = {}

    def on_step(phase: str, step: int, total: int, _preview: np.ndarray | None) -> None:
        bar = bars.get(phase)
        if bar is None:
            for earlier in bars.values():
                earlier.close()
            bar = bars[phase] = tqdm(total=total, unit="step", desc=phase)
        bar.total = total
        bar.update(step - bar.n)

    try:
        output = engine.edit(
            args.audio.read_bytes(),
            seed=args.seed,
            latent=latent,
            image=image,
            face_index=args.face_index,
            inversion_steps=pick(args.inversion_steps, defaults.inversion_steps),
            text=args.text,
            steps=pick(args.steps, defaults.steps),
            lr=pick(args.lr, defaults.lr),
            lambda_l2=pick(args.lambda_l2, defaults.lambda_l2),
            lambda_id=pick(args.lambda_id, defaults.lambda_id),
            truncation=pick(args.truncation, defaults.truncation),
            random_seed=args.random_seed,
            text_mode=args.text_mode,
            clip_mode=args.clip_mode,
            on_step=on_step,
        )
    except ValueError as exc:  # a bad clip or photo, no face found, a wrong latent shape
        print(f"error: {exc}")
        return 2
    finally:
        for bar in bars.values():
            bar.close()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "result.png").write_bytes(png_bytes(output.result))
    (args.out / "source.png").write_bytes(png_bytes(output.source))
    (args.out / "latent.npy").write_bytes(npy_bytes(output.latent))
    (args.out / "report.json").write_text(json.dumps(output.report, indent=2))
    written = ["result.png", "source.png", "latent.npy", "report.json"]
    if output.photo is not None:
        (args.out / "aligned.png").write_bytes(png_bytes(output.photo.aligned))
        (args.out / "reconstruction.png").write_bytes(png_bytes(output.photo.reconstruction))
        written += ["aligned.png", "reconstruction.png"]
    print(json.dumps(output.report, indent=2))
    print(f"wrote {', '.join(written)} to {args.out}")
    return 0
