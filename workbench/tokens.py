"""Token display: each token shown faithfully, as the bytes it stands for.

GPT-2-style tokenizers work on bytes: a token may be a leading space plus a word, a newline, or
part of a multi-byte character (a CJK character or an emoji is often split over 2-4 tokens).
Decoding such a piece on its own gives U+FFFD garbage, so a label here is:
- the token's text with whitespace made visible ("␣" for a space, "↵" for a newline, "⇥" for a tab);
- or, when the token's bytes are not whole UTF-8 characters, the bytes in hex ("⟨e4 bd⟩").
Special tokens (BOS/EOS) keep their names.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch

from workbench.errors import InputError

VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


@dataclass(frozen=True)
class TokenView:
    id: int
    label: str  # what to show: visible whitespace, or hex bytes for a partial character
    text: str | None  # the decoded text, None when the bytes are not whole characters
    raw: bytes
    special: bool


@cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte <-> printable-unicode table, inverted (the same table tokenizers' ByteLevel uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def _piece_bytes(piece: str) -> bytes:
    table = _byte_decoder()
    if piece and all(ch in table for ch in piece):
        return bytes(table[ch] for ch in piece)
    # SentencePiece-style pieces: "▁" is a space, "<0x0A>" a raw byte
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        return bytes([int(piece[3:5], 16)])
    return piece.replace("▁", " ").encode("utf-8")


def visible(text: str) -> str:
    return "".join(VISIBLE.get(ch, ch if ch.isprintable() else f"\\x{ord(ch):02x}") for ch in text)


def token_views(tokenizer, ids) -> list[TokenView]:
    """One TokenView per id, in order."""
    ids = [int(i) for i in ids]
    pieces = tokenizer.convert_ids_to_tokens(ids)
    special_ids = set(tokenizer.all_special_ids)
    out = []
    for i, piece in zip(ids, pieces, strict=True):
        piece = piece if piece is not None else ""
        if i in special_ids:
            out.append(TokenView(i, piece, piece, piece.encode("utf-8"), True))
            continue
        raw = _piece_bytes(piece)
        try:
            text = raw.decode("utf-8")
            label = visible(text) if text else "∅"
        except UnicodeDecodeError:
            text, label = None, "⟨" + " ".join(f"{b:02x}" for b in raw) + "⟩"
        out.append(TokenView(i, label, text, raw, False))
    return out


def token_labels(tokenizer, ids) -> list[str]:
    return [t.label for t in token_views(tokenizer, ids)]


def unique_labels(labels: list[str]) -> list[str]:
    """Labels made unique by position ("3: ␣the"), for figure axes where repeats would merge."""
    return [f"{i}: {label}" for i, label in enumerate(labels)]


@dataclass(frozen=True)
class Alignment:
    """Two prompts' tokens side by side, compared position by position from the start."""

    labels_a: list[str]  # (pos_a,) the first prompt's (clean's) token labels
    labels_b: list[str]  # (pos_b,) the second prompt's (corrupted's)
    differ: list[int]  # compared positions whose tokens differ

    @property
    def n(self) -> int:
        """Positions compared: the shorter prompt's length."""
        return min(len(self.labels_a), len(self.labels_b))

    @property
    def same_length(self) -> bool:
        return len(self.labels_a) == len(self.labels_b)

    def labels(self) -> list[str]:
        """One label per compared position: "a" where the tokens agree, "a → b" where they differ."""
        return [a if a == b else f"{a} → {b}" for a, b in zip(self.labels_a[: self.n], self.labels_b[: self.n], strict=True)]


def align(tokenizer, ids_a, ids_b) -> Alignment:
    ids_a, ids_b = [int(i) for i in ids_a], [int(i) for i in ids_b]
    differ = [i for i, (a, b) in enumerate(zip(ids_a, ids_b, strict=False)) if a != b]
    return Alignment(token_labels(tokenizer, ids_a), token_labels(tokenizer, ids_b), differ)


def ordinary_token_ids(tokenizer, d_vocab: int) -> torch.Tensor:
    """(n,) int64 ids of every token but the special ones (and rows past the tokenizer's vocabulary)."""
    special = set(tokenizer.all_special_ids)
    return torch.tensor([i for i in range(min(d_vocab, len(tokenizer))) if i not in special])


def unknown_words(tokenizer, text: str) -> list[str]:
    """The words of `text` that the tokenizer reads as its unknown token, in order, each once.

    A word-level vocabulary (the stories model's) has such words; a byte-level one (GPT-2's) has none, and its
    "unknown" token is its end-of-text token, which only that token's own text produces."""
    unk = tokenizer.unk_token_id
    if unk is None or unk in (tokenizer.bos_token_id, tokenizer.eos_token_id) or not text:
        return []
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    words = [text[a:b].strip() for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"], strict=True) if i == unk]
    return list(dict.fromkeys(w for w in words if w))


def single_token_id(tokenizer, text: str, what: str = "answer") -> int:
    """The id of a token typed as text; it must be exactly one token (" Paris", with its space)."""
    if not isinstance(text, str) or text == "":
        raise InputError(f"type the {what} token, e.g. ' the' (with its leading space)")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        labels = token_labels(tokenizer, ids)
        raise InputError(
            f"{text!r} is {len(ids)} tokens ({' | '.join(labels)}), not one: pick one of them, or one of the model's top predictions"
        )
    if unknown_words(tokenizer, text):  # a word-level vocabulary reads a word it lacks as one token: its unknown token
        raise InputError(
            f"{text!r} is not in the model's vocabulary (it reads as {tokenizer.unk_token}): pick one of the model's top predictions"
        )
    return ids[0]
