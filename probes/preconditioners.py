"""Boehning's bound on the logistic Hessian as L-BFGS's initial inverse Hessian, in three forms.

Boehning & Lindsay (1988): for L2 logistic regression on standardised features ``Z``,
``H <= B = Z^T Z / (4n) + lambda I`` everywhere, and ``B`` is the Hessian at ``w = 0``. Each builder takes
the layer stack (centred; ``[L, N, d]``) and returns ``g -> B^-1 g`` for a batch of gradients
``[L, columns, d]``, with its tensors in ``apply.state`` (leading axis: layers) so that the solver
(:mod:`probes.solvers`) can drop converged layers from them:

* :func:`boehning_lowrank` -- the bound's top eigendirections and a constant for the rest (the default);
* :func:`boehning_dense` -- the exact inverse of one bound per layer;
* :func:`boehning_woodbury` -- each fold's own bound over its training rows, by Woodbury.

The solver carries each into the fold's own standardised coordinates.
"""
from __future__ import annotations

import torch

LOWRANK = 64  # boehning_lowrank: the bound's eigendirections kept
POWER = 2     # subspace iterations that find them


def boehning_woodbury(data, train, F, K, C):
    """``g -> B_f^-1 g`` for every column, with Boehning's bound of the column's own training rows,
    ``B_f = Xs_T^T Xs_T / (4n) + I/(C n)`` (``Xs``: the layer standardised once), by Woodbury::

        B_f^-1 = n C [I - Xs_T^T (G_TT + 4/C I)^-1 Xs_T],   G = Xs Xs^T  (N x N per layer).

    ``(A_TT)^-1`` of every fold comes from the layer's single inverse ``A^-1`` (A = G + 4/C I):
    ``(A_TT)^-1 = A^-1_TT - A^-1_TE (A^-1_EE)^-1 A^-1_ET`` -- only the test block (|E| = N/F rows)
    is inverted per fold. The bound's rows are those the fold trains on, so a step never leans on
    held-out rows (with n < d a shared bound would add components outside the fold's span that
    the penalty removes only slowly).

    ``data``: the solver's per-layer tensors; the layer stack (``"X"``, centred) and its sd (``"sa"``) are
    read from it at each application, so the solver's compaction of ``data`` as layers converge serves
    the bound too (its own state holds only the per-layer inverses)."""
    Xc, sd_all = data["X"], data["sa"]
    L, N, d = Xc.shape
    Xs = Xc / sd_all
    A = torch.bmm(Xs, Xs.transpose(1, 2)).double() + (4.0 / C) * torch.eye(N, dtype=torch.float64)
    del Xs
    Ainv = torch.cholesky_inverse(torch.linalg.cholesky(A))
    test = [torch.nonzero(~train[f]).flatten() for f in range(F)]
    m = max(1, max(len(t) for t in test))
    idx = torch.zeros(F, m, dtype=torch.long)
    ok = torch.zeros(F, m, dtype=torch.bool)
    for f, t in enumerate(test):
        idx[f, :len(t)], ok[f, :len(t)] = t, True
    cols_e = (Ainv[:, :, idx].permute(0, 2, 3, 1) * ok[None, :, :, None]).contiguous()  # [L, F, m, N]
    ee = torch.gather(cols_e, 3, idx[None, :, None, :].expand(L, F, m, m))
    ee = ee * (ok[:, :, None] & ok[:, None, :])[None] + torch.diag_embed((~ok).double())[None]
    rows = train.float().repeat_interleave(K, 0)                                     # [F*K, N]
    gidx = idx[None, :, None, :]
    # the fold restriction subtracts nearly equal terms: it stays in fp64 (in fp32 the bound's
    # output loses its sign in the top directions and L-BFGS stalls)
    st = {"Ai": Ainv, "W": torch.linalg.inv(ee), "Ce": cols_e}
    scale = (rows.sum(1) * C)[:, None]                                              # n C per column

    def apply(g):
        nl = g.shape[0]
        t = (torch.bmm(g / data["sa"], data["X"].transpose(1, 2)) * rows).double()  # Xs_T g  [nl, FK, N]
        phi = torch.bmm(t, st["Ai"]).view(nl, F, K, N)
        corr = torch.matmul(torch.matmul(torch.gather(phi, 3, gidx.expand(nl, F, K, m)), st["W"]), st["Ce"])
        t = ((phi - corr).view(nl, F * K, N) * rows).float()                      # A_TT^-1 Xs_T g
        return scale * (g - torch.bmm(t, data["X"]) / data["sa"])
    apply.state = st
    return apply


