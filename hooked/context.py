"""What a hook function sees besides the activation, and the handle that removes hooks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .handles import UndoHandle


@dataclass
class HookContext:
    """Per-forward facts an intervention needs to act on the right tokens.

    ``positions`` is ``[B, T_call]``: for each slot of *this* forward call, its index
    among the row's real tokens (0 = the first real token of the prompt), ``-1``
    for left padding. During cached generation a decode step has ``T_call == 1`` and
    its position keeps counting from the prompt (``prompt_length + k`` for the k-th
    generated token). ``is_generated`` marks tokens produced by ``generate``.
    """

    site: str
    layer: int | None
    attention_mask: torch.Tensor  # [B, T_total] over the whole sequence so far
    positions: torch.Tensor  # [B, T_call]
    prompt_lengths: torch.Tensor  # [B]
    step: int = 0  # 0 = prompt pass; k = k-th decode step

    @property
    def is_padding(self) -> torch.Tensor:
        return self.positions < 0

    @property
    def is_generated(self) -> torch.Tensor:
        return self.positions >= self.prompt_lengths[:, None]

    @property
    def is_prompt(self) -> torch.Tensor:
        return (self.positions >= 0) & ~self.is_generated


HookFn = Callable[[torch.Tensor, HookContext], "torch.Tensor | None"]


@dataclass
class HookHandle(UndoHandle):
    """Hooks registered on a :class:`~hooked.HookedModel`.

    Use as a context manager (``with model.hooks({...}):``) or keep it and call
    :meth:`remove`. Removal is idempotent, and leaving a ``with`` block through an
    exception removes the hooks too.
    """

    _registry: dict
    entries: list = field(default_factory=list)  # [(site, fn)]
    metadata: dict = field(default_factory=dict)

    def _undo(self) -> None:
        for site, fn in self.entries:
            fns = self._registry.get(site, [])
            for i, f in enumerate(fns):
                if f is fn:
                    del fns[i]
                    break
            if not fns:
                self._registry.pop(site, None)
        self.entries = []

    @property
    def active(self) -> bool:
        return bool(self.entries)
