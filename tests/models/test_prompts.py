"""Prompts from labels and the three WordNet augmentations, offline, without NLTK downloads."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nltk
import nltk.downloader
import pytest

from models.prompts import (
    LEXNAMES,
    WORDNET_APT_PACKAGE,
    PromptAugmenter,
    WordNetUnavailable,
    find_wordnet_dir,
    label_prompt,
    open_wordnet,
)

LEXNAMES_LINES = 45  # WordNet 3.0 has 45 lexicographer files


@pytest.fixture(scope="module")
def offline_reader() -> Iterator[Any]:
    """A fresh reader built with downloads and network refused."""
    with pytest.MonkeyPatch.context() as patch:

        def refuse(*args: object, **kwargs: object) -> None:
            raise AssertionError("NLTK tried to download or reach the network")

        patch.setattr(nltk, "download", refuse)
        patch.setattr(nltk.downloader.Downloader, "download", refuse)
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "create_connection", refuse)
        yield open_wordnet()


@pytest.fixture(scope="module")
def augmenter(offline_reader: Any) -> PromptAugmenter:
    return PromptAugmenter(offline_reader)


def test_label_prompts() -> None:
    assert label_prompt("crackling_fire") == "crackling fire"
    assert label_prompt("  rowboat,  canoe, kayak rowing ") == "rowboat, canoe, kayak rowing"
    assert label_prompt("dog_bark", "the sound of {}") == "the sound of dog bark"
    with pytest.raises(ValueError, match="no words"):
        label_prompt("__")
    with pytest.raises(ValueError, match="template"):
        label_prompt("dog", "the sound of")


def test_lexnames_table_is_complete() -> None:
    lines = LEXNAMES.read_text(encoding="utf-8").splitlines()
    assert len(lines) == LEXNAMES_LINES
    for number, line in enumerate(lines):
        index, name, category = line.split("\t")
        assert int(index) == number
        expected = {"noun": "1", "verb": "2", "adj": "3", "adv": "4"}[name.split(".")[0]]
        assert category == expected


def test_wordnet_is_debian_wordnet_30_read_offline(offline_reader: Any) -> None:
    assert offline_reader.get_version() == "3.0"
    assert offline_reader.synsets("dog")[0].lexname() == "noun.animal"  # needs lexnames
    assert find_wordnet_dir() == Path(offline_reader.root.path)


def test_synonyms_come_from_wordnet(augmenter: PromptAugmenter) -> None:
    explosion = augmenter.synonyms("explosion")
    assert {"detonation", "blowup"} <= set(explosion) and "explosion" not in explosion
    assert "titter" in augmenter.synonyms("giggling")  # inflected forms through morphy
    assert "electrical storm" in augmenter.synonyms("thunderstorm")  # multi-word lemmas
    assert augmenter.synonyms("the") == ()  # stop words are left alone
    assert augmenter.synonyms("xqzt") == ()


def test_each_augmentation(augmenter: PromptAugmenter) -> None:
    rng = random.Random(0)
    replaced = augmenter.replace_synonym(["explosion"], rng)
    assert replaced[0] in augmenter.synonyms("explosion")
    words = ["rowboat,", "canoe,", "kayak", "rowing"]
    permuted = augmenter.permute(words, random.Random(3))
    assert sorted(permuted) == sorted(words) and permuted != words
    inserted = augmenter.insert_synonym(words, random.Random(1))
    assert len(inserted) == len(words) + 1
    (new,) = set(inserted) - set(words)
    assert any(new in augmenter.synonyms(w.strip(",")) for w in words)
    kept = augmenter.replace_synonym(["rowboat,"], random.Random(0))
    assert kept[0].endswith(",") and kept[0][:-1] in augmenter.synonyms("rowboat")


def test_variants_are_seeded_and_distinct(augmenter: PromptAugmenter) -> None:
    first = augmenter.variants("explosion", 6, seed=0)
    assert first[0] == "explosion" and len(first) == len(set(first)) > 1
    assert augmenter.variants("explosion", 6, seed=0) == first
    assert PromptAugmenter(augmenter.reader).variants("explosion", 6, seed=0) == first
    assert augmenter.variants("explosion", 6, seed=1) != first
    words = {w for v in first[1:] for w in v.split()}
    assert words & {"detonation", "blowup", "burst", "plosion"}
    assert augmenter.variants("xqzt", 5, seed=0) == ["xqzt"]  # nothing to vary


def test_missing_wordnet_names_the_apt_package(tmp_path: Path) -> None:
    with pytest.raises(WordNetUnavailable, match=f"apt-get install {WORDNET_APT_PACKAGE}"):
        find_wordnet_dir([tmp_path])
    with pytest.raises(WordNetUnavailable, match=WORDNET_APT_PACKAGE):
        open_wordnet(tmp_path)
