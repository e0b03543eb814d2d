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
  folds and label sets of a layer are one GEMM over the shared activations, the gradients another;
* every problem runs as scikit-learn's does (identity initial inverse Hessian) beside a twin column
  whose initial inverse Hessian is Boehning's bound on the logistic Hessian (Boehning & Lindsay 1988:
  ``H <= B = Z^T Z / (4n) + lambda I`` everywhere, and ``B`` is the Hessian at ``w = 0``),
  restricted to the bound's top eigendirections (found once per layer by randomized subspace
  iteration) and carried into each fold's own standardised coordinates; the first column to
  converge wins, the twin held to a tighter gradient test (a preconditioned run stops farther from
  the optimum at the same test) -- twins are columns of the same GEMMs;
* the layers are interleaved over as many Python threads as torch has threads, one torch thread
  each: the many small ops of the batched loop then keep every core busy;
* the line search re-weights precomputed scores along the step (no pass over the data), the
  bound is applied once per iteration (``2 r d`` numbers read per layer and column), and converged
  layers leave the batch.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from hooked.util import torch_threads

from .preconditioners import boehning_dense, boehning_lowrank, boehning_woodbury

METHODS = ("logistic", "mass_mean", "lda")
BOUNDS = ("auto", "lowrank", "dense", "woodbury", "none")
TWIN_TOL = 0.2  # bound="auto": the bound's twin stops at this fraction of tol (see fit_logistic_folds)


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


def _fold_stats(Xc, M, n):
    """Per-fold mean and sd (population) of the centred stack; the sd of a constant feature is 1."""
    mu = torch.matmul(M, Xc) / n[None, :, None]                                      # [L, F, d]
    var = torch.matmul(M, Xc * Xc) / n[None, :, None] - mu * mu
    sd = var.clamp_min(0).sqrt()
    return mu, torch.where(sd < 1e-6 * (1 + mu.abs()), torch.ones_like(sd), sd)


