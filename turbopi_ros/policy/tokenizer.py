"""Prompt tokenizers with openpi's prompt formats (openpi models/tokenizer.py, PaligemmaTokenizer.tokenize).

cleaned = prompt.strip(), then "_" and "\\n" replaced by spaces (no lower-casing: that is only openpi's FAST tokenizer).
pi0:   BOS + ids(cleaned) + ids("\\n")                    the state goes to the action expert as a continuous token
pi0.5: BOS + ids("Task: {cleaned}, State: {bins};\\nAction: ")
       bins = np.digitize(state, np.linspace(-1, 1, 257)[:-1]) - 1, joined by spaces: the *normalized* state (quantile
       norm stats) before padding to action_dim, as openpi's TokenizePrompt sees it. Values below -1 give -1 and
       values at or above 1 give 255, exactly as openpi.
Tokens are padded with id 0 / mask False to max_len; longer prompts are cut to max_len with a logged warning (once per
prompt, not on every inference), as openpi does. encode() returns (tokens int32 [max_len], mask bool [max_len]).

PaligemmaTokenizer wraps the user's PaliGemma SentencePiece model (paligemma_tokenizer.model). ByteTokenizer exists
ONLY for random-weight demo and test models, for which no tokenizer file exists: it maps UTF-8 bytes to ids
deterministically and means nothing to a real checkpoint.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from ..logs import get_logger

logger = get_logger(__name__)

BOS_ID = 2  # PaliGemma's <bos>; ByteTokenizer uses the same id
STATE_BINS = 256
VARIANTS = ("pi0", "pi05")


def clean_prompt(prompt: str) -> str:
    """openpi's cleaning; an empty result is a ValueError "prompt is empty"."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    cleaned = prompt.strip().replace("_", " ").replace("\n", " ")
    if not cleaned.strip():  # "_" alone cleans to " "
        raise ValueError("prompt is empty: a task instruction is required (e.g. 'pick up the cup')")
    return cleaned


def discretize_state(state: np.ndarray) -> np.ndarray:
    """Normalized state -> bin indices (256 equal bins over [-1, 1], np.digitize - 1, exactly as openpi)."""
    state = np.asarray(state, dtype=np.float64)
    if state.ndim != 1 or state.size == 0:
        raise ValueError(f"state must be a non-empty 1-D vector, got shape {list(state.shape)}")
    bad = np.nonzero(~np.isfinite(state))[0]
    if bad.size:
        raise ValueError(f"state must be finite: non-finite values at {bad.tolist()}")
    return np.digitize(state, bins=np.linspace(-1, 1, STATE_BINS + 1)[:-1]) - 1


def pi05_prompt(cleaned: str, state: np.ndarray) -> str:
    """The pi0.5 prompt text for an already cleaned prompt and a normalized state."""
    state_str = " ".join(map(str, discretize_state(state)))
    return f"Task: {cleaned}, State: {state_str};\nAction: "


class _PromptTokenizer:
    """Shared formatting, padding and truncation. ``variant`` None: the format follows whether a state is given."""

    vocab_size: int

    def __init__(self, max_len: int, variant: Optional[str] = None):
        if int(max_len) <= 0:
            raise ValueError(f"max_len must be positive, got {max_len}")
        if variant is not None and variant not in VARIANTS:
            raise ValueError(f"variant must be one of {list(VARIANTS)}, got {variant!r}")
        self.max_len = int(max_len)
        self.variant = variant
        self._truncated = None  # the last prompt warned about: once per prompt, not once per inference

    def _ids(self, text: str, add_bos: bool) -> List[int]:
        raise NotImplementedError

    def encode(self, prompt: str, state: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
        """-> (tokens int32 [max_len], mask bool [max_len]). ``state`` given = the pi0.5 format."""
        if self.variant == "pi05" and state is None:
            raise ValueError("pi0.5 puts the discretized state in the prompt: a state is required")
        if self.variant == "pi0" and state is not None:
            raise ValueError("pi0 takes the state as a continuous token, not in the prompt: pass state=None")
        cleaned = clean_prompt(prompt)
        if state is not None:
            ids = self._ids(pi05_prompt(cleaned, state), add_bos=True)
        else:
            ids = self._ids(cleaned, add_bos=True) + self._ids("\n", add_bos=False)
        if len(ids) > self.max_len:
            if cleaned != self._truncated:
                self._truncated = cleaned
                shown = repr(cleaned[:60]) + (f"... ({len(cleaned)} characters)" if len(cleaned) > 60 else "")
                logger.warning("prompt %s is %d tokens, more than max_token_len %d: truncated to the first %d, as "
                               "openpi does%s (said once per prompt)", shown, len(ids), self.max_len, self.max_len,
                               "; the state and 'Action:' at its end are cut off too" if state is not None else "")
            ids = ids[: self.max_len]
        tokens = np.zeros(self.max_len, dtype=np.int32)
        mask = np.zeros(self.max_len, dtype=bool)
        tokens[: len(ids)] = ids
        mask[: len(ids)] = True
        return tokens, mask

    tokenize = encode  # openpi's name


class PaligemmaTokenizer(_PromptTokenizer):
    """The PaliGemma SentencePiece model (paligemma_tokenizer.model) from the user's disk."""

    def __init__(self, model_path, max_len: int, variant: Optional[str] = None):
        super().__init__(max_len, variant)
        import sentencepiece

        path = Path(model_path)
        if not path.is_file():
            raise ValueError(f"tokenizer {path}: file not found (expected the PaliGemma SentencePiece model, "
                             "paligemma_tokenizer.model)")
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_proto=path.read_bytes())
        except Exception as e:  # sentencepiece raises RuntimeError / OSError variants
            raise ValueError(f"tokenizer {path}: not a SentencePiece model ({e})") from None
        self.path = path
        self.vocab_size = int(self._sp.get_piece_size())

    def _ids(self, text: str, add_bos: bool) -> List[int]:
        return list(self._sp.encode(text, add_bos=add_bos))


class ByteTokenizer(_PromptTokenizer):
    """For random-weight models only (demos, tests): BOS = 2, then each UTF-8 byte b as id 3 + b % (vocab_size - 3).
    Same formats, padding and return type as PaligemmaTokenizer; the ids mean nothing to a real checkpoint."""

    def __init__(self, vocab_size: int, max_len: int, variant: Optional[str] = None):
        super().__init__(max_len, variant)
        if int(vocab_size) < 4:
            raise ValueError(f"vocab_size must be at least 4 (ids 0-2 are reserved), got {vocab_size}")
        self.vocab_size = int(vocab_size)

    def _ids(self, text: str, add_bos: bool) -> List[int]:
        ids = [3 + b % (self.vocab_size - 3) for b in text.encode("utf-8")]
        return [BOS_ID] + ids if add_bos else ids


def make_tokenizer(path: str, max_len: int, vocab_size: int, variant: Optional[str] = None) -> _PromptTokenizer:
    """The SentencePiece model at ``path``; "" (or None) gives the ByteTokenizer, for random-weight models only.
    ``variant`` ("pi0" / "pi05") makes encode() insist on the matching format. A tokenizer with more pieces than the
    model's vocabulary is an error."""
    if path:
        tok = PaligemmaTokenizer(path, max_len, variant)
        if tok.vocab_size > vocab_size:
            raise ValueError(f"tokenizer {path} has {tok.vocab_size} pieces but the model's vocabulary is "
                             f"{vocab_size}: not this model's tokenizer")
        return tok
    return ByteTokenizer(vocab_size, max_len, variant)
