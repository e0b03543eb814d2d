"""Cross-validation engine for probe sweeps over a precomputed activation stack ``[n_layers, N, d]``.

Every (layer, fold, label set) problem is fitted at once: one standardisation per fold (never
materialised: it is folded into the weights), the closed-form probes (mass-mean, LDA) batched over
layers by :func:`probes.solvers.closed_form`, and the logistic probe for all layers, folds and the
control task in one batched preconditioned L-BFGS run (:func:`probes.solvers.fit_logistic_folds`),
converged to scikit-learn's tolerance on scikit-learn's objective. The per-layer numbers equal
those of ``make_pipeline(StandardScaler(), LogisticRegression(C=C))`` on the same split up to
that tolerance.
"""
from __future__ import annotations


import numpy as np
import torch
from scipy import stats
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from hooked.util import torch_threads

from .linear import check_labels
from .solvers import METHODS, closed_form, fit_logistic_folds


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
    if torch.isfinite(X.sum()):  # a finite sum: every entry is finite (one read, no mask)
        return X
    finite = torch.isfinite(X)
    if not bool(finite.all()):
        bad_layers = (~finite).flatten(1).any(1).nonzero().flatten().tolist()
        raise ValueError(f"Activations contain {(~finite).sum().item()} NaN/inf values (in layer "
                         f"indices {bad_layers[:10]}); probes need finite activations -- check the "
                         "capture (fp16 overflow?) or drop those layers.")
    return X


def closed_form_scores(Xtr, ytr, Xte, method="mass_mean", shrinkage=0.1, standardize=None):
    """Fit a closed-form probe per layer on ``Xtr [L, n, d]``; test decision scores ``[L, m]``."""
    if standardize is None:
        standardize = method != "mass_mean"
    if standardize:
        mu = Xtr.mean(1, keepdim=True)
        sd = Xtr.std(1, unbiased=False, keepdim=True)
        sd = torch.where(sd < 1e-12, torch.ones_like(sd), sd)
        Xtr, Xte = (Xtr - mu) / sd, (Xte - mu) / sd
    w, b = closed_form(Xtr, ytr, method, shrinkage)
    return (torch.einsum("lmd,ld->lm", Xte, w) + b[:, None]).numpy()


def logistic_scores(X, labels, folds, C=1.0, tol=1e-4, max_iter=500):
    """Test decision scores of the L2 logistic probe (train-fold standardisation) for every layer,
    fold and label set: a list over folds of ``[L, K, m_f]`` arrays."""
    N = X.shape[1]
    masks = np.zeros((len(folds), N), dtype=bool)
    for f, (tr, _) in enumerate(folds):
        masks[f, tr] = True
    coef, intercept, _, _ = fit_logistic_folds(X, labels, masks, C=C, tol=tol, max_iter=max_iter)
    L, F, K, d = coef.shape
    # every fold's probes score every row in one pass; each fold keeps its test rows
    scores = torch.bmm(coef.reshape(L, F * K, d), X.transpose(1, 2)).view(L, F, K, N) + intercept[..., None]
    return [scores[:, f][..., torch.as_tensor(te)].double().numpy() for f, (_, te) in enumerate(folds)]


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
                   shrinkage=0.1, standardize=None, max_iter=500, tol=1e-4, threads=None,
                   control_labels=None):
    """Per-layer fold accuracies and AUROCs ``[L, cv]`` for the task (and the control task's, on
    the same folds).

    ``control=True`` needs ``control_labels``: one label per example from a Hewitt & Liang control
    task (:func:`probes.control.control_task`, from a word-type key per example).

    ``threads``: torch threads while the sweep runs (restored after; ``None`` keeps the current
    setting, by default: every core torch uses, as a joblib loop over layers would).
    """
    with torch_threads(threads):
        return _cross_validate(X, y, groups, cv, method, control, seed, C, shrinkage, standardize,
                               max_iter, tol, control_labels)


def _cross_validate(X, y, groups, cv, method, control, seed, C, shrinkage, standardize, max_iter,
                    tol, control_labels):
    if method not in METHODS:
        raise ValueError(f"Unknown probe method {method!r}; use one of {list(METHODS)}.")
    X = as_stack(X)
    y = check_labels(y, X.shape[1], what="The activation stack")
    classes = np.unique(y)
    yb = (y == classes[1]).astype(np.int64)
    folds = make_folds(yb, groups, cv, seed)
    runs = {"task": yb}
    if control:
        if control_labels is None:
            raise ValueError("control=True needs control_labels (Hewitt & Liang control task: "
                             "probes.control.control_task(types, y)); a shuffle of the task labels "
                             "is at chance by construction. Pass control=False to skip it.")
        control_labels = np.asarray(control_labels).astype(np.int64)
        if control_labels.shape != yb.shape:
            raise ValueError(f"control_labels has shape {control_labels.shape}; the task has "
                             f"{len(yb)} examples, so give one control label per example.")
        runs["control"] = control_labels
    names = list(runs)
    L = X.shape[0]
    out = {name: (np.zeros((L, len(folds))), np.zeros((L, len(folds)))) for name in names}
    if method == "logistic":
        scores = logistic_scores(X, np.stack([runs[k] for k in names]), folds, C, tol, max_iter)
        for f, (_, te) in enumerate(folds):
            for k, name in enumerate(names):
                s, lab = scores[f][:, k], runs[name][te]
                out[name][0][:, f] = ((s > 0).astype(np.int64) == lab[None]).mean(1)
                out[name][1][:, f] = auroc_rows(s, lab)
    else:
        for name, labels in runs.items():
            for f, (tr, te) in enumerate(folds):
                tr_t, te_t = torch.as_tensor(tr), torch.as_tensor(te)
                s = closed_form_scores(X[:, tr_t], labels[tr], X[:, te_t], method, shrinkage,
                                       standardize)
                out[name][0][:, f] = ((s > 0).astype(np.int64) == labels[te][None]).mean(1)
                out[name][1][:, f] = auroc_rows(s, labels[te])
    return out, folds, float(np.bincount(yb).max() / len(yb))