def fit_logistic_folds(X: torch.Tensor, labels: np.ndarray, train_masks: np.ndarray, C: float = 1.0,
                       tol: float = 1e-4, max_iter: int = 500, memory: int = 10, bound: str = "auto",
                       workers: int | None = None):
    """L2 logistic regression for every (layer, fold, label set) at once.

    ``X [L, N, d]`` activations; ``labels [K, N]`` binary label sets (the task and, e.g., a
    control task); ``train_masks [F, N]`` boolean training rows of each fold. Each problem is
    scikit-learn's ``make_pipeline(StandardScaler(), LogisticRegression(C=C))`` on its fold.

    Returns ``(coef [L, F, K, d], intercept [L, F, K], n_iter [L, F, K], converged [L, F, K])``
    in *raw* activation space: ``score(x) = x @ coef + intercept``.

    L-BFGS (memory ``memory``) runs in each fold's standardised coordinates with an initial inverse
    Hessian ``H0`` chosen by ``bound``:

    * ``"auto"``: each problem twice, as columns of the same GEMMs -- with the identity (scikit-learn's
      own start) and with the low-rank bound below -- and the first to converge wins; the twin must
      reach ``TWIN_TOL * tol`` (0.2 x), the identity ``tol``;
    * ``"lowrank"``: Boehning's bound restricted to its top ``preconditioners.LOWRANK`` (64) eigendirections
      (:func:`probes.preconditioners.boehning_lowrank`);
    * ``"dense"``: the bound's exact inverse, one ``d x d`` per layer (:func:`probes.preconditioners.boehning_dense`);
    * ``"woodbury"``: each fold's own bound over its training rows (:func:`probes.preconditioners.boehning_woodbury`);
    * ``"none"``: the identity alone.

    The bound is built once per layer on the layer standardised over all rows; each fold's problem
    lives in coordinates standardised by the fold's training rows, so the bound is carried there:
    ``H0 g = r * B^-1 (r * g)`` with ``r = sd_fold / sd_layer`` per feature. A held-out outlier row
    makes a feature's fold sd far smaller than the layer's (0.46 of it on a SmolLM2 layer), and the
    unscaled bound then mis-states that feature's curvature by ``1/r^2``: on the third-from-last
    token of `emotional` the unscaled dense bound took 162-366 iterations a layer, the scaled one (and
    the scaled low-rank one) 57-106, the identity 77-161.

    Why the race and the twin's tighter test: at the same gradient test (sup norm <= ``tol``, as
    scikit-learn's ``gtol``) a preconditioned run stops farther from the optimum than the identity's
    path. On real `emotional` layers (``C = 1``, ``n < d``: the penalty is the only curvature in many
    directions) the low-rank bound alone reached ``tol`` in 13-29 iterations a problem where the
    identity needed 12-130, but its held-out scores were 2.3-3.5 from scikit-learn's exact optimum
    (the identity's 0.3-1.0), and up to 0.029 of a layer's accuracy differed (scikit-learn's own
    default loop: 0.008). At ``tol / 10`` it was as close as the identity, at about the identity's
    cost on the hardest layers. So the identity runs as scikit-learn's does, and the bound's twin
    wins only where it reaches the tighter test first: the slow, ill-conditioned problems (the
    synthetic stack: 8-10 iterations against the identity's 150-240; the first layers of `factual`
    and `inferential`). Per iteration every column costs two passes over the activations -- the
    step's scores (the Armijo line search then only re-weights them, no pass) and the gradient --
    plus, for a twin, the bound on the new gradient (``H0 y`` of stored pairs is the difference of
    those, so the two-loop recursion applies no bound); layers whose problems are all solved leave
    the batch.

    ``workers`` (default: torch's thread count): the layers are split (interleaved, so deep and
    shallow layers mix) over that many Python threads, each running its share with one torch
    thread. The batched L-BFGS issues many small ops that one torch thread runs no faster than
    two; two such streams side by side keep both cores busy (about 10 % faster than one stream
    on two torch threads, on real [30, 320, 576] activations). Every layer's problems are
    independent, so the result is the same.
    """
    if bound not in BOUNDS:
        raise ValueError(f"bound={bound!r}: use 'auto' or 'lowrank' (Boehning's bound, top eigendirections), "
                         "'dense' (its exact inverse per layer), 'woodbury' (each fold's own bound, for N well "
                         "below d) or 'none' (the identity, scikit-learn's start).")
    if workers is None:
        workers = torch.get_num_threads()
    L = X.shape[0]
    workers = max(1, min(int(workers), L))
    if workers == 1:
        return _fit_logistic_folds(X, labels, train_masks, C, tol, max_iter, memory, bound)
    parts = [torch.arange(k, L, workers) for k in range(workers)]
    with torch_threads(1), ThreadPoolExecutor(workers) as pool:
        outs = list(pool.map(lambda idx: _fit_logistic_folds(X[idx], labels, train_masks, C, tol, max_iter,
                                                             memory, bound), parts))
    results = []
    for k in range(4):
        first = outs[0][k]
        full = first.new_empty((L, *first.shape[1:]))
        for idx, o in zip(parts, outs):
            full[idx] = o[k]
        results.append(full)
    return tuple(results)


