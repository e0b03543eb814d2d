"""Fast cross-validated probe sweep over a precomputed activation stack ``[n_layers, N, d]``.

Speed comes from doing the per-fold work once for all layers: one split, one vectorised
standardisation of the whole stack per fold, closed-form probes (mass-mean, LDA) solved for all
layers in one batched call, and the logistic probe fitted layer after layer with scikit-learn's
lbfgs warm-started from the previous layer's solution (adjacent layers have similar
representations, so it converges in a few iterations). The L2 problem is strictly convex, so the
warm start changes the path, not the solution: the per-layer numbers equal those of
``LinearProbe(method).fit`` on the same split (up to solver tolerance).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy import stats
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from threadpoolctl import threadpool_limits

from .linear import METHODS, check_labels, shrunk


def make_folds(y, groups=None, cv=5, seed=0):
    """Stratified (group-aware when ``groups`` is given) train/test index pairs, with clear errors."""
    y = np.asarray(y)
    n = len(y)
    if not isinstance(cv, (int, np.integer)) or cv < 2:
        raise ValueError(f"cv={cv!r}: cross-validation needs an integer number of folds >= 2.")
    if n < cv:
        raise ValueError(f"There are {n} examples but cv={cv} folds were asked for; use cv <= {n} "
                         "or a larger dataset.")
    _, counts = np.unique(y, return_counts=True)
    if counts.min() < cv:
        raise ValueError(f"The smallest class has {counts.min()} examples, fewer than cv={cv} folds; "
                         f"every test fold needs both classes -- use cv <= {counts.min()}.")
    if groups is not None:
        groups = np.asarray(groups)
        if len(groups) != n:
            raise ValueError(f"There are {n} labels but {len(groups)} groups; give one group per "
                             "example or groups=None.")
        n_groups = len(np.unique(groups))
        if n_groups < cv:
            raise ValueError(f"There are {n_groups} distinct groups but cv={cv} folds; group-aware "
                             f"folds need at least one group per fold -- use cv <= {n_groups}.")
        splitter = StratifiedGroupKFold(n_splits=cv, shuffle=True, random_state=seed)
        return list(splitter.split(np.zeros(n), y, groups))
    splitter = StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(n), y))


def as_stack(X) -> torch.Tensor:
    if not isinstance(X, torch.Tensor):
        X = torch.as_tensor(np.asarray(X))
    X = X.detach().cpu()
    if X.dim() == 2:
        X = X[None]
    if X.dim() != 3:
        raise ValueError(f"Activations must be [n_layers, N, d] (or [N, d]); got shape {tuple(X.shape)}.")
    if X.shape[1] == 0:
        raise ValueError("The activation stack has no examples (N = 0): the dataset is empty.")
    X = X.float()
    finite = torch.isfinite(X)
    if not bool(finite.all()):
        bad_layers = (~finite).flatten(1).any(1).nonzero().flatten().tolist()
        raise ValueError(f"Activations contain {(~finite).sum().item()} NaN/inf values (in layer "
                         f"indices {bad_layers[:10]}); probes need finite activations -- check the "
                         "capture (fp16 overflow?) or drop those layers.")
    return X


def fold_scores(Xtr, ytr, Xte, method="logistic", C=1.0, shrinkage=0.1, standardize=None,
                max_iter=1000, tol=1e-4, warm=True):
    """Fit one probe per layer on ``Xtr [L, n, d]`` and return test decision scores ``[L, m]``."""
    if standardize is None:
        standardize = method != "mass_mean"
    if standardize:
        mu = Xtr.mean(1, keepdim=True)
        sd = Xtr.std(1, unbiased=False, keepdim=True)
        sd = torch.where(sd < 1e-12, torch.ones_like(sd), sd)
        Ztr, Zte = (Xtr - mu) / sd, (Xte - mu) / sd
    else:
        Ztr, Zte = Xtr, Xte
    yt = torch.as_tensor(ytr, dtype=torch.bool)
    if method == "logistic":
        return _logistic_scores(Ztr, ytr, Zte, C, max_iter, tol, warm)
    m1, m0 = Ztr[:, yt].mean(1), Ztr[:, ~yt].mean(1)        # [L, d]
    diff = m1 - m0
    if method == "mass_mean":
        w = diff
        b = -(w * (m0 + m1) / 2).sum(-1)
    else:
        centred = torch.where(yt[None, :, None], Ztr - m1[:, None], Ztr - m0[:, None])
        cov = centred.transpose(1, 2) @ centred / max(Ztr.shape[1] - 2, 1)
        chol, info = torch.linalg.cholesky_ex(shrunk(cov, shrinkage).double())
        if bool(info.any()):  # not positive definite (shrinkage=0 and n < d): use a solver that copes
            w = torch.linalg.lstsq(shrunk(cov, shrinkage).double(), diff.double().unsqueeze(-1)).solution
        else:
            w = torch.cholesky_solve(diff.double().unsqueeze(-1), chol)
        w = w.squeeze(-1).float()
        p1 = float(yt.double().mean())
        b = -(w * (m0 + m1) / 2).sum(-1) + np.log(p1 / (1 - p1))
    return (torch.einsum("lmd,ld->lm", Zte, w) + b[:, None]).numpy()


def _logistic_scores(Ztr, ytr, Zte, C, max_iter, tol, warm):
    """L2 logistic regression per layer (scikit-learn lbfgs), warm-started across layers: each
    fit starts from the previous layer's solution (``warm_start=True``), which adjacent layers of a
    residual stream make a good initial point."""
    clf = LogisticRegression(C=C, max_iter=max_iter, tol=tol, warm_start=warm)
    out = []
    # float32 is what the activations are; scikit-learn's lbfgs keeps it (half the traffic)
    Ztr_np, Zte_np = Ztr.float().numpy(), Zte.double().numpy()
    # lbfgs on a few hundred features is latency-bound: multi-threaded BLAS only adds
    # contention (10-20x slower on a busy 2-core machine), so pin it to one thread here.
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        warnings.simplefilter("ignore", ConvergenceWarning)
        for layer in range(Ztr_np.shape[0]):
            clf.fit(Ztr_np[layer], ytr)
            out.append(Zte_np[layer] @ clf.coef_[0].astype(np.float64) + float(clf.intercept_[0]))
    return np.stack(out)


def auroc_rows(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """AUROC of every row of ``scores [L, m]`` against binary ``y [m]`` (Mann-Whitney U, ties averaged)."""
    pos = y == 1
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        return np.full(scores.shape[0], np.nan)
    ranks = stats.rankdata(scores, axis=1)
    return (ranks[:, pos].sum(1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def mean_ci(values: np.ndarray, level=0.95):
    """Mean over folds (axis -1) and a Student-t ``level`` interval."""
    k = values.shape[-1]
    mean = np.nanmean(values, axis=-1)
    if k < 2:
        return mean, mean.copy(), mean.copy()
    sem = np.nanstd(values, axis=-1, ddof=1) / np.sqrt(k)
    half = stats.t.ppf(0.5 + level / 2, k - 1) * sem
    return mean, mean - half, mean + half


def cross_validate(X, y, groups=None, cv=5, method="logistic", control=True, seed=0, C=1.0,
                   shrinkage=0.1, standardize=None, max_iter=1000, tol=1e-4, warm=True, threads=1):
    """Per-layer fold accuracies and AUROCs ``[L, cv]`` (and the shuffled-label control's).

    The control (Hewitt & Liang 2019) permutes the labels once (seeded) and runs the identical
    pipeline on the same folds; selectivity = accuracy - control accuracy.

    ``threads``: torch threads for the batched linear algebra while the sweep runs (restored
    after; ``None`` keeps the current setting). On a shared CPU, multi-threaded kernels on these
    small matrices mostly add contention, so the default is one.
    """
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _cross_validate(X, y, groups, cv, method, control, seed, C, shrinkage, standardize,
                               max_iter, tol, warm)
    finally:
        torch.set_num_threads(previous)


def _cross_validate(X, y, groups, cv, method, control, seed, C, shrinkage, standardize, max_iter,
                    tol, warm):
    if method not in METHODS:
        raise ValueError(f"Unknown probe method {method!r}; use one of {list(METHODS)}.")
    X = as_stack(X)
    y = check_labels(y, X.shape[1], what="The activation stack")
    classes = np.unique(y)
    yb = (y == classes[1]).astype(np.int64)
    folds = make_folds(yb, groups, cv, seed)
    runs = {"task": yb}
    if control:
        runs["control"] = np.random.default_rng(seed + 1).permutation(yb)
    out = {}
    for name, labels in runs.items():
        acc = np.zeros((X.shape[0], len(folds)))
        auc = np.zeros_like(acc)
        for f, (tr, te) in enumerate(folds):
            tr_t, te_t = torch.as_tensor(tr), torch.as_tensor(te)
            s = fold_scores(X[:, tr_t], labels[tr], X[:, te_t], method, C, shrinkage, standardize,
                            max_iter, tol, warm)
            acc[:, f] = ((s > 0).astype(np.int64) == labels[te][None]).mean(1)
            auc[:, f] = auroc_rows(s, labels[te])
        out[name] = (acc, auc)
    return out, folds, float(np.bincount(yb).max() / len(yb))


def depth_markers(acc_mean, acc_low, chance, jump_margin=0.1, converge_eps=0.02):
    """Concept-depth markers (after Jin et al. 2024, "Exploring Concept Depth").

    * jump layer: the first layer whose mean accuracy is at least ``chance + jump_margin`` and
      whose 95 % interval lies above chance (``acc_low > chance``) -- "clearly above chance";
    * converging layer: the first layer of the plateau that leads to the peak -- the smallest l
      such that every layer from l through the peak layer has mean accuracy within
      ``converge_eps`` of the peak. (Late layers may fall off again; requiring the band to hold to
      the last layer would leave many real curves without a converging point.)
    Returns indices into the sweep's layer axis (jump is ``None`` when never clearly above chance).
    """
    acc_mean = np.asarray(acc_mean, dtype=float)
    ok = (acc_mean >= chance + jump_margin) & (np.asarray(acc_low) > chance)
    jump = int(np.argmax(ok)) if ok.any() else None
    peak = int(np.argmax(acc_mean))
    near = acc_mean[: peak + 1] >= acc_mean[peak] - converge_eps
    outside = np.flatnonzero(~near)
    converging = int(outside[-1] + 1) if len(outside) else 0
    return jump, converging
