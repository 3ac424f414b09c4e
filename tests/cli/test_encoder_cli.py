"""``soundedit manifest``, ``train`` and ``eval`` on the real fixture clips (smoke profile).

The parser is built here from each command's ``register``, exactly as ``cli.main`` does.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import soundfile as sf
import torch

from cli import eval as eval_cli
from cli import manifest as manifest_cli
from cli import train as train_cli
from models.audio_encoder import load_audio_encoder
from models.datasets import DEFAULT_CLIP_PATTERN, read_manifest, write_manifest
from tests.conftest import AUDIO, GOLDEN

OFFICIAL_WEIGHTS = GOLDEN / "audio_encoder_resnet18_official_keys.pth"
HALF_S = 4.0  # each fixture clip gives two clips: its first and its last 4 s


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="soundedit")
    commands = root.add_subparsers(dest="command", required=True)
    for module in (train_cli, eval_cli, manifest_cli):
        module.register(commands)
    return root


def run(*argv: str) -> int:
    args = parser().parse_args(list(argv))
    return int(args.func(args))


def subcommand(name: str) -> argparse.ArgumentParser:
    root = parser()
    actions = [a for a in root._actions if isinstance(a, argparse._SubParsersAction)]
    return actions[0].choices[name]  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", ["train", "eval"])
def test_help_documents_every_option(name: str) -> None:
    command = subcommand(name)
    text = command.format_help()
    for action in command._actions:
        assert action.help, action.dest
        for option in action.option_strings:
            assert option in text, option


def test_manifest_default_clip_pattern_is_the_library_default() -> None:
    argv = ["manifest", "vggsound", "v.csv", "--audio-dir", "clips", "--out", "m.csv"]
    assert parser().parse_args(argv).clip_pattern == DEFAULT_CLIP_PATTERN


@pytest.fixture(scope="module")
def folds_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 real clips: the first 4 s of each fixture clip in fold 1, the last 4 s in fold 2."""
    root = tmp_path_factory.mktemp("clips")
    rows = ["path,label,fold"]
    for wav in sorted(AUDIO.glob("*.wav")):
        data, rate = sf.read(wav, always_2d=True)
        n = int(HALF_S * rate)
        for fold, part in (("1", data[:n]), ("2", data[-n:])):
            name = f"{wav.stem}-{fold}.wav"
            sf.write(root / name, part, rate)
            rows.append(f"{name},{wav.stem},{fold}")
    manifest = root / "fixture-folds.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def test_eval_prints_zero_shot_and_probe_accuracy_and_writes_json(
    folds_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "report" / "eval.json"
    code = run(
        "eval", "--manifest", str(folds_manifest), "--checkpoint", str(OFFICIAL_WEIGHTS),
        "--profile", "smoke", "--device", "cpu", "--json", str(report), "--no-progress",
        "--template", "the sound of {}",
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "clips: 16 (0 skipped), classes: 8" in out
    assert "zero-shot accuracy:" in out
    assert "linear-probe accuracy:" in out and "leave-one-fold-out over 2 folds" in out
    assert "| model | setting | fixture-folds |" in out
    assert "| audio_encoder_resnet18_official_keys.pth | zero-shot |" in out
    data = json.loads(report.read_text())
    assert data["clips"] == 16 and data["classes"] == 8
    assert set(data["linear_probe"]["per_fold"]) == {"1", "2"}
    assert (
        0.0 <= data["zero_shot"]["top1"] <= 1.0 and 0.0 <= data["linear_probe"]["accuracy"] <= 1.0
    )
    assert set(data["similarity"]) == {p.stem for p in AUDIO.glob("*.wav")}
    assert data["settings"]["template"] == "the sound of {}"


def test_eval_reports_a_bad_checkpoint(
    folds_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    code = run("eval", "--manifest", str(folds_manifest), "--checkpoint", str(garbage), "--profile", "smoke", "--device", "cpu")  # fmt: skip
    assert code == 1 and "error: cannot read audio encoder checkpoint" in capsys.readouterr().err


def test_manifest_then_train_on_the_fixture_clips(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "fixture.csv"
    assert run("manifest", "folder", str(AUDIO), "--out", str(manifest)) == 0
    assert "8 clips, 8 labels, folds: none" in capsys.readouterr().out
    assert len(read_manifest(manifest)) == 8
    records = read_manifest(manifest)
    first, second = (
        write_manifest(records[:3], tmp_path / "a.csv"),
        write_manifest(records[3:], tmp_path / "b.csv"),
    )
    out = tmp_path / "run"
    code = run(
        "train", "--manifest", str(first), "--manifest", str(second), "--out", str(out),
        "--profile", "smoke", "--device", "cpu", "--steps", "1", "--batch-size", "4",
        "--prompt-variants", "1", "--no-self-supervised", "--no-progress",
    )  # fmt: skip
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "profile smoke, device cpu: 8 training clips, 0 validation clips" in printed.out
    assert f"trained 1 steps; encoder weights: {out / 'encoder.pt'}" in printed.out
    assert load_audio_encoder(out / "encoder.pt").arch == "resnet18"
    again = run("train", "--manifest", str(manifest), "--out", str(out), "--profile", "smoke", "--device", "cpu")  # fmt: skip
    assert again == 1 and "already holds a run" in capsys.readouterr().err


def test_manifest_esc50_and_missing_metadata(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "esc50.csv").write_text(
        "filename,fold,target,category,esc10,src_file,take\n1-1-A-0.wav,1,0,dog,True,1,A\n"
    )
    out = tmp_path / "esc50.csv"
    assert run("manifest", "esc50", str(tmp_path), "--out", str(out)) == 0
    assert out.read_text().splitlines() == ["path,label,fold", "audio/1-1-A-0.wav,dog,1"]
    assert run("manifest", "esc50", str(tmp_path), "--out", str(out), "--only-existing") == 1
    assert "left out 1 rows" in capsys.readouterr().out
    assert run("manifest", "urbansound8k", str(tmp_path), "--out", str(out)) == 1
    assert "UrbanSound8K.csv" in capsys.readouterr().err