def _spd_inverse(B):
    """Inverse of a batch of SPD matrices through Cholesky in the input's precision (fp32: a
    preconditioner needs no more), falling back to fp64 where a factorisation fails."""
    chol, info = torch.linalg.cholesky_ex(B)
    if bool(info.any()):
        return torch.cholesky_inverse(torch.linalg.cholesky(B.double())).to(B.dtype)
    return torch.cholesky_inverse(chol)


def boehning_dense(Xc, sd_all, lam_mean):
    """``g -> B^-1 g`` with the exact inverse of one bound per layer from all rows (``bound="dense"``):
    ``B = Xs^T Xs / (4N) + lam I``.

    With fewer rows than features the explicit inverse comes from the N x N side (Woodbury)::

        B^-1 = [I - Xs^T (4N lam I + Xs Xs^T)^-1 Xs] / lam

    (an N x N factorisation, in fp64, instead of a d x d one; the product is the same matrix)."""
    L, N, d = Xc.shape
    if N < d:
        Xs = Xc / sd_all
        A = torch.bmm(Xs, Xs.transpose(1, 2)).double()
        A.diagonal(dim1=1, dim2=2).add_(4 * N * lam_mean)
        P = torch.bmm(torch.cholesky_inverse(torch.linalg.cholesky(A)).float(), Xs)       # [L, N, d]
        Binv = torch.bmm(Xs.transpose(1, 2), P).neg_()
        Binv.diagonal(dim1=1, dim2=2).add_(1.0)
        Binv.div_(lam_mean)
    else:
        inv_sd = 1.0 / sd_all.transpose(1, 2)                                        # [L, d, 1]
        B = torch.bmm(Xc.transpose(1, 2), Xc) * (inv_sd * inv_sd.transpose(1, 2) / (4 * N))
        B.diagonal(dim1=1, dim2=2).add_(lam_mean)
        Binv = _spd_inverse(B)
    st = {"Binv": Binv}

    def apply(g):
        return torch.bmm(g, st["Binv"])
    apply.state = st
    return apply


def boehning_lowrank(Xc, sd_all, lam_mean, rank=None):
    """``g -> P g`` with the inverse Boehning bound restricted to its top ``rank`` eigendirections::

        P = U diag(1 / (e_i + lam)) U^T + (I - U U^T) / (e_{r+1} + lam),

    ``e_i`` the largest eigenvalues of ``Xs^T Xs / (4N)`` (all rows, the layer standardised once) and ``U``
    their eigenvectors, found by randomized subspace iteration (Halko, Martinsson & Tropp 2011,
    arXiv 0909.4061: ``POWER`` passes of ``Xs^T Xs`` over ``rank + 16`` fixed random vectors, then
    Rayleigh-Ritz). The remaining directions get the next eigenvalue, not ``lam``: the bound's tail
    is flat beside its head, and L-BFGS corrects it. Residual-stream activations put most of their
    variance in few directions, so the head carries the bound's effect: on real SmolLM2 layers rank
    32-64 converges in as few iterations as the exact dense inverse (fewer on the first layers),
    its setup is ``O(N d r)`` instead of ``O(N d min(N, d))`` and it reads ``2 r d`` numbers per
    application instead of ``d^2``."""
    L, N, d = Xc.shape
    r = max(1, min(LOWRANK if rank is None else rank, d - 1, N - 1))
    k = min(r + 16, d, N)
    Xs = Xc / sd_all
    gen = torch.Generator().manual_seed(0)
    Q = torch.randn(d, k, generator=gen, dtype=Xc.dtype).expand(L, d, k)  # the same start for every layer
    for _ in range(POWER):
        Q = torch.linalg.qr(torch.bmm(Xs.transpose(1, 2), torch.bmm(Xs, Q))).Q
    T = torch.bmm(Xs, Q)
    ev, W = torch.linalg.eigh((torch.bmm(T.transpose(1, 2), T) / (4 * N)).double())
    ev, W = ev.flip(-1).clamp_min(0), W.flip(-1)
    U = torch.bmm(Q, W[..., :r].to(Xc.dtype))                                        # [L, d, r]
    c = (1.0 / (ev[:, r] + lam_mean)).to(Xc.dtype)[:, None, None]                    # [L, 1, 1] (r < k)
    coef = (1.0 / (ev[:, :r] + lam_mean)).to(Xc.dtype)[:, None] - c                  # [L, 1, r]
    st = {"U": U, "Ut": U.transpose(1, 2).contiguous(), "c": c, "coef": coef}

    def apply(g):
        return torch.baddbmm(st["c"] * g, torch.bmm(g, st["U"]) * st["coef"], st["Ut"])
    apply.state = st
    return apply
