"""``soundedit``: the service's command line (serve, api, worker, edit, models)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from cli import edit, manifest, models, serve, train
from cli import eval as evaluate

PACKAGES = ("app", "worker", "models", "cli", "rq.worker", "uvicorn")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="soundedit",
        description="Edit images by sound (Sound-Guided Semantic Image Manipulation, CVPR 2022). "
        "Settings come from SOUNDEDIT_* environment variables (see the README).",
    )
    parser.add_argument(
        "--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING; default INFO)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve.register(commands)
    edit.register(commands)
    models.register(commands)
    manifest.register(commands)
    train.register(commands)
    evaluate.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Libraries that log chatter on the root logger (open_clip) stay at WARNING.
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for package in PACKAGES:
        logging.getLogger(package).setLevel(args.log_level.upper())
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
