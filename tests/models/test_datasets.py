"""Manifests, the clip dataset (skipping bad files) and the public-metadata converters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from models.audio import audio_input, decode_audio
from models.datasets import (
    ClipDataset,
    ClipRecord,
    ManifestError,
    audioset_label_names,
    audioset_records,
    collate_clips,
    esc50_records,
    existing,
    folder_records,
    folds_of,
    labels_of,
    read_manifest,
    split_records,
    urbansound8k_records,
    vggsound_records,
    write_manifest,
)
from tests.conftest import AUDIO

FIXTURE_LABELS = [
    "drill", "explosion", "fire", "giggling", "raining", "sobbing", "thunderstorm", "wind",
]  # fmt: skip


def test_manifest_round_trip_keeps_relative_paths_folds_and_starts(tmp_path: Path) -> None:
    records = [
        ClipRecord(tmp_path / "audio" / "a.wav", "dog", "1", 0.0),
        ClipRecord(tmp_path / "audio" / "b.wav", "rowboat, canoe, kayak rowing", "2", 2.5),
    ]
    manifest = write_manifest(records, tmp_path / "m.csv")
    text = manifest.read_text()
    assert text.splitlines()[0] == "path,label,fold,start"
    assert "audio/a.wav,dog,1,0" in text  # relative to the manifest's folder
    assert read_manifest(manifest) == [
        ClipRecord((tmp_path / "audio" / "a.wav").resolve(), "dog", "1", 0.0),
        ClipRecord(
            (tmp_path / "audio" / "b.wav").resolve(), "rowboat, canoe, kayak rowing", "2", 2.5
        ),
    ]


def test_manifest_optional_columns_and_errors(tmp_path: Path) -> None:
    plain = tmp_path / "plain.csv"
    plain.write_text("path,label\nx.wav,dog\n")
    (record,) = read_manifest(plain)
    assert (record.fold, record.start) == (None, 0.0)

    bad_header = tmp_path / "h.csv"
    bad_header.write_text("file,class\nx.wav,dog\n")
    with pytest.raises(ManifestError, match="path"):
        read_manifest(bad_header)
    bad_start = tmp_path / "s.csv"
    bad_start.write_text("path,label,start\nx.wav,dog,0\ny.wav,cat,-3\n")
    with pytest.raises(ManifestError, match=r"s\.csv:3"):
        read_manifest(bad_start)
    no_label = tmp_path / "l.csv"
    no_label.write_text("path,label\nx.wav,\n")
    with pytest.raises(ManifestError, match="label"):
        read_manifest(no_label)


def test_dataset_skips_and_counts_missing_and_unreadable_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    records = [
        ClipRecord(AUDIO / "fire.wav", "fire"),
        ClipRecord(tmp_path / "gone.wav", "wind"),
        ClipRecord(broken, "drill"),
        ClipRecord(AUDIO / "drill.wav", "drill", start=1.0),
    ]
    dataset = ClipDataset(records, cache=True)
    batch = collate_clips([dataset[i] for i in range(len(dataset))])
    assert batch.inputs.shape == (2, 1, 128, 512)
    assert batch.indices.tolist() == [0, 3]
    assert batch.skipped == [1, 2]
    waveform, rate = decode_audio(AUDIO / "fire.wav")
    assert torch.equal(batch.inputs[0], audio_input(waveform, rate)[0])
    assert "gone.wav: missing" in caplog.text and "broken.wav: unreadable" in caplog.text
    # Reported once per file however often it is asked for.
    dataset[1]
    assert caplog.text.count("gone.wav") == 1
    empty = collate_clips([dataset[1]])
    assert empty.inputs.shape == (0, 1, 128, 512) and empty.skipped == [1]


def test_folder_records_label_fixture_clips_by_name() -> None:
    records = folder_records(AUDIO)
    assert labels_of(records) == FIXTURE_LABELS
    assert all(r.path.parent == AUDIO for r in records)
    with pytest.raises(ValueError, match="label_from"):
        folder_records(AUDIO, label_from="name")


def test_split_by_fold_or_by_stable_hash() -> None:
    records = [ClipRecord(Path(f"/d/{i}.wav"), f"c{i % 3}", str(i % 5 + 1)) for i in range(200)]
    train, val = split_records(records, val_fold="5")
    assert {r.fold for r in val} == {"5"} and "5" not in {r.fold for r in train}
    with pytest.raises(ManifestError, match="folds present"):
        split_records(records, val_fold="9")
    train, val = split_records(records, val_fraction=0.25, seed=1)
    assert 20 < len(val) < 80 and len(train) + len(val) == 200
    # The same clips validate when the manifest is reordered and grown.
    grown = list(reversed(records)) + [ClipRecord(Path("/d/new.wav"), "c0")]
    _, val_again = split_records(grown, val_fraction=0.25, seed=1)
    assert {r.path for r in val} <= {r.path for r in val_again}
    _, other_seed = split_records(records, val_fraction=0.25, seed=2)
    assert {r.path for r in other_seed} != {r.path for r in val}


def test_esc50_converter(tmp_path: Path) -> None:
    root = tmp_path / "ESC-50-master"
    (root / "meta").mkdir(parents=True)
    (root / "audio").mkdir()
    (root / "meta" / "esc50.csv").write_text(
        "filename,fold,target,category,esc10,src_file,take\n"
        "1-100032-A-0.wav,1,0,dog,True,100032,A\n"
        "1-100038-A-14.wav,1,14,chirping_birds,False,100038,A\n"
        "5-9032-A-0.wav,5,0,dog,True,9032,A\n"
    )
    shutil.copy(AUDIO / "wind.wav", root / "audio" / "1-100032-A-0.wav")
    records = esc50_records(root)
    assert [(r.path.name, r.label, r.fold) for r in records] == [
        ("1-100032-A-0.wav", "dog", "1"),
        ("1-100038-A-14.wav", "chirping_birds", "1"),
        ("5-9032-A-0.wav", "dog", "5"),
    ]
    assert records[0].path == root / "audio" / "1-100032-A-0.wav"
    kept, dropped = existing(records)
    assert [r.path.name for r in kept] == ["1-100032-A-0.wav"] and dropped == 2
    with pytest.raises(ManifestError, match="cannot read"):
        esc50_records(tmp_path / "nowhere")


def test_urbansound8k_converter_ignores_source_recording_offsets(tmp_path: Path) -> None:
    (tmp_path / "metadata").mkdir()
    (tmp_path / "metadata" / "UrbanSound8K.csv").write_text(
        "slice_file_name,fsID,start,end,salience,fold,classID,class\n"
        "100032-3-0-0.wav,100032,0.0,0.317551,1,5,3,dog_bark\n"
        "100263-2-0-117.wav,100263,58.5,62.5,1,10,2,children_playing\n"
    )
    records = urbansound8k_records(tmp_path)
    assert [(r.path, r.label, r.fold, r.start) for r in records] == [
        (tmp_path / "audio" / "fold5" / "100032-3-0-0.wav", "dog_bark", "5", 0.0),
        (tmp_path / "audio" / "fold10" / "100263-2-0-117.wav", "children_playing", "10", 0.0),
    ]
    assert folds_of(records) == ["5", "10"]  # numeric order


def test_vggsound_converter(tmp_path: Path) -> None:
    csv_path = tmp_path / "vggsound.csv"
    csv_path.write_text(
        "---g-f_I2yQ,1,people marching,test\n"
        '--0PQM4-hqg,30,"rowboat, canoe, kayak rowing",train\n'
        "--56QUhyDQM,185,playing tennis,train\n"
    )
    records = vggsound_records(csv_path, tmp_path / "clips")
    assert [(r.path.name, r.label, r.fold) for r in records] == [
        ("---g-f_I2yQ_000001.wav", "people marching", "test"),
        ("--0PQM4-hqg_000030.wav", "rowboat, canoe, kayak rowing", "train"),
        ("--56QUhyDQM_000185.wav", "playing tennis", "train"),
    ]
    custom = vggsound_records(
        csv_path, tmp_path, clip_pattern="{ytid}/{start}-{end}.flac", split="test"
    )
    assert [r.path.relative_to(tmp_path).as_posix() for r in custom] == ["---g-f_I2yQ/1-11.flac"]
    with pytest.raises(ManifestError, match="placeholders"):
        vggsound_records(csv_path, tmp_path, clip_pattern="{video}.wav")
    (tmp_path / "bad.csv").write_text("abc,1,label\n")
    with pytest.raises(ManifestError, match=r"bad\.csv:1: expected 4 fields"):
        vggsound_records(tmp_path / "bad.csv", tmp_path)


def test_audioset_converter_with_ontology_or_label_index(tmp_path: Path) -> None:
    segments = tmp_path / "balanced_train_segments.csv"
    segments.write_text(
        "# Segments csv created Sun Mar  5 10:54:31 2017\n"
        "# num_ytids=3, num_segs=3, num_unique_labels=3, num_positive_labels=4\n"
        "# YTID, start_seconds, end_seconds, positive_labels\n"
        '--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"\n'
        '--ZhevVpy1s, 50.000, 60.000, "/m/012xff"\n'
        '--aE2O5G5WE, 0.000, 10.000, "/m/unknown"\n'
    )
    ontology = tmp_path / "ontology.json"
    ontology.write_text(
        json.dumps(
            [
                {"id": "/m/09x0r", "name": "Speech", "description": "", "child_ids": []},
                {"id": "/t/dd00088", "name": "Gush", "description": "", "child_ids": []},
                {"id": "/m/012xff", "name": "Fire", "description": "", "child_ids": []},
            ]
        )
    )
    names = audioset_label_names(ontology)
    records = audioset_records(segments, names, tmp_path / "clips", fold="balanced_train")
    assert [(r.path.name, r.label, r.fold) for r in records] == [
        ("--PJHxphWEs_000030.wav", "Speech, Gush", "balanced_train"),
        ("--ZhevVpy1s_000050.wav", "Fire", "balanced_train"),
    ]  # the segment with only an unknown label id is left out
    index = tmp_path / "class_labels_indices.csv"
    index.write_text(
        'index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/t/dd00088,Gush\n2,/m/012xff,Fire\n'
    )
    assert audioset_label_names(index) == names
    pattern = audioset_records(segments, names, tmp_path, clip_pattern="Y{ytid}_{start_ms}.flac")
    assert pattern[0].path.name == "Y--PJHxphWEs_30000.flac"
