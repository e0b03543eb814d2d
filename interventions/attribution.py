"""Attribution patching: gradient estimates of every activation-patching cell in a few passes.

Exact activation patching (:func:`interventions.activation_patching`) runs one forward per
site x position. Attribution patching replaces each run by a first-order estimate taken on
the corrupted run:

* ``method="atp"`` -- AtP (Nanda 2023, "Attribution Patching"; Kramar et al. 2024,
  arXiv 2403.00745, Eq. 2): for site ``s`` and token ``t``

      m(patch s_t) - m(corrupted)  ~=  (a_clean - a_corrupted)[t] . dm/da[t] |_corrupted

  two forwards (clean, corrupted) and one backward for all cells at once.
* ``method="ig"`` -- integrated gradients (Sundararajan et al. 2017, arXiv 1703.01365) along
  the straight path from the corrupted to the clean activation of each site, as used for
  circuit discovery by Marks et al. 2024 (arXiv 2403.19647, Eq. 3):

      (a_clean - a_corrupted) . (1/k) sum_{j=1..k} dm/da |_{a = a_corr + (j - 1/2)/k (a_clean - a_corr)}

  (midpoint rule, ``k = ig_steps``; the k interpolation points of one site run as one batch).
  TransformerLens 4.3 raises ``NotImplementedError`` for this variant.

Both are exact for a metric linear in the site (tested). Cells are summed over the
feature axes of a site, or per head for ``attn.head_out`` / ``attn.q/k/v`` (rows
``"attn.head_out.L[h]"``). Kramar et al.'s AtP* (the QK fix for saturated attention and
GradDrop) is not implemented.

The result is the :class:`~interventions.patching.PatchingResult` of exact patching (same
``sites``/``positions``/``recovered`` as a fraction of the clean-minus-corrupted metric
gap), so the two compare cell by cell and plot the same way.
"""

from __future__ import annotations

from typing import Callable

import torch

from hooked import sites as _sites

from ._common import check_writable_site, token_ids
from .evaluate import logit_difference
from .patching import PatchingResult

METHODS = ("atp", "ig")
HEAD_KINDS = ("attn.head_out", "attn.q", "attn.k", "attn.v")


def _metric(model, answers, metric, n: int) -> Callable[[torch.Tensor], torch.Tensor]:
    if metric is not None:
        return metric
    if not (isinstance(answers, (tuple, list)) and len(answers) == 2):
        raise ValueError("attribution_patching needs answers=(clean_answer, corrupted_answer) for the default "
                         f"logit-difference metric, or metric=fn(logits) -> tensor; got answers={answers!r}.")
    good = token_ids(model, answers[0], n, "clean answer")
    bad = token_ids(model, answers[1], n, "corrupted answer")
    return lambda logits: logit_difference(logits, good.to(logits.device), bad.to(logits.device)).mean()


def _cells(model, names, diff: dict, grad: dict, mask: torch.Tensor, cols: list, heads: bool):
    """Rows (site or site[h]) x columns of sum over rows/features of diff * grad at real-token columns."""
    pos = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, -1).cpu()  # real-token index per slot
    rows, labels = [], []
    for name in names:
        prod = (diff[name] * grad[name]).float().cpu()  # [B, T, ...]
        per_head = heads and _sites.parse(name).kind in HEAD_KINDS
        prod = prod.sum(-1) if per_head else prod.flatten(2).sum(-1)  # [B, T, H] or [B, T]
        cols_out = []
        for c in cols:
            sel = (pos >= 0) if c == "all" else (pos == c)
            cols_out.append((prod * sel.reshape(*sel.shape, *([1] * (prod.dim() - 2)))).sum((0, 1)))
        block = torch.stack(cols_out, -1)  # [H, C] or [C]
        if per_head:
            rows.extend(block)
            labels.extend(f"{name}[{h}]" for h in range(block.shape[0]))
        else:
            rows.append(block)
            labels.append(name)
    return torch.stack(rows), labels


