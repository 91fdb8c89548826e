"""Prompt tokenizers with openpi's prompt formats.

pi0:   BOS + tokens(cleaned prompt) + tokens("\\n")          (the state goes to the expert as a continuous token)
pi0.5: BOS + tokens("Task: {cleaned}, State: {bins};\\nAction: ")   state discretized into 256 bins over [-1, 1]
cleaned = prompt.strip() with "_" and "\\n" replaced by spaces. Padded with id 0 / mask False to max_len; longer
prompts are truncated with a warning, as openpi does.

PaligemmaTokenizer wraps the user's PaliGemma SentencePiece model (paligemma_tokenizer.model). ByteTokenizer exists
ONLY for random-weight demo and test models, which have no tokenizer: it maps UTF-8 bytes to ids deterministically.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

logger = logging.getLogger(__name__)

BOS_ID = 2
STATE_BINS = 256


def clean_prompt(prompt: str) -> str:
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    cleaned = prompt.strip().replace("_", " ").replace("\n", " ")
    if not cleaned:
        raise ValueError("prompt is empty: a task instruction is required (e.g. 'pick up the cup')")
    return cleaned


def discretize_state(state: np.ndarray) -> np.ndarray:
    """Normalized state in [-1, 1] -> bin indices 0..255 (np.digitize over 256 equal bins, as openpi)."""
    state = np.asarray(state, dtype=np.float64)
    if state.ndim != 1 or not np.all(np.isfinite(state)):
        raise ValueError(f"state must be a finite 1-D vector, got shape {list(state.shape)}")
    return np.digitize(state, bins=np.linspace(-1, 1, STATE_BINS + 1)[:-1]) - 1


def pi05_prompt(cleaned: str, state: np.ndarray) -> str:
    state_str = " ".join(map(str, discretize_state(state)))
    return f"Task: {cleaned}, State: {state_str};\nAction: "


class _PromptTokenizer:
    def __init__(self, max_len: int):
        if max_len <= 0:
            raise ValueError(f"max_len must be positive, got {max_len}")
        self.max_len = int(max_len)

    def _ids(self, text: str, add_bos: bool) -> List[int]:
        raise NotImplementedError

    def encode(self, prompt: str, state: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
        """-> (tokens int32 [max_len], mask bool [max_len]). ``state`` given = the pi0.5 format."""
        cleaned = clean_prompt(prompt)
        if state is not None:
            ids = self._ids(pi05_prompt(cleaned, state), add_bos=True)
        else:
            ids = self._ids(cleaned, add_bos=True) + self._ids("\n", add_bos=False)
        if len(ids) > self.max_len:
            logger.warning("prompt is %d tokens, more than max_token_len %d: truncated", len(ids), self.max_len)
            ids = ids[: self.max_len]
        tokens = np.zeros(self.max_len, dtype=np.int32)
        mask = np.zeros(self.max_len, dtype=bool)
        tokens[: len(ids)] = ids
        mask[: len(ids)] = True
        return tokens, mask


class PaligemmaTokenizer(_PromptTokenizer):
    """The PaliGemma SentencePiece model from the user's disk."""

    def __init__(self, model_path, max_len: int):
        super().__init__(max_len)
        import sentencepiece

        path = Path(model_path)
        if not path.is_file():
            raise ValueError(f"tokenizer {path}: file not found (the PaliGemma SentencePiece model, "
                             "paligemma_tokenizer.model)")
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_proto=path.read_bytes())
        except Exception as e:  # sentencepiece raises RuntimeError/OSError variants
            raise ValueError(f"tokenizer {path}: not a SentencePiece model ({e})") from None
        self.vocab_size = self._sp.get_piece_size()

    def _ids(self, text: str, add_bos: bool) -> List[int]:
        return list(self._sp.encode(text, add_bos=add_bos))


class ByteTokenizer(_PromptTokenizer):
    """For random-weight models only: BOS, then each UTF-8 byte b as id 3 + b mod (vocab_size - 3)."""

    def __init__(self, vocab_size: int, max_len: int):
        super().__init__(max_len)
        if vocab_size < 4:
            raise ValueError(f"vocab_size must be >= 4, got {vocab_size}")
        self.vocab_size = int(vocab_size)

    def _ids(self, text: str, add_bos: bool) -> List[int]:
        ids = [3 + b % (self.vocab_size - 3) for b in text.encode("utf-8")]
        return [BOS_ID] + ids if add_bos else ids


def make_tokenizer(path: str, max_len: int, vocab_size: int):
    """The SentencePiece model at ``path``; "" gives the ByteTokenizer (random-weight models only)."""
    if path:
        tok = PaligemmaTokenizer(path, max_len)
        if tok.vocab_size > vocab_size:
            raise ValueError(f"tokenizer {path} has {tok.vocab_size} pieces but the model's vocabulary is "
                             f"{vocab_size}")
        return tok
    return ByteTokenizer(vocab_size, max_len)
