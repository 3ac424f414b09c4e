"""Text prompts from class labels, and the paper's three text augmentations over WordNet.

The audio encoder learns to land next to the CLIP text embedding of its clip's label. The paper
varies the label text with (i) WordNet synonym replacement, (ii) a random permutation of the
words and (iii) random insertion of a synonym ("rowboat, canoe, kayak rowing" can become
"row canoe, kayak quarrel rowboat"); the official code applies all three in that order to
every sample. Here each augmentation draws from a ``random.Random`` the caller seeds, so a
run's prompts are reproducible.

WordNet comes from Debian's ``wordnet-base`` package (WordNet 3.0, ``/usr/share/wordnet``),
read through NLTK's WordNet reader; NLTK's own data downloads are never used. Two files NLTK
expects are not in that package:

- ``lexnames``, the table of the 45 lexicographer files (number, name, syntactic category),
  which the reader loads at start-up: the project ships it (``models/data/wordnet/lexnames``,
  transcribed from WordNet 3.0's lexnames(5WN) manual page);
- ``index.sense``, which the reader only needs to map another WordNet version onto the one
  loaded, for the multilingual (OMW) functions: that mapping is switched off here.

NLTK (>= 3.10) only opens corpus files under a directory on ``nltk.data.path``, so the
WordNet directory is added to that list when the reader is built.

No torch here: prompts are plain strings.
"""

from __future__ import annotations

import logging
import os
import random
import re
import warnings
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LEXNAMES = Path(__file__).resolve().parent / "data" / "wordnet" / "lexnames"
WORDNET_APT_PACKAGE = "wordnet-base"
# Where WordNet 3.0's database files ("dict" folder) are looked for, after $WNSEARCHDIR and
# $WNHOME/dict (the environment variables WordNet's own tools read).
WORDNET_DIRS = (Path("/usr/share/wordnet"), Path("/usr/local/WordNet-3.0/dict"))
WORDNET_MARKERS = ("index.noun", "data.noun")  # files that show a folder holds the database
DEFAULT_VARIANTS = 8  # prompts per label: the plain one plus augmented ones
VARIANT_ATTEMPTS_PER_PROMPT = 4  # augmentation tries per wanted variant (duplicates are dropped)
# Words never replaced or used as insertion sources (as in EDA's stop-word list, shortened to
# the words that occur in sound-class labels).
STOP_WORDS = frozenset((
    "a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "in", "into", "is", "it",
    "of", "off", "on", "or", "out", "over", "the", "to", "up", "with",
))  # fmt: skip
_TOKEN = re.compile(r"^(\W*)(.*?)(\W*)$")  # leading punctuation, word, trailing punctuation
_WORD = re.compile(r"^[A-Za-z][A-Za-z'-]*$")  # what is looked up in WordNet


class WordNetUnavailable(RuntimeError):
    """WordNet (or NLTK) is not installed; the message says what to install."""


def label_prompt(label: str, template: str = "{}") -> str:
    """The text prompt of a class label: underscores become spaces, runs of blanks collapse,
    commas stay ("crackling_fire" -> "crackling fire"); ``template`` wraps it, e.g.
    ``"the sound of {}"``."""
    words = label.replace("_", " ").split()
    if not words:
        raise ValueError(f"label {label!r} has no words")
    if "{}" not in template:
        raise ValueError(f"prompt template {template!r} must contain '{{}}'")
    return template.replace("{}", " ".join(words))


# --- WordNet ---------------------------------------------------------------------------------


def find_wordnet_dir(candidates: Sequence[Path] | None = None) -> Path:
    """The first folder holding WordNet's database files; a clear error naming the package."""
    if candidates is None:
        found: list[Path] = []
        if os.environ.get("WNSEARCHDIR"):
            found.append(Path(os.environ["WNSEARCHDIR"]))
        if os.environ.get("WNHOME"):
            found.append(Path(os.environ["WNHOME"]) / "dict")
        candidates = [*found, *WORDNET_DIRS]
    for folder in candidates:
        if all((folder / name).is_file() for name in WORDNET_MARKERS):
            return folder
    raise WordNetUnavailable(
        "WordNet 3.0 is not installed (looked in "
        + ", ".join(str(c) for c in candidates)
        + f"): install the Debian/Ubuntu package {WORDNET_APT_PACKAGE} "
        f"(`apt-get install {WORDNET_APT_PACKAGE}`) or set WNSEARCHDIR to a WordNet 3.0 "
        "dict folder"
    )


