"""Token-position selection over left-padded batches.

Every position spec counts over each prompt's *real* tokens, so padding never
leaks into a result:

- ``"last"``: the last real token of each prompt  -> one row per prompt
- ``"mean"``: mean over the real tokens            -> one row per prompt
- ``int``: index among real tokens (negative from the end) -> one row per prompt
- ``"all"``: every real token                       -> ragged rows + index
- ``list[int]``: these indices of every prompt      -> ragged rows + index
- a bool mask ``[n_prompts, max_len]`` (or a list of per-prompt bool lists),
  aligned with each prompt's real tokens           -> ragged rows + index
"""

from __future__ import annotations

import torch

PER_PROMPT = ("last", "mean")


def validate(positions) -> None:
    if isinstance(positions, str):
        if positions not in ("last", "mean", "all"):
            raise ValueError(
                f"Unknown positions {positions!r}; use 'last', 'mean', 'all', an int, a list of ints or a bool mask."
            )
        return
    if isinstance(positions, bool):
        raise TypeError("positions=True/False is ambiguous; use 'all' or a bool mask.")
    if isinstance(positions, int):
        return
    if isinstance(positions, (list, tuple)) and positions and all(isinstance(p, int) and not isinstance(p, bool) for p in positions):
        return
    if isinstance(positions, torch.Tensor) and positions.dtype == torch.bool and positions.dim() == 2:
        return
    if isinstance(positions, (list, tuple)) and positions and all(isinstance(p, (list, tuple, torch.Tensor)) for p in positions):
        return
    raise TypeError(
        f"positions must be 'last', 'mean', 'all', an int, a list of ints or a bool mask; got {positions!r}."
    )


def is_ragged(positions) -> bool:
    return not (isinstance(positions, int) or positions in PER_PROMPT)


def _mask_for(positions, prompt_offset: int, lengths: torch.Tensor) -> torch.Tensor:
    """Bool ``[B, max_len]`` over real-token indices for a ragged spec."""
    b, max_len = lengths.shape[0], int(lengths.max())
    ar = torch.arange(max_len)[None, :]
    real = ar < lengths[:, None]
    if positions == "all":
        return real
    if isinstance(positions, (list, tuple)) and all(isinstance(p, int) for p in positions):
        m = torch.zeros(b, max_len, dtype=torch.bool)
        for row in range(b):
            n = int(lengths[row])
            for p in positions:
                q = p if p >= 0 else n + p
                if not 0 <= q < n:
                    raise IndexError(f"Position {p} is out of range for prompt {prompt_offset + row} with {n} real tokens.")
                m[row, q] = True
        return m
    rows = positions[prompt_offset : prompt_offset + b]
    m = torch.zeros(b, max_len, dtype=torch.bool)
    for row, r in enumerate(rows):
        r = torch.as_tensor(r, dtype=torch.bool).flatten()
        n = int(lengths[row])
        if r.numel() > n and bool(r[n:].any()):
            raise IndexError(f"Position mask of prompt {prompt_offset + row} selects tokens past its {n} real tokens.")
        k = min(n, r.numel())
        m[row, :k] = r[:k]
    return m


def select(act: torch.Tensor, attention_mask: torch.Tensor, positions, prompt_offset: int = 0, token_axis: int = 1):
    """Select positions of ``act`` (token axis ``token_axis``) for a left-padded batch.

    Returns ``(rows, index)``; ``index`` is ``None`` for per-prompt specs, else
    ``LongTensor[n_rows, 2]`` of (global prompt index, real-token index).
    """
    if token_axis != 1:
        act = act.movedim(token_axis, 1)
    b, t = act.shape[:2]
    mask = attention_mask.to(torch.bool)
    lengths = mask.sum(1)
    pad = t - lengths  # left padding: real tokens occupy [pad, t)
    if positions == "last":
        return act[:, -1], None
    if positions == "mean":
        w = mask.to(act.dtype).reshape(b, t, *([1] * (act.dim() - 2)))
        return (act * w).sum(1) / lengths.to(act.dtype).reshape(b, *([1] * (act.dim() - 2))), None
    if isinstance(positions, int):
        idx = torch.where(torch.tensor(positions) >= 0, pad + positions, t + positions)
        bad = (idx < pad) | (idx >= t)
        if bad.any():
            row = int(bad.nonzero()[0])
            raise IndexError(
                f"Position {positions} is out of range for prompt {prompt_offset + row} with {int(lengths[row])} real tokens."
            )
        return act[torch.arange(b), idx], None
    sel = _mask_for(positions, prompt_offset, lengths)  # [b, max_len] over real-token index
    rows_b, tok = sel.nonzero(as_tuple=True)
    slot = pad[rows_b] + tok
    index = torch.stack([rows_b + prompt_offset, tok], dim=1)
    return act[rows_b, slot], index


def realign_keys(pattern_rows: torch.Tensor, attention_mask: torch.Tensor, row_prompt: torch.Tensor) -> torch.Tensor:
    """Re-index the key axis of selected attention rows ``[n, H, T_k]`` to real tokens.

    Left-padded key slots are dropped: key 0 becomes the prompt's first real token;
    the tail is zero-filled (zero probability) up to ``T_k``.
    """
    t = attention_mask.shape[1]
    lengths = attention_mask.sum(1)
    out = torch.zeros_like(pattern_rows)
    for i in range(pattern_rows.shape[0]):
        r = int(row_prompt[i])
        n = int(lengths[r])
        out[i, :, :n] = pattern_rows[i, :, t - n :]
    return out