def first_above_chance(acc_mean, acc_low, chance, margin=0.1):
    """The first layer index whose mean accuracy is at least ``chance + margin`` and whose 95 %
    interval lies above chance (``acc_low > chance``), or ``None``: where the concept is first
    *decodable*. Not a concept-depth marker -- a concept cued by a word in the prompt is
    decodable from layer 0, whatever the layers then do (see :func:`jump_layer`)."""
    acc_mean = np.asarray(acc_mean, dtype=float)
    ok = (acc_mean >= chance + margin) & (np.asarray(acc_low, dtype=float) > chance)
    return int(np.argmax(ok)) if ok.any() else None


def jump_layer(acc_mean, jump_min_rise=0.05):
    """Jump point of Jin et al. 2024 ("Exploring Concept Depth", arXiv 2404.07066): the layer at
    which the probe accuracy rises most steeply from the layer before,

        J = argmax_{l >= 1} (acc[l] - acc[l-1]),   reported when that rise >= jump_min_rise,

    else ``None`` (no jump: a flat curve, at chance or already high from the embedding on).
    Returns an index into the sweep's layer axis. See :func:`converging_layer` for provenance.
    """
    acc = _curve(acc_mean)
    if len(acc) < 2:
        return None
    rise = np.diff(acc)
    j = int(np.argmax(rise))
    return j + 1 if rise[j] >= jump_min_rise else None


def converging_layer(acc_mean, converge_eps=0.02):
    """Converging point of Jin et al. 2024 (arXiv 2404.07066): the first layer after the steepest
    rise ``J`` (as in :func:`jump_layer`, whatever its size) at which the accuracy has stopped
    moving,

        C = min { l > J : |acc[l] - acc[l-1]| < converge_eps },   the last layer if none

    (0 for a curve that never rises).

    Provenance. The paper's §3 text could not be retrieved in this environment, and the reference
    code (github.com/Luckfort/CD, ``main.py``) computes only per-layer accuracy / F1 / AUC, with
    no marker code. The rule and ``converge_eps = 0.02`` were chosen against the reference's own
    figures (github.com/Luckfort/explore_CD, ``static/images/P22-0405-7B-all.pdf``: the
    Gemma-7B / LLaMA-7B / Qwen-7B accuracy curves on nine datasets, read from the vector paths;
    ``P2-0414-GLQ.pdf``: the published converging points, as depth ``(C + 1) / n_layers``). It
    reproduces 15 of those 27 points exactly; "plateau within eps of the peak" (this package's
    previous rule) reproduces 3, the peak layer 4, "first layer within eps of the peak" at most 5,
    "stable to the last layer" at most 5 (eps from 0.002 to 0.05). The published points are not
    all consistent with any one rule on the plotted curves, so no rule reproduces all of them.
    Returns an index into the sweep's layer axis.
    """
    acc = _curve(acc_mean)
    if len(acc) < 2:
        return 0
    change = np.diff(acc)
    if change.max() <= 0:                       # never rises: converged from the first layer
        return 0
    start = int(np.argmax(change)) + 1
    steady = np.flatnonzero(np.abs(change[start:]) < converge_eps)   # change[l-1] for l > start
    return int(start + 1 + steady[0]) if len(steady) else len(acc) - 1


def _curve(acc_mean) -> np.ndarray:
    acc = np.asarray(acc_mean, dtype=float)
    if acc.ndim != 1 or len(acc) == 0:
        raise ValueError(f"acc_mean must be a 1-D per-layer accuracy curve; got shape {acc.shape}.")
    if not np.isfinite(acc).all():
        raise ValueError("acc_mean has NaN/inf entries; a depth marker needs a finite accuracy per layer.")
    return acc


def depth_markers(acc_mean, jump_min_rise=0.05, converge_eps=0.02):
    """``(jump, converging)``: :func:`jump_layer` and :func:`converging_layer` of one curve."""
    return jump_layer(acc_mean, jump_min_rise), converging_layer(acc_mean, converge_eps)
