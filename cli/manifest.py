"""``soundedit manifest``: clip manifests for ``train`` and ``eval`` from public dataset metadata."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1
# models.datasets.DEFAULT_CLIP_PATTERN, repeated so that building the parser imports no torch.
CLIP_PATTERN = "{ytid}_{start:06d}.wav"


def register(commands: Any) -> None:
    """Add ``manifest esc50|urbansound8k|vggsound|audioset|folder`` to the ``soundedit`` parser."""
    parser = commands.add_parser(
        "manifest",
        help="write a clip manifest (CSV: path,label[,fold][,start]) from dataset metadata",
        description="Convert a public dataset's metadata into the manifest `soundedit train` and "
        "`soundedit eval` read. Paths in the manifest are relative to its folder.",
    )
    parser.set_defaults(func=lambda _args: _usage(parser))
    kinds = parser.add_subparsers(title="datasets", metavar="DATASET")
    pattern_help = (
        f"file name of each downloaded clip inside --audio-dir (default {CLIP_PATTERN!r}: the "
        "clip cut to its segment); placeholders {ytid}, {start}, {end} (whole seconds), "
        "{start_ms}, {end_ms}"
    )

    esc = kinds.add_parser("esc50", help="ESC-50 (meta/esc50.csv, audio/): 5 folds, 50 classes")
    esc.add_argument("root", type=Path, help="the ESC-50 release folder (ESC-50-master)")
    esc.set_defaults(func=run_manifest, kind="esc50")

    us8k = kinds.add_parser(
        "urbansound8k", help="UrbanSound8K (metadata/UrbanSound8K.csv, audio/foldN/): 10 folds"
    )
    us8k.add_argument("root", type=Path, help="the UrbanSound8K release folder")
    us8k.set_defaults(func=run_manifest, kind="urbansound8k")

    vgg = kinds.add_parser("vggsound", help="VGGSound (vggsound.csv) with clips you downloaded")
    vgg.add_argument("csv", type=Path, help="vggsound.csv (YouTube id, start, label, split)")
    vgg.add_argument("--audio-dir", type=Path, required=True, help="folder of the downloaded clips")
    vgg.add_argument("--clip-pattern", default=CLIP_PATTERN, help=pattern_help)
    vgg.add_argument("--split", choices=("train", "test"), help="keep only this split (default both; the split is the fold)")  # fmt: skip
    vgg.set_defaults(func=run_manifest, kind="vggsound")

    audioset = kinds.add_parser(
        "audioset", help="an AudioSet segment list with clips you downloaded"
    )
    audioset.add_argument("segments", type=Path, help="e.g. balanced_train_segments.csv")
    audioset.add_argument("--labels", type=Path, required=True,
                          help="ontology.json or class_labels_indices.csv (label id -> name)")  # fmt: skip
    audioset.add_argument("--audio-dir", type=Path, required=True, help="folder of the downloaded clips")  # fmt: skip
    audioset.add_argument("--clip-pattern", default=CLIP_PATTERN, help=pattern_help)
    audioset.add_argument("--fold", help="a fold name for every row, e.g. balanced_train")
    audioset.set_defaults(func=run_manifest, kind="audioset")

    folder = kinds.add_parser("folder", help="every audio file under a folder, labelled by name")
    folder.add_argument("root", type=Path, help="folder searched recursively (wav, flac, ogg, mp3)")
    folder.add_argument("--label-from", choices=("stem", "parent"), default="stem",
                        help="stem: drill.wav -> drill (default); parent: dog/001.wav -> dog")  # fmt: skip
    folder.set_defaults(func=run_manifest, kind="folder")

    for sub in (esc, us8k, vgg, audioset, folder):
        sub.add_argument("--out", type=Path, required=True, help="the manifest CSV to write")
        sub.add_argument("--only-existing", action="store_true",
                         help="leave out rows whose audio file is missing (reports how many)")  # fmt: skip


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_FAILED


def run_manifest(args: argparse.Namespace) -> int:
    from models import datasets

    try:
        if args.kind == "esc50":
            records = datasets.esc50_records(args.root)
        elif args.kind == "urbansound8k":
            records = datasets.urbansound8k_records(args.root)
        elif args.kind == "vggsound":
            records = datasets.vggsound_records(
                args.csv, args.audio_dir, clip_pattern=args.clip_pattern, split=args.split
            )
        elif args.kind == "audioset":
            records = datasets.audioset_records(
                args.segments,
                datasets.audioset_label_names(args.labels),
                args.audio_dir,
                clip_pattern=args.clip_pattern,
                fold=args.fold,
            )
        else:
            records = datasets.folder_records(args.root, label_from=args.label_from)
    except datasets.ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.only_existing:
        records, dropped = datasets.existing(records)
        print(f"left out {dropped} rows whose audio file is missing")
    if not records:
        print("error: no clips to write", file=sys.stderr)
        return EXIT_FAILED
    datasets.write_manifest(records, args.out)
    labels = datasets.labels_of(records)
    folds = datasets.folds_of(records)
    print(f"wrote {args.out}: {len(records)} clips, {len(labels)} labels, "
          f"folds: {', '.join(folds) if folds else 'none'}")  # fmt: skip
    return EXIT_OK