def _fit_logistic_folds(X, labels, train_masks, C, tol, max_iter, memory, bound):
    X = X.float()
    L, N, d = X.shape
    Y = torch.as_tensor(np.asarray(labels), dtype=torch.float32).reshape(-1, N)       # [K, N]
    train = torch.as_tensor(np.asarray(train_masks), dtype=torch.bool).reshape(-1, N)  # [F, N]
    M = train.float()
    K, F = Y.shape[0], M.shape[0]
    n = M.sum(1)
    lam = 1.0 / (C * n)
    centre = X.mean(1, keepdim=True)
    Xc = X - centre                                       # global centring: stable fp32 moments
    mu, sd = _fold_stats(Xc, M, n)
    sd_all = Xc.pow(2).mean(1, keepdim=True).sqrt()
    sd_all = torch.where(sd_all < 1e-6, torch.ones_like(sd_all), sd_all)
    c0 = F * K                                            # problems per layer
    R = 2 if bound == "auto" else 1                       # "auto": each problem's identity column and its twin
    mu_p = mu.repeat_interleave(K, 1)                     # [L, c0, d] per problem
    sd_p = sd.repeat_interleave(K, 1)
    col = {"m": M.repeat_interleave(K, 0),                # [c0, N] training rows of each problem
           "y": Y.repeat(F, 1),                           # [c0, N] labels of each problem
           "n": n.repeat_interleave(K),                   # [c0]
           "lam": lam.repeat_interleave(K)}
    col["mn"] = col["m"] / col["n"][:, None]              # training rows, weighted 1/n
    col = {k: torch.cat([val] * R) for k, val in col.items()}
    # each column's gradient test; the bound's twin is held to TWIN_TOL x tol (see fit_logistic_folds)
    col["tol"] = torch.cat([torch.full((c0,), float(tol))] + [torch.full((c0,), float(tol) * TWIN_TOL)] * (R - 1))
    # compacted as layers converge; "rs" carries the layer's bound into each fold's coordinates
    data = {"X": Xc, "mu": mu_p.repeat(1, R, 1), "sd": sd_p.repeat(1, R, 1), "sa": sd_all, "rs": sd_p / sd_all}

    if bound == "none":
        def precond(g):
            return g
        precond.state = {}
    else:
        if bound in ("auto", "lowrank"):
            base = boehning_lowrank(Xc, sd_all, float(lam.mean()))
        elif bound == "woodbury":
            base = boehning_woodbury(data, train, F, K, C)
        else:
            base = boehning_dense(Xc, sd_all, float(lam.mean()))

        def precond(g):     # the layer's bound in each fold's standardised coordinates
            return data["rs"] * base(data["rs"] * g)
        precond.state = base.state
    vecdot = torch.linalg.vecdot

    # v = [w, b] in the fold's standardised coordinates: one tensor [nl, cols, d + 1]
    def scores(v):          # scores of all rows [nl, cols, N]
        u = v[..., :d] / data["sd"]
        return torch.baddbmm((v[..., d] - vecdot(u, data["mu"]))[..., None], u, data["X"].transpose(1, 2))

    def gradient(s, v):
        r = (torch.sigmoid(s) - col["y"]) * col["mn"]
        gb = r.sum(-1, keepdim=True)
        gw = torch.addcmul(torch.baddbmm(-gb * data["mu"], r, data["X"]) / data["sd"], col["lam"][:, None],
                           v[..., :d])
        return torch.cat([gw, gb], -1)

    def h0(g):              # initial inverse Hessian: the bound (or identity) for w, Boehning's 1/4 for b
        gw = g[..., :d]
        hw = precond(gw) if R == 1 else torch.cat([gw[:, :c0], precond(gw[:, c0:])], 1)
        return torch.cat([hw, 4.0 * g[..., d:]], -1)

    def loss_of(s, wsq):
        return ((torch.nn.functional.softplus(s) - col["y"] * s) * col["m"]).sum(-1) / col["n"] + 0.5 * col["lam"] * wsq

    def converged(g):       # scikit-learn's gtol test on [grad_w, grad_b]
        return g.abs().amax(-1) <= col["tol"]

    def solved(conv):       # a problem is solved once either of its columns converged
        return conv if R == 1 else conv.view(-1, R, c0).any(1).repeat(1, R)

    out_v = torch.zeros(L, R * c0, d + 1)
    out_conv = torch.zeros(L, R * c0, dtype=torch.bool)
    n_iter = torch.zeros(L, R * c0, dtype=torch.long)
    i = torch.arange(L)                                   # layers still in the batch
    v, s = torch.zeros(L, R * c0, d + 1), torch.zeros(L, R * c0, N)
    loss = loss_of(s, torch.zeros(L, R * c0))
    g = gradient(s, v)
    hg = h0(g)
    mem = []                                              # (s_k, y_k, H0 y_k, rho_k)
    done = solved(converged(g))
    for _ in range(max_iter):
        finished = done.all(1)
        n_fin = int(finished.sum())
        if n_fin and (n_fin == len(i) or n_fin >= 0.2 * len(i)):   # converged layers leave the batch
            out_v[i[finished]] = v[finished]
            out_conv[i[finished]] = converged(g)[finished]
            keep = ~finished
            i = i[keep]
            if not len(i):
                break
            v, s, loss, g, hg, done = (t[keep] for t in (v, s, loss, g, hg, done))
            mem = [tuple(t[keep] for t in pair) for pair in mem]
            for st in (data, precond.state):
                for k, val in st.items():
                    if val.shape[0] == len(keep):
                        st[k] = val[keep]
        # two-loop recursion; H0 q = H0 g - sum alpha H0 y needs no further pass
        q, r = g, hg
        alphas = []
        for s_k, y_k, h_k, rho in reversed(mem):
            al = (rho * vecdot(s_k, q))[..., None]
            q, r = torch.addcmul(q, al, y_k, value=-1.0), torch.addcmul(r, al, h_k, value=-1.0)
            alphas.append(al)
        if mem:
            s_k, y_k, h_k, rho = mem[-1]
            yhy = vecdot(y_k, h_k)
            scale = torch.where((yhy > 0) & (rho > 0), 1.0 / (rho * yhy).clamp_min(1e-30), torch.ones_like(yhy))
            r = r * scale[..., None]
        for (s_k, y_k, h_k, rho), al in zip(mem, reversed(alphas)):
            r = torch.addcmul(r, al - (rho * vecdot(y_k, r))[..., None], s_k)
        p = -r
        slope = vecdot(g, p)
        bad = slope >= 0                                  # not a descent direction: -H0 g
        if bool(bad.any()):
            p = torch.where(bad[..., None], -hg, p)
            slope = vecdot(g, p)
        act = ~done
        p = p * act[..., None]
        sp = scores(p)                                    # scores along the step: one pass
        w, pw = v[..., :d], p[..., :d]
        ww, wp, pp = vecdot(w, w), vecdot(w, pw), vecdot(pw, pw)
        t = torch.ones_like(loss)
        for _ in range(30):                               # backtracking (Armijo), no pass
            l_new = loss_of(torch.addcmul(s, t[..., None], sp), ww + 2 * t * wp + t * t * pp)
            ok = (l_new <= loss + 1e-4 * t * slope) | done
            if bool(ok.all()):
                break
            t = torch.where(ok, t, 0.5 * t)
        stalled = ~ok        # no decrease even for tiny steps: fp32 precision reached; stop there
        t = torch.where(stalled, torch.zeros_like(t), t)[..., None]
        s_k = t * p
        v, s = v + s_k, torch.addcmul(s, t, sp)
        loss = torch.where(stalled, loss, l_new)
        g_n = gradient(s, v)
        hg_n = h0(g_n)
        y_k = g_n - g
        sy = vecdot(s_k, y_k)
        rho = torch.where((sy > 1e-12) & act & ~stalled, 1.0 / sy.clamp_min(1e-30), torch.zeros_like(sy))
        mem.append((s_k, y_k, hg_n - hg, rho))
        if len(mem) > memory:
            mem.pop(0)
        g, hg = g_n, hg_n
        n_iter[i] += (act & ~stalled).long()
        done = done | stalled | solved(converged(g))
    if len(i):
        out_v[i], out_conv[i] = v, converged(g)
    if R > 1:  # each problem: the first column that converged (the identity's if both or neither did)
        pick = out_conv.view(L, R, c0).int().argmax(1)                         # [L, c0]
        out_v = out_v.view(L, R, c0, d + 1).gather(1, pick[:, None, :, None].expand(L, 1, c0, d + 1))[:, 0]
        out_conv = out_conv.view(L, R, c0).any(1)
        n_iter = n_iter.view(L, R, c0).gather(1, pick[:, None]).squeeze(1)
    out_w, out_b = out_v[..., :d], out_v[..., d]
    u = out_w / sd_p
    intercept = out_b - (u * mu_p).sum(-1) - (u * centre).sum(-1)   # back to uncentred raw space
    return (u.reshape(L, F, K, d), intercept.reshape(L, F, K), n_iter.reshape(L, F, K),
            out_conv.reshape(L, F, K))
