"""Audio clip manifests, the dataset that reads them, and converters from public metadata.

One manifest format serves training and evaluation: a CSV file with the header ``path,label``
and the optional columns ``fold`` (any token: ``1``..``10``, ``train``, ``test``) and
``start`` (seconds into the file where the ~10 s model window begins; 0 when absent). Paths
are relative to the manifest's folder (absolute paths are kept as they are). Other columns are
ignored.

Converters read the metadata the public datasets publish:

- ESC-50 (``meta/esc50.csv``, audio under ``audio/``), 5 folds;
- UrbanSound8K (``metadata/UrbanSound8K.csv``, audio under ``audio/fold{N}/``), 10 folds.
  Its ``start``/``end`` columns locate the slice inside the original Freesound recording,
  not inside the slice file, so they are not copied into the manifest;
- VGGSound (``vggsound.csv``: no header; YouTube id, start second, label, train/test split);
- AudioSet segment lists (``# YTID, start_seconds, end_seconds, positive_labels`` after
  ``#`` comment lines) with the ontology JSON (or ``class_labels_indices.csv``) naming the
  label ids; a segment's label is its class names joined by ", ".

The two YouTube-based sets are downloaded by users with their own tools; the converters find
each clip by a file-name pattern, by default ``{ytid}_{start:06d}.wav`` (the clip already cut
to its 10 s segment), with the placeholders ``{ytid}``, ``{start}``/``{end}`` (whole seconds)
and ``{start_ms}``/``{end_ms}``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from models.audio import INPUT_HEIGHT, INPUT_WIDTH, AudioError, audio_input, decode_audio

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("path", "label")
OPTIONAL_COLUMNS = ("fold", "start")
DEFAULT_CLIP_PATTERN = "{ytid}_{start:06d}.wav"  # downloaded YouTube clips, cut to the segment
VGGSOUND_CLIP_SECONDS = 10  # every VGGSound clip is the 10 s after its start second
AUDIOSET_LABEL_SEPARATOR = ", "  # joins the class names of a multi-label AudioSet segment
ESC50_META = Path("meta") / "esc50.csv"
ESC50_AUDIO = Path("audio")
US8K_META = Path("metadata") / "UrbanSound8K.csv"
US8K_AUDIO = Path("audio")
_HASH_SCALE = float(1 << 64)  # sha256 prefix (8 bytes) -> [0, 1)
_READ_ERRORS = (AudioError, OSError, RuntimeError, ValueError)  # a clip that cannot be used


class ManifestError(ValueError):
    """A manifest or a metadata file that cannot be read; the message names file and line."""


@dataclass(frozen=True)
class ClipRecord:
    """One row of a manifest, with its path made absolute."""

    path: Path  # the audio file
    label: str  # class label as the dataset writes it, e.g. "crackling_fire"
    fold: str | None = None  # cross-validation fold or split name; None: no fold
    start: float = 0.0  # seconds into the file where the model window begins


# --- Manifests --------------------------------------------------------------------------------


def read_manifest(manifest: str | Path) -> list[ClipRecord]:
    """The records of a manifest CSV; ``ManifestError`` names the line of a bad row."""
    manifest = Path(manifest)
    base = manifest.resolve().parent
    try:
        handle = manifest.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {manifest}: {exc}") from exc
    records: list[ClipRecord] = []
    with handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise ManifestError(
                f"{manifest}: the header must name the columns {list(REQUIRED_COLUMNS)} "
                f"(optional {list(OPTIONAL_COLUMNS)}); got {columns}"
            )
        reader.fieldnames = columns
        for row in reader:
            where = f"{manifest}:{reader.line_num}"
            path = (row.get("path") or "").strip()
            label = (row.get("label") or "").strip()
            if not path or not label:
                raise ManifestError(f"{where}: every row needs a path and a label")
            fold = (row.get("fold") or "").strip() or None
            records.append(
                ClipRecord(base / path, label, fold, _parse_start(row.get("start"), where))
            )
    if not records:
        raise ManifestError(f"{manifest} lists no clips")
    return records


def _parse_start(text: str | None, where: str) -> float:
    if text is None or not text.strip():
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise ManifestError(f"{where}: start must be a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ManifestError(f"{where}: start must be a finite number >= 0, got {text!r}")
    return value


def write_manifest(records: Sequence[ClipRecord], manifest: str | Path) -> Path:
    """Write ``records`` as a manifest CSV, paths relative to its folder where possible."""
    manifest = Path(manifest)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    base = manifest.resolve().parent
    columns = list(REQUIRED_COLUMNS)
    if any(r.fold is not None for r in records):
        columns.append("fold")
    if any(r.start for r in records):
        columns.append("start")
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns)
        for r in records:
            row = [_relative(r.path, base), r.label]
            if "fold" in columns:
                row.append(r.fold or "")
            if "start" in columns:
                row.append(f"{r.start:g}")
            writer.writerow(row)
    return manifest


def _relative(path: Path, base: Path) -> str:
    """POSIX path relative to ``base`` when both share a root, else absolute."""
    try:
        return Path(os.path.relpath(path.resolve(), base)).as_posix()
    except ValueError:  # another drive (Windows)
        return path.resolve().as_posix()


def existing(records: Sequence[ClipRecord]) -> tuple[list[ClipRecord], int]:
    """The records whose file exists, and how many were dropped."""
    kept = [r for r in records if r.path.is_file()]
    return kept, len(records) - len(kept)


def labels_of(records: Iterable[ClipRecord]) -> list[str]:
    """The distinct labels, sorted: the class order every model and report uses."""
    return sorted({r.label for r in records})


def folds_of(records: Iterable[ClipRecord]) -> list[str]:
    """The distinct folds, in natural order (numbers numerically)."""
    folds = {r.fold for r in records if r.fold is not None}
    return sorted(folds, key=lambda f: (0, int(f), "") if f.isdigit() else (1, 0, f))


def split_records(
    records: Sequence[ClipRecord],
    *,
    val_fold: str | None = None,  # rows of this fold validate; the rest train
    val_fraction: float = 0.0,  # else this share of rows, picked by a hash of path and seed
    seed: int = 0,
) -> tuple[list[ClipRecord], list[ClipRecord]]:
    """(train, validation). The hash split keeps each clip on its side when rows are reordered
    or appended, so a grown manifest does not leak old validation clips into training."""
    if val_fold is not None:
        if val_fold not in folds_of(records):
            raise ManifestError(
                f"no rows have fold {val_fold!r}; folds present: {folds_of(records) or 'none'}"
            )
        return [r for r in records if r.fold != val_fold], [
            r for r in records if r.fold == val_fold
        ]
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    train: list[ClipRecord] = []
    val: list[ClipRecord] = []
    for r in records:
        (val if _unit_hash(f"{seed}:{r.path}:{r.start}") < val_fraction else train).append(r)
    return train, val


def _unit_hash(text: str) -> float:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / _HASH_SCALE


# --- The dataset ------------------------------------------------------------------------------


@dataclass
class ClipBatch:
    """What the loader hands the training and evaluation loops."""

    inputs: torch.Tensor  # (B, 1, 128, 512) float32 log-mel inputs, B may be 0
    indices: torch.Tensor  # (B,) int64 record indices of the rows in ``inputs``
    skipped: list[int] = field(default_factory=list)  # record indices that could not be read

    def pin_memory(self) -> ClipBatch:
        """Called by a DataLoader with ``pin_memory=True`` (faster copies to the GPU)."""
        return ClipBatch(self.inputs.pin_memory(), self.indices, self.skipped)


class ClipDataset(Dataset[tuple[int, torch.Tensor | None]]):
    """Model inputs of manifest records: item ``i`` is ``(i, (1, 128, 512) tensor or None)``.

    A missing or unreadable file gives ``None`` (logged once per file) instead of an
    exception, so one bad download cannot stop a long run; ``collate_clips`` drops it and
    reports its index. ``cache`` keeps computed inputs in memory (256 KiB each): worth it for
    small sets read many times, wasteful for VGGSound-sized ones.
    """

    def __init__(self, records: Sequence[ClipRecord], *, cache: bool = False) -> None:
        self.records = list(records)
        self.cache = cache
        self._inputs: dict[int, torch.Tensor] = {}
        self._failed: set[int] = set()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None]:
        cached = self._inputs.get(index)
        if cached is not None:
            return index, cached
        record = self.records[index]
        try:
            waveform, rate = decode_audio(record.path)
            x = audio_input(waveform, rate, record.start)[0]  # (1, 128, 512)
        except FileNotFoundError:
            self._report(index, "missing")
            return index, None
        except _READ_ERRORS as exc:
            self._report(index, f"unreadable ({exc})")
            return index, None
        if self.cache:
            self._inputs[index] = x
        return index, x

    def _report(self, index: int, why: str) -> None:
        if index not in self._failed:
            self._failed.add(index)
            logger.warning("skipping clip %s: %s", self.records[index].path, why)


def collate_clips(items: Sequence[tuple[int, torch.Tensor | None]]) -> ClipBatch:
    """Stack the readable items; the others are listed in ``skipped``."""
    kept = [(i, x) for i, x in items if x is not None]
    skipped = [i for i, x in items if x is None]
    if not kept:
        empty = torch.zeros((0, 1, INPUT_HEIGHT, INPUT_WIDTH), dtype=torch.float32)
        return ClipBatch(empty, torch.zeros(0, dtype=torch.int64), skipped)
    inputs = torch.stack([x for _, x in kept])  # (B, 1, 128, 512)
    return ClipBatch(inputs, torch.tensor([i for i, _ in kept], dtype=torch.int64), skipped)


# --- Converters from public metadata ---------------------------------------------------------


def _read_csv(path: Path, what: str) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle, skipinitialspace=True))
    except OSError as exc:
        raise ManifestError(f"cannot read the {what} metadata {path}: {exc}") from exc


def _need(row: dict[str, str], columns: Sequence[str], where: str) -> list[str]:
    values = [(row.get(c) or "").strip() for c in columns]
    absent = [c for c, v in zip(columns, values, strict=True) if not v]
    if absent:
        raise ManifestError(f"{where}: missing {absent}")
    return values


def esc50_records(root: str | Path) -> list[ClipRecord]:
    """ESC-50 from its release folder (``meta/esc50.csv`` + ``audio/``): label = category."""
    root = Path(root)
    meta = root / ESC50_META
    records = []
    for n, row in enumerate(_read_csv(meta, "ESC-50"), start=2):
        filename, fold, category = _need(row, ("filename", "fold", "category"), f"{meta}:{n}")
        records.append(ClipRecord(root / ESC50_AUDIO / filename, category, fold))
    return records


def urbansound8k_records(root: str | Path) -> list[ClipRecord]:
    """UrbanSound8K from its release folder: label = class, audio in ``audio/fold{N}/``."""
    root = Path(root)
    meta = root / US8K_META
    records = []
    for n, row in enumerate(_read_csv(meta, "UrbanSound8K"), start=2):
        name, fold, label = _need(row, ("slice_file_name", "fold", "class"), f"{meta}:{n}")
        records.append(ClipRecord(root / US8K_AUDIO / f"fold{fold}" / name, label, fold))
    return records


def clip_name(pattern: str, ytid: str, start: float, end: float) -> str:
    """The file name of one downloaded YouTube clip under ``pattern`` (see module docstring)."""
    try:
        return pattern.format(
            ytid=ytid,
            start=int(round(start)),
            end=int(round(end)),
            start_ms=int(round(start * 1000)),
            end_ms=int(round(end * 1000)),
        )
    except (KeyError, IndexError, ValueError) as exc:
        raise ManifestError(
            f"bad clip pattern {pattern!r} ({exc}); use the placeholders {{ytid}}, {{start}}, "
            "{end}, {start_ms}, {end_ms}"
        ) from exc


def vggsound_records(
    csv_path: str | Path,
    audio_dir: str | Path,
    *,
    clip_pattern: str = DEFAULT_CLIP_PATTERN,
    split: str | None = None,  # keep only "train" or "test" rows; None keeps both
) -> list[ClipRecord]:
    """VGGSound's ``vggsound.csv``; the train/test split goes into ``fold``."""
    csv_path, audio_dir = Path(csv_path), Path(audio_dir)
    records = []
    try:
        with csv_path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle, skipinitialspace=True))
    except OSError as exc:
        raise ManifestError(f"cannot read the VGGSound metadata {csv_path}: {exc}") from exc
    for n, row in enumerate(rows, start=1):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 4:
            raise ManifestError(
                f"{csv_path}:{n}: expected 4 fields (YouTube id, start seconds, label, split), "
                f"got {len(row)}"
            )
        ytid, start_text, label, row_split = (v.strip() for v in row)
        start = _parse_start(start_text, f"{csv_path}:{n}")
        if split is not None and row_split != split:
            continue
        name = clip_name(clip_pattern, ytid, start, start + VGGSOUND_CLIP_SECONDS)
        records.append(ClipRecord(audio_dir / name, label, row_split or None))
    return records


