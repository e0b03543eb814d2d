"""Token positions: one vocabulary and one parser for every package.

Every position counts over each prompt's *real* tokens (index 0 = the first real
token, whatever the left padding), so padding never leaks into a result. The words:

- ``"last"``: the last real token of each prompt       (capture, extract)
- ``"mean"``: mean over the real tokens                (capture, extract)
- ``int``: index among real tokens, negative from the end (everywhere)
- ``list[int]``: these indices of every prompt         (capture, steering, patching)
- ``"all"``: every real token                          (capture, steering, patching)
- a bool mask ``[n_prompts, max_len]`` (or a list of per-prompt bool lists),
  aligned with each prompt's real tokens              (capture)
- ``"prompt"`` / ``"generated"``: the prompt's tokens / the tokens ``generate`` adds (steering)
- ``"each"``: one patching column per real-token index  (patching)

:func:`parse` turns a spec into a :class:`PositionSpec` and checks it against the words a
caller accepts (:data:`CAPTURE`, :data:`WRITE`, :data:`PER_PROMPT`, :data:`PATCH`);
:func:`select` reads the selected rows of a captured activation; :func:`token_mask` says
which slots of one forward call a hook writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# Kinds of spec. "index" is one int, "indices" a list of ints, "mask" a per-prompt bool mask.
WORDS = ("last", "mean", "all", "prompt", "generated", "each")
CAPTURE = ("last", "mean", "all", "index", "indices", "mask")  # HookedModel.capture / logits
WRITE = ("all", "prompt", "generated", "index", "indices")  # steering, ablation
PER_PROMPT = ("last", "mean", "index")  # one row per prompt (extract)
PATCH = ("each", "all", "index", "indices")  # activation patching columns

_SAY = {
    "last": "'last'",
    "mean": "'mean'",
    "all": "'all'",
    "prompt": "'prompt'",
    "generated": "'generated'",
    "each": "'each'",
    "index": "an int",
    "indices": "a list of ints",
    "mask": "a bool mask",
}


@dataclass(frozen=True)
class PositionSpec:
    """A parsed position spec: its ``kind`` (a word, ``"index"``, ``"indices"`` or ``"mask"``) and ints."""

    kind: str
    indices: tuple[int, ...] = ()
    value: object = field(default=None, compare=False, repr=False)  # the spec as given

    @property
    def per_prompt(self) -> bool:
        """One row per prompt (``last``, ``mean``, one index) rather than ragged rows."""
        return self.kind in PER_PROMPT


def vocabulary(allowed) -> str:
    words = [_SAY[k] for k in allowed]
    return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]


def _is_int(p) -> bool:
    return isinstance(p, int) and not isinstance(p, bool)


def parse(positions, allowed=CAPTURE, reason: str | None = None) -> PositionSpec:
    """Parse ``positions`` and check its kind is in ``allowed``; errors list what would work.

    ``reason`` completes the message for a valid spec of a kind the caller does not take
    (``"positions=[0, 1] would not give one activation per prompt; use ..."``).
    """
    use = f"use {vocabulary(allowed)} (ints index each prompt's real tokens, negative counts from the end)"
    if isinstance(positions, PositionSpec):
        spec = positions
    elif isinstance(positions, str):
        if positions not in WORDS or (positions not in allowed and reason is None):
            raise ValueError(f"Unknown positions {positions!r}; {use}.")
        spec = PositionSpec(positions, value=positions)
    elif isinstance(positions, bool):
        raise TypeError(f"positions=True/False is ambiguous; {use}.")
    elif _is_int(positions):
        spec = PositionSpec("index", (positions,), value=positions)
    elif isinstance(positions, (list, tuple)) and all(_is_int(p) for p in positions):
        if not positions:
            raise ValueError(f"positions=[] selects nothing; pass at least one token index, or {use[4:]}.")
        spec = PositionSpec("indices", tuple(positions), value=positions)
    elif isinstance(positions, torch.Tensor) and positions.dtype == torch.bool and positions.dim() == 2:
        spec = PositionSpec("mask", value=positions)
    elif isinstance(positions, (list, tuple)) and positions and all(
        isinstance(p, (list, tuple, torch.Tensor)) for p in positions
    ):
        spec = PositionSpec("mask", value=positions)
    else:
        raise TypeError(f"positions must be {vocabulary(allowed)}; got {type(positions).__name__} {positions!r}.")
    if spec.kind not in allowed:
        raise ValueError(f"positions={spec.value!r} {reason or 'is not accepted here'}; {use}.")
    return spec


def validate(positions) -> None:
    """Check a capture spec (see :data:`CAPTURE`)."""
    parse(positions, CAPTURE)


def is_ragged(positions) -> bool:
    """Whether a capture spec gives ragged rows (plus an index) rather than one row per prompt."""
    return not parse(positions, CAPTURE).per_prompt


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


def token_mask(
    positions,
    token_positions: torch.Tensor,
    is_generated: torch.Tensor | None = None,
    prompt_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """Boolean ``[B, T]`` mask of the slots of one forward call to write (a :data:`WRITE` spec).

    ``token_positions[b, t]`` is the index of slot ``t`` among row ``b``'s real tokens
    (``-1`` for padding, which is never selected; :attr:`hooked.HookContext.positions`);
    ``is_generated[b, t]`` marks tokens produced by ``generate``. Integer positions index
    each row's *prompt* tokens; negative ones count from the prompt's end (``-1`` = last
    prompt token), so they need ``prompt_lengths``.
    """
    spec = parse(positions, WRITE)
    real = token_positions >= 0
    gen = is_generated.to(torch.bool) if is_generated is not None else torch.zeros_like(real)
    if spec.kind == "all":
        return real
    if spec.kind == "prompt":
        return real & ~gen
    if spec.kind == "generated":
        return real & gen
    idx = torch.as_tensor(spec.indices, device=token_positions.device)
    idx = idx.view(1, -1).expand(token_positions.shape[0], -1)
    if (idx < 0).any():
        if prompt_lengths is None:
            raise ValueError("Negative token positions count from the prompt's end and need the prompt lengths.")
        idx = torch.where(idx < 0, idx + prompt_lengths.to(idx.device).view(-1, 1), idx)
    hit = (token_positions.unsqueeze(-1) == idx.unsqueeze(1)).any(-1)
    return hit & real & ~gen