def attribution_patching(model, clean, corrupted, sites="resid_post.*", positions="each", answers=None,
                         metric: Callable[[torch.Tensor], torch.Tensor] | None = None, method: str = "atp",
                         ig_steps: int = 8, heads: bool = True) -> PatchingResult:
    """Estimate :func:`~interventions.activation_patching` for every site x position by gradients.

    ``method`` is ``"atp"`` or ``"ig"`` (see the module docstring for the formulas);
    ``positions`` is ``"each"`` (one column per real-token index), ``"all"`` or a list of
    real-token indices, as for exact patching. ``metric(logits)`` must return a tensor
    computed from the logits (a scalar, or one value per prompt, which is averaged); the
    default is the mean logit difference of ``answers=(clean, corrupted)``. Sequence-level
    metrics (e.g. a summed log-probability of a completion) work the same way. With
    ``heads=True`` the head sites get one row per head.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown attribution method {method!r}; use one of {METHODS} (or activation_patching "
                         "for exact patching).")
    if method == "ig" and ig_steps < 1:
        raise ValueError(f"ig_steps must be >= 1; got {ig_steps}.")
    clean = [clean] if isinstance(clean, str) else list(clean)
    corrupted = [corrupted] if isinstance(corrupted, str) else list(corrupted)
    if len(clean) != len(corrupted) or not clean:
        raise ValueError(f"Need as many clean as corrupted prompts (and at least one); got {len(clean)} and "
                         f"{len(corrupted)}.")
    names = _sites.expand(model, sites)
    for n in names:
        check_writable_site(model, n)
    raw_metric = _metric(model, answers, metric, len(clean))

    def scalar(logits):
        v = raw_metric(logits)
        return v.mean() if isinstance(v, torch.Tensor) and v.dim() > 0 else v

    enc_c, enc_x = model.tokenize(clean), model.tokenize(corrupted)
    if not torch.equal(enc_c["attention_mask"].cpu(), enc_x["attention_mask"].cpu()):
        raise ValueError(
            f"Clean and corrupted prompts must have the same number of tokens pair by pair; clean lengths "
            f"{enc_c['attention_mask'].sum(1).tolist()}, corrupted {enc_x['attention_mask'].sum(1).tolist()}.")
    clean_metric, clean_acts, _ = model.gradients(enc_c["input_ids"], enc_c["attention_mask"], names, scalar)
    corr_metric, corr_acts, grads = model.gradients(enc_x["input_ids"], enc_x["attention_mask"], names, scalar)
    denom = clean_metric - corr_metric
    if abs(denom) < 1e-8:
        raise ValueError(f"The clean run (metric {clean_metric:.6g}) and the corrupted run ({corr_metric:.6g}) agree, "
                         "so there is nothing to recover; pick prompts/answers whose metric differs.")
    diff = {n: clean_acts[n] - corr_acts[n] for n in names}
    if method == "ig":
        grads = {n: _ig_mean_grad(model, enc_x, n, corr_acts[n], diff[n], scalar, ig_steps) for n in names}
    mask = enc_x["attention_mask"]
    n_real = int(mask.sum(1).max())
    if positions == "each":
        cols = list(range(n_real))
    elif positions == "all":
        cols = ["all"]
    else:
        cols = [positions] if isinstance(positions, int) else list(positions)
        bad = [p for p in cols if not isinstance(p, int) or not 0 <= p < n_real]
        if bad:
            raise ValueError(f"positions {bad} are not real-token indices 0..{n_real - 1}; use 'each', 'all' or ints.")
    est, labels = _cells(model, names, diff, grads, mask, cols, heads)
    try:
        tokens = list(model.to_str_tokens(clean[0]))
    except Exception:  # labels are cosmetic
        tokens = None
    return PatchingResult(sites=labels, positions=cols, recovered=est / denom, patched_metric=corr_metric + est,
                          clean_metric=clean_metric, corrupted_metric=corr_metric, tokens=tokens,
                          meta={"method": method, "ig_steps": ig_steps if method == "ig" else None})


def _ig_mean_grad(model, enc, name: str, a_corr: torch.Tensor, diff: torch.Tensor, scalar, k: int) -> torch.Tensor:
    """Mean gradient at ``name`` over the k midpoints of the corrupted -> clean path (one batched pass)."""
    b = enc["input_ids"].shape[0]
    alphas = (torch.arange(k, dtype=a_corr.dtype) + 0.5) / k
    ids = enc["input_ids"].repeat(k, 1)
    mask = enc["attention_mask"].repeat(k, 1)
    shape = (k * b,) + (1,) * (a_corr.dim() - 1)
    path = (a_corr.repeat(k, *([1] * (a_corr.dim() - 1)))
            + alphas.repeat_interleave(b).reshape(shape).to(a_corr.device) * diff.repeat(k, *([1] * (diff.dim() - 1))))

    def interpolate(act, ctx):
        return path.to(device=act.device, dtype=act.dtype)

    def summed(logits):  # each copy's metric, summed: every copy gets its own gradient
        per = [scalar(logits[j * b:(j + 1) * b]) for j in range(k)]
        return torch.stack([torch.as_tensor(p) for p in per]).sum()

    _, _, grads = model.gradients(ids, mask, [name], summed, replace={name: interpolate})
    return grads[name].reshape(k, b, *a_corr.shape[1:]).mean(0)