def audioset_label_names(path: str | Path) -> dict[str, str]:
    """Label id -> display name from the ontology JSON or ``class_labels_indices.csv``."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        rows = _read_csv(path, "AudioSet label index")
        return {
            mid: name
            for n, row in enumerate(rows, start=2)
            for mid, name in [_need(row, ("mid", "display_name"), f"{path}:{n}")]
        }
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ManifestError(f"cannot read the AudioSet ontology {path}: {exc}") from exc
    if not isinstance(entries, list):
        raise ManifestError(f"{path}: the ontology must be a JSON list of classes")
    names = {}
    for entry in entries:
        if not isinstance(entry, dict) or "id" not in entry or "name" not in entry:
            raise ManifestError(f"{path}: every ontology entry needs an 'id' and a 'name'")
        names[str(entry["id"])] = str(entry["name"])
    return names


def audioset_records(
    segments_csv: str | Path,
    label_names: dict[str, str],
    audio_dir: str | Path,
    *,
    clip_pattern: str = DEFAULT_CLIP_PATTERN,
    fold: str | None = None,  # e.g. "balanced_train" or "eval", to tell lists apart later
) -> list[ClipRecord]:
    """An AudioSet segment list. Unknown label ids are dropped (logged); a segment left with
    no known label is skipped."""
    segments_csv, audio_dir = Path(segments_csv), Path(audio_dir)
    try:
        lines = segments_csv.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ManifestError(f"cannot read the AudioSet segments {segments_csv}: {exc}") from exc
    records = []
    unknown: set[str] = set()
    for n, row in enumerate(csv.reader(lines, skipinitialspace=True), start=1):
        if not row or row[0].lstrip().startswith("#"):
            continue
        if len(row) != 4:
            raise ManifestError(
                f"{segments_csv}:{n}: expected YTID, start_seconds, end_seconds, "
                f"positive_labels; got {len(row)} fields"
            )
        ytid, start_text, end_text, ids = (v.strip() for v in row)
        start = _parse_start(start_text, f"{segments_csv}:{n}")
        end = _parse_start(end_text, f"{segments_csv}:{n}")
        names = []
        for mid in filter(None, (m.strip() for m in ids.split(","))):
            if mid in label_names:
                names.append(label_names[mid])
            else:
                unknown.add(mid)
        if not names:
            continue
        label = AUDIOSET_LABEL_SEPARATOR.join(names)
        records.append(
            ClipRecord(audio_dir / clip_name(clip_pattern, ytid, start, end), label, fold)
        )
    if unknown:
        logger.warning(
            "%d AudioSet label ids are not in the label names and were dropped, e.g. %s",
            len(unknown),
            sorted(unknown)[:5],
        )
    return records


def folder_records(
    root: str | Path,
    *,
    label_from: str = "stem",  # "stem": drill.wav -> drill; "parent": dog/001.wav -> dog
    extensions: Sequence[str] = (".wav", ".flac", ".ogg", ".mp3"),
) -> list[ClipRecord]:
    """Every audio file under ``root``, labelled by its file name or its folder."""
    if label_from not in ("stem", "parent"):
        raise ValueError(f"label_from must be 'stem' or 'parent', got {label_from!r}")
    root = Path(root)
    wanted = {e.lower() for e in extensions}
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in wanted)
    return [ClipRecord(p, p.stem if label_from == "stem" else p.parent.name) for p in files]
