"""Every valid prompt length a prompt can produce: what the CUDA graphs capture before the node reports ready.

pi0: the prompt alone decides its length (one length). pi0.5 writes the discretized state into the prompt ("State:
12 200 7;"), so the length moves with the state while the robot moves. Each state value becomes one of 256 bins written
in decimal, and the tokenizers split the state text at its spaces (SentencePiece's pieces do not cross them; the byte
tokenizer maps one byte to one id), so a prompt's length is a base plus one count per state value: the count of its
bin's text. The lengths are then every sum of ``state_dims`` such counts, read off the tokenizer bin by bin, capped at
max_len where the tokenizer truncates.
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np

from .tokenizer import STATE_BINS, clean_prompt, pi05_prompt


def _bin_state(bin_index: int, dims: int) -> np.ndarray:
    """A normalized state whose every value falls in bin ``bin_index`` (the bin's centre)."""
    edges = np.linspace(-1, 1, STATE_BINS + 1)
    return np.full(dims, (edges[bin_index] + edges[bin_index + 1]) / 2)


def prompt_lengths(tokenizer, prompt: str, state_dims: Optional[int] = None) -> List[int]:
    """The valid-token counts ``tokenizer.encode(prompt[, state])`` can return, ascending. ``state_dims``: the
    length of the (normalized, unpadded) state for pi0.5's format; None for pi0's."""
    if state_dims is None:
        _, mask = tokenizer.encode(prompt)
        return [int(mask.sum())]
    dims = int(state_dims)
    if dims < 1:
        raise ValueError(f"state_dims must be >= 1 for pi0.5's prompt, got {state_dims}")
    # the untruncated length with every value in bin v is base + dims * count(v): differences between bins are exact
    cleaned = clean_prompt(prompt)
    per = np.array([len(tokenizer._ids(pi05_prompt(cleaned, _bin_state(v, dims)), add_bos=True))
                    for v in range(STATE_BINS)])
    shortest = int(per.min())
    steps = sorted({int(d) for d in (per - shortest)})
    if any(d % dims for d in steps):
        raise ValueError(f"tokenizer: prompt lengths over the state bins ({sorted(set(per.tolist()))}) are not "
                         f"a base plus {dims} equal per-value counts: the state text does not split at its spaces")
    deltas = sorted({d // dims for d in steps})
    sums = {0}
    for _ in range(dims):  # every sum of `dims` per-value extra counts
        sums = {s + d for s in sums for d in deltas}
    return sorted({min(shortest + s, tokenizer.max_len) for s in sums})
