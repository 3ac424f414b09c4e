"""``soundedit models``: fetch the official pretrained weights and show what the cache holds."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.settings import get_settings
from models import weights

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # the shell's convention for SIGINT
_KIB = 1024.0
_SIZE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")

_NON_COMMERCIAL_NOTICE = (
    "Note: the StyleGAN2 generators, the paper's audio encoder and the identity model are "
    "licensed for non-commercial use only; check each licence before deploying."
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``models pull`` and ``models list`` to the ``soundedit`` parser."""
    profiles = list(weights.PROFILES)
    parser = subparsers.add_parser(
        "models",
        help="download the pretrained weights and show the model cache",
        description=(
            "Manage the pretrained weights of each model profile. Files are verified by "
            "SHA-256 before use; files without a published checksum have the digest of their "
            "first download recorded beside them and verified from then on."
        ),
    )
    parser.set_defaults(func=lambda _args: _print_help(parser))
    actions = parser.add_subparsers(title="commands", metavar="COMMAND")

    pull = actions.add_parser(
        "pull",
        help="download every weight file of a profile",
        description=(
            "Download the weight files of PROFILE into the cache, resuming interrupted "
            "downloads. Prints each file's licence first: most of these weights are for "
            "non-commercial use only. Optional files that cannot be fetched are reported and "
            "skipped."
        ),
    )
    pull.add_argument("profile", metavar="PROFILE", choices=profiles, help=", ".join(profiles))
    _add_cache_option(pull)
    pull.add_argument(
        "--offline",
        action="store_true",
        help=f"never use the network; only verify the cache (also: {weights.OFFLINE_ENV}=1)",
    )
    pull.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    pull.set_defaults(func=run_pull)

    listing = actions.add_parser(
        "list",
        help="show each weight file, its state in the cache and its licence",
        description=(
            "Show every weight file of every profile (or of PROFILE) with its state: present "
            "(verified), missing, partial (an interrupted download that pull resumes) or "
            "corrupt (fails its checksum; pull replaces it)."
        ),
    )
    listing.add_argument(
        "profile", metavar="PROFILE", nargs="?", choices=profiles, help="only this profile"
    )
    _add_cache_option(listing)
    listing.set_defaults(func=run_list)


def _add_cache_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache",
        type=Path,
        metavar="DIR",
        help="model cache directory (default: SOUNDEDIT_MODEL_CACHE or ~/.cache/soundedit)",
    )


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def _cache_dir(args: argparse.Namespace) -> Path:
    """The --cache option, else the configured cache (settings read only when needed)."""
    if args.cache is not None:
        return Path(args.cache).expanduser()
    return get_settings().model_cache


def _human_size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in _SIZE_UNITS:
        if value < _KIB or unit == _SIZE_UNITS[-1]:
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= _KIB
    raise AssertionError("unreachable")


def _size_on_disk(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def run_pull(args: argparse.Namespace) -> int:
    """Download a profile's files; one-line error and a non-zero exit on failure."""
    offline = bool(args.offline) or get_settings().offline
    if any(wf.non_commercial for wf in weights.PROFILES[args.profile]):
        print(_NON_COMMERCIAL_NOTICE)
    try:
        cache = _cache_dir(args)
        print(f"cache: {cache}")
        weights.pull(
            args.profile,
            cache,
            progress=not args.no_progress,
            offline=offline,
            report=print,
        )
    except weights.WeightsError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as err:
        print(f"error: cannot use the model cache: {err}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"profile {args.profile!r} is ready")
    return EXIT_OK


def run_list(args: argparse.Namespace) -> int:
    """Print a table: profile, file, state, size, licence."""
    try:
        cache = _cache_dir(args)
        names = [args.profile] if args.profile else list(weights.PROFILES)
        rows: list[tuple[str, ...]] = []
        for name in names:
            if not weights.PROFILES[name]:
                rows.append((name, "(no files: random weights)", "present", "-", "-"))
                continue
            for wf, state in weights.status(name, cache):
                path = weights.cached_path(wf, cache)
                on_disk = _size_on_disk(path if state != "partial" else _partial(path))
                if state == "partial" and on_disk is not None:
                    size = f"{_human_size(on_disk)} so far"
                else:
                    size = _human_size(on_disk if on_disk is not None else wf.size)
                label = wf.filename if wf.required else f"{wf.filename} (optional)"
                licence = f"{wf.licence} (non-commercial)" if wf.non_commercial else wf.licence
                rows.append((name, label, state, size, licence))
    except weights.WeightsError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as err:
        print(f"error: cannot read the model cache: {err}", file=sys.stderr)
        return EXIT_FAILED
    print(f"cache: {cache}")
    _print_table(("PROFILE", "FILE", "STATE", "SIZE", "LICENCE"), rows)
    return EXIT_OK


def _partial(path: Path) -> Path:
    return path.with_name(path.name + weights.INCOMPLETE_SUFFIX)


def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        # The last column is left unpadded so long licence names do not add trailing blanks.
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        print("  ".join([*cells, row[-1]]))