def open_wordnet(directory: Path | None = None) -> Any:
    """A fresh NLTK WordNet reader over ``directory`` (default: ``find_wordnet_dir()``).

    Takes about 3 s (the lemma index is read up front); ``wordnet()`` keeps one per process.
    """
    folder = (directory or find_wordnet_dir()).resolve()
    find_wordnet_dir([folder])  # the same check and message for an explicit folder
    try:
        import nltk
        from nltk.corpus.reader.wordnet import WordNetCorpusReader
    except ImportError as exc:
        raise WordNetUnavailable(
            "NLTK is not installed: `pip install nltk` (it reads the WordNet files)"
        ) from exc

    class PackagedLexnamesWordNet(WordNetCorpusReader):
        """Debian's files plus the project's lexnames table; no cross-version mapping."""

        def open(self, file: str) -> Any:
            if file == LEXNAMES.name:
                return LEXNAMES.open(encoding="utf-8")
            return super().open(file)

        def map_wn(self, version: str = "wordnet") -> None:
            """Only the multilingual functions use the mapping, and it needs index.sense."""
            return None

    if str(folder) not in map(str, nltk.data.path):
        nltk.data.path.append(str(folder))
    with warnings.catch_warnings():
        # "The multilingual functions are not available": no OMW reader is wanted.
        warnings.simplefilter("ignore", UserWarning)
        reader = PackagedLexnamesWordNet(str(folder), None)
    logger.info("WordNet %s read from %s", reader.get_version(), folder)
    return reader


@lru_cache(maxsize=1)
def wordnet() -> Any:
    """The process-wide WordNet reader (built on first use)."""
    return open_wordnet()


# --- Augmentations ---------------------------------------------------------------------------


def _split_token(token: str) -> tuple[str, str, str]:
    match = _TOKEN.match(token)
    assert match is not None  # the pattern matches every string
    return match.group(1), match.group(2), match.group(3)


class PromptAugmenter:
    """The paper's three augmentations; every random choice comes from the caller's RNG."""

    def __init__(self, reader: Any | None = None) -> None:
        self._reader = reader
        self._synonyms: dict[str, tuple[str, ...]] = {}

    @property
    def reader(self) -> Any:
        if self._reader is None:
            self._reader = wordnet()
        return self._reader

    def synonyms(self, word: str) -> tuple[str, ...]:
        """WordNet lemma names sharing a synset with ``word`` (any part of speech, inflected
        forms found through WordNet's morphology), lower case, sorted, without the word."""
        key = word.lower()
        if key not in self._synonyms:
            found: set[str] = set()
            if _WORD.match(key) and key not in STOP_WORDS:
                for synset in self.reader.synsets(key):
                    for lemma in synset.lemma_names():
                        found.add(" ".join(lemma.lower().split("_")))
            found.discard(key)
            self._synonyms[key] = tuple(sorted(found))
        return self._synonyms[key]

    def _candidates(self, words: Sequence[str]) -> list[int]:
        """Positions of words that have synonyms."""
        return [i for i, w in enumerate(words) if self.synonyms(_split_token(w)[1])]

    def replace_synonym(self, words: Sequence[str], rng: random.Random) -> list[str]:
        """(i) One word (that has synonyms) becomes one of its synonyms; punctuation stays."""
        out = list(words)
        positions = self._candidates(out)
        if positions:
            i = rng.choice(positions)
            lead, core, trail = _split_token(out[i])
            out[i] = lead + rng.choice(self.synonyms(core)) + trail
        return out

    def permute(self, words: Sequence[str], rng: random.Random) -> list[str]:
        """(ii) The words in a random order (each keeps its punctuation)."""
        out = list(words)
        rng.shuffle(out)
        return out

    def insert_synonym(self, words: Sequence[str], rng: random.Random) -> list[str]:
        """(iii) A synonym of one of the words inserted at a random position."""
        out = list(words)
        positions = self._candidates(out)
        if positions:
            core = _split_token(out[rng.choice(positions)])[1]
            out.insert(rng.randrange(len(out) + 1), rng.choice(self.synonyms(core)))
        return out

    def augment(self, prompt: str, rng: random.Random) -> str:
        """All three augmentations in the official order: replace, permute, insert."""
        words = prompt.split()
        ops: tuple[Callable[[Sequence[str], random.Random], list[str]], ...] = (
            self.replace_synonym,
            self.permute,
            self.insert_synonym,
        )
        for op in ops:
            words = op(words, rng)
        return " ".join(words)

    def variants(self, prompt: str, count: int = DEFAULT_VARIANTS, *, seed: int = 0) -> list[str]:
        """``prompt`` followed by up to ``count - 1`` distinct augmented versions of it.

        The RNG is seeded from ``seed`` and the prompt, so a label's variants do not depend
        on which other labels a dataset has. Fewer come back when WordNet offers few synonyms.
        """
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        rng = random.Random(f"{seed}:{prompt}")
        out = [prompt]
        for _ in range((count - 1) * VARIANT_ATTEMPTS_PER_PROMPT):
            if len(out) >= count:
                break
            candidate = self.augment(prompt, rng)
            if candidate not in out:
                out.append(candidate)
        return out
