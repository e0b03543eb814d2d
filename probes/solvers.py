"""Batched linear-probe solvers: every (layer, fold, label set) problem of a sweep at once.

One home for each formula:

* :func:`closed_form` -- mass-mean (Marks & Tegmark 2023, arXiv 2310.06824) and LDA weights,
  batched over a leading axis (``LinearProbe`` calls it with a batch of one);
* :func:`fit_logistic_folds` -- L2 logistic regression with scikit-learn's objective, for all
  folds and label sets of every layer in one batched quasi-Newton run.

The logistic objective is scikit-learn's (``LogisticRegression(C=C)``, lbfgs) on features
standardised with the *training fold's* mean and standard deviation::

    f(w, b) = (1/n) sum_i [log(1 + exp(s_i)) - y_i s_i] + 1/(2 C n) ||w||^2,   s_i = z_i.w + b

with the intercept ``b`` unpenalised. Every problem stops when its gradient satisfies
``max(|grad_w|_inf, |grad_b|) <= tol`` -- the projected-gradient test scikit-learn passes to
L-BFGS-B as ``gtol`` -- so the solutions are equally converged.

How it is fast (30 layers x 5 folds x 2 label sets are 300 problems):

* the standardisation is never materialised: ``z.w = x.(w/sd) - mu.(w/sd)``, so the scores of all
  folds and label sets of a layer are one GEMM ``X_l @ U`` over the shared activations, and the
  gradients one GEMM ``R^T @ X_l``;
* L-BFGS runs in coordinates preconditioned by Boehning's bound on the logistic Hessian,
  ``B = Z^T Z / (4n) + lambda I`` (Boehning & Lindsay 1988: ``H <= B`` everywhere), factorised
  once per (layer, fold) by Cholesky. ``B`` is exactly the Hessian at ``w = 0`` and bounds it
  elsewhere, so the first step is a Newton step and later steps only have to learn how much
  the curvature shrank; a few passes replace the hundreds of plain L-BFGS iterations.
  The fold Gram matrices come from one pass over the data: ``G_train(f) = G_all - G_test(f)``.
"""
from __future__ import annotations

import numpy as np
import torch

METHODS = ("logistic", "mass_mean", "lda")


def shrunk(cov: torch.Tensor, gamma: float) -> torch.Tensor:
    """``(1 - gamma) cov + (gamma tr(cov)/d + 1e-8) I`` for a batch ``[..., d, d]``."""
    d = cov.shape[-1]
    tr = cov.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None] / d
    eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
    return (1 - gamma) * cov + (gamma * tr + 1e-8) * eye


def closed_form(Z: torch.Tensor, y: torch.Tensor, method: str, shrinkage: float = 0.1):
    """Mass-mean or LDA probe for a batch of problems sharing labels.

    ``Z [B, n, d]`` (already standardised if wanted), ``y [n]`` in {0, 1}. Returns ``w [B, d]``
    and ``b [B]`` with score ``z.w + b``:

    * ``mass_mean`` (Marks & Tegmark 2023, arXiv 2310.06824): ``w = mu_1 - mu_0``,
      ``b = -w.(mu_0 + mu_1)/2``;
    * ``lda`` (Fisher; the IID mass-mean probe of Marks & Tegmark):
      ``w = S^-1 (mu_1 - mu_0)`` with the pooled within-class covariance
      ``Sigma_w = sum_c sum_{i in c} (z_i - mu_c)(z_i - mu_c)^T / (n - 2)`` shrunk to
      ``S = (1 - gamma) Sigma_w + gamma tr(Sigma_w)/d I``, and
      ``b = -w.(mu_0 + mu_1)/2 + log(pi_1 / pi_0)``.
    """
    if method not in ("mass_mean", "lda"):
        raise ValueError(f"closed_form fits 'mass_mean' or 'lda', not {method!r}.")
    yb = torch.as_tensor(np.asarray(y), dtype=torch.bool, device=Z.device)
    m1, m0 = Z[:, yb].mean(1), Z[:, ~yb].mean(1)
    diff = m1 - m0
    if method == "mass_mean":
        return diff, -(diff * (m0 + m1) / 2).sum(-1)
    centred = torch.where(yb[None, :, None], Z - m1[:, None], Z - m0[:, None]).double()
    cov = shrunk(centred.transpose(1, 2) @ centred / max(Z.shape[1] - 2, 1), shrinkage)
    chol, info = torch.linalg.cholesky_ex(cov)
    rhs = diff.double().unsqueeze(-1)
    if bool(info.any()):  # singular (shrinkage=0 and n < d): least squares copes
        w = torch.linalg.lstsq(cov, rhs).solution
    else:
        w = torch.cholesky_solve(rhs, chol)
    w = w.squeeze(-1).to(Z.dtype)
    p1 = float(yb.double().mean())
    return w, -(w * (m0 + m1) / 2).sum(-1) + np.log(p1 / (1 - p1))


