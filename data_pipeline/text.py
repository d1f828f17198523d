"""Tokenisation and the word vocabulary that travels with every checkpoint and registered model."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable

import fsspec

PAD, UNK = "<pad>", "<unk>"
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(sentence: str) -> list[str]:
    """Lower-case word tokens (letters/digits, keeping English contractions such as `person's`).

    The same function runs at prepare, train and predict time so ids always agree.
    """
    return _TOKEN.findall(sentence.lower())


class Vocab:
    """Word <-> id table; id 0 is padding and id 1 the unknown word."""

    def __init__(self, words: Iterable[str]):
        self.itos: list[str] = [PAD, UNK] + [w for w in words if w not in (PAD, UNK)]
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("vocabulary words must be unique")

    @classmethod
    def build(cls, sentences: Iterable[str], min_count: int = 1) -> Vocab:
        """Vocabulary of every token seen at least `min_count` times, most frequent first (ties alphabetical)."""
        counts = Counter(tok for s in sentences for tok in tokenize(s))
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(words)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, sentence: str, max_words: int | None = None) -> list[int]:
        """Token ids of `sentence`, unknown words mapped to UNK, truncated to `max_words`."""
        ids = [self.stoi.get(tok, 1) for tok in tokenize(sentence)]
        return ids[:max_words] if max_words else ids

    def to_json(self) -> str:
        return json.dumps({"format": "mktn-vocab-v1", "words": self.itos[2:]})

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "<string>") -> Vocab:
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"{source}: vocabulary is not valid JSON ({exc})") from exc
        words = obj.get("words") if isinstance(obj, dict) and obj.get("format") == "mktn-vocab-v1" else None
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise ValueError(f"{source}: expected {{'format': 'mktn-vocab-v1', 'words': [strings...]}}")
        try:
            return cls(words)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from exc

    def save(self, url: str) -> None:
        with fsspec.open(url, "w") as f:
            f.write(self.to_json())

    @classmethod
    def load(cls, url: str) -> Vocab:
        with fsspec.open(url, "rb") as f:
            return cls.from_json(f.read(), source=url)  # bytes: json.loads decodes, naming bad UTF-8
