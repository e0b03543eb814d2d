"""Sweep one operator over latent steps, with KV-cache prefix reuse.

Intervening at step t leaves the question, ``<bot>`` and h_0..h_{t-1} untouched, so the
clean run's KV cache up to slot t is shared by the intervened rollout. The sweep runs
all intervened rollouts in lock-step with the clean one: when the clean rollout
reaches step t, the rows of its cache are copied into a new row group that receives
do(h_t := op(h_t)); every later pass feeds all groups in one batch. That is K + 1
passes in total instead of one full rollout (question prefill included) per step. With
``batched_readout=True`` the answer read-outs after every step come from one final pass over all
groups (a mask over the shared cache), so the latent passes stay one token wide.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .runner import LatentRollout, LatentRunner, StepContext


@dataclass
class StepSweep:
    """The clean rollout and one rollout per intervened step (``intervened[i]`` is step ``steps[i]``)."""

    clean: LatentRollout
    steps: list[int]
    intervened: list[LatentRollout]

    def by_step(self) -> dict[int, LatentRollout]:
        return dict(zip(self.steps, self.intervened))


def sweep_steps(runner: LatentRunner, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                n_latents: int, operator, steps=None, answer_ids: torch.Tensor | None = None,
                answer_mask: torch.Tensor | None = None, reuse_prefix: bool = True,
                readout: str = "all", batched_readout: bool = False) -> StepSweep:
    """Apply ``operator`` at each step in ``steps`` (default all 0..K-1), one rollout per step.

    reuse_prefix=False re-runs every intervened rollout from the start (the reference the
    benchmark compares against); both give the same numbers up to float rounding.
    readout: "all" (answer read-out after every step, needed for the influence matrix) or "final".
    batched_readout: with readout="all", the latent passes carry one token each and the read-outs
    after every n, for every row group, come from one forward at the end over the shared cache with a
    block attention mask (see `LatentRunner._batched_readouts`); the default False appends the read-out
    tokens to every pass. It applies to the from-start rollouts too.
    """
    steps = runner.check_steps(range(n_latents) if steps is None else steps, n_latents)
    if len(set(steps)) != len(steps):
        raise ValueError(f"steps must not repeat, got {steps}.")
    kw = dict(n_latents=n_latents, answer_ids=answer_ids, answer_mask=answer_mask, readout=readout,
              batched_readout=batched_readout)
    every = runner.check_readout(readout)
    if not reuse_prefix:
        clean = runner.rollout(input_ids, attention_mask, **kw)
        return StepSweep(clean, steps, [runner.rollout(input_ids, attention_mask, interventions={t: operator}, **kw)
                                        for t in steps])
    input_ids, mask, tail_ids, answer_ids, answer_mask = runner._prepare(
        input_ids, attention_mask, answer_ids, answer_mask, n_latents)
    B = input_ids.shape[0]
    ids = torch.arange(B, device=input_ids.device)
    batched = every and batched_readout
    state, hidden, first, logp = runner._prefill(input_ids, mask, tail_ids, answer_ids, answer_mask, True,
                                                 every and not batched)
    groups: list[int] = []             # group g (rows B*(g+1)..) = intervention at step groups[g]
    fed_hist, pre_hist, hid_hist, read_hist, logp_hist = [], [], [], [first], [logp]
    for t in range(n_latents):
        h = runner._to_latent(hidden)
        if t in steps:
            clean_h = h[:B]
            x = runner.apply(operator, clean_h, StepContext(t, n_latents, ids))
            state.append_rows(ids)
            groups.append(t)
            hidden = torch.cat([hidden, hidden[:B]], 0)
            h = torch.cat([h, clean_h], 0)
            fed = torch.cat([h[:-B], x], 0)
        else:
            fed = h
        n_rows = fed.shape[0]
        a_ids = None if answer_ids is None else answer_ids.repeat(n_rows // B, 1)
        a_mask = None if answer_mask is None else answer_mask.repeat(n_rows // B, 1)
        fed_hist.append(fed)
        pre_hist.append(h)
        hid_hist.append(hidden)
        hidden, first, logp = runner._step(state, fed, a_ids, a_mask,
                                           (every and not batched) or (t == n_latents - 1 and not batched))
        read_hist.append(first)
        logp_hist.append(logp)
    if batched:   # one read-out pass over every row group and every n (a group equals clean before its step)
        a_ids = None if answer_ids is None else answer_ids.repeat(state.mask.shape[0] // B, 1)
        a_mask = None if answer_mask is None else answer_mask.repeat(state.mask.shape[0] // B, 1)
        first, logp = runner._batched_readouts(state, n_latents, a_ids, a_mask)
        read_hist = list(first.unbind(1))
        logp_hist = [None] * (n_latents + 1) if logp is None else list(logp.unbind(1))

    def rows(tensor_list, g):
        """Stack the per-step tensors of group g (-1 = clean); before the group existed it equals clean."""
        start = B * (g + 1)
        return torch.stack([x[start:start + B] if x.shape[0] >= start + B else x[:B] for x in tensor_list], 1)

    def rollout(g):
        lp = None if answer_ids is None else rows(logp_hist, g)
        return LatentRollout(rows(fed_hist, g), rows(pre_hist, g), rows(hid_hist, g), rows(read_hist, g), lp)

    return StepSweep(rollout(-1), steps, [rollout(groups.index(t)) for t in steps])