def fit_logistic_folds(X: torch.Tensor, labels: np.ndarray, train_masks: np.ndarray, C: float = 1.0,
                       tol: float = 1e-4, max_iter: int = 500, memory: int = 10):
    """L2 logistic regression for every (layer, fold, label set) at once.

    ``X [L, N, d]`` activations; ``labels [K, N]`` binary label sets (the task and, e.g., a
    control task); ``train_masks [F, N]`` boolean training rows of each fold. Each problem is
    scikit-learn's ``make_pipeline(StandardScaler(), LogisticRegression(C=C))`` on its fold.

    Returns ``(coef [L, F, K, d], intercept [L, F, K], n_iter [L, F, K], converged [L, F, K])``
    in *raw* activation space: ``score(x) = x @ coef + intercept``.
    """
    X = X.float()
    L, N, d = X.shape
    Y = torch.as_tensor(np.asarray(labels), dtype=torch.float32).reshape(-1, N)       # [K, N]
    M = torch.as_tensor(np.asarray(train_masks), dtype=torch.float32).reshape(-1, N)  # [F, N]
    K, F = Y.shape[0], M.shape[0]
    n = M.sum(1)                                                                       # [F]
    lam = 1.0 / (C * n)                                                                # [F]

    # -- per-fold standardisation statistics and Boehning preconditioner ----------------------
    centre = X.mean(1, keepdim=True)
    Xc = X - centre                                       # global centring: stable fp32 moments
    sq = Xc * Xc
    mu = torch.matmul(M, Xc) / n[None, :, None]                                      # [L, F, d]
    var = torch.matmul(M, sq) / n[None, :, None] - mu * mu
    sd = var.clamp_min(0).sqrt()
    sd = torch.where(sd < 1e-6 * (1 + mu.abs()), torch.ones_like(sd), sd)
    # One preconditioner per layer, shared by its folds and label sets: Boehning's bound for the
    # whole data set standardised once. Each fold's own bound differs from it only by the fold's
    # sampling (its rows are 1 - 1/F of the data), which changes the speed, never the solution.
    sd_all = sq.mean(1).sqrt()
    del sq
    sd_all = torch.where(sd_all < 1e-6, torch.ones_like(sd_all), sd_all)
    corr = (Xc.transpose(1, 2) @ Xc) / N / sd_all[:, :, None] / sd_all[:, None, :]
    B = corr / 4 + float(lam.mean()) * torch.eye(d)
    chol, info = torch.linalg.cholesky_ex(B)
    if bool(info.any()):  # fp32 round-off on a nearly singular bound: redo those in fp64
        chol = torch.linalg.cholesky(B.double()).float()
    # w = R^T v with R = chol(B)^-1: in v the bound is the identity
    R = torch.linalg.solve_triangular(chol, torch.eye(d).expand(L, d, d), upper=False)
    Rt = R.transpose(1, 2).contiguous()

    # -- problem layout: columns (f, k) of each layer ------------------------------------------
    cols = F * K
    colmask = M.repeat_interleave(K, 0).T                  # [N, F*K] training rows of each column
    coly = Y.repeat(F, 1).T                                # [N, F*K] labels of each column
    ncol = n.repeat_interleave(K)                          # [F*K]
    lamcol = lam.repeat_interleave(K)
    mu_c = mu.repeat_interleave(K, 1)                      # [L, F*K, d]
    sd_c = sd.repeat_interleave(K, 1)

    def w_of(v):   # v [L, cols, d+1] -> w = R^T v_w [L, cols, d], b = 2 v_b [L, cols]
        return torch.bmm(v[..., :d], R), 2.0 * v[..., d]

    def grad_v(gw, gb):  # chain rule: v-gradient = R g_w, and 2 g_b for b = 2 v_b
        return torch.cat([torch.bmm(gw, Rt), (2.0 * gb)[..., None]], -1)

    def evaluate(v):
        w, b = w_of(v)
        u = w / sd_c                                                   # raw-space weights
        offset = b - (u * mu_c).sum(-1)                                # [L, cols]
        s = torch.bmm(Xc, u.transpose(1, 2)) + offset[:, None, :]     # [L, N, cols]
        loss_rows = torch.nn.functional.softplus(s) - coly * s
        loss = (loss_rows * colmask).sum(1) / ncol + 0.5 * lamcol * (w * w).sum(-1)
        r = (torch.sigmoid(s) - coly) * colmask / ncol                 # [L, N, cols]
        xr = torch.bmm(r.transpose(1, 2), Xc)                          # [L, cols, d]
        rs = r.sum(1)                                                  # [L, cols]
        gw = (xr - rs[..., None] * mu_c) / sd_c + lamcol[:, None] * w
        return loss, gw, rs, w, b

    v = torch.zeros(L, cols, d + 1)
    loss, gw, gb, w, b = evaluate(v)
    g = grad_v(gw, gb)
    S, Yh, rho = [], [], []
    n_iter = torch.zeros(L, cols, dtype=torch.long)
    done = torch.maximum(gw.abs().amax(-1), gb.abs()) <= tol
    for it in range(max_iter):
        if bool(done.all()):
            break
        # two-loop recursion (identity initial Hessian: the preconditioner already scales it)
        q = g.clone()
        alphas = []
        for s_, y_, r_ in zip(reversed(S), reversed(Yh), reversed(rho)):
            a = r_ * (s_ * q).sum(-1)
            q = q - a[..., None] * y_
            alphas.append(a)
        if S:
            gamma = (S[-1] * Yh[-1]).sum(-1) / (Yh[-1] * Yh[-1]).sum(-1).clamp_min(1e-30)
            q = q * gamma[..., None]
        for (s_, y_, r_), a in zip(zip(S, Yh, rho), reversed(alphas)):
            bcoef = r_ * (y_ * q).sum(-1)
            q = q + (a - bcoef)[..., None] * s_
        direction = -q
        slope = (g * direction).sum(-1)
        bad = slope >= 0                      # not a descent direction: restart with -g
        if bool(bad.any()):
            direction = torch.where(bad[..., None], -g, direction)
            slope = torch.where(bad, -(g * g).sum(-1), slope)
        direction = torch.where(done[..., None], torch.zeros_like(direction), direction)
        step = torch.ones(L, cols)
        # backtracking (Armijo) line search, per problem
        for _ in range(20):
            v_new = v + step[..., None] * direction
            loss_new, gw_new, gb_new, w_new, b_new = evaluate(v_new)
            ok = (loss_new <= loss + 1e-4 * step * slope) | done
            if bool(ok.all()):
                break
            step = torch.where(ok, step, step * 0.5)
        # no decrease even for tiny steps: the gradient is at fp32 precision; stop that problem
        stalled = ~ok
        g_new = grad_v(gw_new, gb_new)
        s_vec, y_vec = v_new - v, g_new - g
        sy = (s_vec * y_vec).sum(-1)
        keep = (sy > 1e-10) & ~done
        S.append(torch.where(keep[..., None], s_vec, torch.zeros_like(s_vec)))
        Yh.append(torch.where(keep[..., None], y_vec, torch.zeros_like(y_vec)))
        rho.append(torch.where(keep, 1.0 / sy.clamp_min(1e-30), torch.zeros_like(sy)))
        if len(S) > memory:
            S.pop(0), Yh.pop(0), rho.pop(0)
        active = ~done & ~stalled
        v = torch.where(active[..., None], v_new, v)
        g = torch.where(active[..., None], g_new, g)
        loss = torch.where(active, loss_new, loss)
        gw = torch.where(active[..., None], gw_new, gw)
        gb = torch.where(active, gb_new, gb)
        n_iter += active.long()
        converged = torch.maximum(gw.abs().amax(-1), gb.abs()) <= tol
        done = done | converged | stalled
    converged = torch.maximum(gw.abs().amax(-1), gb.abs()) <= tol
    w, b = w_of(v)
    u = w / sd_c
    intercept = b - (u * mu_c).sum(-1) - (u * centre).sum(-1)   # back to uncentred raw space
    return (u.reshape(L, F, K, d), intercept.reshape(L, F, K), n_iter.reshape(L, F, K),
            converged.reshape(L, F, K))
