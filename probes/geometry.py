"""Representation geometry: RankMe and alpha-ReQ (as used by Li et al. 2025, "Tracing the
Representation Geometry of Language Models from Pretraining to Post-training").

Both read the eigenvalue spectrum lambda_1 >= ... >= lambda_d of the feature covariance
Sigma = (1/N) (X - mean)^T (X - mean) of representations ``X [N, d]``:

* RankMe (Garrido et al. 2023): p_i = lambda_i / sum_j lambda_j,
  RankMe = exp(-sum_i p_i log p_i)  -- an effective rank between 1 and min(N, d).
* alpha-ReQ (Agrawal et al. 2022): lambda_i ~ i^(-alpha); alpha is minus the least-squares
  slope of log(lambda_i) against log(i) over the non-negligible eigenvalues.
"""
from __future__ import annotations

import numpy as np
import torch


def spectrum(X, center: bool = True) -> torch.Tensor:
    """Eigenvalues of the (centred) covariance of ``X [N, d]``, descending, float64."""
    if isinstance(X, np.ndarray):
        X = torch.from_numpy(X)
    if not isinstance(X, torch.Tensor):
        raise TypeError(f"X must be a torch.Tensor or numpy array, got {type(X).__name__}.")
    X = X.detach().cpu().double()
    if X.dim() != 2:
        X = X.reshape(X.shape[0], -1) if X.dim() > 2 else X
    if X.dim() != 2 or X.shape[0] < 2:
        raise ValueError(f"X must be [N, d] with N >= 2 examples; got shape {tuple(X.shape)}.")
    if not bool(torch.isfinite(X).all()):
        raise ValueError("X contains NaN or infinite values; geometry needs finite activations.")
    if center:
        X = X - X.mean(0, keepdim=True)
    # singular values of X/sqrt(N) squared are the covariance eigenvalues; cheaper when N << d
    s = torch.linalg.svdvals(X / np.sqrt(X.shape[0]))
    return (s ** 2).sort(descending=True).values


def rankme(X, center: bool = True, eps: float = 1e-12) -> float:
    """RankMe = exp(entropy of the normalised covariance eigenvalue spectrum) of ``X [N, d]``."""
    lam = spectrum(X, center)
    total = lam.sum()
    if total <= eps:
        raise ValueError("All representations are identical (zero variance); RankMe is undefined.")
    p = lam / total
    p = p[p > eps]
    return float(torch.exp(-(p * p.log()).sum()))


def alpha_req(X, center: bool = True, rel_tol: float = 1e-10, max_rank: int | None = None) -> float:
    """alpha-ReQ: decay exponent of the eigenvalue power law lambda_i ~ i^-alpha (log-log fit).

    Eigenvalues below ``rel_tol * lambda_1`` (numerically zero, e.g. beyond rank N-1) are dropped;
    ``max_rank`` limits the fit to the leading eigenvalues.
    """
    lam = spectrum(X, center)
    keep = lam > rel_tol * lam[0]
    lam = lam[keep]
    if max_rank is not None:
        lam = lam[:max_rank]
    if len(lam) < 2:
        raise ValueError("alpha-ReQ needs at least two non-zero eigenvalues; give more varied examples.")
    x = torch.log(torch.arange(1, len(lam) + 1, dtype=torch.float64))
    yv = torch.log(lam)
    xc, yc = x - x.mean(), yv - yv.mean()
    slope = (xc * yc).sum() / (xc * xc).sum()
    return float(-slope)


def site_geometry(model, prompts, sites="resid_post.*", positions="last", batch_size=16,
                  progress=None) -> dict:
    """RankMe and alpha-ReQ for every site matching ``sites`` from one capture: {site: (rankme, alpha)}."""
    from .sweep import _expand
    concrete = _expand(model, sites)
    acts = model.capture(list(prompts), sites=concrete, positions=positions, batch_size=batch_size,
                         progress=progress)
    out = {}
    for s in concrete:
        X = acts[s].reshape(acts[s].shape[0], -1)
        out[s] = (rankme(X), alpha_req(X))
    return out
